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

Bad rows -- a missing, NaN or infinite value, a non-numeric value, a CSV line with the
wrong number of fields -- are never scored silently: with ``on_bad_row="error"`` the
reader raises :class:`BadRowError` naming the row (1-based, header not counted), with
``on_bad_row="skip"`` the row is dropped and counted in :class:`BadRowReport`.

Writers (:class:`TableWriter`) append batches to Parquet or CSV; :func:`dtpm_fast.io.atomic.atomic_output`
makes the result appear under its final name only once it is complete.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
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
# How many skipped rows are described individually; the rest are only counted.
_MAX_EXAMPLES = 5


class BadRowError(ValueError):
    """A row cannot be scored (non-numeric, missing/NaN/inf value, wrong field count).

    ``row`` is the 0-based input row number (header not counted).
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
        Input file; the format is taken from the suffix (see :func:`file_format`).
    columns : sequence of str, optional
        Feature columns in model order. For Parquet, default: every numeric column
        except ``id_column``; for CSV: every column except ``id_column``. For ``.npy``,
        column indices given as strings (``"0"``, ``"3"``), default all columns.
    id_column : str, optional
        Column copied to the output next to each score (not for ``.npy``).
    batch_rows : int, default 65536
        Maximum rows per batch; bounds memory use.
    on_bad_row : {"error", "skip"}
        Stop with :class:`BadRowError` at the first bad row, or skip and count bad rows.

    Returns
    -------
    BatchReader
        Iterable of :class:`FeatureBatch`; ``reader.bad_rows`` counts skipped rows.
    """
    require_pyarrow()
    if on_bad_row not in ON_BAD_ROW_CHOICES:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW_CHOICES}, got {on_bad_row!r}")
    if int(batch_rows) < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    fmt = file_format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"input file {os.fspath(path)!r} does not exist")
    reader_class = {"parquet": ParquetBatchReader, "csv": CsvBatchReader, "npy": NpyBatchReader}[fmt]
    return reader_class(
        os.fspath(path),
        columns=None if columns is None else list(columns),
        id_column=id_column,
        batch_rows=int(batch_rows),
        on_bad_row=on_bad_row,
    )


def require_pyarrow() -> None:
    if pa is None:
        raise ImportError('reading and writing Parquet/CSV needs pyarrow: pip install "dtpm-fast[io]"')


class BatchReader:
    """Base of the format readers: shared bad-row filtering and progress accounting."""

    def __init__(self, path, *, columns, id_column, batch_rows, on_bad_row):
        self.path = path
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

    def __iter__(self) -> Iterator[FeatureBatch]:
        raise NotImplementedError

    def _filter_bad_rows(
        self,
        features: np.ndarray,
        rows: np.ndarray,
        ids: pa.Array | None,
        non_numeric: np.ndarray | None = None,
        raw_columns: Sequence[pa.Array] | None = None,
    ) -> FeatureBatch:
        """Drop (or raise on) rows with a non-finite or non-numeric feature value.

        ``non_numeric`` is an (m, d) bool mask of values that could not be parsed;
        their slots in ``features`` hold NaN. ``raw_columns`` are the source columns
        (for quoting the offending text in messages).
        """
        finite = np.isfinite(features)
        good = finite.all(axis=1)
        if good.all():
            return FeatureBatch(features, rows, ids)
        bad_positions = np.flatnonzero(~good)
        first = int(bad_positions[0])
        description = self._describe_bad_value(features, rows, first, non_numeric, raw_columns)
        if self.on_bad_row == "error":
            raise _bad_row_error(description, int(rows[first]))
        self.bad_rows.add(description, n=len(bad_positions))
        keep = np.flatnonzero(good)
        return FeatureBatch(
            np.ascontiguousarray(features[keep]),
            rows[keep],
            None if ids is None else ids.take(pa.array(keep)),
        )

    def _describe_bad_value(self, features, rows, position, non_numeric, raw_columns) -> str:
        j = int(np.flatnonzero(~np.isfinite(features[position]))[0])
        name = self.feature_columns[j]
        value = features[position, j]
        if non_numeric is not None and non_numeric[position, j]:
            text = raw_columns[j][position].as_py() if raw_columns is not None else "?"
            problem = "missing value" if text == "" else f"non-numeric value {text!r}"
        elif np.isnan(value):
            problem = "missing or NaN value"
        else:
            problem = f"infinite value ({value})"
        return f"row {int(rows[position]) + 1}: {problem} in column {name!r}"


# --------------------------------------------------------------------------- Parquet


