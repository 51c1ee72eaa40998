"""The non-parametric DTPM detector (DTE-NP): K nearest neighbours -> inverse-Gamma posterior."""

from __future__ import annotations

import numpy as np

from dtpm_fast import _core, _gpu, neighbours
from dtpm_fast._device import resolve_device
from dtpm_fast._validation import check_choice, check_int, check_is_fitted, check_matrix, check_n_features
from dtpm_fast.base import BaseDetector
from dtpm_fast.schedule import PosteriorGrid
from dtpm_fast.standardize import Standardizer

SCORES = ("mean", "mode")


class DTPMNonParametric(BaseDetector):
    """Non-parametric diffusion-time anomaly detector (DTE-NP, ALGORITHM.md section 3).

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
        native brute force (``neighbours.AUTO_KDTREE_MIN_ROWS``).
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
        check_int(self.T, "T", 2)
        check_int(self.batch_size, "batch_size", 1)
        check_choice(self.score, "score", SCORES)
        check_choice(self.index, "index", neighbours.INDEX_KINDS)
        self._check_contamination()

    def fit(self, X, y=None) -> DTPMNonParametric:
        """Fit on training rows X of shape (n_samples, n_features) (labels ``y`` are ignored).

        Standardises, builds the neighbour index and scores the training rows leave-one-out.
        """
        self._check_params()
        X = check_matrix(_gpu.to_numpy(X) if _gpu.is_device_array(X) else X, "X")  # state lives on the host
        n, d = X.shape
        if d <= 2:
            raise ValueError(
                f"X has {d} feature(s); DTPM needs at least 3 (the inverse-Gamma shape d/2 - 1 must be positive)."
            )
        if self.n_neighbors >= n:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} must be smaller than the number of training rows ({n}): "
                "each training row is scored against the others."
            )
        self._device = resolve_device(self.device)
        self._scaler = Standardizer.fit(X) if self.standardize else Standardizer.identity(d)
        self._train = self._scaler.transform(X) if self.standardize else X
        self._grid = PosteriorGrid.for_steps(self.T)
        self.n_features_in_ = d
        self.index_kind_ = neighbours.resolve_kind(self.index, n, d)
        self._index_params = neighbours.resolve_params(self.index_kind_, self.index_params)
        self._gpu = None
        engine = self._engine()
        # On the GPU the search is exact on the device; the host index is built only for CPU scoring.
        self._index = (
            None
            if engine is not None
            else neighbours.build_index(self.index_kind_, self._train, self._index_params)
        )
        if engine is not None:
            mode, mean = engine.train_scores()
        else:
            mode, mean, _ = self._score_rows(self._train, standardized=True, leave_one_out=True)
        self._set_threshold(mean if self.score == "mean" else mode.astype(np.float64))
        return self

    # ---- scoring ----------------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores, shape (n_samples,), float64 in [0, T-1]: posterior mean or mode of t.

        On a CUDA detector, torch/CuPy device input gives a device array of the same kind.
        """
        X = self._checked(X)
        if self._engine() is not None:
            return self._engine().decision_function(X, self.score)
        mode, mean, _ = self._score_rows(X, want_mode=self.score == "mode", want_mean=self.score == "mean")
        return mean if self.score == "mean" else mode.astype(np.float64)

    def posterior(self, X) -> np.ndarray:
        """Posterior over the diffusion time, shape (n_samples, T), float64, rows sum to 1."""
        X = self._checked(X)
        if self._engine() is not None:
            return self._engine().posterior(X)
        _, _, post = self._score_rows(X, want_mode=False, want_mean=False, want_posterior=True)
        return post

    def explain(self, X) -> np.ndarray:
        """Per-feature contributions, shape (n_samples, n_features), float32.

        Entry (i, j) is the mean over the K neighbours of (x_ij - neighbour_j)^2 in standardised
        units; a row sums to its D2, the quantity the score increases with.
        """
        X = self._checked(X)
        if self._engine() is not None:
            return self._engine().explain(X)
        out = np.empty(X.shape, dtype=np.float32)
        for start, stop, Q, ids in self._neighbour_batches(X):
            sq, contrib = _core.neighbour_sqdist(Q, self._train, ids, True)
            if ids.shape[1] > self.n_neighbors:  # re-rank approximate candidates, then explain the top K
                ids = self._top_k(sq, ids)[1]
                _, contrib = _core.neighbour_sqdist(Q, self._train, ids, True)
            out[start:stop] = contrib
        return out

    # ---- internals --------------------------------------------------------------------------
    def _checked(self, X) -> np.ndarray:
        check_is_fitted(self, "_index")
        if self._engine() is not None and _gpu.is_device_array(X):
            return X  # the GPU engine checks device arrays where they live
        X = check_matrix(X, "X")
        check_n_features(X, self.n_features_in_)
        return X

    def _engine(self):
        """The fitted state on the GPU when ``_device`` is CUDA (built on first use), else None."""
        if self._device == "cpu":
            return None
        if self._gpu is None or self._gpu_device != self._device:
            grid = self._grid
            self._gpu = _gpu.NonParametricEngine(
                self._train,
                self._scaler.mean,
                self._scaler.scale,
                grid.log_sigma2,
                grid.inv_sigma2,
                self.n_neighbors,
                device=self._device,
                batch_size=self.batch_size,
                faiss_index="ivf" if self.index_kind_ == "ivf" else "flat",
                faiss_params=self._index_params,
            )
            self._gpu_device = self._device
        return self._gpu

    def _host_index(self):
        """The host neighbour index (built on first use when the detector was fitted on the GPU)."""
        if self._index is None:
            self._index = neighbours.build_index(self.index_kind_, self._train, self._index_params)
        return self._index

    def _neighbour_batches(self, X: np.ndarray, standardized: bool = False, leave_one_out: bool = False):
        """Yield (start, stop, standardised batch, candidate ids) over X in ``batch_size`` rows."""
        k_search = self.n_neighbors + (1 if leave_one_out else 0)
        for start in range(0, X.shape[0], self.batch_size):
            stop = min(start + self.batch_size, X.shape[0])
            Q = (
                X[start:stop]
                if standardized or not self.standardize
                else self._scaler.transform(X[start:stop])
            )
            ids = self._host_index().search(Q, k_search)
            if (ids < 0).any():  # an approximate index came back short: search those rows exactly
                ids = self._fill_missing(Q, ids)
            if leave_one_out:
                ids = _drop_self(ids, np.arange(start, stop))
            yield start, stop, Q, ids

    def _fill_missing(self, Q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        import faiss

        rows = np.flatnonzero((ids < 0).any(axis=1))
        _, exact = faiss.knn(np.ascontiguousarray(Q[rows]), self._train, ids.shape[1])
        ids = ids.copy()
        ids[rows] = exact
        return ids

    def _top_k(self, sq: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The n_neighbors smallest exact distances among the candidates, and their ids."""
        order = np.argsort(sq, axis=1, kind="stable")[:, : self.n_neighbors]
        return np.take_along_axis(sq, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def _score_rows(
        self, X, standardized=False, leave_one_out=False, want_mode=True, want_mean=True, want_posterior=False
    ):
        if self._engine() is not None:  # host (NumPy) results, like the CPU path
            engine = self._engine()
            X = engine._as_device_matrix(X) if _gpu.is_device_array(X) else X
            out = engine.score_rows(X, want_mode, want_mean, want_posterior, standardized, leave_one_out)
            return tuple(None if t is None else t.cpu().numpy() for t in out)
        n = X.shape[0]
        mode = np.empty(n, dtype=np.int32) if want_mode else None
        mean = np.empty(n, dtype=np.float64) if want_mean else None
        post = np.empty((n, self.T), dtype=np.float64) if want_posterior else None
        grid = self._grid
        for start, stop, Q, ids in self._neighbour_batches(X, standardized, leave_one_out):
            sq, _ = _core.neighbour_sqdist(Q, self._train, ids, False)
            if ids.shape[1] > self.n_neighbors:
                sq = self._top_k(sq, ids)[0]
            m, mu, p = _core.posterior(
                sq,
                self.n_features_in_,
                grid.log_sigma2,
                grid.inv_sigma2,
                want_mode,
                want_mean,
                want_posterior,
            )
            if want_mode:
                mode[start:stop] = m
            if want_mean:
                mean[start:stop] = mu
            if want_posterior:
                post[start:stop] = p
        return mode, mean, post

    # ---- persistence hooks ------------------------------------------------------------------
    def _get_state(self):
        check_is_fitted(self, "_index")
        meta = {
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "index_kind": self.index_kind_,
            "index_params": self._index_params,
            "threshold": self.threshold_,
        }
        arrays = {
            "train": self._train,
            "scaler_mean": self._scaler.mean,
            "scaler_scale": self._scaler.scale,
            "decision_scores": self.decision_scores_,
        }
        index_bytes = self._index.to_bytes() if self._index is not None else None
        blobs = {"index": index_bytes} if index_bytes is not None else {}
        return meta, arrays, blobs

    @classmethod
    def _from_state(cls, meta, arrays, blobs):
        params = dict(meta["params"])
        if params.get("device") not in (None, "auto", "cpu"):
            params["device"] = "auto"  # a GPU-fitted model loads anywhere; "auto" picks the GPU if present
        self = cls(**params)
        self._check_params()
        self._device = resolve_device(self.device)
        self._train = np.ascontiguousarray(arrays["train"], dtype=np.float32)
        self._scaler = Standardizer(arrays["scaler_mean"], arrays["scaler_scale"])
        self._grid = PosteriorGrid.for_steps(self.T)
        self.n_features_in_ = int(meta["n_features_in"])
        if self._train.ndim != 2 or self._train.shape[1] != self.n_features_in_:
            raise ValueError("saved state is inconsistent: training rows do not match n_features_in")
        self.index_kind_ = meta["index_kind"]
        self._index_params = neighbours.resolve_params(self.index_kind_, meta["index_params"])
        self._gpu = None
        self._index = (
            None
            if self._engine() is not None
            else neighbours.build_index(
                self.index_kind_, self._train, self._index_params, serialized=blobs.get("index")
            )
        )
        self.decision_scores_ = np.asarray(arrays["decision_scores"], dtype=np.float64)
        self.threshold_ = float(meta["threshold"])
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self


def _drop_self(ids: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
    """Remove each row's own id from its candidates (or the farthest one if absent), keeping order."""
    is_self = ids == row_ids[:, None]
    absent = ~is_self.any(axis=1)
    is_self[absent, -1] = True
    return ids[~is_self].reshape(ids.shape[0], ids.shape[1] - 1)
