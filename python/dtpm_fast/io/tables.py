"""Batch-by-batch reading and writing of tables too large for memory.

Readers turn a Parquet, CSV or ``.npy`` file into a sequence of :class:`FeatureBatch`
objects: float32 feature matrices of at most ``batch_rows`` rows, with the input row
number of every row, and optionally an id column carried through untouched. Memory is
bounded by the batch size, never by the file size:

* Parquet is read with :meth:`pyarrow.parquet.ParquetFile.iter_batches` over a buffered
  stream (so even a single huge row group is not loaded at once);
* CSV is read with :func:`pyarrow.csv.open_csv` (a streaming reader) with the feature
  columns parsed as text and converted per batch, so one bad value does not abort the
  whole read and can be reported with its row number;
* ``.npy`` files are memory-mapped and sliced.

Bad rows -- a missing, NaN or infinite value, a finite value too large for float32, a
non-numeric value (including text that is not valid UTF-8), a CSV line with the wrong
number of fields -- are never scored silently: with ``on_bad_row="error"`` the reader
raises :class:`BadRowError` naming the row, with ``on_bad_row="skip"`` the row is dropped
and counted in :class:`BadRowReport`. Messages number rows from 1, counting data rows only
(the header line and blank lines are not rows); :attr:`FeatureBatch.rows` and
:attr:`BadRowError.row` are the same numbers minus one.

Every input is opened once and read front to back. A CSV file may therefore be a pipe
(FIFO) or another stream; Parquet and ``.npy`` need a regular (seekable) file and refuse
anything else before opening it. A directory, an unreadable or empty file, or a file that
is not what its suffix says raises ValueError naming the file.

Writers (:class:`TableWriter`) append batches to Parquet or CSV; :func:`dtpm_fast.io.atomic.atomic_output`
makes the result appear under its final name only once it is complete.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import stat
import threading
import traceback
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

try:  # optional: `pip install "dtpm-fast[io]"`; file_format works without it
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - exercised only without pyarrow
    pa = pc = pa_csv = pq = None

if TYPE_CHECKING:  # typing only: typing.Self is Python >= 3.11, the package supports 3.10
    from typing_extensions import Self

__all__ = [
    "BadRowError",
    "BadRowReport",
    "FeatureBatch",
    "TableWriter",
    "file_format",
    "open_reader",
    "prefetch",
]

ON_BAD_ROW_CHOICES = ("error", "skip")
_FORMATS_BY_SUFFIX = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".npy": "npy",
}
_COPY_BLOCK_ROWS = 4096
# Largest batch_rows accepted (row counts reach native code as C ints).
MAX_BATCH_ROWS = 2**31 - 1
_F32_MAX = float(np.finfo(np.float32).max)
# The header of a CSV input is read in chunks of this size, up to this length.
_HEADER_CHUNK = 1 << 16
_MAX_HEADER_BYTES = 1 << 24
# CSV text is parsed in blocks of whole lines of about this many bytes; one line may not
# be longer than _MAX_LINE_BYTES.
_CSV_BLOCK = 1 << 22
_MAX_LINE_BYTES = 1 << 28
# How many skipped rows are described individually; the rest are only counted.
_MAX_EXAMPLES = 5


class BadRowError(ValueError):
    """A row cannot be scored (non-numeric, missing/NaN/inf/too large value, wrong field count).

    ``row`` is the 0-based data-row number (header and blank lines not counted); messages
    give the same row 1-based.
    """

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


def _bad_row_error(description: str, row: int) -> BadRowError:
    return BadRowError(f"{description}; fix the input or pass on_bad_row='skip' to skip bad rows", row)


@dataclass
class BadRowReport:
    """Rows dropped by a reader opened with ``on_bad_row="skip"``.

    Attributes
    ----------
    count : int
        Number of rows skipped so far.
    examples : list of str
        Descriptions of the first few skipped rows (row number and reason).
    """

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, description: str, n: int = 1) -> None:
        self.count += n
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(description)

    def summary(self) -> str:
        if self.count == 0:
            return "no rows skipped"
        shown = "; ".join(self.examples)
        more = "" if self.count <= len(self.examples) else f"; and {self.count - len(self.examples)} more"
        return f"skipped {self.count} bad row(s): {shown}{more}"


@dataclass
class FeatureBatch:
    """One batch of rows ready for scoring.

    Attributes
    ----------
    features : ndarray of float32, shape (m, d)
        C-contiguous, every value finite.
    rows : ndarray of int64, shape (m,)
        0-based row number of each row in the input (header not counted); increasing.
    ids : pyarrow.Array or None
        The id column for these rows, when one was requested.
    """

    features: np.ndarray
    rows: np.ndarray
    ids: pa.Array | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


def file_format(path: str | os.PathLike, role: str = "input") -> str:
    """Return ``"parquet"``, ``"csv"`` or ``"npy"`` from the file name's suffix.

    Raises
    ------
    ValueError
        If the suffix is not one of ``.parquet``, ``.pq``, ``.csv``, ``.csv.gz``, ``.npy``.
    """
    name = os.fspath(path).lower()
    for suffix, fmt in sorted(_FORMATS_BY_SUFFIX.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    known = ", ".join(_FORMATS_BY_SUFFIX)
    raise ValueError(
        f"cannot tell the format of {role} file {os.fspath(path)!r} from its name; use one of {known}"
    )


def open_reader(
    path: str | os.PathLike,
    *,
    columns: Sequence[str] | None = None,
    id_column: str | None = None,
    batch_rows: int = 65536,
    on_bad_row: str = "error",
) -> BatchReader:
    """Open a Parquet, CSV or ``.npy`` file for batch-by-batch reading of features.

    Parameters
    ----------
    path : str or path-like
        Input file; the format is taken from the suffix (see :func:`file_format`). A CSV
        input may be a pipe (it is read once, front to back); Parquet and ``.npy`` inputs
        must be regular files.
    columns : sequence of str, optional
        Feature columns in model order. For Parquet, default: every numeric column
        except ``id_column``; for CSV: every column except ``id_column``. For ``.npy``,
        column indices given as strings (``"0"``, ``"3"``), default all columns.
    id_column : str, optional
        Column copied to the output next to each score (not for ``.npy``).
    batch_rows : int, default 65536
        Maximum rows per batch; bounds memory.
    on_bad_row : {"error", "skip"}
        Stop with :class:`BadRowError` at the first bad row, or skip and count bad rows.

    Returns
    -------
    BatchReader
        Iterable of :class:`FeatureBatch`; ``reader.bad_rows`` counts skipped rows. It holds
        the open file until it has been read to the end or closed (``with`` or ``close()``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For anything else that makes the file unreadable: a directory, a special file where a
        regular one is needed, no read permission, an empty or malformed file, a CSV file
        whose first line holds numbers instead of column names, unknown columns.
    """
    require_pyarrow()
    if on_bad_row not in ON_BAD_ROW_CHOICES:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW_CHOICES}, got {on_bad_row!r}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, (int, np.integer)):
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    if not 1 <= int(batch_rows) <= MAX_BATCH_ROWS:
        raise ValueError(f"batch_rows must be an integer in [1, {MAX_BATCH_ROWS}], got {batch_rows!r}")
    fmt = file_format(path)
    path = os.fspath(path)
    source = _open_input(path, fmt)
    reader_class = {"parquet": ParquetBatchReader, "csv": CsvBatchReader, "npy": NpyBatchReader}[fmt]
    try:
        return reader_class(
            path,
            source,
            columns=None if columns is None else [str(c) for c in columns],
            id_column=id_column,
            batch_rows=int(batch_rows),
            on_bad_row=on_bad_row,
        )
    except BaseException:
        source.close()
        raise


def require_pyarrow() -> None:
    if pa is None:
        raise ImportError('reading and writing Parquet/CSV needs pyarrow: pip install "dtpm-fast[io]"')


_FORMAT_NAMES = {"parquet": "Parquet", "csv": "CSV", "npy": ".npy"}


def _kind_of_file(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@dataclass
class _Source:
    """An input opened once: the raw (unbuffered) file and whether it can seek."""

    file: io.FileIO
    regular: bool
    size: int | None

    def close(self) -> None:
        self.file.close()


def _open_input(path: str, fmt: str) -> _Source:
    """Open ``path`` for reading exactly once, refusing what the format cannot read.

    Parquet and ``.npy`` need to seek: anything but a regular file is refused *before* it is
    opened (opening a FIFO without a writer would block). CSV is read as a stream, so a
    FIFO or a character device is accepted.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"input file {path!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot open input file {path!r}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"input {path!r} is a directory; give the path of a {_FORMAT_NAMES[fmt]} file")
    streamable = stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode)
    if not stat.S_ISREG(info.st_mode) and not (fmt == "csv" and streamable):
        need = (
            "CSV input must be a regular file, a pipe or a character device"
            if fmt == "csv"
            else f"{_FORMAT_NAMES[fmt]} input is read with seeks and needs a regular file; "
            "write the data to a file first"
        )
        raise ValueError(f"input {path!r} is {_kind_of_file(info.st_mode)}: {need}")
    try:
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - owned by the reader, closed after reading
    except PermissionError:
        raise ValueError(f"input file {path!r} cannot be read: permission denied") from None
    except OSError as exc:
        raise ValueError(f"cannot open input file {path!r}: {exc.strerror or exc}") from None
    info = os.fstat(handle.fileno())  # the file actually opened (the name may have moved meanwhile)
    regular = stat.S_ISREG(info.st_mode)
    if regular and info.st_size == 0:
        handle.close()
        raise ValueError(f"input file {path!r} is empty")
    if not regular and fmt != "csv":  # replaced by a special file between stat and open
        handle.close()
        raise ValueError(f"input {path!r} is {_kind_of_file(info.st_mode)}, not a regular file")
    return _Source(handle, regular, info.st_size if regular else None)