class ParquetBatchReader(BatchReader):
    """Stream a Parquet file row group by row group, batch by batch."""

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        columns = kwargs["columns"]
        # buffer_size > 0 reads column chunks through a buffer instead of whole row groups at
        # once, so memory does not grow with the writer's row-group size.
        self._file = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        schema = self._file.schema_arrow
        names = schema.names
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
        wanted = list(self.feature_columns)
        if self.id_column is not None and self.id_column not in wanted:
            wanted.append(self.id_column)
        next_row = 0
        # One decoding thread: this already runs beside the scoring threads (see prefetch).
        for record_batch in self._file.iter_batches(
            batch_size=self.batch_rows, columns=wanted, use_threads=False
        ):
            m = record_batch.num_rows
            features = _columns_to_matrix([record_batch.column(name) for name in self.feature_columns], m)
            rows = np.arange(next_row, next_row + m, dtype=np.int64)
            ids = record_batch.column(self.id_column) if self.id_column is not None else None
            next_row += m
            self.progress_done = next_row
            batch = self._filter_bad_rows(features, rows, ids)
            if len(batch):
                yield batch


def _is_numeric_type(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)
    )


def _columns_to_matrix(columns: Sequence[pa.Array], m: int) -> np.ndarray:
    """Stack numeric Arrow columns into a C-contiguous (m, d) float32 matrix; nulls become NaN."""
    arrays = []
    for column in columns:
        if column.null_count:
            column = pc.fill_null(column.cast(pa.float32()), float("nan"))
        arrays.append(column.to_numpy(zero_copy_only=False))
    out = np.empty((m, len(arrays)), dtype=np.float32)
    # Row blocks keep the strided writes in cache: ~3x faster than whole-column copies.
    for start in range(0, m, _COPY_BLOCK_ROWS):
        stop = min(start + _COPY_BLOCK_ROWS, m)
        for j, array in enumerate(arrays):
            out[start:stop, j] = array[start:stop]
    return out


# --------------------------------------------------------------------------- CSV


class CsvBatchReader(BatchReader):
    """Stream a CSV file (with a header line) through pyarrow's streaming CSV reader."""

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        columns = kwargs["columns"]
        header = _csv_header(path)
        if self.id_column is not None and self.id_column not in header:
            raise ValueError(
                f"id_column {self.id_column!r} is not a column of {path!r} (columns: {header})"
            )
        if columns is None:
            columns = [name for name in header if name != self.id_column]
        for name in columns:
            if name not in header:
                raise ValueError(f"feature column {name!r} is not in {path!r} (columns: {header})")
        if len(set(header)) != len(header):
            raise ValueError(f"{path!r} has repeated column names in its header: {header}")
        self.feature_columns = list(columns)
        if self.id_column is not None:
            self.id_type = pa.string()  # ids are copied as written in the file
        self.progress_unit = "bytes"
        self.progress_total = os.path.getsize(path)

    def __iter__(self) -> Iterator[FeatureBatch]:
        wanted = list(self.feature_columns)
        if self.id_column is not None and self.id_column not in wanted:
            wanted.append(self.id_column)
        # Text first, numbers per batch: one bad value must not abort the whole stream,
        # and ids keep their exact spelling (leading zeros etc.).
        convert = pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in wanted},
            include_columns=wanted,
            strings_can_be_null=False,
        )
        malformed: list[pa_csv.InvalidRow] = []

        def on_malformed(row: pa_csv.InvalidRow) -> str:
            malformed.append(row)
            return "skip"

        # use_threads=False: the physical line number of a malformed line is only known then.
        read = pa_csv.ReadOptions(use_threads=False, block_size=1 << 22)
        parse = pa_csv.ParseOptions(invalid_row_handler=on_malformed)
        with open(self.path, "rb") as raw:
            stream = pa.input_stream(raw, compression="detect") if self.path.lower().endswith(".gz") else raw
            reader = pa_csv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
            skipped_rows: list[int] = []  # 0-based data-row numbers of malformed lines not yet passed
            first_malformed: tuple[int, str] | None = None  # with on_bad_row="error": raised in row order
            cursor = 0  # next data-row number
            for record_batch in reader:
                self.progress_done = raw.tell()
                # A malformed line is reported while its block is parsed, before its batch arrives
                # (and possibly before earlier rows with bad values are converted).
                for row in malformed:
                    data_row = row.number - 2  # line 1 is the header; rows are 0-based
                    reason = f"expected {row.expected_columns} fields, found {row.actual_columns}"
                    description = f"row {data_row + 1} (line {row.number}): {reason}"
                    if self.on_bad_row == "error":
                        if first_malformed is None:
                            first_malformed = (data_row, description)
                    else:
                        self.bad_rows.add(description)
                    skipped_rows.append(data_row)
                malformed.clear()
                m = record_batch.num_rows
                rows, cursor = _row_numbers(cursor, m, skipped_rows)
                for chunk_start in range(0, m, self.batch_rows):
                    part = record_batch.slice(chunk_start, self.batch_rows)
                    part_rows = rows[chunk_start : chunk_start + part.num_rows]
                    if first_malformed is not None and first_malformed[0] < part_rows[0]:
                        raise _bad_row_error(first_malformed[1], first_malformed[0])
                    try:
                        batch = self._convert(part, part_rows)
                    except BadRowError as exc:
                        if first_malformed is not None and first_malformed[0] < exc.row:
                            raise _bad_row_error(first_malformed[1], first_malformed[0]) from None
                        raise
                    if len(batch):
                        yield batch
                if first_malformed is not None and first_malformed[0] < cursor:
                    raise _bad_row_error(first_malformed[1], first_malformed[0])
            if first_malformed is not None:
                raise _bad_row_error(first_malformed[1], first_malformed[0])
            self.progress_done = self.progress_total

    def _convert(self, record_batch: pa.RecordBatch, rows: np.ndarray) -> FeatureBatch:
        m = record_batch.num_rows
        features = np.empty((m, len(self.feature_columns)), dtype=np.float32)
        non_numeric = None
        raw_columns = []
        for j, name in enumerate(self.feature_columns):
            text = record_batch.column(name)
            raw_columns.append(text)
            values, bad = _parse_floats(text)
            features[:, j] = values
            if bad is not None:
                if non_numeric is None:
                    non_numeric = np.zeros(features.shape, dtype=bool)
                non_numeric[:, j] = bad
        ids = record_batch.column(self.id_column) if self.id_column is not None else None
        return self._filter_bad_rows(features, rows, ids, non_numeric, raw_columns)


