"""The table readers under hostile input: every outcome is batches equal to a reference
parse (with the right data-row numbers) or a ValueError naming the file and row.

Covers: a CSV without a header line, invalid UTF-8 (which aborted the process), gzip CSV,
values beyond float32, row numbering in every reader and both bad-row modes, inputs that
are not regular files (a FIFO, a directory, /dev/null, unreadable and empty files), and
property-based tests over generated and mutated CSV and Parquet files.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtpm_fast.io import tables

F32_MAX = float(np.finfo(np.float32).max)
PYTHONPATH = str(Path(tables.__file__).resolve().parents[2])  # the package under test, also in subprocesses


def _read(path, **kwargs):
    """All batches of a reader: (features, rows, ids or None), with the reader's bad-row report."""
    reader = tables.open_reader(path, **kwargs)
    batches = list(tables.prefetch(reader))
    if not batches:
        return np.empty((0, reader.n_features), np.float32), np.empty(0, np.int64), None, reader
    features = np.concatenate([b.features for b in batches])
    rows = np.concatenate([b.rows for b in batches])
    ids = None
    if batches[0].ids is not None:
        ids = [v for b in batches for v in b.ids.to_pylist()]
    return features, rows, ids, reader


def _run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# ----------------------------------------------------------------------- class 1: header


def test_csv_whose_first_line_is_numbers_is_refused(tmp_path):
    path = tmp_path / "noheader.csv"
    path.write_text("0.5,1.5,2.5\n3,4,5\n6,7,8\n")
    with pytest.raises(
        ValueError, match=r"first line of CSV file .*noheader.csv.* holds numbers \(0.5, 1.5, 2.5\)"
    ):
        tables.open_reader(path)
    # named explicitly, numeric column names are accepted (they are then really names)
    features, rows, _, _ = _read(path, columns=["0.5", "2.5"])
    np.testing.assert_array_equal(features, [[3, 5], [6, 8]])
    np.testing.assert_array_equal(rows, [0, 1])


