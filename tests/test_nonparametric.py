"""DTPMNonParametric end to end against brute-force oracles, and its own parameters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dtpm_fast import DTPMNonParametric
from dtpm_fast._validation import check_matrix
from oracles import knn_sqdist_oracle, posterior_oracle


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    X_train = rng.standard_normal((400, 8)).astype(np.float32) * rng.uniform(0.5, 3, 8).astype(np.float32)
    X_test = np.vstack([rng.standard_normal((90, 8)), rng.standard_normal((10, 8)) + 3]).astype(np.float32)
    return X_train, X_test


def standardised(X_train, X):
    mean, std = X_train.mean(0, dtype=np.float64), X_train.std(0, dtype=np.float64)
    return ((X - mean) / std).astype(np.float32)


@pytest.mark.parametrize("index", ["flat", "kdtree"])
@pytest.mark.parametrize("score", ["mean", "mode"])
def test_scores_match_bruteforce_oracle(data, index, score):
    X_train, X_test = data
    detector = DTPMNonParametric(index=index, score=score).fit(X_train)
    Z_train, Z_test = standardised(X_train, X_train), standardised(X_train, X_test)
    mode, mean, _ = posterior_oracle(knn_sqdist_oracle(Z_test, Z_train, 5), 8)
    expected = mean if score == "mean" else mode
    np.testing.assert_allclose(detector.decision_function(X_test), expected, atol=2e-3)
    # training scores: every row scored against the others only
    mode, mean, _ = posterior_oracle(knn_sqdist_oracle(Z_train, Z_train, 5, leave_one_out=True), 8)
    np.testing.assert_allclose(detector.decision_scores_, mean if score == "mean" else mode, atol=2e-3)


@pytest.mark.parametrize(
    "index, params",
    [("hnsw", None), ("ivf", {"nlist": 8, "nprobe": 4}), ("hnsw", {"M": 8, "ef_search": 4, "candidates": 1})],
)
def test_approximate_indexes_stay_close_to_exact(index, params):
    rng = np.random.default_rng(2)
    X_train = rng.standard_normal((3000, 16)).astype(np.float32)
    X_test = np.vstack([rng.standard_normal((450, 16)), rng.standard_normal((50, 16)) * 2]).astype(np.float32)
    y = np.r_[np.zeros(450), np.ones(50)]
    exact = DTPMNonParametric(index="flat").fit(X_train).decision_function(X_test)
    approx = DTPMNonParametric(index=index, index_params=params).fit(X_train).decision_function(X_test)
    # re-ranked candidates: distances are exact, so a score can only go up when a neighbour is missed
    assert (approx >= exact - 1e-3).all()
    auc = [stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic / (50 * 450) for s in (exact, approx)]
    assert abs(auc[0] - auc[1]) < 0.01


def test_batches_do_not_change_scores(data):
    X_train, X_test = data
    one_batch = DTPMNonParametric().fit(X_train)
    small_batches = DTPMNonParametric(batch_size=7).fit(X_train)
    np.testing.assert_array_equal(one_batch.decision_scores_, small_batches.decision_scores_)
    np.testing.assert_array_equal(
        one_batch.decision_function(X_test), small_batches.decision_function(X_test)
    )


def test_posterior_and_explain(data):
    X_train, X_test = data
    detector = DTPMNonParametric(T=120).fit(X_train)
    posterior = detector.posterior(X_test)
    assert posterior.shape == (100, 120)
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(posterior @ np.arange(120), detector.decision_function(X_test), atol=1e-3)
    contributions = detector.explain(X_test)
    assert contributions.shape == (100, 8) and (contributions >= 0).all()
    d2 = knn_sqdist_oracle(standardised(X_train, X_test), standardised(X_train, X_train), 5).mean(axis=1)
    np.testing.assert_allclose(contributions.sum(axis=1), d2, rtol=1e-4)
    # the planted anomalies' largest contributions are what makes them far
    assert contributions[90:].sum(axis=1).min() > np.median(contributions[:90].sum(axis=1))


def test_explain_with_approximate_index_uses_top_k(data):
    X_train, X_test = data
    exact = DTPMNonParametric(index="flat").fit(X_train).explain(X_test)
    approx = DTPMNonParametric(index="hnsw", index_params={"ef_search": 64}).fit(X_train).explain(X_test)
    np.testing.assert_allclose(approx, exact, rtol=1e-5, atol=1e-6)


def test_duplicates_score_zero():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 5)).astype(np.float32)
    X_train = np.vstack([X] * 6)  # every row has 5 exact copies besides itself
    detector = DTPMNonParametric(score="mean").fit(X_train)
    np.testing.assert_array_equal(detector.decision_scores_, 0.0)
    np.testing.assert_array_equal(detector.decision_function(X), 0.0)
    assert (DTPMNonParametric(score="mode").fit(X_train).decision_function(X) == 0).all()


def test_auto_index_by_dimension_and_size():
    rng = np.random.default_rng(4)
    kinds = {
        (n, d): DTPMNonParametric().fit(rng.standard_normal((n, d))).index_kind_
        for n, d in [(100, 3), (5_000, 3), (5_000, 5), (60_000, 5), (60_000, 6), (100, 40)]
    }
    assert kinds == {
        (100, 3): "brute",
        (5_000, 3): "kdtree",
        (5_000, 5): "brute",
        (60_000, 5): "kdtree",
        (60_000, 6): "brute",
        (100, 40): "brute",
    }


def test_float32_c_contiguous_input_is_not_copied(data):
    X = data[0]
    assert check_matrix(X) is X
    assert check_matrix(np.asfortranarray(X)) is not X


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_neighbors": 0}, "n_neighbors"),
        ({"n_neighbors": 2.5}, "n_neighbors"),
        ({"score": "median"}, "score"),
        ({"index": "annoy"}, "index"),
        ({"index": "hnsw", "index_params": {"efSearch": 3}}, "efSearch"),
        ({"index": "hnsw", "index_params": {"M": 0}}, "M"),
        ({"contamination": 0.7}, "contamination"),
        ({"batch_size": 0}, "batch_size"),
        ({"T": 1}, "T"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_parameters_name_the_argument(data, params, message):
    with pytest.raises(ValueError, match=message):
        DTPMNonParametric(**params).fit(data[0])


def test_too_many_neighbours():
    with pytest.raises(ValueError, match="n_neighbors=5 must be smaller than the number of training rows"):
        DTPMNonParametric().fit(np.zeros((5, 4)))
    assert np.isfinite(DTPMNonParametric(n_neighbors=5).fit(np.random.rand(6, 4)).decision_scores_).all()


def test_cuda_without_gpu_raises_with_reason(data):
    from dtpm_fast._device import cuda_status

    if cuda_status()[0]:
        pytest.skip("a usable GPU is present")
    with pytest.raises(ValueError, match="CUDA is not usable"):
        DTPMNonParametric(device="cuda").fit(data[0])


def test_predict_confidence_matches_loop_oracle(data):
    X_train, X_test = data
    detector = DTPMNonParametric(contamination=0.1).fit(X_train)
    scores, train = detector.decision_function(X_test), detector.decision_scores_
    n = train.size
    expected = []
    for s in scores:  # PyOD's ExCeeD, one row at a time
        p = (1 + np.count_nonzero(train <= s)) / (2 + n)
        confidence = 1 - stats.binom.cdf(n - int(n * 0.1), n, p)
        expected.append(confidence if s > detector.threshold_ else 1 - confidence)
    np.testing.assert_allclose(detector.predict_confidence(X_test), expected)


def test_threshold_is_the_training_percentile(data):
    detector = DTPMNonParametric(contamination=0.05).fit(data[0])
    assert detector.threshold_ == pytest.approx(np.percentile(detector.decision_scores_, 95))
    assert detector.labels_.mean() == pytest.approx(0.05, abs=0.01)
