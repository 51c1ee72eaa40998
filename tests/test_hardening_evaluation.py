"""The evaluation harness checks what it reads -- data files, labels, runs.csv, run.json --
and names the file (ValueError; ``dtpm-fast evaluate`` exit 1 with one line). Also the
Dask integration's bad-row reporting and column identity, and library messages that must
name parameters, not command-line flags.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dtpm_fast
from dtpm_fast.cli import main
from dtpm_fast.evaluation import protocol
from dtpm_fast.evaluation.runner import COLUMNS, RunConfig, read_runs, run


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _good(n: int = 80, d: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.zeros(n, dtype=np.int64)
    y[: n // 8] = 1
    X[y == 1] += 4
    return X, y


# ----------------------------------------------------------------------- data files

X_GOOD, Y_GOOD = _good()


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"X": X_GOOD}, r"lacks array\(s\) \['y'\]"),
        ({"y": Y_GOOD}, r"lacks array\(s\) \['X'\]"),
        ({"X": X_GOOD[:, 0], "y": Y_GOOD}, r"X must be 2-D"),
        ({"X": X_GOOD[None], "y": Y_GOOD}, r"X must be 2-D"),
        ({"X": X_GOOD, "y": Y_GOOD[:, None]}, r"y must be 1-D"),
        ({"X": X_GOOD, "y": Y_GOOD[:-1]}, r"y has 79 labels but X has 80 rows"),
        ({"X": X_GOOD, "y": np.where(Y_GOOD == 1, 2, 0)}, r"only 0 \(normal\) and 1 \(anomaly\); found 2"),
        ({"X": X_GOOD, "y": np.where(Y_GOOD == 1, -1, 0)}, r"found -1"),
        ({"X": X_GOOD, "y": np.where(Y_GOOD == 1, 0.5, 0.0)}, r"found 0.5"),  # was truncated to 0
        ({"X": X_GOOD, "y": np.where(Y_GOOD == 1, np.nan, 0.0)}, r"found nan"),
        ({"X": X_GOOD, "y": np.zeros(80)}, r"holds only label 0"),
        ({"X": np.empty((0, 3)), "y": np.empty(0)}, r"X is empty"),
        ({"X": np.empty((80, 0)), "y": Y_GOOD}, r"X is empty"),
        (
            {"X": np.where(np.arange(240).reshape(80, 3) == 7, np.inf, X_GOOD), "y": Y_GOOD},
            r"infinite values",
        ),
        ({"X": X_GOOD.astype(np.complex128), "y": Y_GOOD}, r"real numbers"),
        ({"X": X_GOOD.astype(str), "y": Y_GOOD}, r"must hold numbers"),
    ],
)
def test_bad_data_files_are_value_errors_naming_the_file(tmp_path, arrays, expected):
    path = _npz(tmp_path / "bad_set.npz", **arrays)
    with pytest.raises(ValueError, match=expected) as info:
        protocol.load_npz(path)
    assert "bad_set.npz" in str(info.value)


def test_files_that_are_not_npz_archives_are_value_errors(tmp_path):
    (tmp_path / "text.npz").write_text("X,y\n1,0\n")
    np.save(tmp_path / "array.npy", X_GOOD)
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    good = _npz(tmp_path / "cut.npz", X=X_GOOD, y=Y_GOOD).read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with zipfile.ZipFile(tmp_path / "corrupt.npz", "w") as archive:
        archive.writestr("X.npy", b"\x93NUMPY garbage")
        archive.writestr("y.npy", b"nonsense")
    np.savez(tmp_path / "objects.npz", X=np.array([[1, "a"]], dtype=object), y=np.array([0]))
    for name in ("text.npz", "array.npz", "cut.npz", "corrupt.npz", "objects.npz"):
        with pytest.raises(ValueError) as info:
            protocol.load_npz(tmp_path / name)
        assert name in str(info.value)


def test_booleans_and_float_zero_one_labels_are_fine(tmp_path):
    _, y = protocol.load_npz(_npz(tmp_path / "b.npz", X=X_GOOD, y=Y_GOOD.astype(bool)))
    np.testing.assert_array_equal(y, Y_GOOD)
    _, y = protocol.load_npz(_npz(tmp_path / "f.npz", X=X_GOOD, y=Y_GOOD.astype(np.float32)))
    np.testing.assert_array_equal(y, Y_GOOD)


def test_prepare_refuses_labels_it_would_truncate():
    with pytest.raises(ValueError, match=r"found 0.5"):
        protocol.prepare(X_GOOD, np.where(Y_GOOD == 1, 0.5, 0.0), seed=0, protocol="semi")


def test_evaluate_names_a_bad_file_in_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _npz(data / "ok.npz", X=X_GOOD, y=Y_GOOD)
    _npz(data / "labels.npz", X=X_GOOD, y=np.where(Y_GOOD == 1, 0.5, 0.0))
    code = main(["evaluate", "--data", str(data), "--out", str(tmp_path / "out"), "--seeds", "0"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dtpm-fast evaluate: error: ") and "labels.npz" in err[-1]


# ----------------------------------------------------------------------- resume files


@pytest.fixture
def finished(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _npz(data / "ok.npz", X=X_GOOD, y=Y_GOOD)
    out = tmp_path / "out"
    config = RunConfig(data_dir=data, out_dir=out, models=["np"], seeds=[0])
    run(config, progress=io.StringIO())
    return data, out


def _rewrite(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("dataset,model", "name,model", 1), r"has the columns"),
        (lambda t: t + "garbage\n", r"line 3: expected 15 fields"),
        (lambda t: t + t.splitlines()[1].replace(",0,", ",x,", 1) + "\n", r"line 3: seed 'x'"),
        (lambda t: t + t.splitlines()[1] + "\n", r"line 3 repeats"),
        (lambda t: t.replace(",semi,", ",weird,"), r"line 2: unknown protocol 'weird'"),
        (lambda t: "", r"is empty"),
        (lambda t: t.splitlines()[0] + "\n" + ",".join(["x"] * len(COLUMNS)) + "\n", r"line 2: seed 'x'"),
    ],
)
def test_damaged_runs_csv_is_a_value_error_naming_the_line(finished, edit, expected):
    data, out = finished
    path = out / "runs.csv"
    _rewrite(path, edit(path.read_text()))
    with pytest.raises(ValueError, match=expected) as info:
        read_runs(out)
    assert "runs.csv" in str(info.value)
    with pytest.raises(ValueError, match=expected):
        run(RunConfig(data_dir=data, out_dir=out, models=["np"], seeds=[0, 1]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", r"is not valid JSON"),
        ("[1, 2]", r"holds a list, not an object"),
        ('{"protocol": "other"}', r"names the unknown protocol 'other'"),
        ('{"protocol": "semi", "budgets": [1]}', r"budgets that are not an object"),
        ('{"protocol": "unsup"}', r"holds a 'unsup' run"),
    ],
)
def test_damaged_or_foreign_run_json_is_a_value_error(finished, text, expected):
    data, out = finished
    (out / "run.json").write_text(text)
    with pytest.raises(ValueError, match=expected) as info:
        run(RunConfig(data_dir=data, out_dir=out, models=["np"], seeds=[0, 1]))
    assert "run.json" in str(info.value) or str(out) in str(info.value)


def test_runs_without_run_json_are_not_resumed(finished):
    data, out = finished
    (out / "run.json").unlink()
    with pytest.raises(ValueError, match=r"run.json is missing"):
        run(RunConfig(data_dir=data, out_dir=out, models=["np"], seeds=[0, 1]))


def test_report_only_on_a_damaged_runs_csv_is_one_line(finished, capsys):
    _, out = finished
    (out / "runs.csv").write_text((out / "runs.csv").read_text() + "garbage\n")
    assert main(["evaluate", "--data", "x", "--out", str(out), "--report-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 3: expected 15 fields" in err[0]


# ----------------------------------------------------------------------- messages


def test_library_messages_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    with pytest.raises(ValueError) as info:
        protocol.find_datasets(tmp_path / "missing")
    assert "--" not in str(info.value) and "data_dir" in str(info.value)
    with pytest.raises(ValueError) as info:
        RunConfig(data_dir=tmp_path, out_dir=tmp_path, models=["np"], seeds=[])
    assert "--" not in str(info.value)
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "with --data" in capsys.readouterr().err


# ----------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dask_model():
    pytest.importorskip("dask.dataframe")
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    return dtpm_fast.DTPMNonParametric().fit(frame), frame


def test_dask_names_a_bad_row_in_the_whole_array(dask_model):
    import dask
    import dask.array as da

    from dtpm_fast import dask as dtpm_dask

    model, frame = dask_model
    X = frame.to_numpy().copy()
    X[250, 1] = 1e39  # finite in float64, too large for float32
    with dask.config.set(scheduler="sync"):
        with pytest.raises(ValueError, match=r"row 250 of the array .* too large for float32"):
            dtpm_dask.decision_function(model, da.from_array(X, chunks=(100, 3))).compute()
        X[250, 1] = 0.0
        X[120, 0] = np.nan
        with pytest.raises(ValueError, match=r"row 120 of the array .* NaN"):
            dtpm_dask.decision_function(model, da.from_array(X, chunks=(100, 3))).compute()


def test_dask_names_a_bad_row_by_index_label(dask_model):
    import dask
    import dask.dataframe as dd

    from dtpm_fast import dask as dtpm_dask

    model, frame = dask_model
    bad = frame.copy()
    bad.index = bad.index + 1000
    bad.iloc[222, 2] = np.inf
    with (
        dask.config.set(scheduler="sync"),
        pytest.raises(ValueError, match=r"index 1222 .* infinite value .* column 'c'"),
    ):
        dtpm_dask.decision_function(model, dd.from_pandas(bad, npartitions=3)).compute()


def test_dask_dataframe_columns_are_matched_by_name(dask_model):
    import dask
    import dask.dataframe as dd

    from dtpm_fast import dask as dtpm_dask

    model, frame = dask_model
    expected = model.decision_function(frame)
    shuffled = dd.from_pandas(frame[["c", "a", "b"]], npartitions=3)
    with dask.config.set(scheduler="sync"):
        for columns in (None, ["c", "a", "b"], ["a", "b", "c"]):
            scores = dtpm_dask.decision_function(model, shuffled, columns=columns).compute()
            np.testing.assert_array_equal(scores.to_numpy(), expected)  # columns=[c,a,b] scored c,a,b
    with pytest.raises(ValueError, match=r"fitted on the columns \['a', 'b', 'c'\]"):
        dtpm_dask.decision_function(model, shuffled, columns=["c", "a"])
    with pytest.raises(ValueError, match=r"columns \['a'\] are not in the DataFrame"):
        dtpm_dask.decision_function(model, dd.from_pandas(frame[["b", "c"]], npartitions=2))


def test_dask_refuses_a_non_finite_score(dask_model, tmp_path):
    """A finite row that the model scores as NaN/inf is an error naming the row, never a result."""
    pytest.importorskip("torch")
    import dask
    import dask.array as da

    from dtpm_fast import dask as dtpm_dask

    _, frame = dask_model
    X = frame.to_numpy().astype(np.float32)
    model = dtpm_fast.DTPMInverseGamma(epochs=1, random_state=0).fit(X)
    Q = X[:20].copy()
    Q[13] = 3e38
    with pytest.raises(ValueError, match=r"cannot score 1 row\(s\) \(first: row 13"):
        model.decision_function(Q)  # the detector refuses the row itself
    with dask.config.set(scheduler="sync"):
        lazy = dtpm_dask.decision_function(model, da.from_array(Q, chunks=(8, 3)))
        with pytest.raises(ValueError, match=r"for row 13 of the array"):
            lazy.compute()  # named in the whole array, not within its block (rows 8-15)
