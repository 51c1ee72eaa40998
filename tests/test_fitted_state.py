"""The rule for parameters changed after fit (base.py): refused everywhere until a refit, except
the few that only shape how work is done, which are validated and honoured where used."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import dtpm_fast
from tiny_models import TINY_DDPM, TINY_NET

KINDS = {
    "np": lambda: dtpm_fast.DTPMNonParametric(),
    "plus": lambda: dtpm_fast.DTPMMultiScale(n_neighbors=(1, 3)),
    "categorical": lambda: dtpm_fast.DTPMCategorical(**TINY_NET),
    "inverse-gamma": lambda: dtpm_fast.DTPMInverseGamma(**TINY_NET),
    "ddpm": lambda: dtpm_fast.DDPMReconstruction(**TINY_DDPM),
}


def _other_value(value):
    """A different, plausible value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, tuple):
        return (*value, value[-1] + 1)
    if isinstance(value, str):
        return {"auto": "cpu", "cpu": "auto", "mean": "mode", "cross_entropy": "double_softmax"}.get(
            value, "brute"
        )
    if value is None:
        return 3
    if isinstance(value, dict):
        return {**value, "extra": 1}
    raise AssertionError(f"no other value for {value!r}")


def _fitted(kind, X):
    if kind not in ("np", "plus"):
        pytest.importorskip("torch")
    return KINDS[kind]().fit(X)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    return rng.standard_normal((120, 5)).astype(np.float32), rng.standard_normal((10, 5)).astype(np.float32)


def _uses(detector, X, tmp_path):
    """Every method that relies on the fitted state."""
    calls = {
        "decision_function": lambda: detector.decision_function(X),
        "predict": lambda: detector.predict(X),
        "save": lambda: detector.save(tmp_path / "m.dtpm"),
        "pickle": lambda: pickle.dumps(detector),
        "deepcopy": lambda: copy.deepcopy(detector),
        "to_device": lambda: detector.to_device("cpu"),
    }
    if hasattr(detector, "posterior") and not isinstance(detector, dtpm_fast.DTPMMultiScale):  # no posterior
        calls["posterior"] = lambda: detector.posterior(X)
    return calls


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_changed_parameter_is_refused_until_a_refit(kind, rows, tmp_path):
    X_train, X_test = rows
    detector = _fitted(kind, X_train)
    expected = detector.decision_function(X_test)
    for name, value in detector.get_params().items():
        if name in detector._runtime_params:
            continue
        detector.set_params(**{name: _other_value(value)})
        for use, call in _uses(detector, X_test, tmp_path).items():
            with pytest.raises(ValueError, match=f"fitted with {name}=.*call fit again"):
                call()
                pytest.fail(f"{kind}: {use} ran with {name} changed")
        detector.set_params(**{name: value})  # set back: the fitted model again
    np.testing.assert_array_equal(detector.decision_function(X_test), expected)
    restored = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(restored.decision_function(X_test), expected)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_refit_takes_the_changed_parameter(kind, rows):
    X_train, X_test = rows
    detector = _fitted(kind, X_train)
    detector.set_params(contamination=0.2).fit(X_train)
    assert detector.predict(X_test).shape == (10,)
    assert np.isclose((detector.labels_ == 1).mean(), 0.2, atol=0.02)


def test_runtime_parameters_are_validated_and_honoured_where_used(rows):
    X_train, X_test = rows
    detector = dtpm_fast.DTPMNonParametric().fit(X_train)
    expected = detector.decision_function(X_test)
    detector.set_params(batch_size=3)
    np.testing.assert_array_equal(detector.decision_function(X_test), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(detector)).decision_function(X_test), expected)
    for bad in (-1, 0, 2.5, "8", None):
        detector.set_params(batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            detector.decision_function(X_test)


def test_ddpm_scoring_seed_is_a_runtime_parameter(rows):
    pytest.importorskip("torch")
    X_train, X_test = rows
    detector = dtpm_fast.DDPMReconstruction(**TINY_DDPM).fit(X_train)
    detector.set_params(inference_batch_size=0)
    with pytest.raises(ValueError, match="inference_batch_size"):
        detector.decision_function(X_test)
    detector.set_params(inference_batch_size=4, random_state="seed")
    with pytest.raises(ValueError, match="random_state"):
        detector.decision_function(X_test)
