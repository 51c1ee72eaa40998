"""One contract, every detector: the sklearn/PyOD conventions and the bad-input behaviour."""

from __future__ import annotations

import numpy as np
import pytest

import dtpm_fast
from dtpm_fast import DTPMNonParametric, NotFittedError


def _torch_factory(name, **params):
    def make():
        pytest.importorskip("torch")
        return getattr(dtpm_fast, name)(**params)

    return make


TINY_NET = {"hidden_sizes": (16, 16, 16), "epochs": 2, "batch_size": 32, "random_state": 0, "device": "cpu"}
FACTORIES = {
    "np-flat": lambda: DTPMNonParametric(index="flat"),
    "np-brute": lambda: DTPMNonParametric(index="brute"),
    "np-kdtree-mode": lambda: DTPMNonParametric(index="kdtree", score="mode"),
    "np-hnsw": lambda: DTPMNonParametric(index="hnsw"),
    "np-ivf": lambda: DTPMNonParametric(index="ivf", index_params={"nlist": 4, "nprobe": 2}),
    "plus": lambda: dtpm_fast.DTPMMultiScale(),
    "categorical": _torch_factory("DTPMCategorical", **TINY_NET),
    "inverse-gamma": _torch_factory("DTPMInverseGamma", **TINY_NET),
    "ddpm": _torch_factory(
        "DDPMReconstruction",
        epochs=2,
        width=16,
        block_hidden=16,
        time_width=16,
        reconstruction_steps=5,
        random_state=0,
        device="cpu",
    ),
}


@pytest.fixture(params=list(FACTORIES))
def make_detector(request):
    return FACTORIES[request.param]


def test_fit_predict_contract(make_detector, blobs):
    X_train, X_test, _ = blobs
    detector = make_detector()
    assert detector.fit(X_train) is detector
    n = X_train.shape[0]
    assert detector.decision_scores_.shape == (n,) and np.isfinite(detector.decision_scores_).all()
    assert set(np.unique(detector.labels_)) <= {0, 1}
    expected = (detector.decision_scores_ > detector.threshold_).astype(int)
    np.testing.assert_array_equal(detector.labels_, expected)
    scores = detector.decision_function(X_test)
    assert scores.shape == (X_test.shape[0],) and scores.dtype == np.float64 and np.isfinite(scores).all()
    np.testing.assert_array_equal(detector.predict(X_test), (scores > detector.threshold_).astype(int))
    for method in ("linear", "unify"):
        proba = detector.predict_proba(X_test, method=method)
        assert proba.shape == (X_test.shape[0], 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert (proba >= 0).all() and (proba <= 1).all()
    with pytest.raises(ValueError, match="method"):
        detector.predict_proba(X_test, method="cubic")
    confidence = detector.predict_confidence(X_test)
    assert confidence.shape == (X_test.shape[0],) and ((confidence >= 0) & (confidence <= 1)).all()


def test_sklearn_conventions(make_detector):
    sklearn_base = pytest.importorskip("sklearn.base")
    detector = make_detector()
    params = detector.get_params()
    clone = sklearn_base.clone(detector)
    assert type(clone) is type(detector) and clone.get_params() == params
    assert detector.set_params(contamination=0.2) is detector and detector.contamination == 0.2
    with pytest.raises(ValueError, match="Invalid parameter"):
        detector.set_params(not_a_parameter=1)
    assert not any(name.endswith("_") for name in vars(detector))  # no work in __init__


def test_not_fitted(make_detector, blobs):
    detector = make_detector()
    for method in (detector.decision_function, detector.predict, detector.predict_proba):
        with pytest.raises(NotFittedError, match="fit"):
            method(blobs[1])


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[1.0, np.nan, 2.0, 3.0, 4.0, 5.0]] * 20), "NaN"),
        (np.array([[1.0, np.inf, 2.0, 3.0, 4.0, 5.0]] * 20), "NaN or infinity"),
        (np.zeros(20), "2-D"),
        (np.zeros((20, 6, 1)), "2-D"),
        (np.zeros((0, 6)), "empty"),
        (np.array([["a", "b", "c", "d", "e", "f"]] * 20), "numeric"),
    ],
)
def test_bad_training_input(make_detector, bad, message):
    with pytest.raises(ValueError, match=message):
        make_detector().fit(bad)


