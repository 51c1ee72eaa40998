"""Training recipes of the parametric DTPM detectors: "paper" (the authors') and "fast".

Settings resolution, user overrides, persistence of the recipe (and files written before it
existed), determinism of the fast recipe, and the learning-rate schedule. Speed is measured in
bench/test_bench_parametric.py and studies/parametric_fast_recipe/, never asserted here.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dtpm_fast.parametric.detectors import DTPMCategorical, DTPMInverseGamma
from dtpm_fast.parametric.training import (
    RECIPES,
    draw_steps,
    inverse_gamma_loss,
    learning_rates,
    step_proposal,
)
from dtpm_fast.schedule import ve_sigma2

SMALL = {"hidden_sizes": (32, 32), "dropout": 0.1, "T": 100}
CLASSES = {"categorical": DTPMCategorical, "inverse_gamma": DTPMInverseGamma}


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    X_train = rng.standard_normal((300, 6)).astype(np.float32)
    X_test = np.vstack([rng.standard_normal((40, 6)), rng.standard_normal((10, 6)) * 0.5 + 4.0]).astype(
        np.float32
    )
    return X_train, X_test


def test_paper_recipe_is_the_authors_settings():
    s = DTPMCategorical(recipe="paper").training_settings()
    assert (s["epochs"], s["batch_size"], s["lr"], s["weight_decay"]) == (400, 64, 1e-4, 5e-4)
    assert (s["schedule"], s["precision"], s["pipeline"]) == ("constant", "float32", "per_batch")
    assert (s["t_sampling"], s["ig_weighting"]) == ("uniform", "none")


@pytest.mark.parametrize("cls", [DTPMCategorical, DTPMInverseGamma])
def test_default_recipe_and_explicit_values_win_over_the_recipe(cls):
    default = cls().training_settings()
    assert default["recipe"] == cls().recipe
    for name in ("epochs", "batch_size", "lr", "schedule", "precision", "pipeline"):
        assert default[name] == RECIPES[cls().recipe][name]
    s = cls(recipe="fast", epochs=7, batch_size=33, lr=2e-3).training_settings()
    assert (s["epochs"], s["batch_size"], s["lr"]) == (7, 33, 2e-3)
    assert (s["schedule"], s["precision"]) == (RECIPES["fast"]["schedule"], RECIPES["fast"]["precision"])
    # The parameters the user left alone stay None in get_params (sklearn clone keeps them so).
    assert cls(recipe="fast").get_params()["epochs"] is None


def test_unknown_recipe_is_rejected(rows):
    with pytest.raises(ValueError, match="recipe must be one of"):
        DTPMCategorical(recipe="quick", **SMALL).fit(rows[0])


def test_fit_uses_the_resolved_epochs(rows):
    model = DTPMCategorical(recipe="fast", epochs=3, random_state=0, **SMALL).fit(rows[0])
    assert model.loss_history_.shape == (3,)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_fast_recipe_same_seed_same_model(kind, rows):
    X_train, X_test = rows
    make = lambda seed: CLASSES[kind](recipe="fast", epochs=4, random_state=seed, **SMALL).fit(X_train)
    a, b, c = make(3), make(3), make(4)
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    np.testing.assert_array_equal(a.decision_function(X_test), b.decision_function(X_test))
    assert not np.array_equal(a.decision_function(X_test), c.decision_function(X_test))


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_fast_recipe_learns_to_rank_anomalies_high(kind, rows):
    X_train, X_test = rows
    # 300 rows in one batch of 512 would give one step per epoch: the small-network settings of
    # tests/test_parametric.py, with the fast recipe's schedule, precision and pipeline.
    model = CLASSES[kind](recipe="fast", epochs=25, batch_size=64, lr=3e-3, random_state=0, **SMALL).fit(
        X_train
    )
    scores = model.decision_function(X_test)
    assert np.all(np.isfinite(scores))
    assert scores[40:].mean() > np.percentile(scores[:40], 90)


def test_the_recipes_train_different_models(rows):
    X_train, X_test = rows
    fast = DTPMCategorical(recipe="fast", epochs=3, random_state=0, **SMALL).fit(X_train)
    paper = DTPMCategorical(recipe="paper", epochs=3, random_state=0, **SMALL).fit(X_train)
    assert not np.array_equal(fast.decision_function(X_test), paper.decision_function(X_test))


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_recipe_survives_save_and_load(recipe, rows, tmp_path):
    from dtpm_fast import load

    X_train, X_test = rows
    model = DTPMInverseGamma(recipe=recipe, epochs=2, random_state=0, **SMALL).fit(X_train)
    model.save(tmp_path / "m.dtpm")
    back = load(tmp_path / "m.dtpm")
    assert back.recipe == recipe
    assert back.training_settings() == model.training_settings()
    np.testing.assert_array_equal(back.decision_function(X_test), model.decision_function(X_test))


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_state_without_a_recipe_loads_as_the_paper_recipe(kind, rows):
    """Files written before recipes existed carry explicit epochs / batch_size / lr and no recipe."""
    X_train, X_test = rows
    cls = CLASSES[kind]
    model = cls(recipe="paper", epochs=2, batch_size=64, lr=1e-4, random_state=0, **SMALL).fit(X_train)
    meta, arrays, blobs = model._get_state()
    assert meta["params"]["recipe"] == "paper"
    del meta["params"]["recipe"]
    back = cls._from_state(meta, arrays, blobs)
    assert back.recipe == "paper"
    assert back.get_params()["epochs"] == 2
    np.testing.assert_array_equal(back.decision_function(X_test), model.decision_function(X_test))
    # Refitting the loaded model trains as the original did.
    refit = back.set_params(random_state=0).fit(X_train)
    np.testing.assert_array_equal(refit.loss_history_, model.loss_history_)


def test_learning_rate_schedules():
    np.testing.assert_array_equal(learning_rates("constant", 1e-4, 5), np.full(5, 1e-4))
    lr = learning_rates("warmup_cosine", 1e-3, 200)
    warmup = 10  # 5% of 200
    np.testing.assert_allclose(lr[:warmup], 1e-3 * np.arange(1, warmup + 1) / warmup)
    assert lr[warmup - 1] == pytest.approx(1e-3)
    assert np.all(np.diff(lr[warmup - 1 :]) <= 0)
    assert lr[-1] == pytest.approx(0.0, abs=1e-12)
    assert lr[(warmup - 1 + 199) // 2] == pytest.approx(5e-4, rel=0.02)
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rates("linear", 1e-3, 10)


def test_stratified_steps_cover_the_schedule_in_every_batch_with_a_uniform_marginal():
    T = 400
    for m in (1, 7, 64, 400, 512):
        t = draw_steps(m, T, "stratified", torch.device("cpu"))
        assert t.dtype == torch.int64 and t.shape == (m,)
        assert int(t.min()) >= 0 and int(t.max()) <= T - 1
        # one draw in each of the m slices: the i-th smallest lies in [floor(i T/m), floor((i+1) T/m)]
        i = torch.arange(m, dtype=torch.float64)
        ordered = torch.sort(t).values
        assert torch.all(ordered >= torch.floor(i * T / m)) and torch.all(
            ordered <= torch.floor((i + 1) * T / m)
        )
    # the marginal over many batches is uniform on 0..T-1 (chi-square, 399 dof, far below 600)
    draws = torch.cat([draw_steps(64, T, "stratified", torch.device("cpu")) for _ in range(2000)])
    counts = torch.bincount(draws, minlength=T).double()
    expected = len(draws) / T
    assert float(((counts - expected) ** 2 / expected).sum()) < 600
    with pytest.raises(ValueError, match="t_sampling"):
        draw_steps(4, T, "sobol", torch.device("cpu"))


def test_weighted_inverse_gamma_losses_have_their_stated_minimisers():
    # For one input seen at several noise levels, the unweighted loss is minimised at
    # beta = a / mean(1 / sigma2) (harmonic), the sigma-weighted one at a * mean(sigma) /
    # mean(1 / sigma) and the sigma2-weighted one at a * mean(sigma2).
    a = 9.5
    sigma2 = torch.tensor([1e-4, 0.01, 0.3, 0.8], dtype=torch.float64)
    s = torch.logspace(-3, 0.6, 4001, dtype=torch.float64)

    def argmin(weighting):
        losses = [float(inverse_gamma_loss(v.expand(4, 1), sigma2, a, weighting)) for v in s]
        return float(s[int(np.argmin(losses))] ** 2)

    assert argmin("none") == pytest.approx(a / float((1 / sigma2).mean()), rel=1e-2)
    assert argmin("sigma2") == pytest.approx(a * float(sigma2.mean()), rel=1e-2)
    sigma = sigma2.sqrt()
    assert argmin("sigma") == pytest.approx(a * float(sigma.mean() / (1 / sigma).mean()), rel=1e-2)
    with pytest.raises(ValueError, match="weighting"):
        inverse_gamma_loss(s[:4, None], sigma2, a, "log")


def test_importance_steps_follow_their_proposal_uniform_and_stratified():
    T = 300
    sigma2 = torch.as_tensor(ve_sigma2(T), dtype=torch.float32)
    assert step_proposal("sigma2", sigma2) is None and step_proposal("none", sigma2) is None
    cdf = step_proposal("importance", sigma2)
    q = torch.diff(cdf.double(), prepend=torch.zeros(1, dtype=torch.float64))
    expected_q = 1 / sigma2.double().sqrt() / float((1 / sigma2.double().sqrt()).sum())
    assert torch.allclose(q, expected_q, atol=1e-6) and float(cdf[-1]) == 1.0
    for sampling in ("uniform", "stratified"):
        draws = torch.cat([draw_steps(64, T, sampling, torch.device("cpu"), cdf) for _ in range(3000)])
        assert int(draws.min()) >= 0 and int(draws.max()) <= T - 1
        counts = torch.bincount(draws, minlength=T).double()
        expected = len(draws) * q
        # chi-square with 299 dof: mean 299, sd ~24; a wrong proposal gives tens of thousands
        assert float(((counts - expected) ** 2 / expected).sum()) < 450, sampling
    # stratified: the i-th smallest of m draws lies in the i-th slice of probability
    m = 50
    t = torch.sort(draw_steps(m, T, "stratified", torch.device("cpu"), cdf)).values
    i = torch.arange(m, dtype=torch.float64)
    below = torch.where(t > 0, cdf.double()[(t - 1).clamp(min=0)], torch.zeros(m, dtype=torch.float64))
    assert torch.all(below <= (i + 1) / m + 1e-6) and torch.all(cdf.double()[t] >= i / m - 1e-6)


def test_importance_sampled_loss_has_the_unweighted_expectation_and_minimiser():
    # E over t ~ q (q proportional to 1 / sigma_t) of the importance terms equals the uniform
    # expectation of the unweighted loss times T / sum(1 / sigma), for every beta: the minimiser
    # is the unweighted one, a / mean(1 / sigma2), not the sigma-weighted loss's.
    T, a = 100, 4.0
    sigma2 = torch.as_tensor(ve_sigma2(T), dtype=torch.float64)
    q = torch.diff(step_proposal("importance", sigma2).double(), prepend=torch.zeros(1, dtype=torch.float64))
    q = q / q.sum()
    scale = T / float((1 / sigma2.sqrt()).sum())
    s = torch.logspace(-2, 0.3, 401, dtype=torch.float64)
    importance, unweighted = [], []
    for v in s:
        out = v.expand(T, 1)
        per_step_imp = torch.stack(
            [inverse_gamma_loss(out[:1], sigma2[k : k + 1], a, "importance") for k in range(T)]
        )
        importance.append(float((q * per_step_imp).sum()))
        unweighted.append(float(inverse_gamma_loss(out, sigma2, a, "none")))
    assert np.allclose(importance, scale * np.array(unweighted), rtol=1e-4)
    best = float(s[int(np.argmin(importance))] ** 2)
    assert best == pytest.approx(a / float((1 / sigma2).mean()), rel=3e-2)
    sigma = sigma2.sqrt()
    assert abs(best / (a * float(sigma.mean() / (1 / sigma).mean())) - 1) > 0.2


def test_fast_recipe_trains_the_inverse_gamma_model_with_the_importance_sampled_loss():
    s = DTPMInverseGamma(recipe="fast").training_settings()
    assert (s["t_sampling"], s["ig_weighting"], s["lr"]) == ("stratified", "importance", 1e-3)
    assert (s["backprop"], DTPMInverseGamma(recipe="paper").training_settings()["backprop"]) == (
        "manual",
        "autograd",
    )


@pytest.mark.parametrize(
    ("n_rows", "batch"), [(100, 96), (450, 96), (800, 100), (1672, 209), (4096, 512), (60_000, 512)]
)
def test_fast_recipe_takes_at_least_eight_steps_per_epoch(n_rows, batch):
    settings = DTPMCategorical(recipe="fast").training_settings(n_rows=n_rows)
    assert settings["batch_size"] == batch
    assert -(-n_rows // batch) >= min(8, -(-n_rows // 96))
    # a batch size the user gives wins; the paper recipe has no such rule
    assert (
        DTPMCategorical(recipe="fast", batch_size=100).training_settings(n_rows=n_rows)["batch_size"] == 100
    )
    assert DTPMCategorical(recipe="paper").training_settings(n_rows=n_rows)["batch_size"] == 64


def test_fit_uses_the_batch_size_of_its_row_count(rows):
    # 300 rows: the fast recipe's rule gives batches of 96. The fitted network is the one an
    # explicit batch_size=96 gives, bit for bit, and not the one of batches of 512.
    X_train, X_test = rows

    def scores(**kw):
        model = DTPMCategorical(recipe="fast", epochs=2, random_state=0, device="cpu", **SMALL, **kw)
        return model.fit(X_train).decision_function(X_test)

    by_rule = scores()
    np.testing.assert_array_equal(by_rule, scores(batch_size=96))
    assert not np.array_equal(by_rule, scores(batch_size=512))
