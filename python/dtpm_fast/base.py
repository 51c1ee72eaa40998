"""The contract every dtpm_fast detector follows (sklearn + PyOD conventions)."""

from __future__ import annotations

import inspect

import numpy as np

from dtpm_fast._validation import check_is_fitted


class BaseDetector:
    """Shared behaviour of the detectors: parameters, threshold, labels, probabilities.

    Subclasses implement ``fit`` (ending with ``self._set_threshold(train_scores)``),
    ``decision_function`` (higher = more anomalous), and the persistence hooks
    ``_get_state`` / ``_from_state``. ``__init__`` only stores its arguments.
    """

    # ---- sklearn parameter protocol ---------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(
            p.name for p in signature.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD
        )

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

    # ---- PyOD conventions -------------------------------------------------------------------
    def _check_contamination(self) -> float:
        c = self.contamination
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 0.5:
            raise ValueError(f"contamination must be a float in (0, 0.5], got {c!r}")
        return float(c)

    def _set_threshold(self, train_scores: np.ndarray) -> None:
        """Set ``decision_scores_``, ``threshold_`` (percentile rule) and ``labels_``."""
        contamination = self._check_contamination()
        self.decision_scores_ = np.asarray(train_scores, dtype=np.float64)
        self.threshold_ = float(np.percentile(self.decision_scores_, 100.0 * (1.0 - contamination)))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)

    def decision_function(self, X) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit on X and return the training labels (0 inlier, 1 outlier)."""
        return self.fit(X, y).labels_

    def predict(self, X) -> np.ndarray:
        """Binary labels, shape (n_samples,), int64: 1 where the score exceeds ``threshold_``."""
        check_is_fitted(self, "threshold_")
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    def predict_proba(self, X, method: str = "linear") -> np.ndarray:
        """Outlier probability, shape (n_samples, 2): columns [inlier, outlier].

        ``method="linear"`` min-max scales the scores with the training scores' range;
        ``method="unify"`` maps the training-standardised score through the Gaussian CDF
        (Kriegel et al. 2011), as PyOD does.
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
        return np.column_stack([1.0 - outlier, outlier])

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
        """(JSON-able metadata, numeric arrays, opaque byte blobs) that rebuild the fitted detector."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict, blobs: dict) -> BaseDetector:  # pragma: no cover
        raise NotImplementedError

    # ---- saving and pickling (dtpm_fast.persistence; no pickle inside saved files) ------------
    def save(self, path) -> None:
        """Save the fitted detector to ``path`` (versioned, pickle-free); reload with ``dtpm_fast.load``."""
        from dtpm_fast import persistence

        persistence.save(self, path)

    def __getstate__(self) -> dict:
        from dtpm_fast import persistence

        return persistence.pickle_state(self)

    def __setstate__(self, state: dict) -> None:
        from dtpm_fast import persistence

        persistence.restore_pickle_state(self, state)