def _csv_header(path: str) -> list[str]:
    read = pa_csv.ReadOptions(use_threads=False, block_size=1 << 16)
    try:
        with open(path, "rb") as raw:
            stream = pa.input_stream(raw, compression="detect") if path.lower().endswith(".gz") else raw
            reader = pa_csv.open_csv(
                stream,
                read_options=read,
                parse_options=pa_csv.ParseOptions(invalid_row_handler=lambda row: "skip"),
                convert_options=pa_csv.ConvertOptions(include_columns=[]),
            )
            return list(reader.schema.names)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"cannot read the header line of CSV file {path!r}: {exc}") from exc


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


def _parse_floats(text: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse a string column to float32; unparsable entries become NaN and are flagged.

    Returns the values and a bool mask of unparsable entries (None when all parsed). The
    fast path is one Arrow cast; only a column slice that fails is bisected, so a few bad
    values cost O(k log m) casts.
    """
    try:
        return pc.cast(text, pa.float32()).to_numpy(zero_copy_only=False), None
    except pa.ArrowInvalid:
        pass
    m = len(text)
    values = np.full(m, np.nan, dtype=np.float32)
    bad = np.zeros(m, dtype=bool)
    stack = [(0, m)]
    while stack:
        start, stop = stack.pop()
        part = text.slice(start, stop - start)
        try:
            values[start:stop] = pc.cast(part, pa.float32()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            if stop - start == 1:
                bad[start] = True
            else:
                middle = (start + stop) // 2
                stack.extend([(middle, stop), (start, middle)])
    return values, bad


# --------------------------------------------------------------------------- NPY


class NpyBatchReader(BatchReader):
    """Memory-map a 2-D numeric ``.npy`` array and hand out row slices."""

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        if self.id_column is not None:
            raise ValueError(
                "id_column is not available for .npy input (an .npy file has no named columns)"
            )
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"cannot read {path!r} as a numeric .npy array: {exc}") from exc
        if array.ndim != 2:
            raise ValueError(f"{path!r} holds a {array.ndim}-D array; expected 2-D (rows, features)")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"{path!r} holds dtype {array.dtype}, not numbers")
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
            features = np.ascontiguousarray(block, dtype=np.float32)
            rows = np.arange(start, start + features.shape[0], dtype=np.int64)
            self.progress_done = start + features.shape[0]
            batch = self._filter_bad_rows(features, rows, None)
            if len(batch):
                yield batch


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
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            slots.put(exc)

    worker = threading.Thread(target=produce, name="dtpm_fast-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue, then wait for it to finish.
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.1)
        worker.join()
