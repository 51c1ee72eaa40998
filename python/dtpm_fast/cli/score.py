"""``dtpm-fast score MODEL INPUT -o OUTPUT``: stream INPUT through a saved model.

INPUT is read batch by batch (memory bounded by ``--batch-rows``); scores and labels are
written in the same row order to a temporary name renamed at the end.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from dtpm_fast._validation import RowsNotScorable
from dtpm_fast.cli import _args
from dtpm_fast.io import tables
from dtpm_fast.io.atomic import atomic_output
from dtpm_fast.io.load import load


def register(subparsers) -> None:
    """Add ``score`` to the ``dtpm-fast`` parser."""
    score = subparsers.add_parser(
        "score",
        help="score a Parquet/CSV/.npy file with a saved model, streaming",
        description="Score INPUT batch by batch (memory bounded by --batch-rows) and write OUTPUT "
        "(.parquet or .csv) in the same row order with columns [id], [row], score, label, "
        "[posterior_mean]. 'row' (0-based input row) is added with --on-bad-row skip. A model that "
        "knows its column names reads them from a Parquet/CSV INPUT by name, in any order; a .npy "
        "INPUT has no names and its columns are taken by position in the model's order. "
        "--on-bad-row skip skips input rows that cannot be scored, never a row the model fails on "
        "(that stops the command, exit 1, nothing written). INPUT may be a pipe when it is CSV.",
    )
    score.add_argument("model", metavar="MODEL", help="model file from `dtpm-fast fit` / save() / export()")
    score.add_argument(
        "input", type=_args.input_path, metavar="INPUT", help="rows to score (.parquet, .csv, .npy)"
    )
    score.add_argument(
        "-o",
        "--output",
        required=True,
        type=_args.output_path,
        metavar="OUTPUT",
        help="scores file (.parquet or .csv)",
    )
    score.add_argument("--id-column", metavar="NAME", help="input column copied to the output")
    score.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where scoring runs")
    score.add_argument(
        "--threads",
        type=_args.thread_count,
        metavar="N",
        help=f"CPU threads for scoring (at most {_args.MAX_THREADS})",
    )
    score.add_argument(
        "--contamination",
        type=_args.contamination,
        help="label threshold from this outlier share of the training scores "
        "(default: the model's threshold)",
    )
    score.add_argument(
        "--posterior-mean", action="store_true", help="also write the posterior mean of the diffusion time"
    )
    _args.add_input_options(score)
    score.set_defaults(func=run_score)


def run_score(args) -> int:
    tables.require_pyarrow()
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"output {args.output!r} already exists; pass overwrite=True to replace it")
    if args.threads is not None:
        set_threads(args.threads)
    model = load(args.model)
    if args.device is not None:
        model.to_device(args.device)
    columns = model_columns(model, args.columns, args.input)
    reader = tables.open_reader(
        args.input,
        columns=columns,
        id_column=args.id_column,
        batch_rows=args.batch_rows,
        on_bad_row=args.on_bad_row,
    )
    with reader:
        return _score_all(args, model, reader)


def model_columns(model, requested: list[str] | None, input_path: str) -> list[str] | None:
    """The input columns to read, in the model's order.

    A model that knows its column names (saved by ``dtpm-fast fit`` from a Parquet/CSV file, or
    ``feature_names_in_`` from a DataFrame) takes its columns from a Parquet/CSV input by
    name, whatever their order in the file; ``--columns``, if given, must name the same
    columns (in any order). A ``.npy`` input has no names: its columns are taken by
    position, in the order the model was fitted on (``--columns`` picks positions).
    """
    names = getattr(model, "feature_names_in_", None)
    if names is None or tables.file_format(input_path) == "npy":
        return requested
    names = [str(name) for name in names]
    if requested is not None and sorted(requested) != sorted(names):
        raise ValueError(
            f"the model was fitted on the columns {names}; --columns gives {requested}. The model's "
            "columns are read by name, so --columns can be left out; if the input names them "
            "differently, rename them"
        )
    return names


def _score_all(args, model, reader) -> int:
    import pyarrow as pa

    n_expected = getattr(model, "n_features_in_", None)
    if n_expected is not None and reader.n_features != n_expected:
        raise ValueError(
            f"the model was fitted on {n_expected} features but {args.input!r} gives {reader.n_features} "
            f"({reader.feature_columns[:10]}{'...' if reader.n_features > 10 else ''}); choose them with --columns"
        )
    threshold = label_threshold(model, args.contamination)
    fields = []
    if args.id_column is not None:
        fields.append(pa.field(args.id_column, reader.id_type))
    if args.on_bad_row == "skip":
        fields.append(pa.field("row", pa.int64()))
    fields += [pa.field("score", pa.float64()), pa.field("label", pa.int64())]
    if args.posterior_mean:
        fields.append(pa.field("posterior_mean", pa.float64()))
    schema = pa.schema(fields)

    progress = Progress(reader, enabled=not args.quiet and sys.stderr.isatty())
    started = time.perf_counter()
    with atomic_output(args.output, overwrite=args.overwrite) as temporary:
        with tables.TableWriter(temporary, tables.file_format(args.output), schema) as writer:
            for batch in tables.prefetch(reader):
                try:
                    scores, posterior_mean = score_batch(model, batch.features, args.posterior_mean)
                except RowsNotScorable as exc:  # the rows it names, in the input's numbering
                    raise ModelFailure(batch.rows[exc.rows[:1]], str(exc)) from exc
                except Exception as exc:  # reported with the rows, never skipped
                    raise ModelFailure(batch.rows, f"{type(exc).__name__}: {exc or '(no message)'}") from exc
                for name, values in (("score", scores), ("posterior mean", posterior_mean)):
                    if values is not None and not np.isfinite(values).all():
                        position = int(np.flatnonzero(~np.isfinite(values))[0])
                        raise ModelFailure(
                            batch.rows[position : position + 1],
                            f"it returned the {name} {values[position]} for a finite input row",
                        )
                columns_out = []
                if args.id_column is not None:
                    columns_out.append(batch.ids)
                if args.on_bad_row == "skip":
                    columns_out.append(pa.array(batch.rows))
                columns_out += [pa.array(scores), pa.array((scores > threshold).astype(np.int64))]
                if args.posterior_mean:
                    columns_out.append(pa.array(posterior_mean))
                writer.write(pa.RecordBatch.from_arrays(columns_out, schema=schema))
                progress.update(writer.rows_written)
        progress.finish()
    if not args.quiet:
        elapsed = time.perf_counter() - started
        rate = writer.rows_written / elapsed if elapsed > 0 else float("inf")
        print(
            f"scored {writer.rows_written:,} rows in {elapsed:.1f} s ({rate:,.0f} rows/s) -> {args.output}",
            file=sys.stderr,
        )
    if reader.bad_rows.count:  # reported even with --quiet: rows are missing from the output
        print(f"dtpm-fast score: {reader.bad_rows.summary()}", file=sys.stderr)
    return 0


class ModelFailure(ValueError):
    """The model raised while scoring rows that passed the input checks.

    ``--on-bad-row skip`` skips *input* rows that cannot be scored (missing, non-numeric,
    infinite or too large values, wrong field counts); it never skips a row the model fails
    on -- an exception, or a NaN/infinite score for a finite row -- : that is a fault to
    see, so the command stops (exit 1) with the row(s) named and writes nothing.
    """

    def __init__(self, rows: np.ndarray, detail: str):
        first, last = int(rows[0]) + 1, int(rows[-1]) + 1
        where = f"row {first}" if first == last else f"a batch of rows {first}-{last}"
        super().__init__(
            f"the model failed while scoring {where} ({detail}); "
            "these rows passed the input checks, so --on-bad-row skip does not skip them; "
            "nothing was written. Score the rows with the Python API to find the row, and report "
            "the failure if the input is valid"
        )


def label_threshold(model, contamination: float | None) -> float:
    """The model's ``threshold_``, or the training-score percentile for ``contamination``."""
    if contamination is None:
        return float(model.threshold_)
    scores = getattr(model, "decision_scores_", None)
    if scores is None:
        raise ValueError("--contamination needs the training scores, which this model file does not hold")
    return float(np.percentile(scores, 100.0 * (1.0 - contamination)))


