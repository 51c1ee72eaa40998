"""``dtpm-fast`` under hostile input: one-line errors (exit 1), usage errors (exit 2), no
hang on special files, columns matched by name, model failures never skipped or written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import dtpm_fast
from dtpm_fast.cli import main
from dtpm_fast.io import tables

PYTHONPATH = str(Path(tables.__file__).resolve().parents[2])  # the package under test


def _cli(*argv: str, timeout: float = 120, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtpm_fast", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": PYTHONPATH},
        check=False,
    )


def _one_line_error(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"dtpm-fast {command}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening_cli")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    Q = rng.normal(size=(40, 3)).astype(np.float32) * 2
    np.save(root / "train.npy", X)
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]}), root / "train.parquet")
    unnamed = root / "unnamed.dtpm"
    named = root / "named.dtpm"
    assert main(["fit", str(root / "train.npy"), "-o", str(unnamed), "--quiet"]) == 0
    assert main(["fit", str(root / "train.parquet"), "-o", str(named), "--quiet"]) == 0
    return {"root": root, "X": X, "Q": Q, "unnamed": unnamed, "named": named}


def _scores(path) -> np.ndarray:
    table = pq.read_table(path) if str(path).endswith(".parquet") else pa_csv.read_csv(path)
    return table["score"].to_numpy()


# ----------------------------------------------------------------------- class 1: header


def test_headerless_csv_against_a_model_without_names_is_refused(data, tmp_path, capsys):
    path = tmp_path / "q.csv"
    np.savetxt(path, data["Q"], delimiter=",", fmt="%.6f")  # no header line
    out = tmp_path / "s.csv"
    code = main(["score", str(data["unnamed"]), str(path), "-o", str(out), "--quiet"])
    assert code == 1
    line = _one_line_error(capsys.readouterr().err, "score")
    assert "holds numbers" in line and "needs a header line" in line and "--columns" in line
    assert not out.exists()


# ----------------------------------------------------------------------- class 3: model failures


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_a_model_failure_is_never_skipped_nor_written(tmp_path, mode):
    """Skipping applies to input rows; a row the model fails on (here a finite extreme row
    that the inverse-gamma model scores as NaN/inf) stops the command with the row named,
    or -- once the model handles it -- is scored finitely. Never a NaN in the output."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    model = dtpm_fast.DTPMInverseGamma(epochs=1, random_state=0).fit(X)
    model.save(tmp_path / "ig.dtpm")
    rows = [f"{x},{y},{z}" for x, y, z in X[:6]] + ["3e38,0,0", "1,2,3", "nan,1,1"]
    (tmp_path / "q.csv").write_text("a,b,c\n" + "\n".join(rows) + "\n")
    out = tmp_path / "s.csv"
    done = _cli(
        "score",
        str(tmp_path / "ig.dtpm"),
        str(tmp_path / "q.csv"),
        "-o",
        str(out),
        "--on-bad-row",
        mode,
        "--batch-rows",
        "4",  # rows 5-8 are scored before the reader reaches the NaN in row 9
    )
    if done.returncode == 0:
        assert np.isfinite(_scores(out)).all()
    else:
        assert done.returncode == 1
        line = _one_line_error(done.stderr, "score")
        assert "the model failed while scoring row 7" in line
        assert "--on-bad-row skip does not skip them" in line
        assert not out.exists()


# ----------------------------------------------------------------------- class 5: special files


def test_score_reads_a_csv_fifo_once(data, tmp_path):
    fifo = tmp_path / "q.csv"
    os.mkfifo(fifo)
    text = "a,b,c\n" + "".join(f"{x},{y},{z}\n" for x, y, z in data["Q"])

    def write():
        with open(fifo, "w") as fh:
            fh.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    out = tmp_path / "s.parquet"
    done = _cli("score", str(data["named"]), str(fifo), "-o", str(out), "--quiet", timeout=90)
    writer.join(timeout=10)
    assert done.returncode == 0, done.stderr
    expected = dtpm_fast.load(data["named"]).decision_function(data["Q"])
    np.testing.assert_array_equal(_scores(out), expected)


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_score_refuses_a_fifo_it_would_have_to_seek(data, tmp_path, suffix):
    fifo = tmp_path / f"q{suffix}"
    os.mkfifo(fifo)  # no writer: opening it would block
    done = _cli("score", str(data["named"]), str(fifo), "-o", str(tmp_path / "s.csv"), timeout=90)
    assert done.returncode == 1
    assert "is a pipe (FIFO)" in _one_line_error(done.stderr, "score")


def test_directories_dev_null_and_empty_inputs_are_one_line_errors(data, tmp_path, capsys):
    (tmp_path / "dir.csv").mkdir()
    os.symlink("/dev/null", tmp_path / "null.csv")
    (tmp_path / "empty.parquet").write_bytes(b"")
    cases = {"dir.csv": "is a directory", "null.csv": "is empty", "empty.parquet": "is empty"}
    for name, expected in cases.items():
        for command in ("score", "fit"):
            out = tmp_path / ("s.csv" if command == "score" else "m.dtpm")
            argv = (
                ["score", str(data["named"]), str(tmp_path / name), "-o", str(out)]
                if command == "score"
                else ["fit", str(tmp_path / name), "-o", str(out)]
            )
            assert main(argv) == 1
            assert expected in _one_line_error(capsys.readouterr().err, command)
            assert not out.exists()


