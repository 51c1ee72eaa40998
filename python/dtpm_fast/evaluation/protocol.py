"""The ADBench evaluation protocol as the DTE authors ran it (docs/METHOD.md section 6).

Per dataset and seed, in this order:

1. **Resample** -- fewer than 1000 rows: 1000 row indices drawn with replacement; more than
   50,000 rows: 50,000 drawn without replacement. The authors seed NumPy's global legacy
   generator right before the draw (``np.random.seed(seed); np.random.choice(...)``); a fresh
   ``np.random.RandomState(seed)`` is the same generator, so the rows here are theirs.
2. **Split** -- ``"semi"``: the normal rows in their current order, the first
   ``round(0.5 * n_normal)`` train; the test set is the remaining normals followed by every
   anomaly (no shuffle). ``"unsup"``: the test set is the whole resampled data set and the
   training set a bootstrap sample of it.
3. **Scale** -- a ``StandardScaler`` fitted on the training rows, applied to both; NaN left after
   scaling becomes the column mean of that array (0 where a column is all NaN).

Two details of the authors' unsupervised run are reproduced because they change the rows:

* the scaler is fitted on the *whole* data set (their generator is called with
  ``test_size=0``, so train = test = everything at scaling time) and the bootstrap is drawn
  afterwards from the scaled rows;
* before the bootstrap their generator draws ``np.random.choice(anomaly_ids, 0, replace=False)``
  (the "labelled anomalies", of which there are none). A zero-size draw without replacement
  still runs ``permutation(n_anomalies)``, which advances the generator; the bootstrap
  ``np.random.choice(n, n, replace=True)`` then continues from there (and, for a resampled
  data set, after the numbers the resample draw consumed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Data sets with fewer rows are resampled up to this many rows, with replacement.
MIN_ROWS = 1000
#: Data sets with more rows are subsampled down to this many rows, without replacement.
MAX_ROWS = 50_000
#: Fraction of the normal rows that form the semi-supervised training set.
SEMI_TRAIN_FRACTION = 0.5
#: ADBench's sub-folders; a data folder may hold the files in these or directly.
ADBENCH_SUBFOLDERS = ("Classical", "CV_by_ResNet18", "NLP_by_BERT")
PROTOCOLS = ("semi", "unsup")


@dataclass(frozen=True)
class Split:
    """One prepared split.

    Attributes
    ----------
    X_train : ndarray of shape (n_train, d), float64
        Scaled training rows (labels are never given to the detector).
    X_test : ndarray of shape (n_test, d), float64
        Scaled test rows.
    y_test : ndarray of shape (n_test,), int64
        1 for anomalies, 0 for normal rows.
    y_train : ndarray of shape (n_train,), int64
        Labels of the training rows (all 0 in ``"semi"``; kept for checks, not for fitting).
    """

    X_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    y_train: np.ndarray


# ----------------------------------------------------------------------------------- loading


def find_datasets(data_dir: str | Path) -> dict[str, Path]:
    """Map every ``.npz`` file stem in ``data_dir`` (or its ADBench sub-folders) to its path.

    Parameters
    ----------
    data_dir : str or Path
        A folder holding ADBench ``.npz`` files directly and/or in ``Classical/``,
        ``CV_by_ResNet18/`` or ``NLP_by_BERT/``.

    Returns
    -------
    dict of str to Path
        Stems such as ``"6_cardio"``, sorted by name.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(
            f"data folder {str(root)!r} does not exist or is not a folder; give the folder of ADBench "
            ".npz files as data_dir"
        )
    found: dict[str, Path] = {}
    for folder in (root, *(root / sub for sub in ADBENCH_SUBFOLDERS)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.npz")):
            if path.stem in found:
                raise ValueError(
                    f"data set name {path.stem!r} appears twice ({found[path.stem]} and {path}); "
                    "keep one copy or give one of the folders as data_dir"
                )
            found[path.stem] = path
    return dict(sorted(found.items()))


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load an ADBench file: ``X`` as float64 (n, d), ``y`` as int64 (n,) with 1 = anomaly.

    Loaded with ``allow_pickle=False``: a file needing pickle is refused, never executed.
    Everything is checked here, where the data enter, and a problem is a ValueError naming
    the file: not an ``.npz`` archive, ``X`` or ``y`` missing, ``X`` not a non-empty 2-D
    array of real numbers (NaN is allowed -- the protocol fills it -- infinity is not),
    ``y`` not 1-D with one label per row, labels other than 0/1 (booleans are fine), or a
    single class (AUC needs both).
    """
    import zipfile

    path = Path(path)
    try:
        # Opened here, so the file is closed whatever np.load raises (it leaks its own handle
        # on a damaged archive).
        with path.open("rb") as fh:
            try:
                data = np.load(fh, allow_pickle=False)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ValueError(f"cannot read {path} as an .npz archive: {exc}") from None
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError(f"{path} is a single .npy array, not an .npz archive holding 'X' and 'y'")
            with data:
                missing = {"X", "y"} - set(data.files)
                if missing:
                    raise ValueError(
                        f"{path} lacks array(s) {sorted(missing)}; ADBench files hold 'X' and 'y'"
                    )
                try:
                    X = data["X"]
                    y = data["y"]
                except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
                    raise ValueError(f"cannot read the arrays of {path}: {exc}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    X = _check_features(X, f"{path}: X")
    y = check_labels(y, f"{path}: y", n_rows=X.shape[0])
    return X, y


def _check_features(X: np.ndarray, where: str) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype.hasobject or not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise ValueError(f"{where} must hold numbers, got dtype {X.dtype}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{where} must hold real numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{where} must be 2-D (n_rows, n_features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {X.shape}); need at least one row and one feature")
    X = X.astype(np.float64)
    if np.isinf(X).any():
        row = int(np.flatnonzero(np.isinf(X).any(axis=1))[0])
        raise ValueError(
            f"{where} holds infinite values (first in row {row}); only NaN is filled by the protocol"
        )
    return X


def check_labels(y, where: str, n_rows: int | None = None) -> np.ndarray:
    """``y`` as int64 after checking it holds one 0/1 label per row, both classes present.

    Labels are compared as they are: 0.5, 2, -1 or NaN are refused, never truncated;
    booleans and 0.0/1.0 are fine.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where} must be 1-D (one label per row), got shape {y.shape}")
    if n_rows is not None and y.shape[0] != n_rows:
        raise ValueError(f"{where} has {y.shape[0]} labels but X has {n_rows} rows")
    if y.dtype.hasobject or not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"{where} must hold 0/1 labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{where} must hold 0/1 labels, got dtype {y.dtype}")
    valid = (y == 0) | (y == 1)
    if not valid.all():
        position = int(np.flatnonzero(~valid)[0])
        raise ValueError(
            f"{where} must hold only 0 (normal) and 1 (anomaly); found {y[position].item()!r} at position {position}"
        )
    labels = y.astype(np.int64)
    if labels.size and (labels.min() == labels.max()):
        raise ValueError(
            f"{where} holds only label {int(labels[0])}; the protocol needs normal rows and anomalies"
        )
    return labels


