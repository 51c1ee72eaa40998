"""Distributed scoring with Dask: a fitted detector applied to a Dask array or DataFrame.

The model is shipped to each worker once, not once per partition: with a
``dask.distributed`` client it is scattered to every worker (``broadcast=True``) when
:func:`decision_function` is called; without one (threads or processes scheduler) it is a
single named node of the graph that every scoring task depends on. Scoring itself is lazy.

Needs the ``dask`` extra: ``pip install "dtpm-fast[dask]"``.
"""

from __future__ import annotations

import uuid

import numpy as np

from dtpm_fast._validation import RowsNotScorable

__all__ = ["decision_function", "models_received"]

# How many models this process has received (unpickled) from a client; a worker that
# received the model once per partition would show more than one. For diagnostics/tests.
models_received = 0


class _ShippedModel:
    """Envelope around a detector that counts its arrivals in a process (the detector
    itself pickles through its persistence state, ``BaseDetector.__getstate__``)."""

    def __init__(self, model):
        self.model = model

    def __reduce__(self):
        return _receive_model, (self.model,)


def _receive_model(model):
    global models_received
    models_received += 1
    # Stay in the envelope: a worker passing the model on to another worker pickles it again.
    return _ShippedModel(model)


def _unwrap(model):
    return model.model if isinstance(model, _ShippedModel) else model


_F32_MAX = float(np.finfo(np.float32).max)


def _checked_rows(values: np.ndarray, where, names: list | None = None) -> np.ndarray:
    """``values`` as C-contiguous float32 after checking every row can be scored.

    ``where(i)`` names row ``i`` of this block in the whole input (the model would name
    it within the block only). NaN, infinities and finite values beyond float32's range
    are refused here, before the conversion that would turn the latter into infinities.
    """
    if values.dtype.hasobject or not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        raise ValueError(f"{where(0)} and the rest of its block: dtype {values.dtype} is not numeric")
    if np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"{where(0)} and the rest of its block: complex dtype {values.dtype} is not real")
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        ok = finite & (np.abs(values) <= _F32_MAX) if values.dtype.itemsize > 4 else finite
        if not ok.all():
            i, j = (int(k) for k in np.argwhere(~ok)[0])
            value = values[i, j]
            problem = (
                "a missing or NaN value"
                if np.isnan(value)
                else f"an infinite value ({value})"
                if np.isinf(value)
                else f"a finite value too large for float32 ({value:.6g}; |x| > {_F32_MAX:.4g})"
            )
            column = f"column {names[j]!r}" if names is not None else f"feature {j}"
            raise ValueError(
                f"{where(i)} has {problem} in {column}; impute, drop or rescale it before scoring"
            )
    return np.ascontiguousarray(values, dtype=np.float32)


def _score_block(block: np.ndarray, model, block_info=None) -> np.ndarray:
    model = _unwrap(model)
    if block.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    start = 0
    if block_info is not None and 0 in block_info:
        start = int(block_info[0]["array-location"][0][0])

    def where(i: int) -> str:
        return f"row {start + i} of the array (0-based)"

    X = _checked_rows(np.asarray(block), where)
    return _finite_scores(_decision_function(model, X, where), where)


def _decision_function(model, X, where):
    """The model's scores; rows it cannot score are named in the whole input's numbering."""
    try:
        return model.decision_function(X)
    except RowsNotScorable as exc:
        raise ValueError(
            f"the model returned no finite score for {where(int(exc.rows[0]))}, a row of finite values ({exc})"
        ) from None


