"""The CPU backend of ``DTPMNonParametric``: a host neighbour index and the ``_core`` kernels."""

from __future__ import annotations

import numpy as np

from dtpm_fast import _core
from dtpm_fast.nonparametric import indexes


class HostBackend:
    """Scores NumPy rows on the CPU from the fitted state of a ``DTPMNonParametric``.

    Parameters
    ----------
    state : FittedState
        Standardised training rows, standardiser, posterior grid, index kind and parameters.
    n_neighbors, batch_size : int
        K, and the query rows searched and scored at a time (``batch_size`` may be changed later).
    serialized_index : bytes, optional
        A saved approximate index to restore instead of building one.
    ladder : tuple of int, optional
        Multi-scale scoring (``DTPMMultiScale``): the posterior mean is averaged over these K,
        ascending, the last one being ``n_neighbors``; only means are computed then.
    """

    device_name = "cpu"

    def __init__(
        self,
        state,
        n_neighbors: int,
        batch_size: int,
        serialized_index: bytes | None = None,
        ladder: tuple[int, ...] | None = None,
    ):
        self._state = state
        self._ladder = ladder
        self._n_neighbors = n_neighbors
        self.batch_size = batch_size
        self._serialized_index = serialized_index
        self._index = None
        self._exact = None  # the native brute force, built when an approximate index comes back short

    def index(self):
        """The host neighbour index (built on first use)."""
        if self._index is None:
            state = self._state
            self._index = indexes.build_index(
                state.index_kind, state.train, state.index_params, serialized=self._serialized_index
            )
        return self._index

    def index_bytes(self) -> bytes | None:
        """The index serialised for a model file, or None when it is rebuilt from the training rows."""
        return self.index().to_bytes()

    # ---- scoring -----------------------------------------------------------------------------
    def train_scores(self) -> tuple[np.ndarray | None, np.ndarray]:
        """Leave-one-out (mode int32, mean float64) of the training rows (multi-scale: no mode)."""
        mode, mean, _ = self.score_rows(
            self._state.train, standardized=True, leave_one_out=True, want_mode=self._ladder is None
        )
        return mode, mean

    def score_rows(
        self, X, standardized=False, leave_one_out=False, want_mode=True, want_mean=True, want_posterior=False
    ):
        """(mode int32 (n,), mean float64 (n,), posterior float64 (n, T)), each None unless wanted."""
        if self._ladder is not None and (want_mode or want_posterior):
            raise ValueError("a multi-scale backend computes posterior means only")
        n = X.shape[0]
        grid = self._state.grid
        mode = np.empty(n, dtype=np.int32) if want_mode else None
        mean = np.empty(n, dtype=np.float64) if want_mean else None
        post = np.empty((n, grid.T), dtype=np.float64) if want_posterior else None
        for start, stop, Q, ids in self._neighbour_batches(X, standardized, leave_one_out):
            sq, _ = _core.neighbour_sqdist(Q, self._state.train, ids, False)
            if ids.shape[1] > self._n_neighbors:
                sq = self._top_k(sq, ids)[0]
            if self._ladder is not None:
                mean[start:stop] = self._ladder_times(sq).mean(axis=1)
                continue
            m, mu, p = _core.posterior(
                sq,
                self._state.n_features,
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

    def _ladder_times(self, sq: np.ndarray) -> np.ndarray:
        """Posterior mean times for each K of the ladder, shape (n, len(ladder)), from (n, K_max) distances."""
        sq = np.sort(sq, axis=1)  # exact distances, ascending: the first K are the K nearest
        grid = self._state.grid
        times = np.empty((sq.shape[0], len(self._ladder)), dtype=np.float64)
        for j, k in enumerate(self._ladder):
            _, times[:, j], _ = _core.posterior(
                np.ascontiguousarray(sq[:, :k]),
                self._state.n_features,
                grid.log_sigma2,
                grid.inv_sigma2,
                False,
                True,
                False,
            )
        return times

    def view_scores(self, X) -> np.ndarray:
        """Multi-scale: the per-K posterior mean times, shape (n, len(ladder))."""
        out = np.empty((X.shape[0], len(self._ladder)), dtype=np.float64)
        for start, stop, Q, ids in self._neighbour_batches(X):
            sq, _ = _core.neighbour_sqdist(Q, self._state.train, ids, False)
            out[start:stop] = self._ladder_times(sq)
        return out

    def decision_function(self, X, score: str) -> np.ndarray:
        mode, mean, _ = self.score_rows(X, want_mode=score == "mode", want_mean=score == "mean")
        return mean if score == "mean" else mode.astype(np.float64)

    def posterior(self, X) -> np.ndarray:
        return self.score_rows(X, want_mode=False, want_mean=False, want_posterior=True)[2]

    def explain(self, X) -> np.ndarray:
        out = np.empty(X.shape, dtype=np.float32)
        for start, stop, Q, ids in self._neighbour_batches(X):
            sq, contrib = _core.neighbour_sqdist(Q, self._state.train, ids, True)
            if ids.shape[1] > self._n_neighbors:  # re-rank approximate candidates, then explain the top K
                ids = self._top_k(sq, ids)[1]
                _, contrib = _core.neighbour_sqdist(Q, self._state.train, ids, True)
            out[start:stop] = contrib
        return out

    # ---- search ------------------------------------------------------------------------------
    def _neighbour_batches(self, X: np.ndarray, standardized: bool = False, leave_one_out: bool = False):
        """Yield (start, stop, standardised batch, candidate ids) over X in ``batch_size`` rows."""
        k_search = self._n_neighbors + (1 if leave_one_out else 0)
        scaler = self._state.scaler
        for start in range(0, X.shape[0], self.batch_size):
            stop = min(start + self.batch_size, X.shape[0])
            Q = X[start:stop] if standardized else scaler.transform(X[start:stop])
            ids = self.index().search(Q, k_search)
            if (ids < 0).any():  # an index came back short: search those rows exactly
                ids = self._fill_missing(Q, ids, k_search)
            if leave_one_out:
                ids = _drop_self(ids, np.arange(start, stop))
            yield start, stop, Q, ids

    def _fill_missing(self, Q: np.ndarray, ids: np.ndarray, k_search: int) -> np.ndarray:
        # Every index returns -1 for a row whose float32 distances may overflow (and an
        # approximate one may come back short); the native brute force ranks such rows, so
        # they get exactly its k_search neighbours whatever the index. The extra candidate
        # columns of an approximate index repeat the last one: re-ranking keeps the brute
        # force's choice and order (a stable sort, equal distances).
        rows = np.flatnonzero((ids < 0).any(axis=1))
        if self._exact is None:
            self._exact = indexes.BruteIndex(self._state.train, {})
        exact = self._exact.search(np.ascontiguousarray(Q[rows]), k_search)
        ids = ids.copy()
        ids[rows, :k_search] = exact
        ids[rows, k_search:] = exact[:, -1:]
        return ids

    def _top_k(self, sq: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The n_neighbors smallest exact distances among the candidates, and their ids."""
        order = np.argsort(sq, axis=1, kind="stable")[:, : self._n_neighbors]
        return np.take_along_axis(sq, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _drop_self(ids: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
    """Remove each row's own id from its candidates (or the farthest one if absent), keeping order."""
    is_self = ids == row_ids[:, None]
    absent = ~is_self.any(axis=1)
    is_self[absent, -1] = True
    return ids[~is_self].reshape(ids.shape[0], ids.shape[1] - 1)