class BatchReader:
    """Base of the format readers: shared bad-row filtering and progress accounting.

    A reader owns the input opened by :func:`open_reader` and closes it when it has been
    read to the end, on an error, or on :meth:`close` (also ``with reader: ...``).
    """

    def __init__(self, path, source, *, columns, id_column, batch_rows, on_bad_row):
        self.path = path
        self._source = source
        self.id_column = id_column
        self.batch_rows = batch_rows
        self.on_bad_row = on_bad_row
        self.bad_rows = BadRowReport()
        self.feature_columns: list[str] = []
        self.id_type: pa.DataType | None = None  # Arrow type of the id column, when there is one
        # Progress in rows (Parquet, npy) or in bytes of the input (CSV).
        self.progress_unit = "rows"
        self.progress_total: int | None = None
        self.progress_done = 0

    @property
    def n_features(self) -> int:
        return len(self.feature_columns)

    def close(self) -> None:
        """Close the input file (reading afterwards raises ValueError)."""
        source = self.__dict__.get("_source")
        if source is not None:
            source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __iter__(self) -> Iterator[FeatureBatch]:
        raise NotImplementedError

    def _filter_bad_rows(
        self,
        values: np.ndarray,
        rows: np.ndarray,
        ids: pa.Array | None,
        non_numeric: np.ndarray | None = None,
        raw_columns: Sequence[pa.Array] | None = None,
        bad_ids: np.ndarray | None = None,
        row_problems: dict[int, str] | None = None,
    ) -> FeatureBatch:
        """Drop (or raise on) rows that cannot be scored; return the rest as float32.

        ``values`` is the (m, d) matrix as read (any numeric dtype; float64 values beyond
        float32's range are bad rows, not infinities). ``non_numeric`` is an (m, d) bool mask
        of values that could not be parsed (their slots in ``values`` hold NaN);
        ``raw_columns`` the source text columns (to quote the offending text); ``bad_ids`` an
        (m,) mask of rows whose id is unusable; ``row_problems`` maps data-row numbers of rows
        found bad before parsing (such as text that is not UTF-8) to their description.
        """
        if values.dtype.kind == "f" and values.dtype.itemsize > 4:
            ok = np.abs(values) <= _F32_MAX  # False for NaN and infinities too: one pass
        else:
            ok = np.isfinite(values)
        good = ok.all(axis=1)
        if bad_ids is not None:
            good &= ~bad_ids
        if row_problems:
            good &= ~np.isin(rows, np.fromiter(row_problems, dtype=np.int64))
        if good.all():
            return FeatureBatch(np.ascontiguousarray(values, dtype=np.float32), rows, ids)
        bad_positions = np.flatnonzero(~good)
        first = int(bad_positions[0])
        if row_problems and int(rows[first]) in row_problems:
            description = f"row {int(rows[first]) + 1}: {row_problems[int(rows[first])]}"
        else:
            description = self._describe_bad_row(values, ok, rows, first, non_numeric, raw_columns, bad_ids)
        if self.on_bad_row == "error":
            raise _bad_row_error(description, int(rows[first]))
        self.bad_rows.add(description, n=len(bad_positions))
        keep = np.flatnonzero(good)
        return FeatureBatch(
            np.ascontiguousarray(values[keep], dtype=np.float32),
            rows[keep],
            None if ids is None else ids.take(pa.array(keep)),
        )

    def _describe_bad_row(self, values, ok, rows, position, non_numeric, raw_columns, bad_ids) -> str:
        where = f"row {int(rows[position]) + 1}"
        if bad_ids is not None and bad_ids[position]:
            return f"{where}: the id column {self.id_column!r} holds text that is not valid UTF-8"
        j = int(np.flatnonzero(~ok[position])[0])
        name = self.feature_columns[j]
        value = values[position, j]
        if non_numeric is not None and non_numeric[position, j]:
            raw = raw_columns[j][position].as_py() if raw_columns is not None else "?"
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raw = raw.decode("utf-8", errors="backslashreplace")
                    return f"{where}: text that is not valid UTF-8 ({raw!r}) in column {name!r}"
            problem = "missing value" if raw == "" else f"non-numeric value {raw!r}"
        elif np.isnan(value):
            problem = "missing or NaN value"
        elif np.isinf(value):
            problem = f"infinite value ({value})"
        else:
            problem = f"finite value too large for float32 ({value:.6g}; |x| > {_F32_MAX:.4g})"
        return f"{where}: {problem} in column {name!r}"