def _finite_scores(scores, where) -> np.ndarray:
    """The model's scores as float64; a NaN or infinite score for a finite row is an error, not a result."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        i = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"the model returned the score {scores[i]} for {where(i)}, a row of finite values")
    return scores


def _score_partition(frame, model, columns: list, partition_info=None):
    import pandas as pd

    number = partition_info["number"] if partition_info else "?"
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"partition {number} of the DataFrame lacks the column(s) {missing}")
    if frame.shape[0] == 0:
        return pd.Series([], index=frame.index, name="score", dtype=np.float64)
    try:
        values = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"partition {number} of the DataFrame: columns {columns} are not all numeric ({exc})"
        ) from None

    def where(i: int) -> str:
        return f"the row with index {frame.index[i]!r} (row {i} of partition {number})"

    X = _checked_rows(values, where, columns)
    scores = _finite_scores(_decision_function(_unwrap(model), X, where), where)
    return pd.Series(scores, index=frame.index, name="score", dtype=np.float64)


def _ship(model, client):
    """A graph-ready handle on the model: a broadcast Future with a client, else a Delayed."""
    envelope = _ShippedModel(model)
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if client is not None:
        return client.scatter(envelope, broadcast=True, hash=False)
    import dask

    # A fixed name: dask would otherwise pickle the whole model just to tokenize it.
    return dask.delayed(envelope, name=f"dtpm-model-{uuid.uuid4().hex}", pure=False, traverse=False)


def decision_function(model, data, *, columns=None, client=None):
    """Score a Dask array or DataFrame lazily with a fitted detector.

    Parameters
    ----------
    model : BaseDetector
        A fitted dtpm_fast detector (e.g. from ``dtpm_fast.load``).
    data : dask.array.Array of shape (n_samples, n_features), or dask.dataframe.DataFrame
        Rows to score. An array chunked along its columns is rechunked to whole rows.
    columns : list of str, optional
        DataFrame columns to use, in model order. Default: the model's
        ``feature_names_in_`` when it has them (columns are then taken by name, in any order
        in the DataFrame; ``columns``, if given, must name the same ones), else every column
        in DataFrame order. A Dask array has no names: its columns are taken by position,
        in the order the model was fitted on.
    client : distributed.Client, optional
        Client whose workers receive the model; default: the current client, if any.

    Returns
    -------
    dask.array.Array of float64, shape (n_samples,), or dask.dataframe.Series named "score"
        Lazy anomaly scores (higher = more anomalous), equal to
        ``model.decision_function`` on the same rows; a Series keeps the DataFrame's index.

    Raises
    ------
    ValueError
        If the feature count does not match the model, columns are missing or differ from the
        model's names, or ``data`` is neither a Dask array nor a Dask DataFrame. When the scores
        are computed: a row that cannot be scored (NaN, infinity, a finite value beyond
        float32's range) named in the whole input -- its row number for an array, its index
        label (and partition) for a DataFrame.
    """
    import dask.array as da
    import dask.dataframe as dd

    n_features = getattr(model, "n_features_in_", None)
    if n_features is None:
        from dtpm_fast._validation import NotFittedError

        raise NotFittedError(f"{type(model).__name__} is not fitted; call fit or dtpm_fast.load first")

    if isinstance(data, da.Array):
        if data.ndim != 2:
            raise ValueError(f"data must be a 2-D Dask array (rows, features), got {data.ndim}-D")
        if data.shape[1] != n_features:
            raise ValueError(
                f"data has {data.shape[1]} columns but the model was fitted on {n_features} features"
            )
        if len(data.chunks[1]) > 1:
            data = data.rechunk({1: -1})
        return data.map_blocks(
            _score_block,
            _ship(model, client),
            drop_axis=1,
            dtype=np.float64,
            meta=np.empty((0,), dtype=np.float64),
        )

    if isinstance(data, dd.DataFrame):
        import pandas as pd

        names = getattr(model, "feature_names_in_", None)
        names = None if names is None else [str(c) for c in names]
        if columns is None:
            columns = names if names is not None else list(data.columns)
        else:
            columns = list(columns)
            if names is not None:
                if sorted(map(str, columns)) != sorted(names):
                    raise ValueError(
                        f"the model was fitted on the columns {names}; columns={columns} names others. "
                        "The model's columns are taken by name, so columns can be left out"
                    )
                columns = names  # the model's order, whatever order they were given in
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the DataFrame (columns: {list(data.columns)})")
        repeated = sorted({c for c in columns if list(data.columns).count(c) > 1})
        if repeated:
            raise ValueError(f"the DataFrame has the column name(s) {repeated} more than once")
        if len(columns) != n_features:
            raise ValueError(
                f"{len(columns)} columns selected but the model was fitted on {n_features} features"
            )
        meta = pd.Series([], dtype=np.float64, name="score")
        return data.map_partitions(_score_partition, _ship(model, client), columns, meta=meta)

    raise ValueError(
        f"data must be a dask.array.Array or dask.dataframe.DataFrame, got {type(data).__name__}; "
        "for in-memory data call model.decision_function directly"
    )