def test_bad_scoring_input(make_detector, blobs):
    X_train, X_test, _ = blobs
    detector = make_detector().fit(X_train)
    with pytest.raises(ValueError, match="features"):
        detector.decision_function(X_test[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        detector.decision_function(np.where(np.arange(6) == 2, np.nan, X_test))
    with pytest.raises(ValueError, match="empty"):
        detector.decision_function(X_test[:0])


# The inverse-Gamma shape d/2 - 1 must be positive; the categorical and DDPM models need no shape.
NEEDS_THREE_FEATURES = [name for name in FACTORIES if name.startswith("np-") or name == "inverse-gamma"]


@pytest.mark.parametrize("name", NEEDS_THREE_FEATURES)
def test_too_few_features(name):
    with pytest.raises(ValueError, match="at least 3|d >= 3|features"):
        FACTORIES[name]().fit(np.random.default_rng(0).standard_normal((50, 2)))


def test_dataframe_input_and_duplicates(make_detector, blobs):
    pd = pytest.importorskip("pandas")
    X_train, X_test, _ = blobs
    frame = pd.DataFrame(X_train, columns=[f"f{i}" for i in range(6)])
    detector = make_detector().fit(frame)
    np.testing.assert_allclose(
        detector.decision_function(pd.DataFrame(X_test)), detector.decision_function(X_test)
    )
    duplicated = np.vstack([X_train, X_train[:10]])  # repeated rows must never give NaN
    assert np.isfinite(make_detector().fit(duplicated).decision_scores_).all()


def test_constant_feature(make_detector, blobs):
    X_train, X_test, _ = blobs
    X_train = X_train.copy()
    X_train[:, 3] = 7.0
    detector = make_detector().fit(X_train)
    assert np.isfinite(detector.decision_scores_).all()
    assert np.isfinite(detector.decision_function(X_test)).all()


# ---- rows as they enter: one check for every detector (BaseDetector._validate_rows) -------------
def test_sparse_input_is_named_as_sparse(make_detector, blobs):
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(ValueError, match="sparse matrix.*toarray"):
        make_detector().fit(sparse.csr_matrix(blobs[0]))


def test_dataframe_missing_values_are_reported_as_missing(make_detector, blobs):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(blobs[0].astype(np.float64), columns=[f"f{i}" for i in range(6)]).astype("Float64")
    frame.iloc[7, 2] = pd.NA
    with pytest.raises(
        ValueError,
        match=r"NaN or infinity \(or a missing value\) in 1 row\(s\) \(first: row 7, counting from 0\)",
    ):
        make_detector().fit(frame)


def test_finite_float64_beyond_float32_is_refused_as_too_large(make_detector, blobs):
    X_train, X_test, _ = blobs
    if isinstance(make_detector(), dtpm_fast.DDPMReconstruction):
        pytest.skip("DDPMReconstruction validates in float64")
    detector = make_detector().fit(X_train)
    rows = X_test.astype(np.float64)
    rows[3, 1] = 1e200
    with pytest.raises(ValueError, match=r"finite values too large for float32.*first: row 3"):
        detector.decision_function(rows)


def test_dataframe_columns_are_checked_against_the_fitted_order(make_detector, blobs):
    pd = pytest.importorskip("pandas")
    X_train, X_test, _ = blobs
    names = [f"f{i}" for i in range(6)]
    detector = make_detector().fit(pd.DataFrame(X_train, columns=names))
    assert list(detector.feature_names_in_) == names
    test = pd.DataFrame(X_test, columns=names)
    expected = detector.decision_function(test)
    with pytest.raises(ValueError, match="another order"):
        detector.decision_function(test[names[::-1]])
    with pytest.raises(ValueError, match="other columns"):
        detector.decision_function(test.rename(columns={"f0": "g0"}))
    np.testing.assert_array_equal(
        detector.decision_function(test[names[::-1]][detector.feature_names_in_]), expected
    )
    assert not hasattr(make_detector().fit(X_train), "feature_names_in_")  # plain arrays have no names


# ---- finite but extreme values: finite scores or a ValueError that says so, never NaN ------------
def test_extreme_finite_rows_score_finite_or_are_refused(make_detector, blobs):
    X_train, X_test, _ = blobs
    detector = make_detector().fit(X_train)
    rows = X_test[:4].copy()
    rows[1, 2] = 3.0e38
    try:
        scores = detector.decision_function(rows)
    except ValueError as exc:
        assert "finite but" in str(exc) and "row 1" in str(exc)
    else:
        assert np.isfinite(scores).all()


def test_extreme_finite_training_values_fit_or_are_refused(make_detector, blobs):
    X = blobs[0].copy()
    X[: len(X) // 2, 0], X[len(X) // 2 :, 0] = 3.4e38, -3.4e38
    try:
        detector = make_detector().fit(X)
    except ValueError as exc:
        assert "finite but" in str(exc) or "too large" in str(exc)
    else:
        assert np.isfinite(detector.decision_scores_).all()


def test_training_that_diverges_raises(make_detector, blobs):
    detector = make_detector()
    if "lr" not in detector.get_params():
        pytest.skip("no training")
    with pytest.raises(ValueError, match="training diverged: the mean loss of epoch 1 is nan"):
        detector.set_params(lr=1e12).fit(blobs[0])
