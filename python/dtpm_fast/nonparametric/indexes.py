"""Candidate neighbour search over standardised float32 training rows.

Every index answers ``search(Q, k) -> ids``; the detector then recomputes exact squared
distances for those ids with the native kernel, so approximate indexes only choose
candidates and never bias the distances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from dtpm_fast.nonparametric import faiss_blob

INDEX_PARAMS_HINT = "pass a dict such as {'M': 16} (index_params=None takes the defaults)"

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


#: Bounds of the integer index parameters. FAISS takes C ints; beyond these bounds it crashes
#: (HNSW with M = 1 divides by log(M) = 0 and segfaults in search), allocates without limit
#: (M = 2**31 - 1) or runs for hours (ef_construction = 2**31 - 1) instead of failing.
_INT_BOUNDS = {
    "M": (2, 512),
    "ef_construction": (1, 1 << 16),
    "ef_search": (1, 1 << 16),
    "nprobe": (1, 1 << 20),
    "candidates": (1, 1 << 10),
    "leafsize": (1, 1 << 20),
    "nlist": (1, 1 << 24),
}

#: float32's largest value: FAISS computes squared distances in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def resolve_params(kind: str, params, n_train: int | None = None) -> dict:
    """Defaults of ``kind`` updated with the user's ``index_params``, every value checked.

    ValueError (naming ``index_params`` and the fix) for a non-dict, a key that is not a
    parameter of ``kind``, a value that is not an int within its bound, and an IVF ``nlist``
    above ``n_train`` (k-means cannot make more lists than rows).
    """
    merged = dict(_DEFAULTS[kind])
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(
            f"index_params must be a dict or None, got {type(params).__name__} {params!r}; {INDEX_PARAMS_HINT}"
        )
    for key, value in params.items():
        if not isinstance(key, str) or key not in merged:
            raise ValueError(
                f"index_params: {key!r} is not a parameter of the {kind!r} index; "
                f"valid: {sorted(merged) or 'none'}"
            )
        merged[key] = value
    for key, (low, high) in _INT_BOUNDS.items():
        value = merged.get(key)
        if key not in merged or (key == "nlist" and value is None):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise ValueError(
                f"index_params[{key!r}] must be an int in [{low}, {high}] for the {kind!r} index, got {value!r}"
            )
        merged[key] = int(value)
    if n_train is not None and merged.get("nlist") is not None and merged["nlist"] > n_train:
        raise ValueError(
            f"index_params['nlist']={merged['nlist']} is larger than the {n_train} training rows; "
            f"IVF needs at most one list per row: pass nlist <= {n_train} (or leave it out for the default)"
        )
    return merged


def _faiss_call(what: str, call, *args, **kwargs):
    """``call(*args)``, a FAISS failure (C++ exception) reported as ValueError with our message."""
    try:
        return call(*args, **kwargs)
    except (RuntimeError, MemoryError, TypeError, OverflowError) as exc:
        raise ValueError(f"FAISS could not {what}: {exc}") from None


def check_faiss_range(X: np.ndarray) -> float:
    """Refuse rows FAISS cannot index; returns the largest row norm (float64).

    FAISS computes float32 squared distances and does not centre the data; once a distance
    between two training rows overflows, k-means assigns a row to no list and FAISS throws
    inside an OpenMP region, which aborts the process (std::terminate), and HNSW links
    arbitrary rows. Every pairwise distance is at most (2 max ||x||)^2, so that must be finite.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)) if X.size else np.zeros(1)
    largest = float(norms.max())
    if not (2.0 * largest) ** 2 <= FLOAT32_MAX:
        row = int(np.argmax(norms))
        raise ValueError(
            f"X: training row {row} has norm {largest:.3g}; FAISS indexes compute squared distances in float32, "
            f"which overflow beyond norm {math.sqrt(FLOAT32_MAX) / 2:.3g}. Use standardize=True, rescale X, "
            "or an index that does not use FAISS (index='brute' or 'kdtree')"
        )
    return largest


