"""Input checks shared by every detector: fail early, name the argument and the fix."""

from __future__ import annotations

import numbers

import numpy as np


class NotFittedError(ValueError, AttributeError):
    """Raised when a detector is used before ``fit`` (same bases as sklearn's NotFittedError)."""


def check_is_fitted(estimator: object, attribute: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has ``attribute`` (set by ``fit``)."""
    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet: call fit(X) before using it."
        )


def check_matrix(X, name: str = "X", dtype=np.float32) -> np.ndarray:
    """Validate a 2-D numeric, finite, non-empty matrix and return it as C-contiguous ``dtype``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        NumPy array, pandas DataFrame or anything ``np.asarray`` accepts.
    name : str
        Argument name used in error messages.
    dtype : numpy dtype
        Output dtype. An input already of this dtype and C-contiguous is returned without a copy.

    Returns
    -------
    numpy.ndarray of shape (n_samples, n_features), dtype ``dtype``, C-contiguous.
    """
    if hasattr(X, "__cuda_array_interface__") or type(X).__module__.startswith("torch"):
        raise ValueError(
            f"{name} is a {type(X).__module__.split('.')[0]} array this call cannot take: pass a NumPy "
            "array (a CPU torch tensor: X.numpy()); only a detector with device='cuda' takes CUDA "
            "tensors and CuPy arrays."
        )
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} could not be converted to a numeric array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be numeric; it has dtype {arr.dtype} with non-numeric values. "
                "Encode categorical columns first."
            ) from None
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got complex dtype {arr.dtype}.")
    if arr.ndim != 2:
        hint = " Reshape a single sample with X.reshape(1, -1)." if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {arr.ndim}-D.{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}; need at least one row and one feature.")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{name} contains NaN or infinity in {bad.size} row(s) (first: row {bad[0]}); "
            "impute or drop them before scoring."
        )
    return arr


def check_n_features(X: np.ndarray, expected: int, name: str = "X") -> None:
    """Raise ValueError if ``X`` does not have the number of features seen in ``fit``."""
    if X.shape[1] != expected:
        raise ValueError(f"{name} has {X.shape[1]} features, but the detector was fitted with {expected}.")


def check_int(value, name: str, minimum: int) -> int:
    """Validate an integer parameter ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_choice(value, name: str, choices) -> str:
    """Validate a string parameter against its allowed values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value
