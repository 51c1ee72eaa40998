"""scikit-learn's estimator contract for every detector, and the embeddings users write.

``EXPECTED_FAILED_CHECKS`` is the one list of scikit-learn checks that cannot apply to a DTPM
outlier detector, each with its reason; every other check must pass.
"""

from __future__ import annotations

import warnings

import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.utils.estimator_checks import estimator_checks_generator

import dtpm_fast
from tiny_models import TINY_DDPM, TINY_NET


def _detectors():
    made = [dtpm_fast.DTPMNonParametric(n_neighbors=3), dtpm_fast.DTPMMultiScale(n_neighbors=(1, 2, 4))]
    try:
        import torch  # noqa: F401
    except ImportError:
        return made
    return made + [
        dtpm_fast.DTPMCategorical(**TINY_NET),
        dtpm_fast.DTPMInverseGamma(**TINY_NET),
        dtpm_fast.DDPMReconstruction(**TINY_DDPM),
    ]


_TWO_FEATURES = (
    "scikit-learn fits this check on 2-feature data; DTPM's inverse-Gamma posterior has shape "
    "d/2 - 1, which must be positive, so DTPMNonParametric and DTPMInverseGamma need d >= 3 and "
    "refuse d = 2 with a ValueError saying so"
)
_SCORE_PARAMETER = (
    "`score` is a constructor parameter of DTPMNonParametric (the posterior statistic, 'mean' or "
    "'mode', named as in the paper's public code), so there is no score(X, y) method to call"
)
_PYOD_LABELS = (
    "PyOD's convention, which dtpm_fast follows: predict / fit_predict return 1 for an outlier and "
    "0 for an inlier (scikit-learn's outlier detectors return -1 / +1)"
)
_NOT_FITTED = (
    "dtpm_fast.NotFittedError has scikit-learn's bases (ValueError, AttributeError) but is not "
    "its class: subclassing it would import scikit-learn (~1.5 s) on every `import dtpm_fast`"
)
_OBJECT_DTYPE = (
    "a non-numeric value raises ValueError naming the argument (the project's rule for bad "
    "input), where this check wants numpy's TypeError text"
)

_FLOAT32_BATCHES = (
    "scores come from float32 matrix products whose rounding depends on how many rows share a "
    "batch: a row scored within a subset differs by ~1.5e-7 relative, beyond this check's 1e-7"
)

_COMMON = {
    "check_estimators_unfitted": _NOT_FITTED,
    "check_dtype_object": _OBJECT_DTYPE,
    "check_outliers_fit_predict": _PYOD_LABELS,
    "check_outliers_train": _PYOD_LABELS,
    "check_outliers_train(readonly_memmap=True)": _PYOD_LABELS,
}
_D_AT_LEAST_3 = {
    name: _TWO_FEATURES
    for name in (
        "check_classifier_data_not_an_array",
        "check_estimators_fit_returns_self",
        "check_estimators_overwrite_params",
        "check_fit_check_is_fitted",
        "check_fit_idempotent",
        "check_n_features_in",
        "check_readonly_memmap_input",
    )
}
_SCORE = {
    name: _SCORE_PARAMETER
    for name in ("check_fit_score_takes_y", "check_n_features_in_after_fitting", "check_pipeline_consistency")
}


def expected_failed_checks(estimator) -> dict[str, str]:
    """The checks that cannot apply to ``estimator``, with the reason for each."""
    expected = dict(_COMMON)
    if isinstance(estimator, (dtpm_fast.DTPMNonParametric, dtpm_fast.DTPMInverseGamma)):  # incl. MultiScale
        expected.update(_D_AT_LEAST_3)
    if isinstance(estimator, dtpm_fast.DTPMNonParametric):
        expected.update(_SCORE)
    if isinstance(estimator, (dtpm_fast.DTPMCategorical, dtpm_fast.DTPMInverseGamma)):
        expected["check_methods_subset_invariance"] = _FLOAT32_BATCHES
    return expected


def _check_name(check) -> str:
    name = getattr(check, "func", check).__name__
    keywords = getattr(check, "keywords", None)
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in keywords.items()) + ")" if keywords else "")


def _cases() -> list:
    """One pytest case per (detector, check), the inapplicable ones marked xfail with their reason.

    Built as a list here (not with parametrize_with_checks, whose generator pytest 9 deprecates
    with scikit-learn 1.6): the same checks and marks either way.
    """
    cases = []
    for detector in _detectors():
        # scikit-learn warns that the detectors do not inherit its BaseEstimator: they implement
        # the protocol themselves (get_params, set_params, __sklearn_tags__, _repr_html_) so that
        # `import dtpm_fast` does not import scikit-learn; these checks are what the warning is about.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Estimator .* does not inherit from")
            generated = list(
                estimator_checks_generator(
                    detector, expected_failed_checks=expected_failed_checks(detector), mark="xfail"
                )
            )
        for case in generated:
            estimator, check = case.values if hasattr(case, "values") else case
            marks = case.marks if hasattr(case, "marks") else ()
            cases.append(
                pytest.param(
                    estimator, check, marks=marks, id=f"{type(detector).__name__}-{_check_name(check)}"
                )
            )
    return cases


@pytest.mark.parametrize(("estimator", "check"), _cases())
@pytest.mark.filterwarnings("ignore:Estimator .* does not inherit from")
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
