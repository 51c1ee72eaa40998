"""Parametric DTPM detectors (DTE-C, DTE-IG): contract, determinism, learning, export, loading, bad input.

Tiny networks and few epochs keep this file fast; the paper-recipe quality runs live in
studies/parametric_quality/parametric_quality.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dtpm_fast._validation import NotFittedError
from dtpm_fast.parametric.detectors import DTPMCategorical, DTPMInverseGamma
from dtpm_fast.parametric.export import ExportedScorer, inspect_export, load_exported

# TorchScript is deprecated by PyTorch >= 2.11 and every torch.jit call warns; the export code
# filters exactly these warnings itself, and this marker covers the tests that call torch.jit directly.
_JIT_DEPRECATION = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

FAST = {"hidden_sizes": (32, 32), "dropout": 0.1, "epochs": 25, "batch_size": 64, "lr": 3e-3, "T": 100}
DETECTORS = {
    "categorical": lambda **kw: DTPMCategorical(**{**FAST, "num_bins": 5, **kw}),
    "inverse_gamma": lambda **kw: DTPMInverseGamma(**{**FAST, **kw}),
}


@pytest.fixture(scope="module")
def data():
    """Normal training rows, and a test set of normal rows followed by shifted anomalies (d = 6)."""
    rng = np.random.default_rng(0)
    X_train = rng.standard_normal((256, 6)).astype(np.float32)
    normal = rng.standard_normal((60, 6))
    anomalies = rng.standard_normal((20, 6)) * 0.5 + 4.0
    X_test = np.vstack([normal, anomalies]).astype(np.float32)
    y_test = np.r_[np.zeros(60, dtype=np.int64), np.ones(20, dtype=np.int64)]
    return X_train, X_test, y_test


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted(request, data):
    return DETECTORS[request.param](random_state=0, contamination=0.1).fit(data[0])


# ---------------------------------------------------------------------------------- contract


def test_fit_returns_self_and_sets_training_attributes(data):
    model = DETECTORS["categorical"](random_state=1, epochs=2)
    assert model.fit(data[0]) is model
    assert model.decision_scores_.shape == (256,) and model.decision_scores_.dtype == np.float64
    assert set(np.unique(model.labels_)) <= {0, 1}
    assert model.labels_.mean() == pytest.approx(0.1, abs=0.02)
    assert model.n_features_in_ == 6
    assert model.loss_history_.shape == (2,) and np.isfinite(model.loss_history_).all()


def test_scores_labels_and_probabilities_have_the_contract_shapes(fitted, data):
    _, X_test, _ = data
    scores = fitted.decision_function(X_test)
    assert scores.shape == (80,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    np.testing.assert_allclose(fitted.decision_function(X_test[:7]), scores[:7], rtol=1e-6)
    labels = fitted.predict(X_test)
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels, (scores > fitted.threshold_).astype(np.int64))
    for method in ("linear", "unify"):
        proba = fitted.predict_proba(X_test, method=method)
        assert proba.shape == (80, 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    confidence = fitted.predict_confidence(X_test)
    assert confidence.shape == (80,) and ((confidence >= 0) & (confidence <= 1)).all()


def test_categorical_score_is_the_expected_bin_of_the_posterior(data):
    model = DETECTORS["categorical"](random_state=0, epochs=3).fit(data[0])
    post = model.posterior(data[1])
    assert post.shape == (80, 5) and post.dtype == np.float64
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.decision_function(data[1]), post @ np.arange(5), atol=1e-5)
    assert (model.decision_function(data[1]) <= 4).all()


def test_inverse_gamma_score_is_the_posterior_mode(data):
    model = DETECTORS["inverse_gamma"](random_state=0, epochs=3).fit(data[0])
    post = model.posterior(data[1])
    assert post.shape == (80, 2)
    np.testing.assert_array_equal(post[:, 0], 6 / 2 - 1)  # the shape a = d/2 - 1
    assert (post[:, 1] >= 0).all()
    np.testing.assert_allclose(model.decision_function(data[1]), post[:, 1] / (post[:, 0] + 1), rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_training_learns_to_rank_anomalies_above_normal_rows(kind, data):
    from sklearn.metrics import roc_auc_score

    X_train, X_test, y_test = data
    # 100 epochs = 400 steps: the default (fast) recipe's warm-up and cosine decay leave too few
    # steps at full rate in 25 epochs, where one seed in five still ranks at random.
    model = DETECTORS[kind](random_state=0, epochs=100).fit(X_train)
    assert roc_auc_score(y_test, model.decision_function(X_test)) > 0.9
    assert model.loss_history_[-5:].mean() < model.loss_history_[:5].mean()


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_same_random_state_gives_the_same_model_and_leaves_global_rng_alone(kind, data):
    X_train, X_test, _ = data
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = DETECTORS[kind](random_state=5, epochs=3).fit(X_train)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = DETECTORS[kind](random_state=5, epochs=3).fit(X_train)
    c = DETECTORS[kind](random_state=6, epochs=3).fit(X_train)
    np.testing.assert_array_equal(a.decision_function(X_test), b.decision_function(X_test))
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    assert not np.array_equal(a.decision_function(X_test), c.decision_function(X_test))


def test_random_state_accepts_a_numpy_generator(data):
    a = DETECTORS["categorical"](random_state=np.random.default_rng(3), epochs=1).fit(data[0])
    b = DETECTORS["categorical"](random_state=np.random.default_rng(3), epochs=1).fit(data[0])
    np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)


def test_standardize_false_and_dataframe_input(data):
    pd = pytest.importorskip("pandas")
    X_train, X_test, _ = data
    model = DETECTORS["categorical"](random_state=0, epochs=2, standardize=False).fit(pd.DataFrame(X_train))
    np.testing.assert_array_equal(
        model.decision_function(pd.DataFrame(X_test)), model.decision_function(X_test)
    )


def test_sklearn_clone_and_params():
    from sklearn.base import clone

    model = DTPMCategorical(num_bins=9, epochs=3, random_state=4)
    twin = clone(model)
    assert twin.get_params() == model.get_params()
    assert DTPMCategorical().get_params()["hidden_sizes"] == (256, 512, 256)
    assert "num_bins" not in DTPMInverseGamma().get_params()
    assert model.set_params(num_bins=3) is model and model.num_bins == 3
    assert "DTPMCategorical(" in repr(model)


def test_importing_the_package_does_not_import_torch():
    code = (
        "import sys, dtpm_fast, dtpm_fast.parametric.detectors, dtpm_fast.parametric.export;"
        "m = dtpm_fast.parametric.detectors.DTPMCategorical(epochs=1);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_bad_input_raises_clear_errors(kind, fitted, data):
    _, X_test, _ = data
    with pytest.raises(NotFittedError, match="not fitted"):
        DETECTORS[kind]().decision_function(X_test)
    with pytest.raises(NotFittedError):
        DETECTORS[kind]().export("unused.pt2")
    bad = X_test.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        fitted.decision_function(bad)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        DETECTORS[kind](epochs=1).fit(bad)
    with pytest.raises(ValueError, match="2-D"):
        fitted.decision_function(X_test[0])
    with pytest.raises(ValueError, match="features"):
        fitted.decision_function(X_test[:, :5])
    with pytest.raises(ValueError, match="empty"):
        fitted.decision_function(np.empty((0, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="numeric"):
        fitted.decision_function([["a"] * 6])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"T": 1}, "T must be"),
        ({"epochs": 0}, "epochs must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"hidden_sizes": ()}, "hidden_sizes"),
        ({"hidden_sizes": (8, 0)}, "hidden_sizes"),
        ({"dropout": 1.0}, "dropout"),
        ({"lr": 0.0}, "lr must be"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"contamination": 0.7}, "contamination"),
        ({"device": "tpu"}, "device"),
        ({"random_state": "seed"}, "random_state"),
        ({"num_bins": 1}, "num_bins"),
        ({"T": 5, "num_bins": 7}, "must not exceed T"),
        ({"loss": "logits"}, "loss must be one of"),
    ],
)
def test_bad_parameters_are_rejected_at_fit(params, match, data):
    with pytest.raises(ValueError, match=match):
        DTPMCategorical(**{**FAST, "num_bins": 5, **params}).fit(data[0])


def test_categorical_losses_match_their_definitions():
    from dtpm_fast.parametric.training import categorical_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen, dtype=torch.float64) * 3
    t = torch.randint(0, 400, (50,), generator=gen)
    bins = torch.clamp(t * 7 // 400, max=6)
    # Oracle: -log of the target's probability, once (logits) or after a second softmax.
    p = torch.softmax(logits, dim=1)
    want_ce = -torch.log(p[torch.arange(50), bins]).mean()
    q = torch.exp(p) / torch.exp(p).sum(dim=1, keepdim=True)
    want_double = -torch.log(q[torch.arange(50), bins]).mean()
    torch.testing.assert_close(categorical_loss(logits, t, 400, 7, "cross_entropy"), want_ce)
    torch.testing.assert_close(categorical_loss(logits, t, 400, 7, "double_softmax"), want_double)


def test_double_softmax_loss_trains_a_different_model_with_the_same_scorer(data, tmp_path):
    X_train, X_test, _ = data
    ce = DETECTORS["categorical"](random_state=2, epochs=3).fit(X_train)
    ds = DETECTORS["categorical"](random_state=2, epochs=3, loss="double_softmax").fit(X_train)
    # A second softmax of probabilities bounds the loss: log(K - 1 + e) - 1 <= loss <= log(K - 1 + e).
    upper = np.log(5 - 1 + np.e)
    assert ((ds.loss_history_ >= upper - 1 - 1e-6) & (ds.loss_history_ <= upper + 1e-6)).all()
    assert not np.allclose(ce.loss_history_, ds.loss_history_)
    assert not np.allclose(ce.decision_function(X_test), ds.decision_function(X_test))
    np.testing.assert_allclose(ds.decision_function(X_test), ds.posterior(X_test) @ np.arange(5), rtol=1e-5)
    ds.save(tmp_path / "ds.dtpm")
    from dtpm_fast import load

    back = load(tmp_path / "ds.dtpm")
    assert back.loss == "double_softmax"
    np.testing.assert_array_equal(back.decision_function(X_test), ds.decision_function(X_test))


def test_inverse_gamma_needs_three_features():
    X = np.random.default_rng(0).standard_normal((50, 2))
    with pytest.raises(ValueError, match="at least 3"):
        DTPMInverseGamma(epochs=1).fit(X)
    DTPMCategorical(**FAST).set_params(epochs=1).fit(X)  # the categorical model has no such limit


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_explicit_cuda_without_a_gpu_says_why(data):
    with pytest.raises(ValueError, match="CUDA is not usable"):
        DTPMCategorical(**FAST, device="cuda").fit(data[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_and_scoring_matches_its_export(tmp_path, data):
    X_train, X_test, _ = data
    model = DETECTORS["categorical"](random_state=0, device="cuda").fit(X_train)
    expected = model.decision_function(X_test)
    for fmt in ("pt2", "torchscript"):
        model.export(tmp_path / f"m.{fmt}", format=fmt)
        for device in ("cpu", "cuda"):
            scorer = load_exported(tmp_path / f"m.{fmt}", device=device)
            np.testing.assert_allclose(scorer.decision_function(X_test), expected, atol=1e-4)


# ---------------------------------------------------------------------------------- export

_FRESH_PROCESS_SCORER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    x = torch.from_numpy(np.load(sys.argv[1]))
    metas = {}
    for path in sys.argv[2:]:
        extra = {"dtpm_meta.json": ""}
        if path.endswith(".pt"):
            module = torch.jit.load(path, _extra_files=extra)
        else:
            module = torch.export.load(path, extra_files=extra).module()
        with torch.inference_mode():
            scores = module(x).numpy()
            single = module(x[:1]).numpy()
        assert single.shape == (1,), single.shape
        np.save(path + ".scores.npy", scores)
        metas[path] = json.loads(extra["dtpm_meta.json"])
    assert not any(name.startswith("dtpm_fast") for name in sys.modules), "dtpm_fast was imported"
    print(json.dumps(metas))
    """
)


