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
    module = type(X).__module__
    if module.startswith("scipy.sparse") or hasattr(X, "tocsr"):
        raise ValueError(
            f"{name} is a sparse matrix ({type(X).__name__}); dtpm_fast needs dense rows: pass "
            f"{name}.toarray() (it takes n_samples x n_features x 4 bytes)."
        )
    if hasattr(X, "__cuda_array_interface__") or module.startswith("torch"):
        raise ValueError(
            f"{name} is a {type(X).__module__.split('.')[0]} array this call cannot take: pass a NumPy "
            "array (a CPU torch tensor: X.numpy()); only a detector with device='cuda' takes CUDA "
            "tensors and CuPy arrays."
        )
    try:
        plain = all(isinstance(t, np.dtype) and t.kind in "biuf" for t in getattr(X, "dtypes", ()))
        if hasattr(X, "columns") and hasattr(X, "to_numpy") and not plain:  # pd.NA, extension dtypes -> NaN
            try:
                arr = X.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                arr = np.asarray(X)  # non-numeric columns: reported below
        else:
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
        raise ValueError(f"Complex data not supported: {name} must be real-valued, got dtype {arr.dtype}.")
    check_shape(arr.shape, name)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{name} contains NaN or infinity (or a missing value) in {bad.size} row(s) (first: row {bad[0]}, counting from 0); "
            "impute or drop them before scoring."
        )
    limit = np.finfo(dtype).max if np.issubdtype(np.dtype(dtype), np.floating) else None
    if limit is not None and arr.dtype.itemsize > np.dtype(dtype).itemsize and arr.dtype.kind == "f":
        too_large = np.abs(arr) > limit
        if too_large.any():
            bad = np.flatnonzero(too_large.any(axis=1))
            raise ValueError(
                f"{name} has finite values too large for {np.dtype(dtype).name} (|x| > {limit:.3g}) in "
                f"{bad.size} row(s) (first: row {bad[0]}, counting from 0); dtpm_fast computes in {np.dtype(dtype).name}: "
                "rescale those features."
            )
    return np.ascontiguousarray(arr, dtype=dtype)


def check_shape(shape: tuple, name: str = "X") -> None:
    """Raise ValueError unless ``shape`` is that of a non-empty 2-D (n_samples, n_features) matrix."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2:
        hint = " Reshape your data: a single sample is X.reshape(1, -1)." if len(shape) == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {len(shape)}-D.{hint}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: 0 sample(s) (shape={shape}) while a minimum of 1 is required.")
    if shape[1] == 0:
        raise ValueError(f"{name} is empty: 0 feature(s) (shape={shape}) while a minimum of 1 is required.")


def feature_names(X) -> np.ndarray | None:
    """The column names of a DataFrame-like ``X`` (all strings), else None (scikit-learn's rule)."""
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "to_numpy"):
        return None
    names = np.asarray(list(columns), dtype=object)
    return names if names.size and all(isinstance(n, str) for n in names) else None


def check_feature_names(names, fitted, name: str = "X") -> None:
    """Raise ValueError if DataFrame column ``names`` differ from the ``fitted`` ones (order counts)."""
    if names is None or fitted is None:
        return
    if len(names) != len(fitted) or any(a != b for a, b in zip(names, fitted, strict=False)):
        if sorted(map(str, names)) == sorted(map(str, fitted)):
            problem = "the same columns in another order"
        else:
            missing = [n for n in fitted if n not in set(names)][:5]
            extra = [n for n in names if n not in set(fitted)][:5]
            problem = f"other columns (missing {missing}, unexpected {extra})"
        raise ValueError(
            f"{name} has {problem} than at fit; pass {name}[detector.feature_names_in_] "
            "(the columns in the fitted order)."
        )


def check_n_features(X: np.ndarray, expected: int, name: str = "X", owner: str = "the detector") -> None:
    """Raise ValueError if ``X`` does not have the number of features seen in ``fit``."""
    if X.shape[1] != expected:
        raise ValueError(
            f"{name} has {X.shape[1]} features, but {owner} is expecting {expected} features as input "
            "(the number it was fitted with)."
        )


def check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    """Validate an integer parameter in ``[minimum, maximum]`` (no upper bound when ``maximum`` is None)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}.")
    return int(value)


def check_choice(value, name: str, choices) -> str:
    """Validate a string parameter against its allowed values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


class RowsNotScorable(ValueError):
    """Finite rows a model cannot score; ``rows`` holds their positions (0-based) in the call's X."""

    def __init__(self, message: str, rows: np.ndarray):
        super().__init__(message)
        self.rows = rows


def check_finite_scores(scores: np.ndarray, owner: str) -> np.ndarray:
    """``scores`` if all finite; else :class:`RowsNotScorable` naming the rows."""
    finite = np.isfinite(scores)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise RowsNotScorable(
            f"{owner} cannot score {bad.size} row(s) (first: row {bad[0]}, counting from 0): they are "
            "finite but so far out that its network's output overflows; rescale or clip those features.",
            bad,
        )
    return scores


def check_finite_loss(loss: float, epoch: int, owner: str) -> float:
    """``loss`` if finite; else ValueError: training diverged (raised, never a NaN model)."""
    if not np.isfinite(loss):
        raise ValueError(
            f"{owner} training diverged: the mean loss of epoch {epoch} is {loss}. The training rows "
            "are finite but too large or too spread for the network; rescale or clip extreme "
            "features (standardize=True scales each feature), or lower lr."
        )
    return loss
