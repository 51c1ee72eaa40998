"""DTPMMultiScale (dtpm_fast.plus): contract, brute-force oracle, persistence, parameters."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from dtpm_fast import DTPMMultiScale, DTPMNonParametric
from dtpm_fast.evaluation.models import ModelOptions, get_model
from oracles import knn_sqdist_oracle, posterior_oracle


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    X_train = rng.standard_normal((400, 7)).astype(np.float32) * rng.uniform(0.5, 3, 7).astype(np.float32)
    X_test = np.vstack([rng.standard_normal((90, 7)), rng.standard_normal((11, 7)) + 3]).astype(np.float32)
    return X_train, X_test


def standardised(X_train, X):
    mean, std = X_train.mean(0, dtype=np.float64), X_train.std(0, dtype=np.float64)
    return ((X - mean) / std).astype(np.float32)


def oracle_scores(Z_query, Z_train, ladder, leave_one_out=False):
    """The scoring rule in plain NumPy: the posterior mean time for each K, averaged over K."""
    sq = knn_sqdist_oracle(Z_query, Z_train, max(ladder), leave_one_out=leave_one_out)
    d = Z_train.shape[1]
    return np.mean([posterior_oracle(sq[:, :k], d)[1] for k in ladder], axis=0)


# ---- contract -------------------------------------------------------------------------------
def test_contract_on_blobs(blobs):
    X_train, X_test, y_test = blobs
    detector = DTPMMultiScale(contamination=0.05)
    assert detector.fit(X_train) is detector
    scores = detector.decision_function(X_test)
    assert scores.shape == (len(X_test),) and scores.dtype == np.float64
    assert np.all((scores >= 0) & (scores <= detector.T - 1))
    assert scores[y_test == 1].min() > scores[y_test == 0].max()  # higher = more anomalous
    labels = detector.predict(X_test)
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= {0, 1}
    assert labels[y_test == 1].all()
    assert detector.decision_scores_.shape == (len(X_train),)
    assert detector.threshold_ == pytest.approx(np.percentile(detector.decision_scores_, 95))
    np.testing.assert_array_equal(detector.labels_, detector.decision_scores_ > detector.threshold_)
    assert detector.predict_proba(X_test).shape == (len(X_test), 2)
    assert detector.neighbour_ladder_ == (1, 2, 4, 8, 16, 32)


def test_params_are_only_stored():
    detector = DTPMMultiScale(n_neighbors="not checked yet", T=-1)
    assert detector.get_params()["n_neighbors"] == "not checked yet"
    assert detector.set_params(T=300).T == 300


# ---- scores against the oracle --------------------------------------------------------------
@pytest.mark.parametrize("index", ["brute", "kdtree"])
@pytest.mark.parametrize("ladder", [(1, 2, 4, 8, 16, 32), (3, 7), (5,)])
def test_scores_match_bruteforce_oracle(data, index, ladder):
    X_train, X_test = data
    detector = DTPMMultiScale(n_neighbors=ladder, index=index).fit(X_train)
    Z_train, Z_test = standardised(X_train, X_train), standardised(X_train, X_test)
    np.testing.assert_allclose(
        detector.decision_function(X_test), oracle_scores(Z_test, Z_train, ladder), atol=2e-3
    )
    # training scores leave-one-out: each row scored against the others only
    np.testing.assert_allclose(
        detector.decision_scores_, oracle_scores(Z_train, Z_train, ladder, leave_one_out=True), atol=2e-3
    )


def test_view_scores_are_the_per_k_posterior_means(data):
    X_train, X_test = data
    detector = DTPMMultiScale(n_neighbors=(2, 9)).fit(X_train)
    views = detector.view_scores(X_test)
    assert views.shape == (len(X_test), 2)
    np.testing.assert_allclose(views.mean(axis=1), detector.decision_function(X_test), rtol=0, atol=1e-12)
    for j, k in enumerate((2, 9)):
        np.testing.assert_allclose(
            views[:, j], DTPMNonParametric(n_neighbors=k).fit(X_train).decision_function(X_test)
        )


@pytest.mark.parametrize("k", [1, 5])
def test_single_k_is_dte_np(data, k):
    X_train, X_test = data
    ours = DTPMMultiScale(n_neighbors=k).fit(X_train)
    reference = DTPMNonParametric(n_neighbors=k, score="mean").fit(X_train)
    np.testing.assert_array_equal(ours.decision_function(X_test), reference.decision_function(X_test))
    np.testing.assert_array_equal(ours.decision_scores_, reference.decision_scores_)


def test_training_scores_are_leave_one_out_of_decision_function(data):
    """A training row scored by decision_function finds itself at distance 0; leaving it out equals
    scoring it against a detector fitted on the other rows."""
    X_train, _ = data
    detector = DTPMMultiScale(standardize=False).fit(X_train)
    for row in (0, 17, 399):
        others = DTPMMultiScale(standardize=False).fit(np.delete(X_train, row, axis=0))
        expected = others.decision_function(X_train[row : row + 1])[0]
        assert detector.decision_scores_[row] == pytest.approx(expected, abs=1e-9)
    assert np.all(detector.decision_function(X_train) <= detector.decision_scores_ + 1e-9)


def test_duplicate_training_rows(data):
    X_train, X_test = data
    X_dup = np.vstack([X_train[:50]] * 4)  # every row four times: leave-one-out still finds three copies
    detector = DTPMMultiScale(n_neighbors=(1, 2, 3)).fit(X_dup)
    assert np.all(detector.decision_scores_ == 0.0)
    assert np.all(np.isfinite(detector.decision_function(X_test)))


def test_batches_do_not_change_scores(data):
    X_train, X_test = data
    whole = DTPMMultiScale().fit(X_train)
    batched = DTPMMultiScale(batch_size=7).fit(X_train)
    np.testing.assert_array_equal(whole.decision_function(X_test), batched.decision_function(X_test))
    np.testing.assert_array_equal(whole.decision_scores_, batched.decision_scores_)


# ---- persistence ----------------------------------------------------------------------------
@pytest.mark.parametrize("index", ["brute", "kdtree"])
def test_pickle_round_trip_gives_identical_scores(data, index):
    X_train, X_test = data
    detector = DTPMMultiScale(index=index, n_neighbors=[1, 4, 16]).fit(X_train)
    restored = pickle.loads(pickle.dumps(detector))
    assert type(restored) is DTPMMultiScale
    assert restored.get_params() == {**detector.get_params(), "n_neighbors": (1, 4, 16)}
    np.testing.assert_array_equal(restored.decision_function(X_test), detector.decision_function(X_test))
    np.testing.assert_array_equal(restored.decision_scores_, detector.decision_scores_)
    np.testing.assert_array_equal(restored.labels_, detector.labels_)
    assert restored.threshold_ == detector.threshold_
    assert restored.neighbour_ladder_ == detector.neighbour_ladder_


def test_state_hooks_round_trip(data):
    X_train, X_test = data
    detector = DTPMMultiScale().fit(X_train)
    meta, arrays, blobs = detector._get_state()
    import json

    meta = json.loads(json.dumps(meta))  # what a model file stores
    restored = DTPMMultiScale._from_state(meta, arrays, blobs)
    np.testing.assert_array_equal(restored.decision_function(X_test), detector.decision_function(X_test))


def test_unfitted_pickles_as_parameters():
    detector = pickle.loads(pickle.dumps(DTPMMultiScale(n_neighbors=(2, 3))))
    assert detector.n_neighbors == (2, 3)


# ---- parameters and input -------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, name",
    [
        ({"n_neighbors": 0}, "n_neighbors"),
        ({"n_neighbors": ()}, "n_neighbors"),
        ({"n_neighbors": (1, 1)}, "n_neighbors"),
        ({"n_neighbors": (1, 2.5)}, "n_neighbors"),
        ({"n_neighbors": "5"}, "n_neighbors"),
        ({"n_neighbors": (True, 2)}, "n_neighbors"),
        ({"n_neighbors": 400}, "n_neighbors"),  # as many as the training rows
        ({"T": 1}, "T"),
        ({"index": "hnsw"}, "index"),
        ({"index_params": {"M": 8}}, "index_params"),
        ({"contamination": 0.7}, "contamination"),
        ({"device": "cuda"}, "device"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": 0}, "batch_size"),
        ({"standardize": "yes"}, "standardize"),
    ],
)
def test_bad_params_raise_naming_the_argument(data, params, name):
    X_train, _ = data
    with pytest.raises(ValueError, match=name):
        DTPMMultiScale(**params).fit(X_train)


def test_public_methods_check_params_and_input(data):
    X_train, X_test = data
    detector = DTPMMultiScale()
    with pytest.raises(ValueError, match="not fitted"):
        detector.decision_function(X_test)
    detector.fit(X_train)
    with pytest.raises(ValueError, match="features"):
        detector.decision_function(X_test[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        detector.view_scores(np.full((2, 7), np.nan))
    with pytest.raises(ValueError, match="X has 2 feature"):
        DTPMMultiScale().fit(X_train[:, :2])
    detector.set_params(device="cuda")
    with pytest.raises(ValueError, match="device"):
        detector.decision_function(X_test)


# ---- the evaluation harness -----------------------------------------------------------------
def test_registered_in_the_harness(data):
    X_train, X_test = data
    detector = get_model("plus").factory(ModelOptions())
    assert isinstance(detector, DTPMMultiScale) and detector.standardize is False
    assert detector.fit(X_train).decision_function(X_test).shape == (len(X_test),)