def test_exports_score_identically_in_a_fresh_process_without_dtpm_fast(tmp_path, data):
    """Both kinds x both formats, scored by plain torch.jit.load / torch.export.load in one fresh process."""
    import dtpm_fast

    X_train, X_test, _ = data
    models = {kind: DETECTORS[kind](random_state=0, epochs=3).fit(X_train) for kind in DETECTORS}
    paths = {}
    for kind, model in models.items():
        for fmt, suffix in (("torchscript", ".pt"), ("pt2", ".pt2")):
            paths[kind, fmt] = str(tmp_path / f"{kind}{suffix}")
            model.export(paths[kind, fmt], format=fmt)
    np.save(tmp_path / "x.npy", X_test)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_SCORER, str(tmp_path / "x.npy"), *paths.values()],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    metas = json.loads(result.stdout.strip().splitlines()[-1])
    for (kind, fmt), path in paths.items():
        model = models[kind]
        scores = np.load(path + ".scores.npy")
        np.testing.assert_allclose(scores, model.decision_function(X_test), rtol=1e-5, atol=1e-5)
        meta = metas[path]
        assert meta["kind"] == kind and meta["export_format"] == fmt
        assert meta["n_features"] == 6 and meta["T"] == 100
        assert meta["num_bins"] == (5 if kind == "categorical" else None)
        assert meta["threshold"] == pytest.approx(model.threshold_)
        assert meta["version"] == dtpm_fast.__version__


