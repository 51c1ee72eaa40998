"""The evaluation harness: the paper's protocol, metrics, the resumable runner and the report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from dtpm_fast import DTPMNonParametric, cli
from dtpm_fast.evaluation import metrics, protocol
from dtpm_fast.evaluation.report import match_paper_names
from dtpm_fast.evaluation.runner import RunConfig, read_runs, run


@pytest.fixture
def global_rng_restored():
    """The oracle below drives NumPy's global generator as the authors did; put it back afterwards."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def authors_protocol(X, y, seed, setting):
    """Literal replay of the authors' steps with the *global* legacy generator (the oracle).

    Order as in their data generator and runner: seed; reseed + resample draw; split; scale;
    zero-size draw of "labelled anomalies"; in unsup, the bootstrap.
    """
    X = X.astype(np.float64)
    np.random.seed(seed)
    if len(y) < 1000:
        np.random.seed(seed)
        idx = np.random.choice(np.arange(len(y)), 1000, replace=True)
        X, y = X[idx], y[idx]
    if len(y) > 50000:
        np.random.seed(seed)
        idx = np.random.choice(np.arange(len(y)), 50000, replace=False)
        X, y = X[idx], y[idx]
    if setting == "semi":
        rows = np.arange(len(X))
        normal, anomalous = rows[y == 0], rows[y == 1]
        n_train = round(0.5 * normal.size)
        train, test = normal[:n_train], np.append(normal[n_train:], anomalous)
        X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
    else:
        X_train, y_train, X_test, y_test = X.copy(), y.copy(), X.copy(), y.copy()
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    np.random.choice(np.where(y_train == 1)[0], 0, replace=False)
    if setting == "unsup":
        subset = np.random.choice(np.arange(len(X_test)), size=len(X_test), replace=True)
        X_train, y_train = X_test[subset], y_test[subset]
    return X_train, X_test, y_test, y_train


def synthetic(n, d=4, anomaly_share=0.1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, d) + rng.uniform(-5, 5, d)
    y = (rng.random(n) < anomaly_share).astype(np.int64)
    X[y == 1] += 4.0
    return X, y


# ---------------------------------------------------------------------------------- protocol


def test_resample_sizes_and_replacement():
    small = protocol.resample_indices(300, seed=3)
    assert small.shape == (1000,) and small.min() >= 0 and small.max() < 300
    assert len(np.unique(small)) < 1000  # drawn with replacement
    large = protocol.resample_indices(60_000, seed=3)
    assert large.shape == (50_000,) and len(np.unique(large)) == 50_000  # without replacement
    assert protocol.resample_indices(1000, seed=3) is None
    assert protocol.resample_indices(50_000, seed=3) is None


def test_resample_is_the_authors_global_generator(global_rng_restored):
    for n, size, replace in ((300, 1000, True), (60_000, 50_000, False)):
        np.random.seed(7)
        expected = np.random.choice(np.arange(n), size, replace=replace)
        np.testing.assert_array_equal(protocol.resample_indices(n, seed=7), expected)


def test_semi_split_keeps_order_and_rounds_half_to_even():
    y = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0], dtype=np.int64)  # 7 normals -> round(3.5) = 4
    train, test = protocol.semi_split_indices(y)
    np.testing.assert_array_equal(train, [0, 2, 3, 5])
    np.testing.assert_array_equal(test, [6, 7, 9, 1, 4, 8])  # remaining normals, then anomalies
    y = np.r_[np.zeros(901, dtype=np.int64), np.ones(5, dtype=np.int64)]  # round(450.5) = 450
    assert len(protocol.semi_split_indices(y)[0]) == 450


@pytest.mark.parametrize("n", [240, 3000, 52_000])
@pytest.mark.parametrize("setting", ["semi", "unsup"])
def test_prepare_reproduces_the_authors_rows(global_rng_restored, n, setting):
    X, y = synthetic(n, seed=n)
    split = protocol.prepare(X, y, seed=2, protocol=setting)
    X_train, X_test, y_test, y_train = authors_protocol(X, y, 2, setting)
    np.testing.assert_array_equal(split.y_test, y_test)
    np.testing.assert_array_equal(split.y_train, y_train)
    # Scaling the same values can differ in the last bit with memory alignment (pairwise sums).
    np.testing.assert_allclose(split.X_train, X_train, rtol=0, atol=1e-12)
    np.testing.assert_allclose(split.X_test, X_test, rtol=0, atol=1e-12)