class FlatIndex:
    """Exact search: FAISS ``IndexFlatL2`` (BLAS for large batches)."""

    exact = True

    def __init__(self, X: np.ndarray, params: dict):
        import faiss

        self._max_norm = check_faiss_range(X)
        self._index = faiss.IndexFlatL2(X.shape[1])
        _faiss_call("build the flat index", self._index.add, X)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        return _search_in_range(Q, k, self._max_norm, lambda rows, kk: self._index.search(rows, kk)[1])

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

        self._max_norm = float(np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).max())
        try:
            self._tree = cKDTree(X, leafsize=params["leafsize"], balanced_tree=False, compact_nodes=False)
        except (RuntimeError, MemoryError, OverflowError) as exc:
            raise ValueError(f"scipy's cKDTree could not index the training rows: {exc}") from None

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        # Rows whose float32 distances may overflow come back as -1 for the brute force, as
        # from the FAISS indexes: every index then picks the same neighbours for them.
        return _search_in_range(Q, k, self._max_norm, self._query)

    def _query(self, Q: np.ndarray, k: int) -> np.ndarray:
        try:
            _, ids = self._tree.query(Q, k=[*range(1, k + 1)], workers=-1)
        except (RuntimeError, MemoryError, OverflowError) as exc:
            raise RuntimeError(f"scipy's cKDTree search failed: {exc}") from None
        return ids.astype(np.int64, copy=False)

    def to_bytes(self) -> bytes | None:
        return None


class _ApproximateFaissIndex:
    """A FAISS index that proposes ``candidates * k`` ids per query, later re-ranked exactly."""

    exact = False

    def __init__(self, X: np.ndarray, params: dict, serialized: bytes | None = None):
        self._params = params
        self._max_norm = check_faiss_range(X)
        if serialized is None:
            self._index = _faiss_call(f"build the {self.kind} index", self._build, X, params)
        else:
            self._index = _faiss_from_bytes(serialized)
            self._check_restored(X)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        n_candidates = min(k * self._params["candidates"], self._index.ntotal)
        search_params = self._search_params(n_candidates)

        def faiss_search(rows, _k):
            found = _faiss_call(
                f"search the {self.kind} index", self._index.search, rows, n_candidates, params=search_params
            )
            return found[1]

        return _search_in_range(Q, n_candidates, self._max_norm, faiss_search)

    def _check_restored(self, X: np.ndarray) -> None:
        """A saved index must be this kind, over exactly the saved training rows (same bytes)."""
        import faiss

        index = self._index
        n, d = X.shape
        if not isinstance(index, self._faiss_class()) or index.metric_type != faiss.METRIC_L2:
            raise ValueError(
                f"the saved index is a {type(index).__name__}, not the {self.kind} index the model names"
            )
        if index.d != d or index.ntotal != n:
            raise ValueError(
                f"the saved {self.kind} index holds {index.ntotal} rows of {index.d} features but the "
                f"training matrix is {n} x {d}"
            )
        self._check_structure(index, X)

    def to_bytes(self) -> bytes | None:
        return _faiss_to_bytes(self._index)


