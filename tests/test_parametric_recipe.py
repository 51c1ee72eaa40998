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
from dtpm_fast.parametric.training import RECIPES, learning_rates

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