def test_unsup_bootstrap_continues_after_the_anomaly_permutation(global_rng_restored):
    # Without the zero-size draw the bootstrap would be a plain choice from a fresh seed.
    X, y = synthetic(2000, seed=1)
    split = protocol.prepare(X, y, seed=0, protocol="unsup")
    naive = np.random.RandomState(0).choice(np.arange(2000), 2000, replace=True)
    scaled = StandardScaler().fit_transform(X)
    assert not np.allclose(split.X_train, scaled[naive])
    assert split.X_test.shape == (2000, X.shape[1])  # the test set is the whole data set


def test_semi_has_no_leakage_and_only_normal_training_rows():
    X, y = synthetic(3000, seed=5)
    X = np.c_[X, np.arange(3000)]  # a row id survives scaling as a monotone column
    split = protocol.prepare(X, y, seed=0, protocol="semi")
    assert (split.y_train == 0).all()
    train_ids, test_ids = split.X_train[:, -1], split.X_test[:, -1]
    assert len(np.intersect1d(np.round(train_ids, 9), np.round(test_ids, 9))) == 0
    assert len(train_ids) + len(test_ids) == 3000
    assert split.y_test.sum() == y.sum()


def test_seeds_reproduce_and_only_resampled_data_depends_on_the_seed():
    X, y = synthetic(500, seed=2)
    a, b = protocol.prepare(X, y, 1, "semi"), protocol.prepare(X, y, 1, "semi")
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(a.X_train, protocol.prepare(X, y, 2, "semi").X_train)
    X, y = synthetic(3000, seed=2)  # between 1000 and 50,000 rows: no shuffle, same split
    np.testing.assert_array_equal(
        protocol.prepare(X, y, 0, "semi").X_test, protocol.prepare(X, y, 4, "semi").X_test
    )


def test_scaling_fits_on_train_and_fills_nan_with_column_mean():
    X_train = np.array([[1.0, np.nan, 5.0], [3.0, np.nan, 5.0], [np.nan, np.nan, 5.0]])
    X_test = np.array([[2.0, 1.0, 6.0], [np.nan, 2.0, 5.0]])
    train, test = protocol.standard_scale(X_train, X_test)
    assert np.isfinite(train).all() and np.isfinite(test).all()
    np.testing.assert_allclose(train[:, 0], [-1.0, 1.0, 0.0])  # NaN -> mean of the scaled column
    np.testing.assert_allclose(train[:, 1], 0.0)  # an all-NaN column becomes 0
    np.testing.assert_allclose(test[:, 0], [0.0, 0.0])
    np.testing.assert_allclose(train[:, 2], 0.0)  # constant feature: scale 1, no inf
    np.testing.assert_allclose(test[:, 2], [1.0, 0.0])


def test_prepare_rejects_bad_arguments():
    X, y = synthetic(100)
    with pytest.raises(ValueError, match="protocol"):
        protocol.prepare(X, y, 0, "supervised")
    with pytest.raises(ValueError, match="seed"):
        protocol.prepare(X, y, -1, "semi")


def test_find_datasets_in_root_and_adbench_subfolders(tmp_path):
    X, y = synthetic(50)
    (tmp_path / "Classical").mkdir()
    (tmp_path / "NLP_by_BERT").mkdir()
    np.savez(tmp_path / "a_direct.npz", X=X, y=y)
    np.savez(tmp_path / "Classical" / "1_one.npz", X=X, y=y)
    np.savez(tmp_path / "NLP_by_BERT" / "news_2.npz", X=X, y=y)
    assert list(protocol.find_datasets(tmp_path)) == ["1_one", "a_direct", "news_2"]
    np.savez(tmp_path / "NLP_by_BERT" / "1_one.npz", X=X, y=y)
    with pytest.raises(ValueError, match="appears twice"):
        protocol.find_datasets(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        protocol.find_datasets(tmp_path / "missing")


def test_load_npz_refuses_pickled_arrays_and_bad_labels(tmp_path):
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match="allow_pickle"):
        protocol.load_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "labels.npz", X=np.zeros((3, 2)), y=np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="only 0"):
        protocol.load_npz(tmp_path / "labels.npz")
    X, y = protocol.load_npz(_write(tmp_path / "ok.npz", *synthetic(20)))
    assert X.dtype == np.float64 and y.dtype == np.int64


def _write(path: Path, X, y) -> Path:
    np.savez(path, X=X, y=y)
    return path


# ----------------------------------------------------------------------------------- metrics


def test_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.15).astype(np.int64)
    scores = rng.standard_normal(400) + 1.5 * y
    assert metrics.auc_roc(y, scores) == pytest.approx(100 * roc_auc_score(y, scores))
    assert metrics.auc_pr(y, scores) == pytest.approx(100 * average_precision_score(y, scores))
    top = np.zeros_like(y)
    top[np.argsort(-scores)[: y.sum()]] = 1
    assert metrics.f1_at_true_count(y, scores) == pytest.approx(100 * f1_score(y, top))