# --------------------------------------------------------------------------- Parquet


class ParquetBatchReader(BatchReader):
    """Stream a Parquet file row group by row group, batch by batch."""

    def __init__(self, path, source, **kwargs):
        super().__init__(path, source, **kwargs)
        columns = kwargs["columns"]
        # buffer_size > 0 reads column chunks through a buffer instead of whole row groups at
        # once, so memory does not grow with the writer's row-group size.
        try:
            self._file = pq.ParquetFile(source.file, buffer_size=1 << 20, pre_buffer=False)
            schema = self._file.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"cannot read {path!r} as a Parquet file: {exc}") from None
        names = schema.names
        if len(set(names)) != len(names):
            raise ValueError(f"{path!r} has repeated column names: {names}")
        if self.id_column is not None and self.id_column not in names:
            raise ValueError(f"id_column {self.id_column!r} is not a column of {path!r} (columns: {names})")
        if columns is None:
            columns = [f.name for f in schema if f.name != self.id_column and _is_numeric_type(f.type)]
            if not columns:
                raise ValueError(f"{path!r} has no numeric columns to use as features")
        for name in columns:
            if name not in names:
                raise ValueError(f"feature column {name!r} is not in {path!r} (columns: {names})")
            if not _is_numeric_type(schema.field(name).type):
                raise ValueError(
                    f"feature column {name!r} of {path!r} has type {schema.field(name).type}, "
                    "not a number; choose numeric columns with columns=[...]"
                )
        self.feature_columns = list(columns)
        if self.id_column is not None:
            self.id_type = schema.field(self.id_column).type
        self.progress_total = self._file.metadata.num_rows

    def __iter__(self) -> Iterator[FeatureBatch]:
        if self._source.file.closed:
            raise ValueError(f"the reader of {self.path!r} is closed; open the file again")
        wanted = list(self.feature_columns)
        if self.id_column is not None and self.id_column not in wanted:
            wanted.append(self.id_column)
        next_row = 0
        batches = None
        try:
            # One decoding thread: this already runs beside the scoring threads (see prefetch).
            batches = self._file.iter_batches(batch_size=self.batch_rows, columns=wanted, use_threads=False)
            while True:
                try:
                    record_batch = next(batches, None)
                except (pa.ArrowException, OSError) as exc:
                    raise ValueError(
                        f"cannot read {self.path!r} as a Parquet file after row {next_row}: {exc}"
                    ) from None
                if record_batch is None:
                    break
                m = record_batch.num_rows
                values = _columns_to_matrix([record_batch.column(name) for name in self.feature_columns], m)
                rows = np.arange(next_row, next_row + m, dtype=np.int64)
                ids = record_batch.column(self.id_column) if self.id_column is not None else None
                next_row += m
                self.progress_done = next_row
                batch = self._filter_bad_rows(values, rows, ids)
                if len(batch):
                    yield batch
        finally:
            # Release the Arrow objects here, in the reading thread, before the file closes.
            if batches is not None:
                batches.close()
            del batches
            self._file = None
            self.close()


