"""DDPMReconstruction: contract, determinism, early stop, reverse-chain math, persistence, learning.

Every model here is tiny (narrow widths, few epochs, few reverse steps) so the file runs in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dtpm_fast._validation import NotFittedError
from dtpm_fast.baselines.ddpm import (
    DDPMNoiseNetwork,
    DDPMReconstruction,
    ddpm_schedule,
    reconstruction_score,
    should_stop_early,
)

TINY = {
    "T": 100,
    "reconstruction_steps": 20,
    "epochs": 8,
    "batch_size": 32,
    "width": 16,
    "block_hidden": 32,
    "time_width": 16,
    "n_blocks": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X_train = rng.normal(size=(160, 4))
    X_test = np.vstack([rng.normal(size=(40, 4)), rng.normal(loc=4.0, size=(40, 4))])
    y_test = np.r_[np.zeros(40), np.ones(40)]
    return X_train, X_test, y_test


@pytest.fixture(scope="module")
def fitted(data):
    return DDPMReconstruction(random_state=0, **TINY).fit(data[0])


# ---------------------------------------------------------------------------------- contract
def test_fit_returns_self_and_sets_pyod_attributes(data):
    X_train = data[0]
    model = DDPMReconstruction(random_state=1, contamination=0.1, **TINY)
    assert model.fit(X_train) is model
    assert model.decision_scores_.shape == (X_train.shape[0],)
    assert model.decision_scores_.dtype == np.float64
    assert np.all(model.decision_scores_ >= 0)
    assert model.labels_.sum() == np.sum(model.decision_scores_ > model.threshold_)
    assert 0 < model.labels_.mean() <= 0.15
    assert model.n_features_in_ == 4
    assert 1 <= model.n_epochs_ <= TINY["epochs"]
    assert model.loss_history_.shape == (model.n_epochs_,)


def test_prediction_methods_shapes_and_ranges(fitted, data):
    X_test = data[1]
    labels = fitted.predict(X_test)
    assert labels.shape == (80,) and set(np.unique(labels)) <= {0, 1}
    for method in ("linear", "unify"):
        proba = fitted.predict_proba(X_test, method=method)
        assert proba.shape == (80, 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert proba.min() >= 0 and proba.max() <= 1
    conf = fitted.predict_confidence(X_test)
    assert conf.shape == (80,) and conf.min() >= 0 and conf.max() <= 1


def test_training_scores_equal_rescoring_the_training_set(fitted, data):
    # Same chain, same seed, same batch layout: decision_scores_ is reproducible by the user.
    np.testing.assert_array_equal(fitted.decision_function(data[0]), fitted.decision_scores_)


def test_sklearn_params_and_clone():
    from sklearn.base import clone

    model = DDPMReconstruction(T=50, reconstruction_steps=10, random_state=3)
    params = model.get_params()
    assert params["T"] == 50 and params["reconstruction_steps"] == 10 and params["random_state"] == 3
    twin = clone(model)
    assert twin.get_params() == params and twin is not model
    model.set_params(epochs=5)
    assert model.epochs == 5
    with pytest.raises(ValueError, match="Invalid parameter"):
        model.set_params(not_a_param=1)


def test_not_fitted_raises():
    model = DDPMReconstruction(**TINY)
    with pytest.raises(NotFittedError, match="fit"):
        model.decision_function(np.zeros((2, 4)))
    with pytest.raises(NotFittedError):
        model.predict(np.zeros((2, 4)))


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "X, match",
    [
        (np.array([[0.0, np.nan, 1.0, 2.0]] * 5), "NaN"),
        (np.zeros(8), "2-D"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((1, 4)), "at least 2 rows"),
        ([["a", "b"], ["c", "d"]], "numeric"),
    ],
)
def test_bad_training_input(X, match):
    with pytest.raises(ValueError, match=match):
        DDPMReconstruction(**TINY).fit(X)


def test_wrong_feature_count_at_scoring(fitted):
    with pytest.raises(ValueError, match="features"):
        fitted.decision_function(np.zeros((3, 5)))


@pytest.mark.parametrize(
    "override, match",
    [
        ({"reconstruction_steps": 200}, "reconstruction_steps"),
        ({"T": 0}, "T"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"dropout": (0.4,)}, "dropout"),
        ({"dropout": (0.4, 1.0)}, "dropout"),
        ({"time_width": 15}, "time_width"),
        ({"contamination": 0.7}, "contamination"),
        ({"device": "tpu"}, "device"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": np.random.default_rng(0)}, "random_state"),
        ({"sampling_noise": "yes"}, "sampling_noise"),
    ],
)
def test_bad_parameters(data, override, match):
    with pytest.raises(ValueError, match=match):
        DDPMReconstruction(**{**TINY, **override}).fit(data[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_explicit_cuda_without_gpu_raises(data):
    with pytest.raises(ValueError, match="CUDA"):
        DDPMReconstruction(**{**TINY, "device": "cuda"}).fit(data[0])


# ------------------------------------------------------------------------------- determinism
def test_same_random_state_same_model_and_scores(data):
    X_train, X_test, _ = data
    a = DDPMReconstruction(random_state=7, **TINY).fit(X_train)
    b = DDPMReconstruction(random_state=7, **TINY).fit(X_train)
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    np.testing.assert_array_equal(a.decision_function(X_test), b.decision_function(X_test))
    # Repeated scoring calls reseed the chain's generator: identical scores.
    np.testing.assert_array_equal(a.decision_function(X_test), a.decision_function(X_test))


def test_different_random_state_differs(data):
    X_train, X_test, _ = data
    a = DDPMReconstruction(random_state=1, **TINY).fit(X_train)
    b = DDPMReconstruction(random_state=2, **TINY).fit(X_train)
    assert not np.array_equal(a.decision_function(X_test), b.decision_function(X_test))


def test_fit_leaves_global_torch_rng_untouched(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DDPMReconstruction(random_state=0, **TINY).fit(data[0])
    torch.testing.assert_close(torch.rand(3), expected)


def test_sampling_noise_is_reproducible_with_random_state(data):
    X_train, X_test, _ = data
    noisy = DDPMReconstruction(random_state=5, sampling_noise=True, **TINY).fit(X_train)
    first = noisy.decision_function(X_test)
    np.testing.assert_array_equal(noisy.decision_function(X_test), first)
    noisy.set_params(random_state=6)  # another scoring seed, same network
    assert not np.array_equal(noisy.decision_function(X_test), first)
    noisy.set_params(sampling_noise=False)  # changes what the training scores mean: refit first
    with pytest.raises(ValueError, match="sampling_noise"):
        noisy.decision_function(X_test)
    quiet = DDPMReconstruction(random_state=5, sampling_noise=False, **TINY).fit(X_train)
    mean_path = quiet.decision_function(X_test)
    assert not np.allclose(mean_path, first)
    quiet.set_params(random_state=7)  # the noise-free chain ignores the scoring seed
    np.testing.assert_array_equal(quiet.decision_function(X_test), mean_path)


def test_random_state_none_noisy_scoring_varies(data):
    model = DDPMReconstruction(random_state=None, sampling_noise=True, **TINY).fit(data[0])
    a, b = model.decision_function(data[1]), model.decision_function(data[1])
    assert np.isfinite(a).all() and not np.array_equal(a, b)


def test_random_state_none_still_scores(data):
    model = DDPMReconstruction(random_state=None, **TINY).fit(data[0])
    scores = model.decision_function(data[1])
    assert scores.shape == (80,) and np.isfinite(scores).all()


# -------------------------------------------------------------------------------- early stop
def test_early_stop_rule():
    # Decreasing loss never stops.
    assert not should_stop_early(list(np.linspace(1.0, 0.1, 300)))
    # No stop while the latest epoch index is <= 50 (51 epochs done), however bad the loss.
    assert not should_stop_early([1.0] * 10 + [5.0] * 41)
    # 52 epochs done (latest index 51): compared with losses[52 - 40] = losses[12].
    history = [1.0] * 51 + [1.5]
    assert should_stop_early(history)
    assert not should_stop_early([1.0] * 52)  # equal is not worse
    history = list(np.linspace(1.0, 0.5, 52))
    history[12] = 0.2  # the epoch the authors' index len - 40 points at
    assert should_stop_early(history)
    history[12], history[11] = 1.0, 0.2  # the epoch 40 before the latest does not matter
    assert not should_stop_early(history)


def test_fit_stops_when_the_rule_fires(data, monkeypatch):
    import dtpm_fast.baselines.ddpm as ddpm_module

    calls = []

    def stop_after_three(losses):
        calls.append(len(losses))
        return len(losses) >= 3

    monkeypatch.setattr(ddpm_module, "should_stop_early", stop_after_three)
    model = DDPMReconstruction(random_state=0, **TINY).fit(data[0])
    assert model.n_epochs_ == 3 and calls == [1, 2, 3]
    no_stop = DDPMReconstruction(random_state=0, early_stopping=False, **TINY).fit(data[0])
    assert no_stop.n_epochs_ == TINY["epochs"]


# ------------------------------------------------------------------- reverse chain vs. NumPy
def _numpy_network(state: dict, x: np.ndarray, t: np.ndarray, time_width: int) -> np.ndarray:
    """Direct float64 NumPy forward pass of DDPMNoiseNetwork in eval mode."""

    def linear(h, name):
        return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    def batchnorm(h, name):
        mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
        return (h - mean) / np.sqrt(var + 1e-5) * state[f"{name}.weight"] + state[f"{name}.bias"]

    def silu(h):
        return h / (1.0 + np.exp(-h))

    half = time_width // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    angles = t[:, None].astype(np.float64) * freqs[None, :]
    temb = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    temb = linear(silu(linear(temb, "time_mlp.0")), "time_mlp.2")
    h = linear(x, "input_proj") + linear(silu(temb), "time_proj.1")
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(n_blocks):
        inner = np.maximum(linear(batchnorm(h, f"blocks.{i}.body.0"), f"blocks.{i}.body.1"), 0.0)
        h = h + linear(inner, f"blocks.{i}.body.4")
    return linear(np.maximum(batchnorm(h, "head.0"), 0.0), "head.2")


@pytest.mark.parametrize("sampling_noise", [False, True])
def test_reverse_chain_matches_numpy(sampling_noise):
    torch.manual_seed(0)
    n, d, T, steps, tw = 5, 3, 60, 12, 8
    net = DDPMNoiseNetwork(d, width=6, block_hidden=10, time_width=tw, n_blocks=2)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    net.eval()
    state = {k: v.double().numpy() for k, v in net.state_dict().items() if v.is_floating_point()}
    x0 = torch.randn(n, d)

    sched = ddpm_schedule(T)
    with torch.inference_mode():
        got = reconstruction_score(
            net,
            x0,
            {k: torch.tensor(v, dtype=torch.float32) for k, v in sched.items()},
            steps,
            torch.Generator().manual_seed(42),
            sampling_noise,
        ).numpy()

    # The same noise, drawn in the same order (one (n, d) draw per step t = steps-1 .. 1).
    noise_gen = torch.Generator().manual_seed(42)
    z = {t: torch.randn((n, d), generator=noise_gen).double().numpy() for t in range(steps - 1, 0, -1)}
    betas, alpha_bar = sched["betas"], sched["alpha_bar"]
    x = x0.double().numpy()
    start = x.copy()
    for t in range(steps - 1, -1, -1):
        eps_hat = _numpy_network(state, x, np.full(n, t), tw)
        x = (x - betas[t] / np.sqrt(1.0 - alpha_bar[t]) * eps_hat) / np.sqrt(1.0 - betas[t])
        if sampling_noise and t > 0:
            var = betas[t] * (1.0 - alpha_bar[t - 1]) / (1.0 - alpha_bar[t])
            x = x + np.sqrt(var) * z[t]
    expected = np.mean((start - x) ** 2, axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_schedule_values():
    s = ddpm_schedule(1000)
    assert s["betas"][0] == pytest.approx(1e-4) and s["betas"][-1] == pytest.approx(1e-2)
    np.testing.assert_allclose(s["alpha_bar"], np.cumprod(1.0 - s["betas"]))
    assert s["posterior_variance"][0] == 0.0
    np.testing.assert_allclose(
        s["posterior_variance"][1:], s["betas"][1:] * (1 - s["alpha_bar"][:-1]) / (1 - s["alpha_bar"][1:])
    )


# -------------------------------------------------------------------------------- persistence
def test_state_round_trip_gives_equal_scores(fitted, data):
    meta, arrays, blobs = fitted._get_state()
    json.dumps(meta)  # metadata is JSON-able
    assert blobs == {}
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    loaded = DDPMReconstruction._from_state(meta, arrays, blobs)
    np.testing.assert_array_equal(loaded.decision_function(data[1]), fitted.decision_function(data[1]))
    np.testing.assert_array_equal(loaded.predict(data[1]), fitted.predict(data[1]))
    assert loaded.threshold_ == fitted.threshold_
    assert loaded.get_params() == fitted.get_params()


def test_save_load_file_round_trip(data, tmp_path):
    import dtpm_fast

    model = DDPMReconstruction(random_state=3, sampling_noise=True, **TINY).fit(data[0])
    path = tmp_path / "ddpm.dtpm"
    model.save(path)
    loaded = dtpm_fast.load(path)
    assert type(loaded) is DDPMReconstruction
    np.testing.assert_array_equal(loaded.decision_function(data[1]), model.decision_function(data[1]))
    np.testing.assert_array_equal(loaded.decision_scores_, model.decision_scores_)
    assert loaded.get_params() == model.get_params()


def test_pickle_round_trip(fitted, data):
    import pickle

    clone = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(clone.decision_function(data[1]), fitted.decision_function(data[1]))


# ----------------------------------------------------------------------------------- learning
def test_learns_to_separate_shifted_anomalies(data):
    from sklearn.metrics import roc_auc_score

    X_train, X_test, y_test = data
    model = DDPMReconstruction(random_state=0, **{**TINY, "epochs": 25, "T": 200, "reconstruction_steps": 50})
    scores = model.fit(X_train).decision_function(X_test)
    assert roc_auc_score(y_test, scores) > 0.9


def test_shared_time_bias_equals_per_row_forward():
    # The reverse chain evaluates the time branch once per step and broadcasts it.
    torch.manual_seed(0)
    net = DDPMNoiseNetwork(5, width=8, block_hidden=12, time_width=8, n_blocks=2).eval()
    x = torch.randn(7, 5)
    t = torch.full((7,), 33)
    with torch.inference_mode():
        per_row = net(x, t)
        shared = net.forward_with_time_bias(x, net.time_bias(t[:1]))
        plain = reconstruction_score(
            lambda xx, tt: net(xx, tt),  # a plain callable: per-row time branch
            x,
            {k: torch.tensor(v, dtype=torch.float32) for k, v in ddpm_schedule(50).items()},
            10,
            torch.Generator().manual_seed(0),
        )
        fast = reconstruction_score(
            net,
            x,
            {k: torch.tensor(v, dtype=torch.float32) for k, v in ddpm_schedule(50).items()},
            10,
            torch.Generator().manual_seed(0),
        )
    torch.testing.assert_close(shared, per_row, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-7)