def test_export_rejects_an_unknown_format(fitted, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        fitted.export(tmp_path / "m.onnx", format="onnx")


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_load_exported_gives_a_working_scorer(tmp_path, fitted, data, fmt):
    _, X_test, _ = data
    path = tmp_path / f"model.{fmt}"
    fitted.export(path, format=fmt)
    scorer = load_exported(path)
    assert isinstance(scorer, ExportedScorer) and scorer.format_ == fmt
    np.testing.assert_allclose(scorer.decision_function(X_test), fitted.decision_function(X_test), atol=1e-5)
    np.testing.assert_array_equal(scorer.predict(X_test), fitted.predict(X_test))
    np.testing.assert_allclose(scorer.predict_proba(X_test), fitted.predict_proba(X_test), atol=1e-5)
    np.testing.assert_allclose(scorer.decision_scores_, fitted.decision_scores_)
    assert scorer.threshold_ == pytest.approx(fitted.threshold_)
    assert scorer.decision_function(X_test[:1]).shape == (1,)
    with pytest.raises(ValueError, match="features"):
        scorer.decision_function(X_test[:, :3])
    with pytest.raises(TypeError, match="inference-only"):
        scorer.fit(X_test)


def _truncate(src, dst):
    blob = src.read_bytes()
    dst.write_bytes(blob[: len(blob) // 2])


def _flip_middle(src, dst):
    """Corrupt the stored weights: flip bytes inside the first data member (CRC mismatch)."""
    with zipfile.ZipFile(src) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64)
    blob = bytearray(src.read_bytes())
    # Member data starts after the local header, whose name and extra lengths are at bytes 26..29.
    name_len, extra_len = np.frombuffer(bytes(blob[info.header_offset + 26 : info.header_offset + 30]), "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len) + 16
    for i in range(start, start + 8):
        blob[i] ^= 0xFF
    dst.write_bytes(bytes(blob))


def _edit_member(src, dst, tail, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            payload = zin.read(item.filename)
            if item.filename.endswith(tail):
                payload = edit(payload)
            zout.writestr(item, payload)


def test_load_exported_refuses_pt2_files_that_would_need_pickle(tmp_path, fitted):
    good = tmp_path / "good.pt2"
    fitted.export(good, format="pt2")
    pickled_weights = tmp_path / "pickled_weights.pt2"
    _edit_member(
        good,
        pickled_weights,
        "model_weights_config.json",
        lambda b: b.replace(b'"use_pickle": false', b'"use_pickle": true'),
    )
    with pytest.raises(ValueError, match="would be unpickled"):
        load_exported(pickled_weights)
    sample_inputs = tmp_path / "sample_inputs.pt2"
    _edit_member(good, sample_inputs, "sample_inputs/model.pt", lambda b: b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="pickled sample inputs"):
        load_exported(sample_inputs)


def _drop_metadata(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("dtpm_meta.json"):
                zout.writestr(item, zin.read(item.filename))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
@pytest.mark.parametrize(
    "damage, match",
    [
        (_truncate, "zip archive cannot be read|not a usable"),
        (_flip_middle, "damaged"),
        (_drop_metadata, "carries no dtpm_meta.json"),
    ],
)
def test_load_exported_rejects_damaged_files(tmp_path, fitted, fmt, damage, match):
    good = tmp_path / f"good.{fmt}"
    fitted.export(good, format=fmt)
    bad = tmp_path / f"bad.{fmt}"
    damage(good, bad)
    with pytest.raises(ValueError, match=match):
        load_exported(bad)


def test_load_exported_rejects_wrong_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_exported(tmp_path / "missing.pt2")
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="zip signature"):
        load_exported(text)
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("a/readme.txt", "hello")
    with pytest.raises(ValueError, match="neither a TorchScript module nor a torch.export pt2"):
        load_exported(other_zip)
    foreign = tmp_path / "foreign.pt2"
    module = torch.nn.Linear(3, 1)
    torch.export.save(torch.export.export(module, (torch.zeros(2, 3),)), str(foreign))
    with pytest.raises(ValueError, match="not exported by dtpm_fast"):
        load_exported(foreign)
    assert inspect_export  # the validation step is public for the persistence module


# ---------------------------------------------------------------------------------- persistence hooks


def test_top_level_names_save_load_and_pickle(tmp_path, data):
    """dtpm_fast.DTPMCategorical is the same class; save/load and pickle go through the state hooks."""
    import pickle

    import dtpm_fast

    assert dtpm_fast.DTPMCategorical is DTPMCategorical and dtpm_fast.DTPMInverseGamma is DTPMInverseGamma
    X_train, X_test, _ = data
    model = DETECTORS["inverse_gamma"](random_state=0, epochs=2).fit(X_train)
    model.save(tmp_path / "model.dtpm")
    loaded = dtpm_fast.load(tmp_path / "model.dtpm")
    assert type(loaded) is DTPMInverseGamma and loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.decision_function(X_test), model.decision_function(X_test))
    unpickled = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(unpickled.decision_function(X_test), model.decision_function(X_test))
    model.export(tmp_path / "model.pt2", format="pt2")
    scorer = dtpm_fast.load(tmp_path / "model.pt2")
    assert isinstance(scorer, ExportedScorer)
    np.testing.assert_allclose(scorer.decision_function(X_test), model.decision_function(X_test), atol=1e-5)


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_state_hooks_round_trip_without_pickle(kind, data):
    X_train, X_test, _ = data
    model = DETECTORS[kind](random_state=np.random.default_rng(0), epochs=2).fit(X_train)
    meta, arrays, blobs = model._get_state()
    json.dumps(meta)  # plain JSON
    assert blobs == {}
    assert all(isinstance(a, np.ndarray) and a.dtype.kind in "fiu" for a in arrays.values())
    clone = type(model)._from_state(json.loads(json.dumps(meta)), arrays, blobs)
    np.testing.assert_array_equal(clone.decision_function(X_test), model.decision_function(X_test))
    np.testing.assert_array_equal(clone.labels_, model.labels_)
    assert clone.get_params()["hidden_sizes"] == model.hidden_sizes
    other = DTPMInverseGamma if kind == "categorical" else DTPMCategorical
    with pytest.raises(ValueError, match="saved state is a"):
        other._from_state(meta, arrays, blobs)
    broken = dict(arrays)
    broken.pop(next(k for k in arrays if k.endswith("weight")))
    with pytest.raises(ValueError, match="do not match"):
        type(model)._from_state(meta, broken, blobs)


# ---------------------------------------------------------------------------------- _torch_utils


def test_minibatches_cover_every_row_once():
    from dtpm_fast._torch_utils import iter_minibatches

    batches = list(iter_minibatches(10, 4, shuffle=True))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert [len(b) for b in iter_minibatches(10, 4, shuffle=False, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_minibatches(10, 0))


def test_resolve_seed_rules():
    from dtpm_fast._torch_utils import resolve_seed

    assert resolve_seed(7) == 7 and resolve_seed(np.int64(7)) == 7
    assert resolve_seed(np.random.default_rng(1)) == resolve_seed(np.random.default_rng(1))
    assert resolve_seed(np.random.RandomState(1)) == resolve_seed(np.random.RandomState(1))
    assert resolve_seed(None) >= 0
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="random_state"):
            resolve_seed(bad)


def test_batched_inference_matches_one_call_and_reads_read_only_input():
    from dtpm_fast._torch_utils import batched_inference

    X = np.random.default_rng(0).standard_normal((101, 3)).astype(np.float32)
    X.flags.writeable = False
    out = batched_inference(lambda x: x.sum(dim=1), X, batch_size=7, n_threads=1)
    np.testing.assert_allclose(out, X.sum(axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="no rows"):
        batched_inference(lambda x: x, X[:0])


@pytest.mark.parametrize("cls", [DTPMCategorical, DTPMInverseGamma])
def test_cpu_scoring_in_blocks_equals_one_call_over_all_rows(cls):
    # CPU scoring calls the network on CPU_INFERENCE_BATCH-row blocks (cache-resident
    # activations); a row's score must not depend on that blocking beyond float32 rounding.
    from dtpm_fast._torch_utils import CPU_INFERENCE_BATCH, batched_inference

    rng = np.random.default_rng(3)
    model = cls(epochs=1, random_state=0, device="cpu").fit(rng.standard_normal((128, 6), dtype=np.float32))
    X = rng.standard_normal((2 * CPU_INFERENCE_BATCH + 17, 6), dtype=np.float32)
    whole = batched_inference(model._module, X, batch_size=len(X))
    np.testing.assert_allclose(model.decision_function(X), whole, rtol=1e-5, atol=1e-6)


def test_progress_reporter_writes_only_when_enabled(capsys):
    from dtpm_fast._torch_utils import ProgressReporter

    quiet = ProgressReporter(2)  # stderr is captured, not a terminal
    quiet.update(1, 0.5, 10)
    quiet.close()
    assert capsys.readouterr().err == ""
    loud = ProgressReporter(2, label="unit", enabled=True, min_interval=0.0)
    loud.update(1, 0.5, 10)
    loud.update(2, 0.25, 10)
    loud.close()
    err = capsys.readouterr().err
    assert "unit: epoch 2/2" in err and "loss 0.2500" in err and "rows/s" in err and err.endswith("\n")


def test_load_exported_rejects_invalid_metadata(tmp_path, fitted):
    good = tmp_path / "good.pt"
    fitted.export(good, format="torchscript")
    for edit in (
        lambda meta: meta.update(n_features="six"),
        lambda meta: meta.update(producer="someone else"),
        lambda meta: meta.pop("threshold"),
    ):
        bad = tmp_path / "bad.pt"

        def rewrite(payload, edit=edit):
            meta = json.loads(payload)
            edit(meta)
            return json.dumps(meta).encode()

        _edit_member(good, bad, "dtpm_meta.json", rewrite)
        with pytest.raises(ValueError, match="dtpm_meta.json"):
            load_exported(bad)
    bad = tmp_path / "bad_json.pt"
    _edit_member(good, bad, "dtpm_meta.json", lambda payload: b"{not json")
    with pytest.raises(ValueError, match="not valid"):
        load_exported(bad)


# ------------------------------------------------------------------ bfloat16 inference option


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_bfloat16_inference_tracks_float32_scores_and_exports_float32(kind, data, tmp_path):
    """The bfloat16 option changes scoring only: same training, scores near the float32 ones."""
    from scipy.stats import spearmanr

    import dtpm_fast

    X_train, X_test, _ = data
    exact = DETECTORS[kind](random_state=0).fit(X_train)
    fast = DETECTORS[kind](random_state=0, inference_precision="bfloat16").fit(X_train)
    reference, scores = exact.decision_function(X_test), fast.decision_function(X_test)
    assert scores.dtype == np.float64 and np.all(np.isfinite(scores))
    assert not np.array_equal(scores, reference)  # the option does take effect
    # Errors of ~1% of the score's range: near-zero inverse-Gamma scores (s ~ 0) move by more
    # than 10% of themselves, so the bound is absolute.
    span = np.ptp(reference)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=0.02 * span)
    assert spearmanr(scores, reference).statistic > 0.99
    np.testing.assert_allclose(fast.decision_scores_, exact.decision_scores_, rtol=0, atol=0.02 * span)
    # The float32 network is untouched: the export writes it, and it scores as the float32 model.
    assert isinstance(fast._module.net, torch.nn.Sequential)
    path = tmp_path / "m.pt2"
    fast.export(str(path))
    np.testing.assert_allclose(load_exported(str(path)).decision_function(X_test), reference, rtol=1e-5)
    fast.save(str(tmp_path / "m.dtpm"))
    back = dtpm_fast.load(str(tmp_path / "m.dtpm"))
    assert back.inference_precision == "bfloat16"
    np.testing.assert_array_equal(back.decision_function(X_test), scores)


def test_inference_precision_is_validated_and_fixed_by_fit(data):
    X_train, X_test, _ = data
    with pytest.raises(ValueError, match="inference_precision must be one of"):
        DETECTORS["categorical"](inference_precision="float16").fit(X_train)
    model = DETECTORS["categorical"](random_state=0, epochs=1).fit(X_train)
    model.set_params(inference_precision="bfloat16")
    with pytest.raises(ValueError, match="call fit again"):
        model.decision_function(X_test)