def load_dataset(data_dir: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the data set with file stem ``name`` (e.g. ``"6_cardio"``) from ``data_dir``."""
    datasets = find_datasets(data_dir)
    if name not in datasets:
        raise ValueError(f"no data set {name!r} in {data_dir}; available: {', '.join(datasets) or '(none)'}")
    return load_npz(datasets[name])


# -------------------------------------------------------------------------------- resampling


def draw_resample_indices(n_rows: int, rng: np.random.RandomState) -> np.ndarray | None:
    """Draw the resampling row indices from ``rng`` (None, drawing nothing, when not needed).

    ``rng`` must be freshly seeded: the authors reseed right before this draw.
    """
    if n_rows < MIN_ROWS:
        return rng.choice(np.arange(n_rows), MIN_ROWS, replace=True)
    if n_rows > MAX_ROWS:
        return rng.choice(np.arange(n_rows), MAX_ROWS, replace=False)
    return None


def resample_indices(n_rows: int, seed: int) -> np.ndarray | None:
    """Row indices of the resampled data set, or None when ``n_rows`` needs no resampling.

    Reproduces ``np.random.seed(seed); np.random.choice(np.arange(n_rows), size, replace)``.
    """
    return draw_resample_indices(n_rows, np.random.RandomState(seed))


def resample(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply :func:`resample_indices` (returns the inputs unchanged when no resampling applies)."""
    idx = resample_indices(len(y), seed)
    if idx is None:
        return X, y
    return X[idx], y[idx]


# ----------------------------------------------------------------------------------- splits


def semi_split_indices(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of the semi-supervised split; see the module docstring."""
    rows = np.arange(len(y))
    normal, anomalous = rows[y == 0], rows[y == 1]
    # Python's round (half to even) on a float, as the authors wrote it.
    n_train = round(SEMI_TRAIN_FRACTION * normal.size)
    return normal[:n_train], np.concatenate([normal[n_train:], anomalous])


def draw_unsup_bootstrap_indices(y: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Bootstrap row indices of the unsupervised training set, continuing the authors' generator.

    ``y`` are the labels after resampling and ``rng`` the generator right after the resample
    draw (or freshly seeded when there was none). First the authors' zero-size "labelled
    anomaly" draw, which permutes the anomaly ids and so advances the generator, then the
    bootstrap ``choice(n, n, replace=True)``.
    """
    rng.choice(np.flatnonzero(y == 1), 0, replace=False)
    return rng.choice(np.arange(len(y)), len(y), replace=True)


# ----------------------------------------------------------------------------------- scaling


def _fill_nan_with_column_mean(X: np.ndarray) -> np.ndarray:
    if not np.isnan(X).any():
        return X
    with warnings.catch_warnings():
        # An all-NaN column warns "Mean of empty slice"; it is handled as mean 0 below.
        warnings.simplefilter("ignore", RuntimeWarning)
        col_mean = np.nanmean(X, axis=0)
    col_mean = np.where(np.isnan(col_mean), 0.0, col_mean)
    rows, cols = np.nonzero(np.isnan(X))
    X[rows, cols] = col_mean[cols]
    return X


def standard_scale(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both arrays with a ``StandardScaler`` fitted on ``X_train``; NaN -> column mean.

    Returns new float64 arrays; the inputs are not modified.
    """
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        if np.isnan(X_train).all(axis=0).any():
            # An all-NaN training column has no mean (sklearn warns and yields NaN); it is
            # filled with 0 below, which is what the authors' NaN handling gives.
            warnings.simplefilter("ignore", RuntimeWarning)
        scaler = StandardScaler().fit(X_train)
        train = scaler.transform(X_train).astype(np.float64, copy=False)
        test = scaler.transform(X_test).astype(np.float64, copy=False)
    return _fill_nan_with_column_mean(train), _fill_nan_with_column_mean(test)


# ------------------------------------------------------------------------------ entry point


def prepare(X: np.ndarray, y: np.ndarray, seed: int, protocol: str) -> Split:
    """Resample, split and scale one data set for one seed. See the module docstring.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Raw features (any numeric dtype; used as float64).
    y : array-like of shape (n,)
        1 = anomaly, 0 = normal.
    seed : int
        Seed of the authors' global generator (the paper uses 0..4).
    protocol : {"semi", "unsup"}

    Returns
    -------
    Split
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    X = _check_features(X, "X")
    y = check_labels(y, "y", n_rows=X.shape[0])
    rng = np.random.RandomState(int(seed))
    resample_idx = draw_resample_indices(len(y), rng)
    if resample_idx is not None:
        X, y = X[resample_idx], y[resample_idx]

    if protocol == "semi":
        train_idx, test_idx = semi_split_indices(y)
        X_train, X_test = standard_scale(X[train_idx], X[test_idx])
        return Split(X_train, X_test, y[test_idx], y[train_idx])

    # unsup: scale on everything (train = test = all rows at that point), then bootstrap.
    X_all, _ = standard_scale(X, X)
    boot = draw_unsup_bootstrap_indices(y, rng)
    return Split(X_all[boot], X_all, y.copy(), y[boot])


def prepare_split(
    X: np.ndarray, y: np.ndarray, seed: int, protocol: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, X_test, y_test)`` of :func:`prepare` -- the one-call entry for quality tables."""
    split = prepare(X, y, seed, protocol)
    return split.X_train, split.X_test, split.y_test