def test_csv_with_a_header_and_an_id_column_of_numbers_is_still_read(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("id,x\n1,2\n")
    features, _, ids, _ = _read(path, id_column="id")
    assert ids == ["1"] and features.tolist() == [[2.0]]


# ----------------------------------------------------------------------- class 2: invalid UTF-8

_UTF8_SCRIPT = """
import sys
from dtpm_fast.io import tables
path, mode = sys.argv[1], sys.argv[2]
reader = tables.open_reader(path, on_bad_row=mode, batch_rows=3, id_column="id")
try:
    n = sum(len(b) for b in tables.prefetch(reader))
    print("rows", n, reader.bad_rows.summary())
except ValueError as exc:
    print("error", exc)
"""


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_invalid_utf8_is_a_bad_row_and_never_aborts(tmp_path, mode):
    path = tmp_path / "utf.csv"
    lines = [b"id,a,b"] + [b"%d,%d,%d" % (i, i, i) for i in range(8)]
    lines.insert(5, b"x,1,\xff\xfe")  # data row 5 (1-based): invalid UTF-8 in a value
    lines.insert(8, b"\xc3(,2,3")  # data row 8: invalid UTF-8 in the id
    path.write_bytes(b"\n".join(lines) + b"\n")
    script = tmp_path / "read.py"
    script.write_text(_UTF8_SCRIPT)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    for _ in range(12):  # the abort was intermittent (at interpreter exit)
        done = subprocess.run(
            [sys.executable, str(script), str(path), mode],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        if mode == "error":
            assert done.stdout.startswith(
                "error row 5: text that is not valid UTF-8 ('x,1,\\\\xff\\\\xfe')"
            ), done.stdout
        else:
            assert done.stdout.startswith("rows 8 skipped 2 bad row(s): row 5: text that is not valid UTF-8")
            assert "row 8: text that is not valid UTF-8 ('\\\\xc3(,2,3')" in done.stdout


# ----------------------------------------------------------------------- class 4: kinds and numbers


def test_gzip_csv_reads_like_the_plain_file(tmp_path):
    text = "a,b\n" + "".join(f"{i * 0.5},{-i}\n" for i in range(1000))
    (tmp_path / "t.csv").write_text(text)
    with gzip.open(tmp_path / "t.csv.gz", "wt") as fh:
        fh.write(text[:3000])
    with gzip.open(tmp_path / "t.csv.gz", "at") as fh:  # a second gzip member
        fh.write(text[3000:])
    plain = _read(tmp_path / "t.csv")
    packed = _read(tmp_path / "t.csv.gz")
    np.testing.assert_array_equal(plain[0], packed[0])
    np.testing.assert_array_equal(packed[1], np.arange(1000))


def test_corrupt_or_truncated_gzip_is_a_value_error(tmp_path):
    (tmp_path / "bad.csv.gz").write_bytes(b"a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"bad.csv.gz.* is not a valid gzip file"):
        tables.open_reader(tmp_path / "bad.csv.gz")
    whole = gzip.compress(("a,b\n" + "1,2\n" * 50000).encode())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut.csv.gz.* truncated gzip"):
        _read(tmp_path / "cut.csv.gz")


def _too_large_inputs(tmp_path):
    values = np.array([[1.0, 2.0], [3.0, 1e39], [5.0, 6.0]])
    (tmp_path / "big.csv").write_text("a,b\n1,2\n3,1e39\n5,6\n")
    pq.write_table(pa.table({"a": values[:, 0], "b": values[:, 1]}), tmp_path / "big.parquet")
    np.save(tmp_path / "big.npy", values)
    return ["big.csv", "big.parquet", "big.npy"]


@pytest.mark.parametrize("name", ["big.csv", "big.parquet", "big.npy"])
def test_finite_values_beyond_float32_are_bad_rows_in_both_modes(tmp_path, name):
    _too_large_inputs(tmp_path)
    with pytest.raises(
        tables.BadRowError, match=r"^row 2: finite value too large for float32 \(1e\+39"
    ) as info:
        _read(tmp_path / name)
    assert info.value.row == 1
    features, rows, _, reader = _read(tmp_path / name, on_bad_row="skip")
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(features, [[1, 2], [5, 6]])
    assert "row 2: finite value too large for float32" in reader.bad_rows.summary()


def _inputs_with_a_bad_value(tmp_path, bad_row: int, n: int = 12):
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    X[bad_row, 1] = np.nan
    lines = ["a,b"] + [f"{x:g},{y:g}" for x, y in X]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1]}), tmp_path / "t.parquet", row_group_size=5)
    np.save(tmp_path / "t.npy", X)
    return X


@pytest.mark.parametrize("name", ["t.csv", "t.parquet", "t.npy"])
@pytest.mark.parametrize("bad_row", [0, 4, 11])
def test_bad_row_numbers_count_data_rows_in_every_reader_and_mode(tmp_path, name, bad_row):
    X = _inputs_with_a_bad_value(tmp_path, bad_row)
    column = "1" if name.endswith(".npy") else "b"  # .npy columns are named by position
    with pytest.raises(
        tables.BadRowError, match=rf"^row {bad_row + 1}: missing or NaN value in column '{column}'"
    ) as info:
        _read(tmp_path / name, batch_rows=4)
    assert info.value.row == bad_row
    features, rows, _, reader = _read(tmp_path / name, batch_rows=4, on_bad_row="skip")
    kept = [i for i in range(len(X)) if i != bad_row]
    np.testing.assert_array_equal(rows, kept)
    np.testing.assert_array_equal(features, X[kept].astype(np.float32))
    assert reader.bad_rows.examples == [f"row {bad_row + 1}: missing or NaN value in column '{column}'"]


