"""Multi-scale DTE-NP: the diffusion-time posterior mean averaged over a ladder of neighbourhood sizes."""

from __future__ import annotations

import numbers

import numpy as np

from dtpm_fast._validation import check_choice, check_int
from dtpm_fast.nonparametric.detector import DTPMNonParametric
from dtpm_fast.nonparametric.host import HostBackend
from dtpm_fast.schedule import MAX_STEPS

#: The default ladder: K doubling from 1 to 32 (studies/plus_detector/README.md).
DEFAULT_LADDER = (1, 2, 4, 8, 16, 32)
#: Exact neighbour searches only: every scale needs its true K nearest rows.
INDEX_KINDS = ("auto", "brute", "flat", "kdtree")
DEVICES = ("auto", "cpu")


class DTPMMultiScale(DTPMNonParametric):
    """DTE-NP averaged over several neighbourhood sizes (CPU; the ``plus`` model of the harness).

    For each K in ``n_neighbors``, D2_K(x) is the mean squared distance from x to its K nearest
    training rows (standardised features) and t_K(x) the posterior mean of the diffusion time
    given D2_K under DTE-NP's inverse-Gamma model (docs/METHOD.md section 3, shape d/2 - 1, scale
    D2_K/2, T steps). The score is the plain average of the t_K: every view is already on the
    same diffusion-time scale [0, T-1], so no calibration between views is needed. With a single
    K the score equals ``DTPMNonParametric(n_neighbors=K, score="mean")``'s. A query that repeats a
    training row exactly gets time 0 in the K = 1 view; on ADBench, whose protocol resamples small
    data sets with replacement, that accounts for most of the gain over DTE-NP
    (studies/plus_detector/README.md).

    Parameters
    ----------
    n_neighbors : int or sequence of int, default (1, 2, 4, 8, 16, 32)
        The neighbourhood sizes K averaged over (distinct, >= 1, each smaller than the number of
        training rows).
    T : int, default 300
        Number of diffusion steps of the posterior grid.
    index : {"auto", "brute", "flat", "kdtree"}, default "auto"
        Exact neighbour search, as in :class:`~dtpm_fast.DTPMNonParametric` ("auto": SciPy's
        KD-tree at very low dimension and many rows, else dtpm_fast's native brute force;
        "flat" needs FAISS).
    index_params : dict, optional
        kdtree: ``leafsize``.
    standardize : bool, default True
        Standardise features with the training mean and std.
    contamination : float in (0, 0.5], default 0.1
        Expected outlier share; sets ``threshold_`` by the training-score percentile.
    device : {"auto", "cpu"}, default "auto"
        The detector runs on the CPU; "auto" means the CPU. "cuda" is refused with a ValueError.
    batch_size : int, default 65536
        Query rows searched and scored at a time; bounds the working memory.

    Attributes
    ----------
    decision_scores_ : ndarray of shape (n_train,)
        Training scores, each row excluded from its own neighbourhoods (leave-one-out).
    threshold_ : float
    labels_ : ndarray of shape (n_train,), int64
    n_features_in_ : int
    neighbour_ladder_ : tuple of int
        The K used, ascending.
    index_kind_ : str
        The concrete index used.
    """

    score = "mean"  # the posterior mean, averaged over the ladder (not a parameter here)

    def __init__(
        self,
        n_neighbors=DEFAULT_LADDER,
        T: int = 300,
        index: str = "auto",
        index_params: dict | None = None,
        standardize: bool = True,
        contamination: float = 0.1,
        device: str = "auto",
        batch_size: int = 65536,
    ):
        self.n_neighbors = n_neighbors
        self.T = T
        self.index = index
        self.index_params = index_params
        self.standardize = standardize
        self.contamination = contamination
        self.device = device
        self.batch_size = batch_size

    # ---- parameters -------------------------------------------------------------------------
    def _check_params(self) -> None:
        _check_ladder(self.n_neighbors)
        check_int(self.T, "T", 2, MAX_STEPS)
        check_int(self.batch_size, "batch_size", 1)
        check_choice(self.index, "index", INDEX_KINDS)
        _check_cpu(self.device)
        check_choice(self.device, "device", DEVICES)
        check_choice(self.standardize, "standardize", (True, False))
        self._check_contamination()

    def _largest_k(self) -> int:
        return _check_ladder(self.n_neighbors)[-1]

    def _make_backend(self, device: str, serialized_index: bytes | None = None):
        ladder = _check_ladder(self.n_neighbors)
        return HostBackend(self._state, ladder[-1], self.batch_size, serialized_index, ladder=ladder)

    # ---- fitting and scoring ----------------------------------------------------------------
    def fit(self, X, y=None) -> DTPMMultiScale:
        """Fit on training rows X of shape (n_samples, n_features) (labels ``y`` are ignored).

        Standardises, builds the neighbour index and scores the training rows leave-one-out.
        """
        super().fit(X, y)
        self.neighbour_ladder_ = _check_ladder(self.n_neighbors)
        return self

    def to_device(self, device: str) -> DTPMMultiScale:
        """Only the CPU: ``device`` must be "auto" or "cpu"; returns self."""
        _check_cpu(device)
        return super().to_device(device)

    def view_scores(self, X) -> np.ndarray:
        """The per-K posterior mean times, shape (n_samples, len(neighbour_ladder_)), float64.

        Column j belongs to ``neighbour_ladder_[j]``; ``decision_function`` is their row mean.
        """
        X = self._checked(X)
        return self._backend.view_scores(X)

    def posterior(self, X) -> np.ndarray:
        """Not defined for several neighbourhood sizes at once: raises ValueError."""
        raise ValueError(
            "DTPMMultiScale averages one posterior per K; use view_scores(X) for the per-K times, "
            "or DTPMNonParametric(n_neighbors=K).posterior(X) for one K"
        )

    def explain(self, X) -> np.ndarray:
        """Not defined for several neighbourhood sizes at once: raises ValueError."""
        raise ValueError(
            "DTPMMultiScale has no single neighbourhood to explain; use "
            "DTPMNonParametric(n_neighbors=K).explain(X) for one K"
        )

    def posterior_mean(self, X) -> np.ndarray:
        """Not defined for several neighbourhood sizes at once: raises ValueError."""
        raise ValueError(
            "DTPMMultiScale's score is a mean of posterior means over K; use view_scores(X), or "
            "DTPMNonParametric(n_neighbors=K).posterior_mean(X) for one K"
        )

    # ---- persistence hooks ------------------------------------------------------------------
    def _get_state(self):
        meta, arrays, blobs = super()._get_state()
        meta["params"]["n_neighbors"] = list(_check_ladder(self.n_neighbors))  # JSON-able
        return meta, arrays, blobs

    @classmethod
    def _from_state(cls, meta, arrays, blobs):
        meta = dict(meta, params=dict(meta["params"]))
        saved = meta["params"]["n_neighbors"]
        meta["params"]["n_neighbors"] = tuple(saved) if isinstance(saved, list) else saved
        self = super()._from_state(meta, arrays, blobs)
        self.neighbour_ladder_ = _check_ladder(self.n_neighbors)
        return self


def _check_cpu(device) -> None:
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        raise ValueError(
            f"device={device!r}: DTPMMultiScale runs on the CPU only; use device='cpu' "
            "(or DTPMNonParametric for GPU scoring)."
        )


def _check_ladder(value) -> tuple[int, ...]:
    """``n_neighbors`` as a sorted tuple of distinct integers >= 1 (an int K gives (K,))."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (check_int(value, "n_neighbors", 1),)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"n_neighbors must be an integer >= 1 or a sequence of them, got {value!r}.")
    ladder = list(value)
    if not ladder:
        raise ValueError("n_neighbors is empty: give at least one neighbourhood size K >= 1.")
    for k in ladder:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"n_neighbors must hold integers >= 1, got {value!r}.")
    if len(set(ladder)) != len(ladder):
        raise ValueError(f"n_neighbors must hold distinct sizes, got {value!r}.")
    return tuple(sorted(int(k) for k in ladder))