class HNSWIndex(_ApproximateFaissIndex):
    """Approximate search: FAISS ``IndexHNSWFlat``."""

    kind = "hnsw"

    @staticmethod
    def _faiss_class():
        import faiss

        return faiss.IndexHNSWFlat

    @staticmethod
    def _check_structure(index, X: np.ndarray) -> None:
        # FAISS's HNSW search follows the saved links without bounds checks: a link, offset or
        # level outside the graph reads outside its arrays (a segfault), so all are checked.
        import faiss

        n = X.shape[0]
        stored = faiss.downcast_index(index.storage)
        codes = faiss.vector_to_array(stored.codes) if isinstance(stored, faiss.IndexFlat) else None
        if codes is None or codes.tobytes() != np.ascontiguousarray(X, dtype=np.float32).tobytes():
            raise ValueError("the saved hnsw index does not store the saved training rows")
        hnsw = index.hnsw
        levels = faiss.vector_to_array(hnsw.levels).astype(np.int64)
        offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
        cumulative = faiss.vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
        neighbors = faiss.vector_to_array(hnsw.neighbors).astype(np.int64)
        max_level = int(hnsw.max_level)
        ok = (
            levels.shape == (n,)
            and offsets.shape == (n + 1,)
            and 0 <= max_level < cumulative.size - 1
            and (levels >= 1).all()
            and (levels <= max_level + 1).all()
            and offsets[0] == 0
            and offsets[-1] == neighbors.size
            and (np.diff(cumulative) >= 0).all()
            and cumulative[0] == 0
            and (np.diff(offsets) == cumulative[levels]).all()
            and ((neighbors >= -1) & (neighbors < n)).all()
            and 0 <= hnsw.entry_point < n
            and levels[hnsw.entry_point] == max_level + 1
        )
        if not ok:
            raise ValueError("the saved hnsw index has an inconsistent graph (links, offsets or levels)")

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

    kind = "ivf"

    @staticmethod
    def _faiss_class():
        import faiss

        return faiss.IndexIVFFlat

    def _check_structure(self, index, X: np.ndarray) -> None:
        # Every training row in exactly one list, its stored vector the saved row; a coarse
        # quantizer of nlist finite centroids of the right dimension.
        import faiss

        n, d = X.shape
        quantizer = faiss.downcast_index(index.quantizer)
        nlist = int(index.nlist)
        expected_nlist = self._params.get("nlist")
        if (
            not isinstance(quantizer, faiss.IndexFlat)
            or quantizer.d != d
            or quantizer.ntotal != nlist
            or not 1 <= nlist <= n
            or (expected_nlist is not None and nlist != expected_nlist)
            or index.code_size != 4 * d
            or index.invlists is None
            or index.invlists.nlist != nlist
            or not np.isfinite(faiss.vector_to_array(quantizer.codes).view(np.float32)).all()
        ):
            raise ValueError("the saved ivf index has an inconsistent coarse quantizer or list layout")
        seen = np.zeros(n, dtype=np.int64)
        rows = np.ascontiguousarray(X, dtype=np.float32)
        lists = index.invlists
        for i in range(nlist):
            size = int(lists.list_size(i))
            if size == 0:
                continue
            if size > n:
                raise ValueError("the saved ivf index has an inverted list longer than the training rows")
            ids = faiss.rev_swig_ptr(lists.get_ids(i), size).astype(np.int64)
            codes = faiss.rev_swig_ptr(lists.get_codes(i), size * index.code_size).view(np.float32)
            if ((ids < 0) | (ids >= n)).any():
                raise ValueError("the saved ivf index has a row id outside the training rows")
            np.add.at(seen, ids, 1)
            if codes.tobytes() != rows[ids].tobytes():
                raise ValueError("the saved ivf index does not store the saved training rows")
        if (seen != 1).any():
            raise ValueError("the saved ivf index does not hold every training row exactly once")

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

    blob = np.frombuffer(data, dtype=np.uint8)
    if blob.size < 4 or bytes(blob[:4]) not in (b"IHNf", b"IwFl"):
        raise ValueError("the saved index is not a FAISS HNSW or IVF index (unknown header)")
    faiss_blob.check_lengths(data)  # before FAISS allocates what the lengths claim
    return _faiss_call("read the saved index (truncated or corrupted)", faiss.deserialize_index, blob)


def _search_in_range(Q: np.ndarray, k: int, max_norm: float, search) -> np.ndarray:
    """``search(rows, k)`` for the rows whose float32 distances to every training row are finite.

    The others (||q|| + max ||x|| beyond sqrt(float32 max)) come back as -1, which the host
    backend fills with the native brute force, which ranks them exactly; FAISS would return
    -1 for some of them and an arbitrary order of infinite (or NaN) distances for others.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", Q, Q, dtype=np.float64))
    in_range = (norms + max_norm) ** 2 <= FLOAT32_MAX
    if in_range.all():
        return search(Q, k)
    ids = np.full((Q.shape[0], k), -1, dtype=np.int64)
    if in_range.any():
        ids[in_range] = search(np.ascontiguousarray(Q[in_range]), k)
    return ids


_CLASSES = {"flat": FlatIndex, "brute": BruteIndex, "kdtree": KDTreeIndex, "hnsw": HNSWIndex, "ivf": IVFIndex}


def build_index(kind: str, X: np.ndarray, params: dict, serialized: bytes | None = None):
    """Build (or restore from ``serialized`` bytes) the index of concrete ``kind`` over X."""
    cls = _CLASSES[kind]
    if serialized is not None:
        return cls(X, params, serialized=serialized)
    return cls(X, params)
