"""Detectors inside the code users write: scikit-learn pipelines and model selection, PyOD code."""

from __future__ import annotations

import numpy as np
import pytest

import dtpm_fast

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@pytest.fixture
def labelled():
    """Normal rows to train on, and held-back rows with labels (1 = anomaly) to tune on."""
    rng = np.random.default_rng(0)
    normal = rng.standard_normal((600, 5)) * [1, 2, 3, 1, 1]
    anomalies = rng.standard_normal((40, 5)) * 0.5 + [0, 5, 0, 3, 0]
    X = np.vstack([normal, anomalies]).astype(np.float32)
    y = np.r_[np.zeros(600, dtype=int), np.ones(40, dtype=int)]
    return X, y


def test_the_pipeline_from_the_issue_fits_and_scores(labelled):
    X, y = labelled
    pipe = make_pipeline(StandardScaler(), dtpm_fast.DTPMNonParametric()).fit(X[:400])
    scores = pipe.decision_function(X[400:])
    assert roc_auc_score(y[400:], scores) > 0.95
    assert set(np.unique(pipe.predict(X[400:]))) <= {0, 1}
    pipe.set_params(dtpmnonparametric__n_neighbors=8)
    assert pipe[-1].n_neighbors == 8
    with pytest.raises(ValueError, match="n_neighbors=5 but n_neighbors is now 8"):
        pipe.decision_function(X[400:])  # a changed parameter needs a refit
    assert pipe.fit(X[:400])[-1].decision_scores_.shape == (400,)
    assert "DTPMNonParametric" in pipe._repr_html_()
    assert "n_neighbors" in dtpm_fast.DTPMNonParametric()._repr_html_()
    assert clone(pipe)[-1].get_params() == pipe[-1].get_params()


def test_tuning_n_neighbors_by_auc_roc_on_held_back_labelled_rows(labelled):
    """The README's recipe: train folds hold normal rows only, validation rows carry labels."""
    X, y = labelled
    normal, anomalous = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    train = normal[:400]
    validation = np.r_[normal[400:], anomalous]
    search = GridSearchCV(
        dtpm_fast.DTPMNonParametric(),
        {"n_neighbors": [1, 5, 20]},
        scoring="roc_auc",
        cv=[(train, validation)],
        refit=False,
    ).fit(X, y)
    assert search.best_params_["n_neighbors"] in (1, 5, 20)
    by_hand = {
        k: roc_auc_score(
            y[validation],
            dtpm_fast.DTPMNonParametric(n_neighbors=k).fit(X[train]).decision_function(X[validation]),
        )
        for k in (1, 5, 20)
    }
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], [by_hand[k] for k in (1, 5, 20)])
    result = cross_validate(
        make_pipeline(StandardScaler(), dtpm_fast.DTPMNonParametric()),
        X,
        y,
        scoring="roc_auc",
        cv=[(train, validation)],
    )
    assert result["test_score"][0] > 0.95


def test_pyod_surface(labelled):
    pyod_data = pytest.importorskip("pyod.utils.data")
    from pyod.utils.utility import precision_n_scores, standardizer

    X, y = labelled
    detector = dtpm_fast.DTPMNonParametric(contamination=0.05).fit(X[:400])
    labels, confidence = detector.predict(X[400:], return_confidence=True)
    np.testing.assert_array_equal(labels, detector.predict(X[400:]))
    assert confidence.shape == labels.shape and ((confidence >= 0) & (confidence <= 1)).all()
    proba, confidence2 = detector.predict_proba(X[400:], return_confidence=True)
    np.testing.assert_array_equal(confidence2, confidence)
    np.testing.assert_array_equal(proba, detector.predict_proba(X[400:]))
    for attribute in ("decision_scores_", "threshold_", "labels_", "contamination"):
        assert hasattr(detector, attribute)
    # PyOD's evaluation and combination helpers take our scores as they take theirs.
    scores = detector.decision_function(X[400:])
    assert precision_n_scores(y[400:], scores) > 0.8
    pyod_data.evaluate_print("DTPMNonParametric", y[400:], scores)
    other = dtpm_fast.DTPMNonParametric(n_neighbors=10).fit(X[:400])
    train_scores = np.column_stack([detector.decision_scores_, other.decision_scores_])
    test_scores = np.column_stack([scores, other.decision_function(X[400:])])
    _, combined = standardizer(train_scores, test_scores)
    assert roc_auc_score(y[400:], combined.mean(axis=1)) > 0.95
