"""Candidate neighbour search over standardised float32 training rows.

Every index answers ``search(Q, k) -> ids``; the detector then recomputes exact squared
distances for those ids with the native kernel, so approximate indexes only choose
candidates and never bias the distances.
"""

from __future__ import annotations

import math

import numpy as np

from dtpm_fast._validation import check_int

INDEX_KINDS = ("auto", "flat", "brute", "kdtree", "hnsw", "ivf")

# "auto": exact search always. A KD-tree's query cost grows like log(n_train) against the brute
# force's n_train, so it wins only at very low dimension and from enough training rows: measured
# (studies/index_choice/index_choice.md, build + 10k queries) it is 1.4-2.8x faster at d = 3 from 10k
# rows and about even at 1k, loses 1.9x at d = 5 with 10k rows but wins 1.2x at 100k, and loses
# from d = 7 at every size up to 100k. Below these row counts (and above d = 5) the native brute
# force (3-30x faster than FAISS flat at every size measured).
AUTO_KDTREE_MIN_ROWS = {1: 4_000, 2: 4_000, 3: 4_000, 4: 15_000, 5: 50_000}

_DEFAULTS = {
    "flat": {},
    "brute": {},
    "kdtree": {"leafsize": 16},
    "hnsw": {"M": 32, "ef_construction": 40, "ef_search": 16, "candidates": 2},
    "ivf": {"nlist": None, "nprobe": 8, "candidates": 2},
}


def resolve_kind(kind: str, n_train: int, n_features: int) -> str:
    """The concrete index kind for ``kind`` ("auto" picks an exact index by dimension and size)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index must be one of {INDEX_KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    min_rows = AUTO_KDTREE_MIN_ROWS.get(n_features)
    return "kdtree" if min_rows is not None and n_train >= min_rows else "brute"


def resolve_params(kind: str, params: dict | None) -> dict:
    """Defaults of ``kind`` updated with the user's ``index_params``; unknown keys are errors."""
    merged = dict(_DEFAULTS[kind])
    for key, value in (params or {}).items():
        if key not in merged:
            raise ValueError(
                f"index_params: {key!r} is not a parameter of the {kind!r} index; "
                f"valid: {sorted(merged) or 'none'}"
            )
        merged[key] = value
    for key in ("M", "ef_construction", "ef_search", "nprobe", "candidates", "leafsize"):
        if key in merged:
            check_int(merged[key], f"index_params[{key!r}]", 1)
    if merged.get("nlist") is not None:
        check_int(merged["nlist"], "index_params['nlist']", 1)
    return merged


class FlatIndex:
    """Exact search: FAISS ``IndexFlatL2`` (BLAS for large batches)."""

    exact = True

    def __init__(self, X: np.ndarray, params: dict):
        import faiss

        self._index = faiss.IndexFlatL2(X.shape[1])
        self._index.add(X)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        _, ids = self._index.search(Q, k)
        return ids

    def to_bytes(self) -> bytes | None:
        return None  # rebuilt from the training rows, which are saved anyway


class BruteIndex:
    """Exact search: dtpm_fast's native brute force (``_core.BruteForceIndex``).

    Distances are accumulated in registers for a tile of queries against a group of training
    rows and only candidates that beat a query's current K-th best enter its top-K list, so no
    query x train distance matrix is written (unlike a BLAS-based flat search). Ties go to the
    smaller training row id.
    """

    exact = True

    def __init__(self, X: np.ndarray, params: dict):
        from dtpm_fast import _core

        self._index = _core.BruteForceIndex(np.ascontiguousarray(X, dtype=np.float32))

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        _, ids = self._index.search(np.ascontiguousarray(Q, dtype=np.float32), k)
        return ids

    def to_bytes(self) -> bytes | None:
        return None  # rebuilt from the training rows (packing them is one pass over the data)


class KDTreeIndex:
    """Exact search: SciPy's ``cKDTree`` (fastest at low dimension)."""

    exact = True

    def __init__(self, X: np.ndarray, params: dict):
        from scipy.spatial import cKDTree

        self._tree = cKDTree(X, leafsize=params["leafsize"], balanced_tree=False, compact_nodes=False)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        _, ids = self._tree.query(Q, k=[*range(1, k + 1)], workers=-1)
        return ids.astype(np.int64, copy=False)

    def to_bytes(self) -> bytes | None:
        return None


class _ApproximateFaissIndex:
    """A FAISS index that proposes ``candidates * k`` ids per query, later re-ranked exactly."""

    exact = False

    def __init__(self, X: np.ndarray, params: dict, serialized: bytes | None = None):
        self._params = params
        self._index = _faiss_from_bytes(serialized) if serialized is not None else self._build(X, params)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        n_candidates = min(k * self._params["candidates"], self._index.ntotal)
        _, ids = self._index.search(Q, n_candidates, params=self._search_params(n_candidates))
        return ids

    def to_bytes(self) -> bytes | None:
        return _faiss_to_bytes(self._index)


class HNSWIndex(_ApproximateFaissIndex):
    """Approximate search: FAISS ``IndexHNSWFlat``."""

    def _build(self, X: np.ndarray, params: dict):
        import faiss

        index = faiss.IndexHNSWFlat(X.shape[1], params["M"])
        index.hnsw.efConstruction = params["ef_construction"]
        index.add(X)
        return index

    def _search_params(self, n_candidates: int):
        import faiss

        return faiss.SearchParametersHNSW(efSearch=max(self._params["ef_search"], n_candidates))


class IVFIndex(_ApproximateFaissIndex):
    """Approximate search: FAISS ``IndexIVFFlat``."""

    def _build(self, X: np.ndarray, params: dict):
        import faiss

        n, d = X.shape
        # ~4 sqrt(n) lists, with at least 39 training points per centroid as FAISS asks.
        nlist = params["nlist"] or max(1, min(int(4 * math.sqrt(n)), n // 39))
        self._quantizer = faiss.IndexFlatL2(d)  # the IVF index does not own it: keep it alive
        index = faiss.IndexIVFFlat(self._quantizer, d, nlist)
        sample = X if n <= 256 * nlist else X[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
        index.train(np.ascontiguousarray(sample))
        index.add(X)
        return index

    def _search_params(self, n_candidates: int):
        import faiss

        return faiss.SearchParametersIVF(nprobe=self._params["nprobe"])


def _faiss_to_bytes(index) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def _faiss_from_bytes(data: bytes):
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


_CLASSES = {"flat": FlatIndex, "brute": BruteIndex, "kdtree": KDTreeIndex, "hnsw": HNSWIndex, "ivf": IVFIndex}


def build_index(kind: str, X: np.ndarray, params: dict, serialized: bytes | None = None):
    """Build (or restore from ``serialized`` bytes) the index of concrete ``kind`` over X."""
    cls = _CLASSES[kind]
    if serialized is not None:
        return cls(X, params, serialized=serialized)
    return cls(X, params)
