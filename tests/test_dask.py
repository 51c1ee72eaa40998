"""Parallel scoring: Dask (a real 2-process LocalCluster) and several Python threads on one model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import dtpm_fast

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

from dtpm_fast.integrations import dask as dtpm_dask  # after the importorskip calls: needs dask

N_FEATURES = 6


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    X_train = rng.standard_normal((800, N_FEATURES)).astype(np.float32)
    X_query = (rng.standard_normal((2003, N_FEATURES)) * 1.4).astype(np.float32)
    return X_train, X_query


@pytest.fixture(scope="module")
def models(data):
    return {
        index: dtpm_fast.DTPMNonParametric(index=index, n_neighbors=5).fit(data[0])
        for index in ("flat", "hnsw")
    }


# Parametrised by name (not a parametrised fixture) so tests run in file order: the local-scheduler
# test before the cluster fixture starts a client that would become the default.
INDEXES = pytest.mark.parametrize("index", ["flat", "hnsw"])


# ---- without a distributed client (runs before the cluster fixture exists) ----------------------


@INDEXES
def test_array_scoring_with_the_local_scheduler(models, index, data):
    model, X = models[index], data[1]
    result = dtpm_dask.decision_function(model, da.from_array(X, chunks=(300, N_FEATURES)))
    assert isinstance(result, da.Array) and result.shape == (len(X),)
    np.testing.assert_array_equal(result.compute(scheduler="threads"), model.decision_function(X))


# ---- on a real cluster of 2 worker processes ---------------------------------------------------


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _received(client) -> dict:
    return client.run(lambda: __import__("dtpm_fast.integrations.dask").integrations.dask.models_received)


@INDEXES
def test_array_on_cluster_matches_single_process(client, models, index, data):
    model, X = models[index], data[1]
    before = _received(client)
    # Chunked along the columns too: rechunked to whole rows; 13 row blocks over 2 workers.
    result = dtpm_dask.decision_function(model, da.from_array(X, chunks=(157, 4)))
    assert isinstance(result, da.Array)
    scores = result.compute()
    np.testing.assert_array_equal(scores, model.decision_function(X))
    after = _received(client)
    assert len(after) == 2
    assert {w: after[w] - before[w] for w in after} == {w: 1 for w in after}  # once per worker


def test_dataframe_on_cluster_matches_single_process(client, data):
    X_train, X = data
    names = [f"x{j}" for j in range(N_FEATURES)]
    fitted = dtpm_fast.DTPMNonParametric(index="flat").fit(X_train)
    fitted.feature_names_in_ = np.asarray(names, dtype=object)
    frame = pd.DataFrame(X[:, ::-1], columns=names[::-1])  # columns in another order
    frame["text"] = "ignored"
    frame.index = frame.index * 3 + 5
    before = _received(client)
    result = dtpm_dask.decision_function(fitted, dd.from_pandas(frame, npartitions=7))
    assert isinstance(result, dd.Series)
    series = result.compute()
    np.testing.assert_array_equal(series.to_numpy(), fitted.decision_function(X))
    np.testing.assert_array_equal(series.index.to_numpy(), frame.index.to_numpy())
    assert series.name == "score"
    after = _received(client)
    assert all(after[w] - before[w] == 1 for w in after)


def test_loaded_model_on_cluster(client, data, tmp_path):
    X_train, X = data
    original = dtpm_fast.DTPMNonParametric(index="hnsw", score="mode").fit(X_train)
    original.save(tmp_path / "m.dtpm")
    loaded = dtpm_fast.load(tmp_path / "m.dtpm")
    scores = dtpm_dask.decision_function(loaded, da.from_array(X, chunks=(500, N_FEATURES))).compute()
    np.testing.assert_array_equal(scores, original.decision_function(X))


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_inputs(data):
    X_train, X = data
    fitted = dtpm_fast.DTPMNonParametric(index="flat").fit(X_train)
    with pytest.raises(ValueError, match="fitted on 6 features"):
        dtpm_dask.decision_function(fitted, da.from_array(X[:, :4], chunks=(100, 4)))
    with pytest.raises(ValueError, match="must be a dask.array.Array or dask.dataframe.DataFrame"):
        dtpm_dask.decision_function(fitted, X)
    frame = dd.from_pandas(pd.DataFrame(X, columns=list("abcdef")), npartitions=2)
    with pytest.raises(ValueError, match=r"columns \['zz'\] are not in the DataFrame"):
        dtpm_dask.decision_function(fitted, frame, columns=list("abcde") + ["zz"])
    with pytest.raises(dtpm_fast.NotFittedError):
        dtpm_dask.decision_function(dtpm_fast.DTPMNonParametric(), da.from_array(X, chunks=(100, 6)))


# ---- several Python threads on one fitted model --------------------------------------------------


@INDEXES
def test_concurrent_threads_match_sequential(models, index, data):
    model, X = models[index], data[1]
    chunks = np.array_split(X, 16)
    sequential = [model.decision_function(chunk) for chunk in chunks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(model.decision_function, chunks))
    for expected, got in zip(sequential, concurrent, strict=False):
        np.testing.assert_array_equal(got, expected)
