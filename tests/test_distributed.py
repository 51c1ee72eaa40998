"""The README's Ray Data and Spark recipes, run for real on a small Parquet folder.

Each engine scores every row; the scores must equal in-process ``decision_function`` scores,
matched by an ``id`` column. Equality is exact when the in-process call gets the same rows as
the engine's batch: the posterior mean of a call with many rows is interpolated from a table
built for that call's range of distances (csrc/cpu/posterior_table.cpp, checked to 1e-5 grid
steps), so the same row scored in a call with other rows can differ in the last digits. The
tests therefore record, per row, which batch scored it and where, and rescore those batches.

Skipped when ray / pyspark are not installed, and Spark also when no Java runtime is found.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import dtpm_fast

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pds = pytest.importorskip("pyarrow.dataset")

N_ROWS = 3000
N_FILES = 3
COLUMNS = [f"f{j}" for j in range(8)]


@pytest.fixture(scope="module")
def rows_and_model(tmp_path_factory):
    """A Parquet folder (id + 8 float32 features, 3 files) and a saved DTPMNonParametric."""
    root = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N_ROWS, len(COLUMNS))).astype(np.float32)
    X[rng.random(N_ROWS) < 0.05] += 3.0  # some anomalies
    rows = root / "rows"
    rows.mkdir()
    for part, ids in enumerate(np.array_split(np.arange(N_ROWS), N_FILES)):
        table = pa.table({"id": ids.astype(np.int64), **{c: X[ids, j] for j, c in enumerate(COLUMNS)}})
        pq.write_table(table, rows / f"part-{part}.parquet")
    detector = dtpm_fast.DTPMNonParametric(contamination=0.05).fit(
        rng.standard_normal((500, len(COLUMNS))).astype(np.float32)
    )
    model_path = root / "model.dtpm"
    detector.save(model_path)
    return X, rows, model_path, root


def check_scores(out_dir, X, model_path):
    """Every row scored once; scores equal in-process scoring of the same batches (bit for bit)."""
    table = pds.dataset(out_dir, format="parquet").to_table(columns=["id", "score", "batch_key", "batch_pos"])
    ids, scores, keys, pos = (table.column(c).to_numpy() for c in ("id", "score", "batch_key", "batch_pos"))
    np.testing.assert_array_equal(np.sort(ids), np.arange(X.shape[0]))
    model = dtpm_fast.load(model_path)
    order = np.lexsort((pos, keys))
    expected = np.empty_like(scores)
    for batch in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
        expected[batch] = model.decision_function(X[ids[batch]])
    np.testing.assert_array_equal(scores, expected)
    # and, whatever the batches, within float noise of one call over all rows
    np.testing.assert_allclose(scores, model.decision_function(X)[ids], rtol=0, atol=1e-3)


# Ray 2.60's DataContext assigns its own deprecated fields (use_push_based_shuffle, use_polars)
# when it is created, as any ray.data call does, and its __setattr__ warns about them; nothing
# the recipe does. Only DeprecationWarnings raised in ray/data/context.py are ignored.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_ray_data_recipe(rows_and_model):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    X, rows, model_path, root = rows_and_model

    class Scorer:  # the README recipe, plus the batch_key/batch_pos columns for the check
        def __init__(self, path, columns):
            self.model = dtpm_fast.load(path)  # once per actor
            self.columns = list(columns)

        def __call__(self, batch):
            X = np.column_stack([batch[c] for c in self.columns]).astype(np.float32, copy=False)
            batch["score"] = self.model.decision_function(X)
            batch["batch_key"] = np.full(X.shape[0], batch["id"][0] if X.shape[0] else -1, dtype=np.int64)
            batch["batch_pos"] = np.arange(X.shape[0], dtype=np.int64)
            return batch

    out_dir = root / "ray_scores"
    shutil.rmtree(out_dir, ignore_errors=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.read_parquet(str(rows)).map_batches(
            Scorer,
            fn_constructor_args=(str(model_path), COLUMNS),
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0.5,  # leaves a CPU for the read and write tasks
            batch_size=700,
        ).write_parquet(str(out_dir))
    finally:
        ray.shutdown()
    check_scores(out_dir, X, model_path)


def _java_available() -> bool:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(os.path.join(java_home, "bin", "java"), os.X_OK):
        return True
    return shutil.which("java") is not None


# PySpark 4.x warns on import of its pandas functions that pandas >= 3 is not fully supported;
# mapInPandas works with it (this test checks the output).
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_spark_map_in_pandas_recipe(rows_and_model):
    pytest.importorskip("pyspark")
    if not _java_available():
        pytest.skip("no Java runtime (java on PATH or JAVA_HOME) for Spark")
    from pyspark import SparkFiles
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    X, rows, model_path, root = rows_and_model
    out_dir = root / "spark_scores"
    shutil.rmtree(out_dir, ignore_errors=True)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "700")
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        spark.sparkContext.setLogLevel("ERROR")
        spark.sparkContext.addFile(str(model_path))
        name = model_path.name
        columns = list(COLUMNS)

        def score(frames):  # the README recipe, plus the batch_key/batch_pos columns for the check
            model = dtpm_fast.load(SparkFiles.get(name))  # once per task (partition)
            for frame in frames:
                X = frame[columns].to_numpy(np.float32)
                key = int(frame["id"].iloc[0]) if len(frame) else -1
                yield frame.assign(
                    score=model.decision_function(X),
                    batch_key=np.full(len(frame), key, dtype=np.int64),
                    batch_pos=np.arange(len(frame), dtype=np.int64),
                )

        df = spark.read.parquet(str(rows))
        before = df.schema.simpleString()
        extra = [
            StructField(n, t)
            for n, t in (("score", DoubleType()), ("batch_key", LongType()), ("batch_pos", LongType()))
        ]
        schema = StructType(df.schema.fields + extra)  # a new StructType: df.schema.add() would modify df's
        df.mapInPandas(score, schema=schema).write.parquet(str(out_dir))
        assert df.schema.simpleString() == before
    finally:
        spark.stop()
    check_scores(out_dir, X, model_path)