def test_csv_row_numbers_across_blocks_with_blank_and_malformed_lines(tmp_path):
    # > 4 MiB, so the reader parses several blocks; blank lines are not rows.
    lines = ["a,b"]
    expected_rows, bad = [], {}
    data_row = 0
    for i in range(450_000):
        if i % 100_003 == 50:
            lines.append("")
            continue
        if i % 150_001 == 7:
            lines.append("1,2,3")
            bad[data_row] = "expected 2 fields, found 3"
        elif i % 130_001 == 9:
            lines.append("x,1")
            bad[data_row] = "non-numeric value 'x'"
        else:
            lines.append(f"{data_row},{i}")
            expected_rows.append(data_row)
        data_row += 1
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    assert (tmp_path / "big.csv").stat().st_size > tables._CSV_BLOCK
    features, rows, _, reader = _read(tmp_path / "big.csv", on_bad_row="skip", batch_rows=50_000)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(features[:, 0], np.asarray(expected_rows, dtype=np.float32))
    assert reader.bad_rows.count == len(bad)
    for example in reader.bad_rows.examples:
        number = int(example.split(":")[0].split()[1])
        assert bad[number - 1] in example
    first = min(bad)
    with pytest.raises(tables.BadRowError, match=rf"^row {first + 1}: ") as info:
        _read(tmp_path / "big.csv", batch_rows=50_000)
    assert info.value.row == first


# ----------------------------------------------------------------------- class 5: special files


def test_a_csv_fifo_is_read_once_as_a_stream(tmp_path):
    fifo = tmp_path / "in.csv"
    os.mkfifo(fifo)
    text = "a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(5000))

    def write():
        with open(fifo, "w") as fh:  # blocks until the reader opens the pipe
            fh.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    code = f"""
    from dtpm_fast.io import tables
    reader = tables.open_reader({str(fifo)!r}, batch_rows=700)
    print(sum(len(b) for b in tables.prefetch(reader)), reader.feature_columns)
    """
    done = _run_python(code, timeout=60)  # the old reader opened the pipe twice and hung here
    writer.join(timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5000 ['a', 'b']"


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_a_fifo_is_refused_for_seeking_formats_without_blocking(tmp_path, suffix):
    fifo = tmp_path / f"in{suffix}"
    os.mkfifo(fifo)  # no writer: opening it would block forever
    done = _run_python(
        f"""
        from dtpm_fast.io import tables
        try:
            tables.open_reader({str(fifo)!r})
        except ValueError as exc:
            print(exc)
        """,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "is a pipe (FIFO)" in done.stdout and "needs a regular file" in done.stdout


def test_directories_devices_and_empty_files_are_value_errors(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ValueError, match=r"d.csv' is a directory"):
        tables.open_reader(tmp_path / "d.csv")
    if os.path.exists("/dev/null"):
        os.symlink("/dev/null", tmp_path / "null.csv")
        os.symlink("/dev/null", tmp_path / "null.parquet")
        with pytest.raises(ValueError, match=r"null.csv' is empty"):
            tables.open_reader(tmp_path / "null.csv")
        with pytest.raises(ValueError, match=r"null.parquet' is a character device"):
            tables.open_reader(tmp_path / "null.parquet")
    for name in ("e.csv", "e.parquet", "e.npy", "e.csv.gz"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ValueError, match=rf"{name}' is empty"):
            tables.open_reader(tmp_path / name)
    (tmp_path / "blank.csv").write_text("\n\n\n")
    with pytest.raises(ValueError, match=r"blank.csv' is empty: it needs a header line"):
        tables.open_reader(tmp_path / "blank.csv")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_value_error(tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("a\n1\n")
    path.chmod(0)
    with pytest.raises(ValueError, match=r"secret.csv' cannot be read: permission denied"):
        tables.open_reader(path)


def test_files_that_are_not_what_their_suffix_says_are_value_errors(tmp_path):
    (tmp_path / "x.parquet").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"cannot read .*x.parquet' as a Parquet file"):
        tables.open_reader(tmp_path / "x.parquet")
    (tmp_path / "x.npy").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"cannot read .*x.npy' as a .npy array"):
        tables.open_reader(tmp_path / "x.npy")
    np.save(tmp_path / "short.npy", np.ones((100, 3)))
    data = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-80])
    with pytest.raises(ValueError, match=r"short.npy' is truncated"):
        tables.open_reader(tmp_path / "short.npy")
    np.save(tmp_path / "c.npy", np.ones((3, 2), dtype=np.complex64))
    with pytest.raises(ValueError, match=r"not real numbers"):
        tables.open_reader(tmp_path / "c.npy")