def _is_numeric_type(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)
    )


def _columns_to_matrix(columns: Sequence[pa.Array], m: int) -> np.ndarray:
    """Stack numeric Arrow columns into a C-contiguous (m, d) matrix; nulls become NaN.

    The matrix is float32 when every column fits float32 exactly (float16/32, booleans,
    small integers) and float64 otherwise, so that values beyond float32's range stay
    recognisable (``_filter_bad_rows`` reports them) instead of turning into infinities.
    """
    wide = any(
        pa.types.is_float64(c.type) or (pa.types.is_integer(c.type) and c.type.bit_width > 16)
        for c in columns
    )
    dtype = np.float64 if wide else np.float32
    arrays = []
    for column in columns:
        if column.null_count:
            column = pc.fill_null(column.cast(pa.float64()), float("nan"))
        arrays.append(column.to_numpy(zero_copy_only=False))
    out = np.empty((m, len(arrays)), dtype=dtype)
    # Row blocks keep the strided writes in cache: ~3x faster than whole-column copies.
    for start in range(0, m, _COPY_BLOCK_ROWS):
        stop = min(start + _COPY_BLOCK_ROWS, m)
        for j, array in enumerate(arrays):
            out[start:stop, j] = array[start:stop]
    return out


# --------------------------------------------------------------------------- CSV


def _has_header_line(text: bytes) -> bool:
    """Whether ``text`` holds a complete non-blank first line."""
    stripped = text.lstrip(b"\r\n")
    return bool(stripped) and b"\n" in stripped


def _looks_numeric(name: str) -> bool:
    try:
        float(name)
    except ValueError:
        return False
    return True