# ----------------------------------------------------------------------- class 7: column identity


def test_a_named_model_reads_columns_by_name_whatever_their_order(data, tmp_path):
    Q = data["Q"]
    shuffled = pa.table({"c": Q[:, 2], "extra": np.zeros(len(Q)), "a": Q[:, 0], "b": Q[:, 1]})
    pq.write_table(shuffled, tmp_path / "q.parquet")
    expected = dtpm_fast.load(data["named"]).decision_function(Q)
    for extra in ([], ["--columns", "c,a,b"], ["--columns", "a,b,c"]):
        out = tmp_path / "s.parquet"
        code = main(
            [
                "score",
                str(data["named"]),
                str(tmp_path / "q.parquet"),
                "-o",
                str(out),
                "--quiet",
                "--overwrite",
                *extra,
            ]
        )
        assert code == 0
        np.testing.assert_array_equal(_scores(out), expected)  # --columns c,a,b used to score c,a,b


def test_columns_other_than_the_models_are_refused(data, tmp_path, capsys):
    Q = data["Q"]
    pq.write_table(pa.table({"a": Q[:, 0], "b": Q[:, 1], "x": Q[:, 2]}), tmp_path / "q.parquet")
    out = tmp_path / "s.parquet"
    assert (
        main(["score", str(data["named"]), str(tmp_path / "q.parquet"), "-o", str(out), "--columns", "a,b,x"])
        == 1
    )
    assert "fitted on the columns ['a', 'b', 'c']" in _one_line_error(capsys.readouterr().err, "score")
    assert main(["score", str(data["named"]), str(tmp_path / "q.parquet"), "-o", str(out)]) == 1
    assert "feature column 'c' is not in" in _one_line_error(capsys.readouterr().err, "score")
    assert not out.exists()


def test_a_dataframe_fitted_model_reads_csv_columns_by_name(tmp_path):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["p", "q", "r"]).astype(np.float32)
    model = dtpm_fast.DTPMNonParametric().fit(frame)
    model.save(tmp_path / "m.dtpm")
    query = frame.iloc[:30]
    query[["r", "p", "q"]].to_csv(tmp_path / "q.csv", index=False, float_format="%.9g")
    assert (
        main(
            ["score", str(tmp_path / "m.dtpm"), str(tmp_path / "q.csv"), "-o", str(tmp_path / "s.csv"), "-q"]
        )
        == 0
    )
    np.testing.assert_array_equal(_scores(tmp_path / "s.csv"), model.decision_function(query))


def test_npy_input_against_a_named_model_is_positional(data, tmp_path):
    np.save(tmp_path / "q.npy", data["Q"])
    out = tmp_path / "s.parquet"
    assert main(["score", str(data["named"]), str(tmp_path / "q.npy"), "-o", str(out), "--quiet"]) == 0
    np.testing.assert_array_equal(_scores(out), dtpm_fast.load(data["named"]).decision_function(data["Q"]))


# ----------------------------------------------------------------------- class 8: numeric options


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "M", "q.csv", "-o", "s.csv", "--threads", "99999999999"],
        ["score", "M", "q.csv", "-o", "s.csv", "--threads", "5000"],
        ["score", "M", "q.csv", "-o", "s.csv", "--batch-rows", "1e30"],
        ["score", "M", "q.csv", "-o", "s.csv", "--batch-rows", "2147483648"],
        ["score", "M", "q.csv", "-o", "s.csv", "--contamination", "1e400"],
        ["fit", "t.npy", "-o", "m", "--T", "1e30"],
        ["fit", "t.npy", "-o", "m", "--T", "2147483647"],
        ["fit", "t.npy", "-o", "m", "--n-neighbors", "99999999999"],
        ["fit", "t.npy", "-o", "m", "--batch-size", "-1"],
        ["fit", "t.npy", "-o", "m", "--epochs", "1e30"],
        ["fit", "t.npy", "-o", "m", "--lr", "1e400"],
        ["fit", "t.npy", "-o", "m", "--random-state", "4294967296"],
        ["fit", "t.npy", "-o", "m", "--index-param", "M=99999999999"],
        ["fit", "t.npy", "-o", "m", "--index-param", "nprobe=(1, 99999999999)"],
        ["fit", "t.npy", "-o", "m", "--index-param", "x=[1e400]"],
        ["evaluate", "--data", "d", "--out", "o", "--seeds", "0,99999999999"],
        ["evaluate", "--data", "d", "--out", "o", "--epochs", "1e30"],
        ["evaluate", "--data", "d", "--out", "o", "--n-neighbors", "2147483648"],
        ["evaluate", "--data", "d", "--out", "o", "--model-option", "T=2147483647"],
        ["evaluate", "--data", "d", "--out", "o", "--model-option", "batch_size={'a': 99999999999}"],
        ["evaluate", "--data", "d", "--out", "o", "--device", "gpu"],
        ["demo", "--top", "-1"],
        ["demo", "--top", "1e30"],
    ],
)
def test_numbers_beyond_what_the_machine_represents_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err