def test_metrics_treat_nan_scores_as_zero_and_need_both_classes():
    y = np.array([0, 0, 1, 1])
    assert metrics.auc_roc(y, [np.nan, -1.0, 2.0, 3.0]) == metrics.auc_roc(y, [0.0, -1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="both"):
        metrics.auc_roc(np.zeros(4), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="entries"):
        metrics.auc_pr(y, [1, 2, 3])


# ------------------------------------------------------------------------------------ report


def test_dataset_names_map_to_the_papers(shared_dir, reference_dir):
    import pandas as pd

    paper = list(pd.read_csv(reference_dir / "dte_paper_semi_aucroc.csv")["dataset"])
    ours = sorted(protocol.find_datasets(shared_dir / "data" / "adbench"))
    matches = match_paper_names(ours, paper)
    assert matches["6_cardio"].paper_name == "cardio"
    assert matches["22_magic.gamma"].paper_name == "magic.gamma"
    assert matches["27_PageBlocks"].paper_name == "pageblocks"
    assert matches["MVTec-AD_bottle"].paper_name == "MVTec-AD" and matches["MVTec-AD_bottle"].group
    assert matches["20news_3"].paper_name == "20news" and matches["20news_3"].group
    assert not matches["6_cardio"].group
    classical = protocol.find_datasets(shared_dir / "data" / "adbench" / "Classical")
    assert set(classical) <= set(matches)  # every classical file has a paper row
    assert "x_unknown" not in match_paper_names(["x_unknown"], paper)


# --------------------------------------------------------------------------- runner and CLI


@pytest.fixture
def data_dir(tmp_path, shared_dir) -> Path:
    """Two small ADBench files in Classical/ and a synthetic one directly in the folder."""
    folder = tmp_path / "data"
    (folder / "Classical").mkdir(parents=True)
    for name in ("42_WBC", "39_vertebral"):
        shutil.copy(shared_dir / "data" / "adbench" / "Classical" / f"{name}.npz", folder / "Classical")
    _write(folder / "synthetic_blobs.npz", *synthetic(1200, d=5, seed=9))
    return folder


def _runs_csv(out: Path) -> list[dict[str, str]]:
    with (out / "runs.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_end_to_end_writes_runs_report_and_plot(data_dir, tmp_path, reference_dir, capsys):
    out = tmp_path / "out"
    argv = [
        "evaluate",
        "--data",
        str(data_dir),
        "--models",
        "np,np-mode",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        "--reference",
        str(reference_dir),
    ]
    assert cli.main(argv) == 0
    rows = _runs_csv(out)
    assert len(rows) == 3 * 2 * 2
    assert {"dataset", "model", "seed", "auc_roc", "auc_pr", "f1", "fit_s", "score_s"} <= set(rows[0])
    assert {r["dataset"] for r in rows} == {"42_WBC", "39_vertebral", "synthetic_blobs"}
    for r in rows:
        assert 0.0 <= float(r["auc_roc"]) <= 100.0 and float(r["score_s"]) >= 0.0
        assert int(r["n_test"]) + int(r["n_train"]) == 1000 or r["dataset"] == "synthetic_blobs"
    blobs = [float(r["auc_roc"]) for r in rows if r["dataset"] == "synthetic_blobs"]
    assert min(blobs) > 95.0  # anomalies shifted by 4 std are easy
    report = (out / "report.md").read_text()
    assert "paper DTE-NP" in report and "| 42_WBC |" in report
    assert "synthetic_blobs" in report  # run but without a paper value
    captured = capsys.readouterr()
    assert "np (semi): mean AUC-ROC" in captured.out
    assert "[12/12]" in captured.err  # progress on stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot is optional (the eval extra); everything else was checked
        assert not (out / "aucroc_vs_paper.png").exists()
        return
    png = (out / "aucroc_vs_paper.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_rows_and_redoes_missing_ones(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    config = RunConfig(
        data_dir=data_dir, out_dir=out, models=["np"], seeds=[0, 1], datasets=["42_WBC", "synthetic_blobs"]
    )
    first = run(config)
    assert len(first) == 4
    # Simulate an interruption after two rows: keep the first two, as the atomic writer would.
    with (out / "runs.csv").open() as fh:
        lines = fh.readlines()
    (out / "runs.csv").write_text("".join(lines[:3]))
    capsys.readouterr()
    again = run(config)
    assert "2 to run, 2 already" in capsys.readouterr().err
    key = lambda r: (r["dataset"], r["seed"])
    assert sorted(map(key, again)) == sorted(map(key, first))
    by_key = {key(r): r["auc_roc"] for r in first}
    assert all(by_key[key(r)] == r["auc_roc"] for r in again)  # deterministic model, same split
    run(config)
    assert "0 to run, 4 already" in capsys.readouterr().err
    assert len(read_runs(out)) == 4


def test_resume_refuses_another_protocol(data_dir, tmp_path):
    out = tmp_path / "out"
    run(RunConfig(data_dir=data_dir, out_dir=out, models=["np"], seeds=[0], datasets=["42_WBC"]))
    with pytest.raises(ValueError, match="mix protocols"):
        run(
            RunConfig(
                data_dir=data_dir,
                out_dir=out,
                models=["np"],
                seeds=[0],
                datasets=["42_WBC"],
                protocol="unsup",
            )
        )


def test_unsup_run_and_knn_when_pyod_is_installed(data_dir, tmp_path):
    pytest.importorskip("pyod")
    out = tmp_path / "out"
    rows = run(
        RunConfig(
            data_dir=data_dir,
            out_dir=out,
            models=["np", "knn"],
            seeds=[0],
            datasets=["synthetic_blobs"],
            protocol="unsup",
        )
    )
    assert {r["model"] for r in rows} == {"np", "knn"}
    assert all(int(r["n_train"]) == int(r["n_test"]) == 1200 for r in rows)


def test_n_neighbors_reaches_the_neighbour_models_and_is_enforced_on_resume(data_dir, tmp_path):
    pytest.importorskip("pyod")
    from pyod.models.knn import KNN

    out = tmp_path / "out"
    config = {
        "data_dir": data_dir,
        "out_dir": out,
        "models": ["np", "knn"],
        "seeds": [0],
        "datasets": ["42_WBC"],
        "protocol": "unsup",
    }
    rows = run(RunConfig(**config, n_neighbors=32))
    assert all(json.loads(r["budget"]) == {"n_neighbors": 32} for r in rows)
    # the same numbers straight from the models with K = 32 on the protocol's rows
    X, y = protocol.load_npz(data_dir / "Classical" / "42_WBC.npz")
    split = protocol.prepare(X, y, 0, "unsup")
    X_train, X_test = (np.ascontiguousarray(a, dtype=np.float32) for a in (split.X_train, split.X_test))
    direct = {
        "np": DTPMNonParametric(n_neighbors=32, standardize=False).fit(X_train).decision_function(X_test),
        "knn": KNN(n_neighbors=32).fit(X_train).decision_function(X_test),
    }
    for r in rows:
        assert float(r["auc_roc"]) == pytest.approx(
            100 * roc_auc_score(split.y_test, direct[r["model"]]), abs=1e-3
        )
    with pytest.raises(ValueError, match="made with"):
        run(RunConfig(**config))  # K = 5 rows would mix with the K = 32 ones
    with pytest.raises(ValueError, match="n_neighbors must be a positive"):
        RunConfig(**config, n_neighbors=0)


def test_unsup_without_n_neighbors_points_at_the_papers_k(data_dir, tmp_path, capsys):
    argv = [
        "evaluate",
        "--data",
        str(data_dir),
        "--datasets",
        "synthetic_blobs",
        "--protocol",
        "unsup",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "a"),
    ]
    assert cli.main(argv) == 0
    assert "--n-neighbors 32" in capsys.readouterr().err
    assert cli.main([*argv[:-1], str(tmp_path / "b"), "--n-neighbors", "32"]) == 0
    assert "--n-neighbors 32" not in capsys.readouterr().err


def test_bad_configurations_name_the_problem(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        RunConfig(data_dir=data_dir, out_dir=tmp_path, models=["np", "forest"])
    with pytest.raises(ValueError, match="not found"):
        run(RunConfig(data_dir=data_dir, out_dir=tmp_path / "o", models=["np"], datasets=["6_cardio"]))
    assert cli.main(["evaluate", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 1


def test_trained_model_budget_is_recorded_and_enforced_on_resume(data_dir, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    config = {
        "data_dir": data_dir,
        "out_dir": out,
        "models": ["categorical"],
        "seeds": [0],
        "datasets": ["42_WBC"],
    }
    rows = run(RunConfig(**config, epochs=1, device="cpu"))
    assert len(rows) == 1 and '"epochs": 1' in rows[0]["budget"]
    with pytest.raises(ValueError, match="made with"):
        run(RunConfig(**config, epochs=2, device="cpu"))
