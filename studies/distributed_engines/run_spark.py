"""Score every row of the study's Parquet folder with Spark's mapInPandas (the README recipe).

    python studies/distributed_engines/run_spark.py [--master local[2]] [--records-per-batch 10000]

The model file is shipped with SparkContext.addFile and loaded once per task; the output
(every input column plus ``score``) is written as Parquet, read back and compared, matched by
``id``, with in-process scoring (common.compare).
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import pyarrow.dataset as pds

from common import (
    COLUMNS,
    DATA_ROOT,
    MODEL_PATH,
    ROWS_DIR,
    TreeMemorySampler,
    compare,
    environment,
    java_version,
    write_result,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--master", default="local[2]")
    parser.add_argument(
        "--records-per-batch",
        type=int,
        default=10000,
        help="spark.sql.execution.arrow.maxRecordsPerBatch (Spark's default: 10000)",
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the Python workers (local[2] runs two at once)",
    )
    args = parser.parse_args()

    import pyspark
    from pyspark import SparkFiles
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    out_dir = DATA_ROOT / "spark_scores"
    shutil.rmtree(out_dir, ignore_errors=True)
    with TreeMemorySampler() as memory:
        start = time.perf_counter()
        spark = (
            SparkSession.builder.master(args.master)
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.records_per_batch))
            .config("spark.executorEnv.OMP_NUM_THREADS", str(args.worker_threads))
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        startup_s = time.perf_counter() - start
        try:
            start = time.perf_counter()
            # The README recipe, plus two columns for the check (which call scored the row).
            spark.sparkContext.addFile(str(MODEL_PATH))
            model_name = MODEL_PATH.name
            columns = list(COLUMNS)

            def score(frames):
                import dtpm_fast

                model = dtpm_fast.load(SparkFiles.get(model_name))  # once per task (partition)
                for frame in frames:
                    X = frame[columns].to_numpy(np.float32)
                    key = int(frame["id"].iloc[0]) if len(frame) else -1
                    yield frame.assign(
                        score=model.decision_function(X),
                        batch_key=np.full(len(frame), key, dtype=np.int64),
                        batch_pos=np.arange(len(frame), dtype=np.int64),
                    )

            df = spark.read.parquet(str(ROWS_DIR))
            schema = StructType(
                df.schema.fields
                + [
                    StructField("score", DoubleType()),
                    StructField("batch_key", LongType()),
                    StructField("batch_pos", LongType()),
                ]
            )
            df.mapInPandas(score, schema=schema).write.parquet(str(out_dir))
            score_s = time.perf_counter() - start
            partitions = df.rdd.getNumPartitions()

            def worker_threads(_):
                import dtpm_fast

                yield dtpm_fast.build_info()["threads"]

            threads = spark.sparkContext.parallelize([0], 1).mapPartitions(worker_threads).collect()[0]
        finally:
            spark.stop()

    table = pds.dataset(out_dir, format="parquet").to_table(columns=["id", "score", "batch_key", "batch_pos"])
    check = compare(*(table.column(c).to_numpy() for c in ("id", "score", "batch_key", "batch_pos")))
    write_result(
        f"spark_batch{args.records_per_batch}_threads{args.worker_threads}",
        {
            **environment(),
            "command": f"python studies/distributed_engines/run_spark.py --master {args.master} "
            f"--records-per-batch {args.records_per_batch} --worker-threads {args.worker_threads}",
            "pyspark": pyspark.__version__,
            "java": java_version(),
            "input_partitions": partitions,
            "dtpm_threads_per_worker": threads,
            "startup_s": round(startup_s, 2),
            "score_and_write_s": round(score_s, 2),
            "rows_per_s": round(check["rows"] / score_s),
            "peak_pss_mib": round(memory.peak_pss / 2**20),
            "peak_rss_mib": round(memory.peak_rss / 2**20),
            "peak_processes": memory.peak_processes,
            **check,
        },
    )


if __name__ == "__main__":
    main()