def test_a_reader_closes_its_file(tmp_path):
    (tmp_path / "t.csv").write_text("a\n1\n2\n")
    reader = tables.open_reader(tmp_path / "t.csv")
    assert [len(b) for b in reader] == [2]
    with pytest.raises(ValueError, match="closed or was read already"):
        list(reader)
    unread = tables.open_reader(tmp_path / "t.csv")
    unread.close()  # an unread reader releases the file too (no ResourceWarning, an error here)


# ----------------------------------------------------------------------- class 9: properties

# Cell texts with one meaning for pyarrow and for Python's float(): numbers written by repr,
# special spellings, non-numeric text without digits, and bytes that are not UTF-8.
_SPECIAL = [
    "",
    "nan",
    "inf",
    "-inf",
    "1e39",
    "-1e39",
    "3.4028236e38",
    "1e-50",
    "-0",
    "abc",
    "\xe9t\xe9",
    "\U0001f600",
]
_NUMBERS = st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.integers(-(10**20), 10**20).map(
    str
)
_TEXT = st.text(alphabet="xyz \u00e9\u20ac\U0001f600_-", min_size=1, max_size=6)
_CELL = st.one_of(_NUMBERS, _NUMBERS, st.sampled_from(_SPECIAL), _TEXT, st.just(b"\xff\xfe"))


def _reference_value(cell) -> float | None:
    """The float32 value a good cell must read as; None for a cell that makes its row bad."""
    if isinstance(cell, bytes):
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    if not np.isfinite(value) or abs(value) > F32_MAX:
        return None
    return float(np.float32(value))


@st.composite
def _csv_tables(draw):
    n_cols = draw(st.integers(1, 4))
    n_rows = draw(st.integers(0, 25))
    lines, expected_rows, expected_values, bad_rows = [], [], [], []
    data_row = 0
    for _ in range(n_rows):
        kind = draw(st.sampled_from(["good", "good", "good", "cells", "fields", "blank"]))
        if kind == "blank":
            lines.append(b"")
            continue
        if kind == "fields":
            count = draw(
                st.sampled_from([n for n in (1, n_cols - 1, n_cols + 1, n_cols + 3) if n > 0 and n != n_cols])
            )
            cells = [draw(st.sampled_from([b"1", b"\xff", b"x"]))] * count  # invalid UTF-8 too
            lines.append(b",".join(cells))
            bad_rows.append(data_row)
            data_row += 1
            continue
        if kind == "good":
            cells = draw(st.lists(_NUMBERS, min_size=n_cols, max_size=n_cols))
        else:
            cells = draw(st.lists(_CELL, min_size=n_cols, max_size=n_cols))
        raw = [c if isinstance(c, bytes) else c.encode() for c in cells]
        line = b",".join(raw)
        if not line.strip():  # one empty cell of a one-column file: a blank line, not a row
            lines.append(b"")
            continue
        lines.append(line)
        values = [_reference_value(c) for c in cells]
        if any(v is None for v in values):
            bad_rows.append(data_row)
        else:
            expected_rows.append(data_row)
            expected_values.append(values)
        data_row += 1
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    header = b",".join(b"c%d" % j for j in range(n_cols))
    body = ending.join([header, *lines])
    if draw(st.booleans()):
        body += ending
    return body, n_cols, expected_rows, expected_values, bad_rows


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=_csv_tables(), batch_rows=st.integers(1, 7), gz=st.booleans())
def test_csv_reader_matches_a_reference_parse(table, batch_rows, gz):
    body, n_cols, expected_rows, expected_values, bad_rows = table
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("t.csv.gz" if gz else "t.csv")
        path.write_bytes(gzip.compress(body) if gz else body)
        features, rows, _, reader = _read(path, batch_rows=batch_rows, on_bad_row="skip")
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(features, np.asarray(expected_values, np.float32).reshape(-1, n_cols))
        assert reader.bad_rows.count == len(bad_rows)
        if bad_rows:
            with pytest.raises(tables.BadRowError, match=rf"^row {bad_rows[0] + 1}: ") as info:
                _read(path, batch_rows=batch_rows)
            assert info.value.row == bad_rows[0]
        else:
            np.testing.assert_array_equal(_read(path, batch_rows=batch_rows)[1], expected_rows)


