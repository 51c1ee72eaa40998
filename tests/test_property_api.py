"""Property-based tests of the public API on any array a careless or hostile user can pass.

Arrays of every shape (0-d to 3-d, empty sides), dtype (floats, integers, booleans, complex) and
value (NaN, infinities, +-1e300, float32's limits, subnormals) go to ``fit`` and
``decision_function``. The outcome must be a ValueError (NotFittedError is one) with a message,
or finite float64 scores, one per row, equal to a reference: the same detector scoring each row
alone and, for DTPMNonParametric, the plain NumPy oracle of ``oracles.py``. Never another
exception, a NaN, a crash.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dtpm_fast
from oracles import knn_sqdist_oracle, posterior_oracle

F32_MAX = float(np.finfo(np.float32).max)
D = 4
SPECIALS = [0.0, -0.0, 1.0, -2.5, 1e300, -1e300, F32_MAX, -F32_MAX, 3e38, 1e20, 1e-310, 5e-324]
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIALS))
DTYPES = [np.float64, np.float32, np.int64, np.int8, np.uint16, np.bool_, np.complex128]

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@st.composite
def user_arrays(draw, width=D, any_shape=True):
    """Mostly (n, width) matrices, sometimes any shape; values cast to a drawn dtype."""
    if any_shape and draw(st.booleans()):
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    else:
        shape = (draw(st.integers(0, 12)), width)
    values = draw(hnp.arrays(np.float64, shape, elements=VALUES))
    if draw(st.booleans()):  # ordinary rows, so that most examples reach the scoring code
        values = np.where(np.isfinite(values) & (np.abs(values) < 1e3), values, np.sign(values) * 3.0)
        values = np.nan_to_num(values)
    dtype = draw(st.sampled_from(DTYPES))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return values.astype(dtype)


@pytest.fixture(scope="module")
def train():
    return np.random.default_rng(5).standard_normal((120, D)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(train):
    models = {
        "np": dtpm_fast.DTPMNonParametric(n_neighbors=5, device="cpu").fit(train),
        "plus": dtpm_fast.DTPMMultiScale(device="cpu").fit(train),
    }
    try:
        import torch  # noqa: F401
    except ImportError:
        return models
    models["categorical"] = dtpm_fast.DTPMCategorical(
        hidden_sizes=(16, 16), epochs=1, random_state=0, device="cpu"
    ).fit(train)
    return models


def _np_oracle(train: np.ndarray, X: np.ndarray) -> np.ndarray:
    """DTE-NP's posterior-mean score in float64 NumPy: the library's standardisation rule
    (X's own float arithmetic, an entry beyond float32 recomputed in float64 and clipped), exact
    K = 5 neighbours, the posterior on the full grid."""
    mean, scale = train.mean(axis=0, dtype=np.float64), train.std(axis=0, dtype=np.float64)

    def standardise(A):
        exact = np.clip((A.astype(np.float64) - mean) / scale, -F32_MAX, F32_MAX)
        if A.dtype != np.float32:
            return exact.astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            fast = (A - mean.astype(np.float32)) / scale.astype(np.float32)
        return np.where(np.isfinite(fast), fast, exact.astype(np.float32))

    sq = knn_sqdist_oracle(standardise(X), standardise(train), 5)
    return posterior_oracle(sq, D)[1]


def _check_scores(model, X, oracle=None):
    try:
        scores = model.decision_function(X)
    except ValueError as exc:  # NotFittedError is a ValueError
        assert str(exc).strip()
        event("refused")
        return
    event("scored")
    rows = np.asarray(X)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64
    assert scores.shape == (rows.shape[0],)
    assert np.isfinite(scores).all()
    alone = np.concatenate([model.decision_function(rows[i : i + 1]) for i in range(rows.shape[0])])
    np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-6)
    if oracle is not None:
        np.testing.assert_allclose(scores, oracle(rows), rtol=1e-4, atol=1e-3)


@SETTINGS
@given(X=user_arrays())
def test_nonparametric_scores_any_array_or_refuses_it(fitted, train, X):
    _check_scores(fitted["np"], X, oracle=lambda rows: _np_oracle(train, rows))


@SETTINGS
@given(X=user_arrays())
def test_multiscale_scores_any_array_or_refuses_it(fitted, X):
    _check_scores(fitted["plus"], X)


@SETTINGS
@given(X=user_arrays())
def test_parametric_scores_any_array_or_refuses_it(fitted, X):
    if "categorical" not in fitted:
        pytest.skip("needs torch")
    _check_scores(fitted["categorical"], X)


@SETTINGS
@given(X=user_arrays(any_shape=True), n_neighbors=st.integers(1, 6))
def test_nonparametric_fits_any_array_or_refuses_it(X, n_neighbors):
    model = dtpm_fast.DTPMNonParametric(n_neighbors=n_neighbors, device="cpu")
    try:
        model.fit(X)
    except ValueError as exc:
        assert str(exc).strip()
        with pytest.raises(ValueError):  # still unfitted: NotFittedError
            model.decision_function(np.zeros((1, D)))
        return
    assert np.isfinite(model.decision_scores_).all() and np.isfinite(model.threshold_)
    assert model.decision_scores_.shape == (np.asarray(X).shape[0],)
    _check_scores(model, np.zeros((3, np.asarray(X).shape[1])))
