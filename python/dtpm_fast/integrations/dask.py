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


def _score_block(block: np.ndarray, model) -> np.ndarray:
    model = _unwrap(model)
    if block.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    return np.asarray(
        model.decision_function(np.ascontiguousarray(block, dtype=np.float32)), dtype=np.float64
    )


def _score_partition(frame, model, columns: list):
    import pandas as pd

    scores = _score_block(frame[columns].to_numpy(dtype=np.float32), model)
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
        ``feature_names_in_`` when it has them, else every column.
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
        If the feature count does not match the model, or ``data`` is neither a Dask array
        nor a Dask DataFrame.
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

        if columns is None:
            names = getattr(model, "feature_names_in_", None)
            columns = [str(c) for c in names] if names is not None else list(data.columns)
        columns = list(columns)
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the DataFrame (columns: {list(data.columns)})")
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