class CsvBatchReader(BatchReader):
    """Read a CSV file (with a header line) block by block with pyarrow's CSV parser.

    The input is read once, front to back, in this thread: the header first, then blocks
    of whole lines (about :data:`_CSV_BLOCK` bytes, decompressed here for ``.csv.gz``), each
    parsed by :func:`pyarrow.csv.read_csv` from memory. No Arrow I/O thread ever reads from
    the Python file object: such a thread, still reading ahead when an error ended the loop
    early, called into a finalising interpreter at exit and aborted the process (SIGABRT).
    Values are parsed as bytes and converted per batch, so a value that is not a number --
    or not even valid UTF-8 -- is a bad row like any other, never an error of the read.
    """

    def __init__(self, path, source, **kwargs):
        super().__init__(path, source, **kwargs)
        columns = kwargs["columns"]
        self._inflate = (
            zlib.decompressobj(wbits=zlib.MAX_WBITS | 16) if path.lower().endswith(".gz") else None
        )
        self._consumed = False
        header = self._read_header()
        if len(set(header)) != len(header):
            raise ValueError(f"{path!r} has repeated column names in its header: {header}")
        if self.id_column is not None and self.id_column not in header:
            raise ValueError(f"id_column {self.id_column!r} is not a column of {path!r} (columns: {header})")
        if columns is None:
            columns = [name for name in header if name != self.id_column]
            if not columns:
                raise ValueError(f"{path!r} has no columns to use as features (header: {header})")
            if all(_looks_numeric(name) for name in columns):
                shown = ", ".join(columns[:5]) + (", ..." if len(columns) > 5 else "")
                raise ValueError(
                    f"the first line of CSV file {path!r} holds numbers ({shown}), not column names: "
                    "a CSV input needs a header line naming its columns (the first line would "
                    "otherwise be lost as data); add a header line, or, if these are the column "
                    "names, select them explicitly with columns=[...]"
                )
        for name in columns:
            if name not in header:
                raise ValueError(f"feature column {name!r} is not in {path!r} (columns: {header})")
        self._header = header
        self.feature_columns = list(columns)
        if self.id_column is not None:
            self.id_type = pa.string()  # ids are copied as written in the file
        self.progress_unit = "bytes"
        self.progress_total = source.size

    # ---- reading the input, in text blocks --------------------------------------------------

    def _read_raw(self) -> bytes:
        """The next piece of the input, decompressed; b"" at the end."""
        while True:
            chunk = self._source.file.read(self._chunk_size)
            self.progress_done += len(chunk)
            if self._inflate is None:
                return chunk
            try:
                if not chunk:
                    text = self._inflate.flush()
                    if not self._inflate.eof:
                        raise ValueError(
                            f"{self.path!r} is a truncated gzip file (it ends inside the stream)"
                        )
                    return text
                text = self._inflate.decompress(chunk)
                while self._inflate.eof and self._inflate.unused_data:  # a next gzip member
                    rest = self._inflate.unused_data
                    self._inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
                    text += self._inflate.decompress(rest)
            except zlib.error as exc:
                raise ValueError(f"{self.path!r} is not a valid gzip file ({exc})") from None
            if text:
                return text

    def _read_header(self) -> list[str]:
        """Read the input up to the end of its header line (the bytes are kept for the parser)."""
        self._text = bytearray()
        self._chunk_size = _HEADER_CHUNK
        while not _has_header_line(self._text):
            chunk = self._read_raw()
            if not chunk:
                break
            self._text += chunk
            if len(self._text) > _MAX_HEADER_BYTES and not _has_header_line(self._text):
                raise ValueError(
                    f"the first line of CSV file {self.path!r} is longer than {_MAX_HEADER_BYTES} bytes; "
                    "is this a CSV file?"
                )
        if not self._text.strip():
            raise ValueError(f"CSV file {self.path!r} is empty: it needs a header line naming its columns")
        first = bytes(self._text).lstrip(b"\r\n")
        line = first[: first.index(b"\n") + 1] if b"\n" in first else first + b"\n"
        try:
            table = pa_csv.read_csv(
                pa.BufferReader(line),
                read_options=pa_csv.ReadOptions(use_threads=False),
                convert_options=pa_csv.ConvertOptions(include_columns=[]),
            )
            return list(table.schema.names)
        except (pa.ArrowException, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the header line of CSV file {self.path!r}: {exc}") from None

    def _blocks(self) -> Iterator[bytes]:
        """Whole lines of the input, about ``_CSV_BLOCK`` bytes at a time (the header in the first)."""
        pending, self._text = self._text, bytearray()
        self._chunk_size = _CSV_BLOCK
        while True:
            chunk = self._read_raw()
            if chunk:
                pending += chunk
                if len(pending) < _CSV_BLOCK:
                    continue
                # newlines_in_values is off: every line end ends a row, so cutting there is safe
                # ("\r\n" cut between "\r" and "\n" leaves an empty line, which is ignored).
                cut = max(pending.rfind(b"\n"), pending.rfind(b"\r"))
                if cut < 0:
                    if len(pending) > _MAX_LINE_BYTES:
                        raise ValueError(
                            f"CSV file {self.path!r} has a line longer than {_MAX_LINE_BYTES} bytes"
                        )
                    continue
                yield bytes(pending[: cut + 1])
                del pending[: cut + 1]
            else:
                if pending:
                    if not pending.endswith((b"\n", b"\r")):
                        pending += b"\n"  # pyarrow cannot parse a header-only file without a line end
                    yield bytes(pending)
                return

    def __iter__(self) -> Iterator[FeatureBatch]:
        if self._consumed or self._source.file.closed:
            raise ValueError(
                f"the reader of {self.path!r} is closed or was read already; open the file again"
            )
        self._consumed = True
        wanted = list(self.feature_columns)
        if self.id_column is not None and self.id_column not in wanted:
            wanted.append(self.id_column)
        # Bytes first, numbers per batch: one bad value (even invalid UTF-8) must not abort the
        # whole read, and ids keep their exact spelling (leading zeros etc.).
        convert = pa_csv.ConvertOptions(
            column_types={name: pa.binary() for name in wanted},
            include_columns=wanted,
            strings_can_be_null=False,
        )
        malformed: list[pa_csv.InvalidRow] = []

        def on_malformed(row: pa_csv.InvalidRow) -> str:
            malformed.append(row)
            return "skip"

        parse = pa_csv.ParseOptions(invalid_row_handler=on_malformed)
        skipped_rows: list[int] = []  # 0-based data-row numbers of malformed lines not yet passed
        first_malformed: tuple[int, str] | None = None  # with on_bad_row="error": raised in row order
        cursor = 0  # next data-row number
        block_start = 0  # data-row number of the first row of the current block
        try:
            invalid_text: dict[int, str] = {}  # data rows whose line is not valid UTF-8
            for index, block in enumerate(self._blocks()):
                if not block.strip():
                    continue
                try:
                    block.decode("utf-8")
                except UnicodeDecodeError:
                    # pyarrow hands a malformed row's text to the row handler as str: bytes that
                    # are not UTF-8 make that fail inside pyarrow ("Exception ignored", then an
                    # error for the whole read). Such lines are made valid for parsing and their
                    # rows reported as bad, whatever else is wrong with them.
                    block, lines = _replace_invalid_utf8(block, has_header=index == 0)
                    for local, text in lines:
                        invalid_text[block_start + local] = f"text that is not valid UTF-8 ({text!r})"
                # The first block starts with the header line; later ones are named after it.
                read = pa_csv.ReadOptions(
                    use_threads=False,
                    block_size=len(block) + 1,
                    column_names=None if index == 0 else self._header,
                )
                # pyarrow numbers rows among the non-blank lines of what it parses, from 1.
                first_number = 2 if index == 0 else 1
                try:
                    table = pa_csv.read_csv(
                        pa.BufferReader(block),
                        read_options=read,
                        parse_options=parse,
                        convert_options=convert,
                    )
                except (pa.ArrowException, UnicodeDecodeError) as exc:
                    detail = str(exc).strip()
                    match = re.search(r"Row #(\d+)", detail)
                    where = (
                        f"row {block_start + int(match.group(1)) - first_number + 1}"
                        if match
                        else f"rows after {block_start}"
                    )
                    detail = re.sub(r"\s*Row #\d+:?", "", detail)
                    raise ValueError(f"cannot parse CSV file {self.path!r} at {where}: {detail}") from None
                for row in malformed:
                    data_row = block_start + row.number - first_number
                    description = f"row {data_row + 1}: expected {row.expected_columns} fields, found {row.actual_columns}"
                    if data_row in invalid_text:
                        description += f" and {invalid_text.pop(data_row)}"
                    if self.on_bad_row == "error":
                        if first_malformed is None:
                            first_malformed = (data_row, description)
                    else:
                        self.bad_rows.add(description)
                    skipped_rows.append(data_row)
                block_start += table.num_rows + len(malformed)
                malformed.clear()
                m = table.num_rows
                rows, cursor = _row_numbers(cursor, m, skipped_rows)
                offset = 0
                for part in table.to_batches(max_chunksize=self.batch_rows):
                    part_rows = rows[offset : offset + part.num_rows]
                    offset += part.num_rows
                    if not part.num_rows:
                        continue
                    if first_malformed is not None and first_malformed[0] < part_rows[0]:
                        raise _bad_row_error(first_malformed[1], first_malformed[0])
                    try:
                        batch = self._convert(part, part_rows, invalid_text)
                    except BadRowError as exc:
                        if first_malformed is not None and first_malformed[0] < exc.row:
                            raise _bad_row_error(first_malformed[1], first_malformed[0]) from None
                        raise
                    if len(batch):
                        yield batch
                if first_malformed is not None:
                    raise _bad_row_error(first_malformed[1], first_malformed[0])
            self.progress_done = self.progress_total or self.progress_done
        finally:
            self.close()

    def _convert(self, record_batch: pa.RecordBatch, rows: np.ndarray, row_problems=None) -> FeatureBatch:
        m = record_batch.num_rows
        values = np.empty((m, len(self.feature_columns)), dtype=np.float64)
        non_numeric = None
        raw_columns = []
        for j, name in enumerate(self.feature_columns):
            text = record_batch.column(name)
            raw_columns.append(text)
            column, bad = _parse_floats(text)
            values[:, j] = column
            if bad is not None:
                if non_numeric is None:
                    non_numeric = np.zeros(values.shape, dtype=bool)
                non_numeric[:, j] = bad
        ids = bad_ids = None
        if self.id_column is not None:
            ids, bad_ids = _as_text(record_batch.column(self.id_column))
        problems = None
        if row_problems:
            problems = {int(r): row_problems.pop(int(r)) for r in rows if int(r) in row_problems}
        return self._filter_bad_rows(values, rows, ids, non_numeric, raw_columns, bad_ids, problems)


def _replace_invalid_utf8(block: bytes, has_header: bool) -> tuple[bytes, list[tuple[int, str]]]:
    """``block`` with every line that is not valid UTF-8 decoded with replacement characters.

    Returns the new block and, for each such line, its data-row number within the block
    (counted as pyarrow does: non-blank lines, after the header when the block has it) and
    its text with the offending bytes escaped (first 60 characters).
    """
    lines = re.split(rb"\r\n|\r|\n", block)
    out, invalid = [], []
    next_row = -1 if has_header else 0
    for line in lines:
        row = next_row
        if line:
            next_row += 1
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            invalid.append((row, line.decode("utf-8", errors="backslashreplace")[:60]))
            line = line.decode("utf-8", errors="replace").encode("utf-8")
        out.append(line)
    return b"\n".join(out), invalid


def _row_numbers(cursor: int, m: int, skipped_rows: list[int]) -> tuple[np.ndarray, int]:
    """Data-row numbers of the next ``m`` good rows starting at ``cursor``, stepping over skipped ones.

    ``skipped_rows`` is consumed (entries before the returned cursor are removed).
    """
    if not skipped_rows:
        return np.arange(cursor, cursor + m, dtype=np.int64), cursor + m
    skipped = np.asarray(sorted(skipped_rows), dtype=np.int64)
    end = cursor + m
    while True:
        n_inside = int(np.count_nonzero((skipped >= cursor) & (skipped < end)))
        if cursor + m + n_inside == end:
            break
        end = cursor + m + n_inside
    candidates = np.arange(cursor, end, dtype=np.int64)
    rows = candidates[~np.isin(candidates, skipped)]
    skipped_rows[:] = [int(r) for r in skipped if r >= end]
    return rows, end


def _failing_entries(array: pa.Array, target: pa.DataType) -> tuple[pa.Array | None, np.ndarray | None]:
    """Cast ``array`` to ``target``; on failure find the failing entries by bisection.

    Returns the cast array (None when some entries failed) and a bool mask of the failing
    entries (None when all succeeded). A few bad entries cost O(k log m) casts.
    """
    try:
        return pc.cast(array, target), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    m = len(array)
    bad = np.zeros(m, dtype=bool)
    stack = [(0, m)]
    while stack:
        start, stop = stack.pop()
        try:
            pc.cast(array.slice(start, stop - start), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if stop - start == 1:
                bad[start] = True
            else:
                middle = (start + stop) // 2
                stack.extend([(middle, stop), (start, middle)])
    return None, bad


def _parse_floats(text: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse a text (binary or string) column to float64; unparsable entries become NaN and are flagged.

    Returns the values and a bool mask of unparsable entries (None when all parsed).
    """
    cast, bad = _failing_entries(text, pa.float64())
    if bad is None:
        return cast.to_numpy(zero_copy_only=False), None
    good = pa.array(~bad)
    values = pc.cast(pc.if_else(good, text, pa.scalar(b"nan", text.type)), pa.float64())
    return values.to_numpy(zero_copy_only=False), bad


def _as_text(column: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """A binary column as UTF-8 strings; entries that are not valid UTF-8 are flagged (and emptied)."""
    cast, bad = _failing_entries(column, pa.string())
    if bad is None:
        return cast, None
    cleaned = pc.if_else(pa.array(~bad), column, pa.scalar(b"", column.type))
    return pc.cast(cleaned, pa.string()), bad


# --------------------------------------------------------------------------- NPY


class NpyBatchReader(BatchReader):
    """Memory-map a 2-D numeric ``.npy`` array and hand out row slices."""

    def __init__(self, path, source, **kwargs):
        super().__init__(path, source, **kwargs)
        if self.id_column is not None:
            raise ValueError("id_column is not available for .npy input (an .npy file has no named columns)")
        array = _map_npy(path, source)
        source.close()  # the memory map keeps its own reference to the file
        if array.ndim != 2:
            raise ValueError(f"{path!r} holds a {array.ndim}-D array; expected 2-D (rows, features)")
        if array.shape[1] == 0:
            raise ValueError(f"{path!r} holds an array with no columns (shape {array.shape})")
        columns = kwargs["columns"]
        if columns is None:
            self._column_index = None
            self.feature_columns = [str(j) for j in range(array.shape[1])]
        else:
            try:
                index = [int(c) for c in columns]
            except ValueError:
                raise ValueError(
                    f"columns of an .npy input are integer positions, got {list(columns)}"
                ) from None
            if any(not 0 <= j < array.shape[1] for j in index):
                raise ValueError(
                    f"column positions {index} out of range for {array.shape[1]} columns in {path!r}"
                )
            self._column_index = np.asarray(index)
            self.feature_columns = [str(j) for j in index]
        self._array = array
        self.progress_total = array.shape[0]

    def __iter__(self) -> Iterator[FeatureBatch]:
        n = self._array.shape[0]
        for start in range(0, n, self.batch_rows):
            block = self._array[start : start + self.batch_rows]
            if self._column_index is not None:
                block = block[:, self._column_index]
            values = np.asarray(block)
            if values.dtype.kind == "f" and values.dtype.itemsize > 4:
                values = np.ascontiguousarray(values, dtype=np.float64)  # checked against float32's range
            elif values.dtype != np.float32:
                values = values.astype(np.float32)
            rows = np.arange(start, start + values.shape[0], dtype=np.int64)
            self.progress_done = start + values.shape[0]
            batch = self._filter_bad_rows(values, rows, None)
            if len(batch):
                yield batch


def _map_npy(path: str, source: _Source) -> np.ndarray:
    """Memory-map the array in the open ``.npy`` file (read once; pickled arrays refused)."""
    from numpy.lib import format as npy_format

    file = source.file
    try:
        version = npy_format.read_magic(file)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(file)
        else:
            shape, fortran_order, dtype = npy_format._read_array_header(file, version)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise ValueError(f"cannot read {path!r} as a .npy array: {exc}") from None
    if dtype.hasobject:
        raise ValueError(f"{path!r} holds Python objects (dtype {dtype}); only numeric arrays are read")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{path!r} holds dtype {dtype}, not real numbers")
    offset = file.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if source.size is not None and source.size - offset < nbytes:
        raise ValueError(
            f"{path!r} is truncated: its header announces shape {shape} ({nbytes} bytes of data) "
            f"but the file holds {source.size - offset}"
        )
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(
        file, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C"
    )


# --------------------------------------------------------------------------- writers


class TableWriter:
    """Append Arrow record batches to a Parquet or CSV file.

    Parameters
    ----------
    path : str
        File to write (usually the temporary name from :func:`atomic_output`).
    fmt : {"parquet", "csv"}
    schema : pyarrow.Schema
        Schema of every batch written.
    """

    def __init__(self, path: str, fmt: str, schema: pa.Schema):
        require_pyarrow()
        if fmt == "parquet":
            self._writer = pq.ParquetWriter(path, schema, compression="snappy")
        elif fmt == "csv":
            self._writer = pa_csv.CSVWriter(path, schema)
        else:
            raise ValueError(f"output format must be parquet or csv, got {fmt!r}")
        self.schema = schema
        self.rows_written = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows_written += batch.num_rows

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --------------------------------------------------------------------------- prefetch


_DONE = object()


def prefetch(batches, depth: int = 2):
    """Iterate over ``batches`` with reading running ahead in a background thread.

    Reading and parsing (pyarrow releases the GIL) then overlaps with scoring. At most
    ``depth`` batches wait in the queue, so memory stays bounded. An exception in the
    reader is re-raised in the consumer; leaving the loop early stops the reader.

    The iterator over ``batches`` is created, run *and closed* in the background thread
    (its clean-up -- a reader releasing its Arrow objects and file -- runs there, before
    the thread ends, whether the read finished, failed or was abandoned), and the consumer
    waits for that thread before going on: nothing native is left to be torn down later
    by another thread or at interpreter exit.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        iterator = None
        try:
            iterator = iter(batches)
            for item in iterator:
                if not hand_over(item):
                    return
            hand_over(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            # The traceback's frames hold the reader's locals (an Arrow reader, an open file):
            # clear them here, so they are released in this thread, not whenever (or, at
            # interpreter exit, wherever) the consumer drops the exception.
            traceback.clear_frames(exc.__traceback__)
            hand_over(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            del iterator

    worker = threading.Thread(target=produce, name="dtpm_fast-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exception
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue, then wait for it to finish.
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.1)
        worker.join()


@dataclass
class _Failure:
    """An exception raised by the reader, carried to the consumer (never mistaken for a batch)."""

    exception: BaseException
