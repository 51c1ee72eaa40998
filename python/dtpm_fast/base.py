"""The contract every dtpm_fast detector follows (sklearn + PyOD conventions).

Fitted state and parameters (the rule for every detector): ``fit`` records the parameters it
was fitted with. Afterwards every method that uses the fitted state (scoring, ``posterior``,
``save``, pickling and copying) first checks them: a parameter changed since ``fit`` with
``set_params`` (or by assignment) raises ``ValueError`` naming it, its fitted and its new value,
and the fix (fit again, or set it back). The exceptions are a class's ``_runtime_params``
(e.g. ``batch_size``), which only shape how work is done: they are validated and honoured
where they are used. ``to_device`` moves a fitted detector and updates the record.

Saving, loading and pickling share one state: ``_get_state`` / ``_from_state`` of each class.
"""

from __future__ import annotations

import copy
import functools
import inspect

import numpy as np

from dtpm_fast import _core, _registry
from dtpm_fast._validation import (
    NotFittedError,
    check_feature_names,
    check_is_fitted,
    check_matrix,
    check_n_features,
    feature_names,
)
from dtpm_fast.io import model_files

PICKLE_FORMAT = 1


class BaseDetector:
    """Shared behaviour of the detectors: parameters, threshold, labels, probabilities.

    Subclasses implement ``fit`` (ending with ``self._set_threshold(train_scores)``),
    ``decision_function`` (higher = more anomalous), and the persistence hooks
    ``_get_state`` / ``_from_state``. ``__init__`` only stores its arguments.
    """

    # ---- sklearn parameter protocol ---------------------------------------------------------
    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return _constructor_parameters(cls)

    def get_params(self, deep: bool = True) -> dict:
        """Constructor parameters, as sklearn's ``get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> BaseDetector:
        """Set constructor parameters, as sklearn's ``set_params``; returns self."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for {type(self).__name__}; valid: {sorted(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---- scikit-learn estimator protocol, without importing scikit-learn ------------------
    # (importing sklearn.base takes ~1.5 s and scipy.stats with it; these hooks import it only
    # when scikit-learn itself calls them, so it is already loaded.)
    def __sklearn_tags__(self):
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(
            estimator_type="outlier_detector",
            target_tags=TargetTags(required=False),
            input_tags=InputTags(two_d_array=True, allow_nan=False, sparse=False),
            non_deterministic=self._non_deterministic,
        )

    _non_deterministic = False

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "threshold_")

    def _repr_html_(self) -> str:
        """The HTML view of notebooks: scikit-learn's when installed, else the plain repr."""
        try:
            from sklearn.utils import estimator_html_repr
        except ImportError:
            import html

            return f"<pre>{html.escape(repr(self))}</pre>"
        return estimator_html_repr(self)

    # ---- input rows -------------------------------------------------------------------------
    def _validate_rows(self, X, *, fitting: bool, dtype=np.float32) -> np.ndarray:
        """X checked (``check_matrix``) as a C-contiguous ``dtype`` matrix.

        Fitting records ``n_features_in_`` and, for a DataFrame with string column names,
        ``feature_names_in_``; scoring checks both (columns must come in the fitted order).
        """
        names = feature_names(X)
        X = check_matrix(X, "X", dtype)
        if fitting:
            self.n_features_in_ = X.shape[1]
            if names is not None:
                self.feature_names_in_ = names
            else:
                self.__dict__.pop("feature_names_in_", None)
        else:
            check_n_features(X, self.n_features_in_, owner=type(self).__name__)
            check_feature_names(names, getattr(self, "feature_names_in_", None))
        return X

    # ---- PyOD conventions -------------------------------------------------------------------
    def _check_contamination(self) -> float:
        c = self.contamination
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 0.5:
            raise ValueError(f"contamination must be a float in (0, 0.5], got {c!r}")
        return float(c)

    def _set_threshold(self, train_scores: np.ndarray) -> None:
        """End of ``fit``: set ``decision_scores_``, ``threshold_`` (percentile rule), ``labels_``."""
        contamination = self._check_contamination()
        scores = np.asarray(train_scores, dtype=np.float64)
        self._restore_threshold(scores, np.percentile(scores, 100.0 * (1.0 - contamination)))

    def _restore_threshold(self, train_scores, threshold) -> None:
        """Set the training scores, threshold and labels, and record the fitted parameters."""
        self.decision_scores_ = np.asarray(train_scores, dtype=np.float64)
        self.threshold_ = float(threshold)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        self._fitted_params = _snapshot(self.get_params())

    # ---- fitted state versus parameters (the rule in the module docstring) ----------------
    _runtime_params: tuple[str, ...] = ()

    def _check_unchanged(self) -> None:
        """ValueError if a parameter other than ``_runtime_params`` changed since ``fit``."""
        fitted = getattr(self, "_fitted_params", None)
        if fitted is None:
            return
        for name, value in self.get_params().items():
            if name in self._runtime_params or name not in fitted:
                continue
            if not _same(value, fitted[name]):
                raise ValueError(
                    f"{type(self).__name__} was fitted with {name}={fitted[name]!r} but {name} is now "
                    f"{value!r}; call fit again to use the new value, or set {name} back"
                    + (" (or use to_device)" if name == "device" else "")
                )

    def decision_function(self, X) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit on X and return the training labels (0 inlier, 1 outlier)."""
        return self.fit(X, y).labels_

    def predict(self, X, return_confidence: bool = False):
        """Binary labels, shape (n_samples,), int64: 1 where the score exceeds ``threshold_``.

        ``return_confidence=True`` also returns :meth:`predict_confidence` (PyOD's signature).
        """
        check_is_fitted(self, "threshold_")
        labels = (self.decision_function(X) > self.threshold_).astype(np.int64)
        return (labels, self.predict_confidence(X)) if return_confidence else labels

    def predict_proba(self, X, method: str = "linear", return_confidence: bool = False):
        """Outlier probability, shape (n_samples, 2): columns [inlier, outlier].

        ``method="linear"`` min-max scales the scores with the training scores' range;
        ``method="unify"`` maps the training-standardised score through the Gaussian CDF
        (Kriegel et al. 2011), as PyOD does. ``return_confidence=True`` also returns
        :meth:`predict_confidence` (PyOD's signature).
        """
        check_is_fitted(self, "decision_scores_")
        scores = self.decision_function(X)
        train = self.decision_scores_
        if method == "linear":
            span = train.max() - train.min()
            outlier = (scores - train.min()) / span if span > 0 else np.zeros_like(scores)
        elif method == "unify":
            from scipy import special  # here, not at import: scipy.stats/special take ~0.8 s to import

            std = train.std()
            z = (scores - train.mean()) / (std if std > 0 else 1.0)
            outlier = special.erf(z / np.sqrt(2.0))
        else:
            raise ValueError(f"method must be 'linear' or 'unify', got {method!r}")
        outlier = np.clip(outlier, 0.0, 1.0)
        proba = np.column_stack([1.0 - outlier, outlier])
        return (proba, self.predict_confidence(X)) if return_confidence else proba

    def predict_confidence(self, X) -> np.ndarray:
        """Confidence in each predicted label, shape (n_samples,), in [0, 1] (ExCeeD, Perini et al. 2020).

        Vectorised: the rank of each score among the training scores comes from one sorted search.
        """
        check_is_fitted(self, "decision_scores_")
        scores = self.decision_function(X)
        train_sorted = np.sort(self.decision_scores_)
        n = train_sorted.size
        n_below = np.searchsorted(train_sorted, scores, side="right")
        p_outlier = (1.0 + n_below) / (2.0 + n)
        n_expected_inliers = n - int(n * self._check_contamination())
        from scipy import stats  # here, not at import (see predict_proba)

        confidence = 1.0 - stats.binom.cdf(n_expected_inliers, n, p_outlier)
        is_outlier = scores > self.threshold_
        return np.where(is_outlier, confidence, 1.0 - confidence)

    # ---- persistence hooks ------------------------------------------------------------------
    def _get_state(self) -> tuple[dict, dict[str, np.ndarray], dict[str, bytes]]:  # pragma: no cover
        """(JSON-able metadata, numeric arrays, opaque byte blobs) that rebuild the fitted detector.

        Raises NotFittedError when unfitted and ValueError when a parameter changed since fit.
        """
        raise NotImplementedError

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict, blobs: dict) -> BaseDetector:  # pragma: no cover
        raise NotImplementedError

    def _model_file_state(self) -> dict:
        """The whole state a model file or a pickle holds: kind, the hooks' parts, extras."""
        meta, arrays, blobs = self._get_state()
        names = getattr(self, "feature_names_in_", None)
        return {
            "kind": type(self).__name__,
            "meta": meta,
            "arrays": {k: np.asarray(v) for k, v in arrays.items()},
            "blobs": {k: bytes(v) for k, v in blobs.items()},
            "extras": {} if names is None else {"feature_names": [str(n) for n in names]},
        }

    @classmethod
    def _from_model_file_state(cls, state: dict) -> BaseDetector:
        """A fitted detector from :meth:`_model_file_state`'s dict (read back from a file)."""
        detector = cls._from_state(state["meta"], state["arrays"], state["blobs"])
        names = state["extras"].get("feature_names")
        if names is not None:
            if not isinstance(names, list) or len(names) != getattr(detector, "n_features_in_", len(names)):
                raise ValueError("the saved feature names do not match the number of features")
            detector.feature_names_in_ = np.asarray([str(n) for n in names], dtype=object)
        return detector

    # ---- saving and pickling (no pickle inside saved files) ---------------------------------
    def save(self, path) -> None:
        """Save the fitted detector to ``path`` (versioned, pickle-free); reload with ``dtpm_fast.load``.

        Raises NotFittedError when unfitted, ValueError when a parameter changed since ``fit``.
        """
        kind = type(self).__name__
        if kind not in _registry.BY_CLASS_NAME:
            raise ValueError(
                f"cannot save a {kind}: known detector kinds are {sorted(_registry.BY_CLASS_NAME)}"
            )
        model_files.write(path, self._model_file_state(), _core.__version__)

    def __getstate__(self) -> dict:
        """A fitted detector pickles as its saved state, an unfitted one as its parameters.

        (A FAISS index travels as its serialized bytes; pickle names the class itself, so
        subclasses outside the registry pickle too.)
        """
        try:
            return {"pickle_format": PICKLE_FORMAT, "state": self._model_file_state()}
        except NotFittedError:
            return {"pickle_format": PICKLE_FORMAT, "params": self.get_params()}
        except NotImplementedError:  # a detector without state hooks: its attributes as they are
            return {"pickle_format": PICKLE_FORMAT, "attributes": dict(self.__dict__)}

    def __setstate__(self, state: dict) -> None:
        version = state.get("pickle_format")
        if version != PICKLE_FORMAT:
            raise ValueError(
                f"cannot unpickle a {type(self).__name__} of pickle format {version!r} "
                f"(this dtpm_fast reads {PICKLE_FORMAT})"
            )
        if "params" in state:
            self.__dict__.update(state["params"])
        elif "attributes" in state:
            self.__dict__.update(state["attributes"])
        else:  # "state"; pickles of 0.1.0 hold its parts at the top level
            saved = state.get("state") or {"kind": type(self).__name__, **state}
            try:
                restored = type(self)._from_model_file_state(saved)
            except (KeyError, TypeError, IndexError, AttributeError) as exc:
                raise ValueError(
                    f"cannot unpickle a {type(self).__name__}: its state is incomplete or inconsistent ({exc!r})"
                ) from None
            self.__dict__.update(restored.__dict__)


@functools.cache
def _constructor_parameters(cls: type) -> tuple[str, ...]:
    """The names ``cls.__init__`` takes, sorted (computed once per class: every scoring call
    compares the parameters with the fitted ones, and signature inspection is the slow part)."""
    signature = inspect.signature(cls.__init__)
    return tuple(
        sorted(p.name for p in signature.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)
    )


def _snapshot(params: dict) -> dict:
    """A record of parameter values that later in-place edits (of a dict, a list) cannot change."""
    return {k: copy.deepcopy(v) if isinstance(v, (dict, list, set)) else v for k, v in params.items()}


def _same(a, b) -> bool:
    if a is b:
        return True
    try:
        equal = a == b
    except (TypeError, ValueError):
        return False
    return bool(equal) if isinstance(equal, (bool, np.bool_)) else False  # arrays compare elementwise