_PARQUET_VALUES = st.one_of(
    st.floats(width=64),  # NaN, infinities, extremes beyond float32
    st.sampled_from([1e39, -1e300, F32_MAX, -F32_MAX, 0.0, 5e-324]),
    st.none(),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    columns=st.integers(1, 3).flatmap(
        lambda d: st.lists(st.lists(_PARQUET_VALUES, min_size=d, max_size=d), min_size=0, max_size=30)
    ),
    ints=st.booleans(),
    batch_rows=st.integers(1, 9),
)
def test_parquet_reader_matches_a_reference_parse(columns, ints, batch_rows):
    n_cols = len(columns[0]) if columns else 1
    data = {
        f"c{j}": pa.array([row[j] for row in columns] if columns else [], pa.float64()) for j in range(n_cols)
    }
    if ints:
        data["i"] = pa.array(np.arange(len(columns)) * (2**40), pa.int64())
    expected_rows, expected = [], []
    for i, row in enumerate(columns):
        values = [np.nan if v is None else v for v in row] + ([i * 2.0**40] if ints else [])
        if all(np.isfinite(v) and abs(v) <= F32_MAX for v in values):
            expected_rows.append(i)
            expected.append(values)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.parquet"
        pq.write_table(pa.table(data), path, row_group_size=max(1, len(columns) // 2 or 1))
        features, rows, _, reader = _read(path, batch_rows=batch_rows, on_bad_row="skip")
        n_out = n_cols + (1 if ints else 0)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(features, np.asarray(expected, np.float32).reshape(-1, n_out))
        assert reader.bad_rows.count == len(columns) - len(expected_rows)
        bad = sorted(set(range(len(columns))) - set(expected_rows))
        if bad:
            with pytest.raises(tables.BadRowError, match=rf"^row {bad[0] + 1}: ") as info:
                _read(path, batch_rows=batch_rows)
            assert info.value.row == bad[0]


def _valid_csv() -> bytes:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3)) * 10.0 ** rng.integers(-3, 4, size=(40, 3))
    return ("id,a,b,c\n" + "".join(f"r{i},{x!r},{y!r},{z!r}\n" for i, (x, y, z) in enumerate(X))).encode()


def _valid_parquet() -> bytes:
    rng = np.random.default_rng(2)
    sink = pa.BufferOutputStream()
    table = pa.table(
        {"a": rng.normal(size=60), "b": rng.integers(-5, 5, size=60), "id": [f"r{i}" for i in range(60)]}
    )
    pq.write_table(table, sink, row_group_size=25)
    return sink.getvalue().to_pybytes()


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["replace", "insert", "delete"]),
        st.floats(0, 1, exclude_max=True),
        st.binary(min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=6,
)


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, payload in edits:
        at = int(where * len(out)) if out else 0
        if kind == "replace" and out:
            out[at : at + len(payload)] = payload
        elif kind == "insert":
            out[at:at] = payload
        elif out:
            del out[at : at + len(payload)]
    return bytes(out)


def _check_outcome(path: Path, **kwargs) -> None:
    """Batches of finite float32 rows with increasing row numbers, or a ValueError naming the file."""
    for mode in ("error", "skip"):
        try:
            features, rows, _, _ = _read(path, on_bad_row=mode, **kwargs)
        except ValueError as exc:  # BadRowError included
            assert path.name in str(exc) or str(exc).startswith("row "), str(exc)
            continue
        assert features.dtype == np.float32 and np.isfinite(features).all()
        assert (np.diff(rows) > 0).all() and (rows >= 0).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS, gz=st.booleans())
def test_mutated_csv_gives_batches_or_a_value_error(edits, gz):
    data = _valid_csv()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("m.csv.gz" if gz else "m.csv")
        path.write_bytes(_mutate(gzip.compress(data), edits) if gz else _mutate(data, edits))
        _check_outcome(path, id_column=None, batch_rows=7)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_EDITS)
def test_mutated_parquet_gives_batches_or_a_value_error(edits):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.parquet"
        path.write_bytes(_mutate(_valid_parquet(), edits))
        _check_outcome(path, batch_rows=11)