def score_batch(model, X: np.ndarray, want_posterior_mean: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (float64, shape (m,)) and, on request, the posterior mean of t for one batch."""
    scores = model.decision_function(X)
    if not want_posterior_mean:
        return scores, None
    if not hasattr(model, "posterior_mean"):
        raise ValueError(f"posterior means are not available for {type(model).__name__}")
    if model.get_params().get("score") == "mean":
        return scores, scores  # the score parameter says the score is the posterior mean: no second pass
    return scores, model.posterior_mean(X)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads in FAISS, the native core and (if loaded) torch."""
    import faiss

    from dtpm_fast import _core

    faiss.omp_set_num_threads(n)
    _core.set_max_threads(n)  # the native core has its own OpenMP runtime (FAISS bundles another)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


class Progress:
    """A one-line progress display on stderr: rows, rows/s, percent and ETA.

    Parquet and .npy inputs report progress in rows, CSV in bytes read; ``enabled=False``
    (stderr not a terminal, or ``--quiet``) prints nothing.
    """

    def __init__(self, reader, enabled: bool, interval: float = 0.5):
        self._reader = reader
        self._enabled = enabled
        self._interval = interval
        self._started = time.perf_counter()
        self._last = 0.0
        self._shown = False

    def update(self, rows_done: int, force: bool = False) -> None:
        if not self._enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        line = f"{rows_done:,} rows  {rows_done / elapsed:,.0f} rows/s"
        total, done = self._reader.progress_total, self._reader.progress_done
        if total:
            fraction = min(done / total, 1.0)
            line += f"  {100 * fraction:5.1f}%"
            if 0 < fraction < 1:
                line += f"  ETA {_clock(elapsed * (1 - fraction) / fraction)}"
        sys.stderr.write("\r" + line.ljust(60))
        sys.stderr.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
