"""The non-parametric DTPM detector (DTE-NP): K nearest neighbours -> inverse-Gamma posterior."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dtpm_fast._device import resolve_device
from dtpm_fast._validation import check_choice, check_int, check_is_fitted
from dtpm_fast.base import BaseDetector
from dtpm_fast.io import model_files
from dtpm_fast.nonparametric import indexes
from dtpm_fast.nonparametric.gpu.arrays import is_device_array, to_numpy
from dtpm_fast.nonparametric.host import HostBackend
from dtpm_fast.schedule import MAX_STEPS, PosteriorGrid
from dtpm_fast.standardize import Standardizer

SCORES = ("mean", "mode")


@dataclass(frozen=True)
class FittedState:
    """What ``fit`` learns, shared by the CPU and GPU backends (and saved in model files)."""

    train: np.ndarray  # (n_train, d) float32, standardised, C-contiguous
    scaler: Standardizer
    grid: PosteriorGrid
    index_kind: str
    index_params: dict

    @property
    def n_features(self) -> int:
        return int(self.train.shape[1])


class DTPMNonParametric(BaseDetector):
    """Non-parametric diffusion-time anomaly detector (DTE-NP, docs/METHOD.md section 3).

    The score of a row is the posterior mean (or mode) of the diffusion time t in 0..T-1
    given the mean squared distance D2 to its ``n_neighbors`` nearest training rows:
    p(t | x) ~ InvGamma(sigma2_t; a = d/2 - 1, b = D2/2). Higher = more anomalous.

    Parameters
    ----------
    n_neighbors : int, default 5
        K, the neighbours averaged into D2.
    T : int, default 300
        Number of diffusion steps of the grid.
    score : {"mean", "mode"}, default "mean"
        Posterior mean of t (reproduces the paper's table) or the grid argmax (the authors'
        public code).
    index : {"auto", "flat", "brute", "kdtree", "hnsw", "ivf"}, default "auto"
        Neighbour search. "brute" (dtpm_fast's native brute force), "flat" (FAISS) and "kdtree"
        (SciPy) are exact; "hnsw" and "ivf" are approximate FAISS indexes whose candidates are
        re-ranked with exact distances; "auto" picks an exact index by dimension and size: the
        KD-tree at d <= 3 from 4,000 training rows, d = 4 from 15,000, d = 5 from 50,000, else the
        native brute force (``indexes.AUTO_KDTREE_MIN_ROWS``).
    index_params : dict, optional
        hnsw: ``M``, ``ef_construction``, ``ef_search``, ``candidates`` (candidates per neighbour
        re-ranked); ivf: ``nlist``, ``nprobe``, ``candidates``; kdtree: ``leafsize``.
    standardize : bool, default True
        Standardise features with training mean and std (the noise scale assumes it).
    contamination : float in (0, 0.5], default 0.1
        Expected outlier share; sets ``threshold_`` by the training-score percentile.
    device : {"auto", "cpu", "cuda"}, default "auto"
        Where scoring runs; "cuda" without a usable GPU raises ValueError. On the GPU the search
        is exact (FAISS GPU brute force when faiss-gpu is installed and K fits its limit of 2048,
        else a torch brute force) except with ``index="ivf"`` and faiss-gpu, which uses FAISS's
        GPU IVF (approximate candidates, exact re-ranking); device arrays (torch, CuPy) are
        scored without leaving the device, and the fitted state is kept on the host too, so
        the detector saves and loads like a CPU one.
    batch_size : int, default 65536
        Query rows searched and scored at a time; bounds the working memory.

    Attributes
    ----------
    decision_scores_ : ndarray of shape (n_train,)
        Training scores, each row excluded from its own neighbours.
    threshold_ : float
    labels_ : ndarray of shape (n_train,), int64
    n_features_in_ : int
    index_kind_ : str
        The concrete index used.
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        T: int = 300,
        score: str = "mean",
        index: str = "auto",
        index_params: dict | None = None,
        standardize: bool = True,
        contamination: float = 0.1,
        device: str = "auto",
        batch_size: int = 65536,
    ):
        self.n_neighbors = n_neighbors
        self.T = T
        self.score = score
        self.index = index
        self.index_params = index_params
        self.standardize = standardize
        self.contamination = contamination
        self.device = device
        self.batch_size = batch_size

    # ---- fitting ----------------------------------------------------------------------------
    def _check_params(self) -> None:
        check_int(self.n_neighbors, "n_neighbors", 1)
        check_int(self.T, "T", 2, MAX_STEPS)
        check_int(self.batch_size, "batch_size", 1)
        check_choice(self.score, "score", SCORES)
        check_choice(self.index, "index", indexes.INDEX_KINDS)
        check_choice(self.standardize, "standardize", (True, False))
        self._check_contamination()
        if self.index != "auto":  # the keys and types here; nlist against the rows in fit
            indexes.resolve_params(self.index, self.index_params)
        elif self.index_params is not None and not isinstance(self.index_params, Mapping):
            raise ValueError(
                f"index_params must be a dict or None, got {type(self.index_params).__name__} "
                f"{self.index_params!r}; {indexes.INDEX_PARAMS_HINT}"
            )

    def fit(self, X, y=None) -> DTPMNonParametric:
        """Fit on training rows X of shape (n_samples, n_features) (labels ``y`` are ignored).

        Standardises, builds the neighbour index and scores the training rows leave-one-out.
        """
        self._check_params()
        X = self._validate_rows(to_numpy(X) if is_device_array(X) else X, fitting=True)  # state on the host
        n, d = X.shape
        if d <= 2:
            raise ValueError(
                f"X has {d} feature(s); DTPM needs at least 3 (the inverse-Gamma shape d/2 - 1 must be positive)."
            )
        if self._largest_k() >= n:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} must be smaller than the number of training rows "
                f"(n_samples = {n}): each training row is scored against the others."
            )
        device = resolve_device(self.device)
        scaler = Standardizer.fit(X) if self.standardize else Standardizer.identity(d)
        kind = indexes.resolve_kind(self.index, n, d)
        self._state = FittedState(
            train=scaler.transform(X),
            scaler=scaler,
            grid=PosteriorGrid.for_steps(self.T),
            index_kind=kind,
            index_params=indexes.resolve_params(kind, self.index_params, n_train=n),
        )
        self.n_features_in_ = d
        self.index_kind_ = kind
        self._backend = self._make_backend(device)
        mode, mean = self._backend.train_scores()
        self._set_threshold(mean if self.score == "mean" else mode.astype(np.float64))
        return self

    def _largest_k(self) -> int:
        return self.n_neighbors

    def _make_backend(self, device: str, serialized_index: bytes | None = None):
        """The CPU or GPU backend over the fitted state, for a resolved ``device``."""
        if device == "cpu":
            return HostBackend(self._state, self.n_neighbors, self.batch_size, serialized_index)
        from dtpm_fast.nonparametric.gpu.engine import GpuBackend

        return GpuBackend(self._state, self.n_neighbors, self.batch_size, device)

    def to_device(self, device: str) -> DTPMNonParametric:
        """Move the fitted detector to ``device`` ("auto", "cpu", "cuda", "cuda:N"); returns self.

        Scores do not change (within float noise between CPU and GPU arithmetic).
        """
        resolved = resolve_device(device)
        check_is_fitted(self, "_backend")
        self._check_unchanged()
        if resolved != self._backend.device_name:
            self._backend = self._make_backend(resolved)
        self.device = device
        self._fitted_params["device"] = device
        return self

    # ---- scoring ----------------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores, shape (n_samples,), float64 in [0, T-1]: posterior mean or mode of t.

        On a CUDA detector, torch/CuPy device input gives a device array of the same kind.
        """
        X = self._checked(X)
        return self._backend.decision_function(X, self.score)

    def posterior_mean(self, X) -> np.ndarray:
        """Posterior mean of the diffusion time, shape (n_samples,), float64 (the default score)."""
        X = self._checked(X)
        return self._backend.decision_function(X, "mean")

    def posterior(self, X) -> np.ndarray:
        """Posterior over the diffusion time, shape (n_samples, T), float64, rows sum to 1."""
        X = self._checked(X)
        return self._backend.posterior(X)

    def explain(self, X) -> np.ndarray:
        """Per-feature contributions, shape (n_samples, n_features), float32.

        Entry (i, j) is the mean over the K neighbours of (x_ij - neighbour_j)^2 in standardised
        units; a row sums to its D2, the quantity the score increases with.
        """
        X = self._checked(X)
        return self._backend.explain(X)

    _runtime_params = ("batch_size",)

    def _checked(self, X):
        """X validated for scoring: fitted, parameters unchanged since fit, the right shape."""
        check_is_fitted(self, "_backend")
        self._check_unchanged()
        self._backend.batch_size = check_int(self.batch_size, "batch_size", 1)
        if self._backend.device_name != "cpu" and is_device_array(X):
            return X  # the GPU backend checks device arrays where they live
        return self._validate_rows(X, fitting=False)

    # ---- persistence hooks ------------------------------------------------------------------
    def _get_state(self):
        check_is_fitted(self, "_backend")
        self._check_unchanged()
        state = self._state
        meta = {
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "index_kind": state.index_kind,
            "index_params": state.index_params,
            "threshold": self.threshold_,
        }
        arrays = {
            "train": state.train,
            "scaler_mean": state.scaler.mean,
            "scaler_scale": state.scaler.scale,
            "decision_scores": self.decision_scores_,
        }
        index_bytes = self._backend.index_bytes()
        blobs = {"index": index_bytes} if index_bytes is not None else {}
        return meta, arrays, blobs

    @classmethod
    def _from_state(cls, meta, arrays, blobs):
        saved = model_files.SavedState(meta, arrays, blobs)
        params = dict(saved.mapping("params"))
        unknown = sorted(set(params) - set(cls._param_names()))
        if unknown:
            raise ValueError(f"saved parameters {unknown} are not parameters of {cls.__name__}")
        if params.get("device") not in (None, "auto", "cpu"):
            params["device"] = "auto"  # a GPU-fitted model loads anywhere; "auto" picks the GPU if present
        self = cls(**params)
        self._check_params()  # bounds T (schedule.MAX_STEPS) before the grid is built
        n_features = saved.integer("n_features_in", 3)
        train = saved.array("train", (None, n_features), kinds="f")
        n_train = train.shape[0]
        if n_train <= self._largest_k():
            raise ValueError(
                f"saved state is inconsistent: {n_train} training rows, but n_neighbors={self.n_neighbors} "
                "needs more"
            )
        scale = saved.array("scaler_scale", (n_features,))
        if not (scale > 0).all():
            raise ValueError("saved state is inconsistent: array 'scaler_scale' has a value <= 0")
        mean = saved.array("scaler_mean", (n_features,))
        scores = saved.array("decision_scores", (n_train,))
        threshold = saved.number("threshold")
        kind = meta.get("index_kind")
        if kind not in indexes.INDEX_KINDS or kind == "auto" or self.index not in ("auto", kind):
            raise ValueError(f"saved state is inconsistent: index_kind {kind!r} with index={self.index!r}")
        index_params = saved.mapping("index_params")
        serialized = saved.blob("index", allowed=kind in ("hnsw", "ivf"))
        saved.finish()
        self._state = FittedState(
            train=np.ascontiguousarray(train, dtype=np.float32),
            scaler=Standardizer(mean, scale),
            grid=PosteriorGrid.for_steps(self.T),
            index_kind=kind,
            index_params=indexes.resolve_params(kind, index_params, n_train=n_train),
        )
        self.n_features_in_ = n_features
        self.index_kind_ = kind
        self._backend = self._make_backend(resolve_device(self.device), serialized)
        if self._backend.device_name == "cpu":
            self._backend.index()  # restore the index now: a corrupt saved index fails at load
        self._restore_threshold(scores, threshold)
        return self
