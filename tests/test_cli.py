"""The dtpm-fast fit/score/info commands and the streaming readers/writers under them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import dtpm_fast
from dtpm_fast.cli import main
from dtpm_fast.io import tables as streaming
from dtpm_fast.io.atomic import atomic_output

N_FEATURES = 5
FEATURES = [f"f{j}" for j in range(N_FEATURES)]


def _table(X: np.ndarray, ids=None) -> pa.Table:
    columns = {} if ids is None else {"id": ids}
    columns.update({name: X[:, j] for j, name in enumerate(FEATURES)})
    columns["label_text"] = np.array(["x"] * len(X))  # a non-numeric column that must be ignored
    return pa.table(columns)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Training/query data as Parquet, CSV and .npy, and a model fitted by the CLI."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(3)
    # Three decimals: the CSV text round-trips to the same float32 values.
    X_train = np.round(rng.standard_normal((600, N_FEATURES)), 3).astype(np.float32)
    X_query = np.round(rng.standard_normal((1003, N_FEATURES)) * 1.3, 3).astype(np.float32)
    ids = np.arange(len(X_query), dtype=np.int64) * 7 + 100
    pq.write_table(_table(X_train), root / "train.parquet")
    pq.write_table(_table(X_query, ids), root / "query.parquet", row_group_size=300)
    pa_csv.write_csv(_table(X_query, ids), root / "query.csv")
    np.save(root / "query.npy", X_query)
    model_path = root / "model.dtpm"
    code = main(
        [
            "fit",
            str(root / "train.parquet"),
            "--model",
            "np",
            "--index",
            "flat",
            "--n-neighbors",
            "4",
            "--contamination",
            "0.05",
            "-o",
            str(model_path),
            "--quiet",
        ]
    )
    assert code == 0
    return {"root": root, "X_train": X_train, "X_query": X_query, "ids": ids, "model": model_path}


def _read(path) -> pa.Table:
    return pq.read_table(path) if str(path).endswith(".parquet") else pa_csv.read_csv(path)


def _score(files, tmp_path, input_name, output_name, *extra):
    output = tmp_path / output_name
    code = main(["score", str(files["model"]), str(files["root"] / input_name), "-o", str(output), *extra])
    return code, output


# ---- fit -----------------------------------------------------------------------------------------


def test_fit_matches_the_python_api_and_records_columns(files):
    model = dtpm_fast.load(files["model"])
    assert list(model.feature_names_in_) == FEATURES  # the text column was left out
    reference = dtpm_fast.DTPMNonParametric(index="flat", n_neighbors=4, contamination=0.05).fit(
        files["X_train"]
    )
    np.testing.assert_array_equal(
        model.decision_function(files["X_query"]), reference.decision_function(files["X_query"])
    )
    assert model.threshold_ == reference.threshold_


def test_fit_option_for_another_model_is_a_usage_error(files, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                str(files["root"] / "train.parquet"),
                "--model",
                "categorical",
                "--n-neighbors",
                "3",
                "-o",
                str(tmp_path / "m.dtpm"),
            ]
        )
    assert exit_info.value.code == 2
    assert not (tmp_path / "m.dtpm").exists()


def test_fit_passes_the_categorical_loss_and_rejects_it_for_other_models(files, tmp_path):
    pytest.importorskip("torch")
    train = str(files["root"] / "train.parquet")
    out = tmp_path / "c.dtpm"
    options = ["--model", "categorical", "--loss", "double_softmax", "--epochs", "1", "--quiet"]
    assert main(["fit", train, *options, "-o", str(out)]) == 0
    assert dtpm_fast.load(out).loss == "double_softmax"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", train, "--model", "np", "--loss", "double_softmax", "-o", str(tmp_path / "n.dtpm")])
    assert exit_info.value.code == 2


def test_fit_passes_the_recipe_and_explicit_epochs_override_it(files, tmp_path):
    pytest.importorskip("torch")
    train = str(files["root"] / "train.parquet")
    out = tmp_path / "r.dtpm"
    options = ["--model", "inverse-gamma", "--recipe", "fast", "--epochs", "1", "--quiet"]
    assert main(["fit", train, *options, "-o", str(out)]) == 0
    settings = dtpm_fast.load(out).training_settings()
    assert settings["recipe"] == "fast" and settings["epochs"] == 1 and settings["batch_size"] == 512
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", train, "--model", "np", "--recipe", "fast", "-o", str(tmp_path / "n.dtpm")])
    assert exit_info.value.code == 2


def test_fit_passes_the_inference_precision_and_the_saved_model_keeps_it(files, tmp_path):
    pytest.importorskip("torch")
    train = str(files["root"] / "train.parquet")
    out = tmp_path / "b.dtpm"
    options = ["--model", "categorical", "--inference-precision", "bfloat16", "--epochs", "1", "--quiet"]
    assert main(["fit", train, *options, "-o", str(out)]) == 0
    assert dtpm_fast.load(out).inference_precision == "bfloat16"
    for bad in (["--model", "np", "--inference-precision", "bfloat16"], ["--inference-precision", "float16"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", train, *bad, "-o", str(tmp_path / "n.dtpm")])
        assert exit_info.value.code == 2


# ---- score: formats and columns -------------------------------------------------------------------


@pytest.mark.parametrize("input_name", ["query.parquet", "query.csv"])
@pytest.mark.parametrize("output_name", ["scores.parquet", "scores.csv"])
def test_score_matches_in_memory_scoring(files, tmp_path, input_name, output_name):
    code, output = _score(
        files, tmp_path, input_name, output_name, "--id-column", "id", "--batch-rows", "128", "--quiet"
    )
    assert code == 0
    table = _read(output)
    model = dtpm_fast.load(files["model"])
    expected = model.decision_function(files["X_query"])
    assert table.column_names == ["id", "score", "label"]
    np.testing.assert_array_equal(table["score"].to_numpy(), expected)
    np.testing.assert_array_equal(table["label"].to_numpy(), model.predict(files["X_query"]))
    ids = table["id"].to_numpy()
    np.testing.assert_array_equal(ids.astype(np.int64), files["ids"])  # CSV ids come back as text
    assert sorted(os.listdir(tmp_path)) == [output_name]


def test_score_npy_by_column_position(files, tmp_path):
    np.save(tmp_path / "wide.npy", np.column_stack([np.zeros(len(files["X_query"])), files["X_query"]]))
    output = tmp_path / "s.parquet"
    code = main(
        [
            "score",
            str(files["model"]),
            str(tmp_path / "wide.npy"),
            "-o",
            str(output),
            "--columns",
            "1,2,3,4,5",
            "--batch-rows",
            "100",
            "--quiet",
        ]
    )
    assert code == 0
    expected = dtpm_fast.load(files["model"]).decision_function(files["X_query"])
    np.testing.assert_array_equal(pq.read_table(output)["score"].to_numpy(), expected)


def test_contamination_overrides_the_threshold(files, tmp_path):
    code, output = _score(files, tmp_path, "query.parquet", "s.parquet", "--contamination", "0.3", "--quiet")
    assert code == 0
    table = pq.read_table(output)
    model = dtpm_fast.load(files["model"])
    threshold = np.percentile(model.decision_scores_, 70.0)
    np.testing.assert_array_equal(
        table["label"].to_numpy(), (table["score"].to_numpy() > threshold).astype(int)
    )
    assert table["label"].to_numpy().sum() > model.predict(files["X_query"]).sum()


def test_posterior_mean_column_for_a_mode_model(files, tmp_path):
    mode_model = dtpm_fast.DTPMNonParametric(index="flat", score="mode").fit(files["X_train"])
    mode_model.save(tmp_path / "mode.dtpm")
    output = tmp_path / "s.parquet"
    code = main(
        [
            "score",
            str(tmp_path / "mode.dtpm"),
            str(files["root"] / "query.npy"),
            "-o",
            str(output),
            "--posterior-mean",
            "--quiet",
        ]
    )
    assert code == 0
    table = pq.read_table(output)
    mean_model = dtpm_fast.DTPMNonParametric(index="flat", score="mean").fit(files["X_train"])
    np.testing.assert_array_equal(table["score"].to_numpy(), mode_model.decision_function(files["X_query"]))
    np.testing.assert_allclose(
        table["posterior_mean"].to_numpy(), mean_model.decision_function(files["X_query"]), rtol=1e-12
    )


def test_wrong_feature_count_is_an_error(files, tmp_path, capsys):
    code, output = _score(files, tmp_path, "query.parquet", "s.parquet", "--columns", "f0,f1,f2", "--quiet")
    assert code == 1
    # a model with column names reads them by name: --columns must name the same columns
    assert "fitted on the columns ['f0', 'f1', 'f2', 'f3', 'f4']" in capsys.readouterr().err
    assert not output.exists()


def test_threads_option_gives_the_same_scores(files, tmp_path):
    code, output = _score(files, tmp_path, "query.npy", "s.parquet", "--threads", "1", "--quiet")
    assert code == 0
    expected = dtpm_fast.load(files["model"]).decision_function(files["X_query"])
    np.testing.assert_array_equal(pq.read_table(output)["score"].to_numpy(), expected)


# ---- score: safety -------------------------------------------------------------------------------


def test_existing_output_is_kept_without_overwrite(files, tmp_path, capsys):
    output = tmp_path / "s.csv"
    output.write_text("precious\n")
    code, _ = _score(files, tmp_path, "query.parquet", "s.csv", "--quiet")
    assert code == 1
    assert "--overwrite" in capsys.readouterr().err
    assert output.read_text() == "precious\n"
    code, _ = _score(files, tmp_path, "query.parquet", "s.csv", "--quiet", "--overwrite")
    assert code == 0
    assert _read(output).num_rows == len(files["X_query"])


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "m.dtpm", "in.parquet", "-o", "out.txt"],  # unknown output format
        ["score", "m.dtpm", "in.xlsx", "-o", "out.csv"],  # unknown input format
        ["score", "m.dtpm", "in.parquet"],  # no output
        ["score", "m.dtpm", "in.parquet", "-o", "o.csv", "--batch-rows", "0"],
        ["score", "m.dtpm", "in.parquet", "-o", "o.csv", "--contamination", "0.9"],
    ],
)
def test_usage_errors_exit_with_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_console_script_exit_codes(files, tmp_path):
    usage = subprocess.run(
        ["dtpm-fast", "score", "only-one-arg"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2
    error = subprocess.run(
        [
            "dtpm-fast",
            "score",
            str(tmp_path / "missing.dtpm"),
            str(files["root"] / "query.npy"),
            "-o",
            str(tmp_path / "s.csv"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert error.returncode == 1
    assert "does not exist" in error.stderr
    assert not (tmp_path / "s.csv").exists()


def _bad_csv(path):
    lines = ["id,f0,f1,f2,f3,f4"]
    for i in range(40):
        lines.append(f"{i},{i * 0.1:.1f},0.5,-0.5,1.0,0.25")
    lines[1 + 7] = "7,0.1,abc,0.1,0.1,0.1"  # non-numeric
    lines[1 + 12] = "12,0.1,0.1,,0.1,0.1"  # missing
    lines[1 + 20] = "20,0.1,0.1,0.1,nan,0.1"  # NaN
    lines[1 + 25] = "25,0.1,0.1,0.1"  # too few fields
    lines[1 + 31] = "31,0.1,0.1,0.1,0.1,inf"  # infinite
    path.write_text("\n".join(lines) + "\n")


def test_bad_row_stops_with_its_row_number(files, tmp_path, capsys):
    _bad_csv(tmp_path / "bad.csv")
    output = tmp_path / "s.parquet"
    code = main(
        ["score", str(files["model"]), str(tmp_path / "bad.csv"), "-o", str(output), "--batch-rows", "5"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "row 8: non-numeric value 'abc' in column 'f1'" in err
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]  # nothing written, nothing partial left


def test_bad_rows_are_skipped_counted_and_reported(files, tmp_path, capsys):
    _bad_csv(tmp_path / "bad.csv")
    output = tmp_path / "s.csv"
    code = main(
        [
            "score",
            str(files["model"]),
            str(tmp_path / "bad.csv"),
            "-o",
            str(output),
            "--batch-rows",
            "5",
            "--on-bad-row",
            "skip",
            "--id-column",
            "id",
            "--quiet",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped 5 bad row(s)" in err
    assert "row 26: expected 6 fields, found 4" in err  # rows counted as data rows, no line number
    table = pa_csv.read_csv(output)
    bad = {7, 12, 20, 25, 31}
    kept = [i for i in range(40) if i not in bad]
    assert table.column_names == ["id", "row", "score", "label"]
    np.testing.assert_array_equal(table["row"].to_numpy(), kept)
    np.testing.assert_array_equal(table["id"].to_numpy(), kept)
    X = np.array([[i * 0.1, 0.5, -0.5, 1.0, 0.25] for i in kept], dtype=np.float32)
    np.testing.assert_array_equal(
        table["score"].to_numpy(), dtpm_fast.load(files["model"]).decision_function(X)
    )


def test_parquet_nulls_nan_and_inf_are_bad_rows(tmp_path):
    X = np.ones((10, 3), dtype=np.float32)
    X[2, 1] = np.nan
    X[6, 0] = np.inf
    f2 = pa.array([1.0] * 4 + [None] + [1.0] * 5, type=pa.float64())
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": f2}), tmp_path / "t.parquet")
    reader = streaming.open_reader(tmp_path / "t.parquet", batch_rows=4, on_bad_row="skip")
    rows = np.concatenate([batch.rows for batch in reader])
    np.testing.assert_array_equal(rows, [0, 1, 3, 5, 7, 8, 9])
    assert reader.bad_rows.count == 3
    with pytest.raises(streaming.BadRowError, match="row 3: missing or NaN value in column 'b'"):
        list(streaming.open_reader(tmp_path / "t.parquet", batch_rows=4))


def test_interrupt_leaves_no_output(files, tmp_path):
    big = tmp_path / "big.npy"
    np.save(big, np.tile(files["X_query"], (4000, 1)))  # ~4M rows, scored 500 at a time
    output = tmp_path / "s.parquet"
    process = subprocess.Popen(
        [
            "dtpm-fast",
            "score",
            str(files["model"]),
            str(big),
            "-o",
            str(output),
            "--batch-rows",
            "500",
            "--threads",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: SIGINT at its default disposition, whatever this process inherited
        # (an ignored SIGINT is inherited across exec, and Python then never raises KeyboardInterrupt).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not any(name.endswith(".partial") for name in os.listdir(tmp_path)):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert sorted(os.listdir(tmp_path)) == ["big.npy"]


# ---- info ----------------------------------------------------------------------------------------


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == dtpm_fast.__version__
    assert "cuda" in info["build"] and "gpu_build" in info["faiss"]
    assert main(["info"]) == 0
    assert f"dtpm_fast {dtpm_fast.__version__}" in capsys.readouterr().out


# ---- streaming pieces ----------------------------------------------------------------------------


def test_parquet_batches_are_bounded_and_in_order(files):
    reader = streaming.open_reader(files["root"] / "query.parquet", batch_rows=128, id_column="id")
    batches = list(reader)
    assert max(len(b) for b in batches) <= 128
    assert reader.feature_columns == FEATURES
    np.testing.assert_array_equal(np.concatenate([b.rows for b in batches]), np.arange(len(files["X_query"])))
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), files["X_query"])
    assert all(b.features.flags.c_contiguous and b.features.dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.ids.to_numpy() for b in batches]), files["ids"])


def test_selected_text_column_is_refused(files):
    with pytest.raises(ValueError, match="'label_text' .* has type string, not a number"):
        streaming.open_reader(files["root"] / "query.parquet", columns=["f0", "label_text"])


def test_unparsable_values_are_found_by_bisection():
    values, bad = streaming._parse_floats(pa.array(["1", "2.5", "x", "4", "", "1e3", "nan", "7"] * 3))
    assert bad is not None
    np.testing.assert_array_equal(np.flatnonzero(bad), [2, 4, 10, 12, 18, 20])
    assert values[5] == 1000.0 and np.isnan(values[6]) and np.isnan(values[2])


def test_row_numbers_step_over_skipped_rows():
    skipped = [3, 4, 9]
    rows, cursor = streaming._row_numbers(0, 5, skipped)
    np.testing.assert_array_equal(rows, [0, 1, 2, 5, 6])
    rows, cursor = streaming._row_numbers(cursor, 4, skipped)
    np.testing.assert_array_equal(rows, [7, 8, 10, 11])
    assert skipped == [] and cursor == 12


def test_prefetch_preserves_order_and_reraises():
    assert list(streaming.prefetch(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("reader broke")

    with pytest.raises(RuntimeError, match="reader broke"):
        list(streaming.prefetch(failing()))


def test_atomic_output_removes_the_temporary_file_on_error(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "out.csv") as temporary:
        with open(temporary, "w") as handle:
            handle.write("half")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_progress_line_shows_rows_rate_and_eta(capsys):
    from dtpm_fast.cli.score import Progress

    class Reader:
        progress_total, progress_done = 1000, 250

    progress = Progress(Reader(), enabled=True, interval=0.0)
    progress.update(250, force=True)
    progress.finish()
    err = capsys.readouterr().err
    assert err.startswith("\r250 rows") and "rows/s" in err and "25.0%" in err and "ETA 0:" in err
    assert err.endswith("\n")
    silent = Progress(Reader(), enabled=False)
    silent.update(250, force=True)
    silent.finish()
    assert capsys.readouterr().err == ""


def test_posterior_mean_column_is_refused_for_the_multiscale_model(files, tmp_path, capsys):
    """Its score averages posterior means over K: not written as a posterior mean."""
    model = tmp_path / "plus.dtpm"
    dtpm_fast.DTPMMultiScale(n_neighbors=(1, 3)).fit(files["X_query"]).save(model)
    out = tmp_path / "s.csv"
    query = str(files["root"] / "query.parquet")
    code = main(
        ["score", str(model), query, "--columns", "f0,f1,f2,f3,f4", "-o", str(out), "--posterior-mean", "-q"]
    )
    assert code == 1 and not out.exists()
    assert "use view_scores" in capsys.readouterr().err
