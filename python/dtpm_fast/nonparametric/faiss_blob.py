"""Bounds check of a saved FAISS index before FAISS reads it.

FAISS's reader takes every array length from the blob and allocates (and zero-fills) that many
elements before it reads them: a forged length of 2.5e9 entries (20 GB) in a 2.7 kB blob made
it take 37 s before failing (studies/fuzz_model_files). :func:`check_lengths` walks the layout
dtpm_fast's two saved kinds have (HNSW-flat ``IHNf`` and IVF-flat ``IwFl``, each over a flat
``IxF2`` storage or quantizer) and refuses a length that claims more bytes than the blob has
left. On a layout it does not recognise it stops checking and leaves the blob to FAISS, which
then fails or reads it as before; it never refuses what it does not understand.
"""

from __future__ import annotations

import struct


class _Unrecognised(Exception):
    """The blob does not follow the layout this module knows; FAISS decides."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise _Unrecognised
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def fourcc(self) -> bytes:
        return self.take(4)

    def vector(self, item_bytes: int, what: str) -> int:
        """Skip a length-prefixed array; ValueError if its length overruns the blob."""
        n = self.u64()
        left = len(self.data) - self.at
        if n * item_bytes > left:
            raise ValueError(
                f"the saved index's {what} claims {n} entries ({n * item_bytes} bytes) but only {left} "
                "bytes follow (a forged or corrupted index)"
            )
        self.at += n * item_bytes
        return n

    def index_header(self) -> None:
        self.take(4 + 8 + 8 + 8 + 1)  # d, ntotal, two dummies, is_trained
        if self.i32() > 1:  # metric type; the others carry an argument
            self.take(4)


def _flat(reader: _Reader, what: str) -> None:
    if reader.fourcc() != b"IxF2":
        raise _Unrecognised
    reader.index_header()
    reader.vector(4, f"{what} vectors")


def _hnsw(reader: _Reader) -> None:
    reader.index_header()
    reader.vector(8, "HNSW level probabilities")
    reader.vector(4, "HNSW neighbour counts per level")
    reader.vector(4, "HNSW levels")
    reader.vector(8, "HNSW offsets")
    reader.vector(4, "HNSW neighbour lists")
    reader.take(5 * 4)  # entry point, max level, efConstruction, efSearch, a dummy
    _flat(reader, "HNSW storage")


def _ivf(reader: _Reader) -> None:
    reader.index_header()
    reader.take(8 + 8)  # nlist, nprobe
    _flat(reader, "IVF quantizer")
    direct_map = reader.u8()  # none, array, hash table
    if direct_map > 2:
        raise _Unrecognised
    reader.vector(8, "IVF direct map")
    if direct_map == 2:
        reader.vector(16, "IVF direct map hash table")
    if reader.fourcc() != b"ilar":
        raise _Unrecognised
    nlist, code_size = reader.u64(), reader.u64()
    if reader.fourcc() != b"full":
        raise _Unrecognised
    n_sizes = reader.vector(8, "IVF list sizes")
    if n_sizes != nlist:  # FAISS allocates nlist lists before it reads their sizes
        raise ValueError(
            f"the saved index's inverted lists claim {nlist} lists but hold {n_sizes} sizes "
            "(a forged or corrupted index)"
        )
    reader.at -= 8 * nlist
    sizes = struct.unpack(f"<{nlist}Q", reader.take(8 * nlist))
    left = len(reader.data) - reader.at
    if sum(sizes) * (code_size + 8) > left:
        raise ValueError(
            f"the saved index's inverted lists claim {sum(sizes)} entries but only {left} bytes follow "
            "(a forged or corrupted index)"
        )


def check_lengths(data: bytes) -> None:
    """ValueError if an array length in a saved HNSW or IVF index overruns the blob."""
    reader = _Reader(bytes(data))
    try:
        kind = reader.fourcc()
        if kind == b"IHNf":
            _hnsw(reader)
        elif kind == b"IwFl":
            _ivf(reader)
    except _Unrecognised:
        return
