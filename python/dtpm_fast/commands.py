"""The ``fit``, ``score`` and ``info`` sub-commands of ``dtpm-fast``.

``dtpm-fast fit TRAIN --model np -o MODEL`` fits a detector on a Parquet, CSV or ``.npy``
file and saves it (the feature column names travel with the model).
``dtpm-fast score MODEL INPUT -o OUTPUT`` streams INPUT batch by batch through the model
and writes scores and labels in the same row order, to a temporary name renamed at the end.
``dtpm-fast info`` prints what this installation can do (build, FAISS, torch, CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dtpm_fast import streaming

# --model values -> detector class names (resolved lazily: the parametric ones need torch).
MODELS = {"np": "DTPMNonParametric", "categorical": "DTPMCategorical", "inverse-gamma": "DTPMInverseGamma"}
# Options that are constructor parameters, and the models they apply to.
_MODEL_OPTIONS = {
    "n_neighbors": ("np",),
    "index": ("np",),
    "score": ("np",),
    "batch_size": ("np", "categorical", "inverse-gamma"),
    "T": ("np", "categorical", "inverse-gamma"),
    "epochs": ("categorical", "inverse-gamma"),
    "lr": ("categorical", "inverse-gamma"),
    "loss": ("categorical",),
    "random_state": ("categorical", "inverse-gamma"),
    "contamination": ("np", "categorical", "inverse-gamma"),
    "device": ("np", "categorical", "inverse-gamma"),
}


def register(subparsers) -> None:
    """Add ``fit``, ``score`` and ``info`` to the ``dtpm-fast`` parser."""
    _register_fit(subparsers)
    _register_score(subparsers)
    info = subparsers.add_parser("info", help="show version, build and accelerator information")
    info.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    info.set_defaults(func=run_info)


# --------------------------------------------------------------------------- argument types


def _input_path(value: str) -> str:
    try:
        streaming.file_format(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _output_path(value: str) -> str:
    try:
        fmt = streaming.file_format(value, role="output")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if fmt == "npy" or value.lower().endswith(".gz"):
        raise argparse.ArgumentTypeError(f"output {value!r} must end in .parquet, .pq or .csv")
    return value


def _column_list(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"--columns takes comma-separated names, got {value!r}")
    return names


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _contamination(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 < number <= 0.5:
        raise argparse.ArgumentTypeError(f"contamination must be in (0, 0.5], got {value!r}")
    return number


def _key_value(value: str) -> tuple[str, int | float | str]:
    key, sep, text = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    for convert in (int, float):
        try:
            return key, convert(text)
        except ValueError:
            pass
    return key, text


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--columns",
        type=_column_list,
        metavar="A,B,...",
        help="feature columns, comma-separated (.npy: column positions); "
        "default: the model's columns when scoring, else every numeric column",
    )
    parser.add_argument(
        "--batch-rows",
        type=_positive_int,
        default=65536,
        metavar="N",
        help="rows read and scored at a time; bounds memory (default 65536)",
    )
    parser.add_argument(
        "--on-bad-row",
        choices=streaming.ON_BAD_ROW_CHOICES,
        default="error",
        help="a row with a missing/NaN/inf/non-numeric value or a wrong field count: "
        "stop with its row number (error, default) or skip and count it (skip)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress or summary on stderr")


# --------------------------------------------------------------------------- fit


def _register_fit(subparsers) -> None:
    fit = subparsers.add_parser(
        "fit",
        help="fit a detector on a Parquet/CSV/.npy file and save it",
        description="Fit a detector on normal (training) rows and save it for `dtpm-fast score`. "
        "Model options not given keep the model's defaults.",
    )
    fit.add_argument("train", type=_input_path, metavar="TRAIN", help="training rows (.parquet, .csv, .npy)")
    fit.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="np",
        help="np: non-parametric (K nearest neighbours, default); categorical / "
        "inverse-gamma: neural network (needs torch)",
    )
    fit.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write")
    fit.add_argument("--n-neighbors", dest="n_neighbors", type=_positive_int, metavar="K", help="np: K")
    fit.add_argument(
        "--index",
        choices=("auto", "flat", "brute", "kdtree", "hnsw", "ivf"),
        help="np: neighbour index (flat/brute/kdtree exact, hnsw/ivf approximate + exact re-ranking)",
    )
    fit.add_argument(
        "--index-param",
        dest="index_params",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="np: index parameter, e.g. ef_search=32 (repeatable)",
    )
    fit.add_argument("--score", choices=("mean", "mode"), help="np: posterior mean (default) or mode of t")
    fit.add_argument("--T", dest="T", type=_positive_int, help="number of diffusion steps")
    fit.add_argument(
        "--batch-size",
        dest="batch_size",
        type=_positive_int,
        metavar="N",
        help="rows per internal batch (np: search; parametric: training minibatch)",
    )
    fit.add_argument("--epochs", type=_positive_int, help="parametric: training epochs")
    fit.add_argument("--lr", type=float, help="parametric: learning rate")
    fit.add_argument(
        "--loss",
        choices=("cross_entropy", "double_softmax"),
        help="categorical: cross-entropy on the logits (default) or the authors' double softmax",
    )
    fit.add_argument("--random-state", dest="random_state", type=int, metavar="SEED", help="parametric: seed")
    fit.add_argument(
        "--contamination", type=_contamination, help="expected outlier share; sets the threshold"
    )
    fit.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where fitting and scoring run")
    _add_input_options(fit)
    fit.set_defaults(func=run_fit, _parser=fit)


def run_fit(args) -> int:
    import dtpm_fast

    model_params = {}
    for name, models in _MODEL_OPTIONS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if args.model not in models:
            args._parser.error(f"--{name.replace('_', '-')} does not apply to --model {args.model}")
        model_params[name] = value
    if args.index_params:
        if args.model != "np":
            args._parser.error(f"--index-param does not apply to --model {args.model}")
        model_params["index_params"] = dict(args.index_params)
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"output {args.output!r} already exists; pass --overwrite to replace it")

    started = time.perf_counter()
    reader = streaming.open_reader(
        args.train, columns=args.columns, batch_rows=args.batch_rows, on_bad_row=args.on_bad_row
    )
    blocks = [batch.features for batch in reader]
    if not blocks:
        raise ValueError(f"{args.train!r} has no usable rows to fit on")
    X = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    del blocks
    model = getattr(dtpm_fast, MODELS[args.model])(**model_params)
    model.fit(X)
    if streaming.file_format(args.train) != "npy":
        model.feature_names_in_ = np.asarray(reader.feature_columns, dtype=object)
    with streaming.atomic_output(args.output, overwrite=args.overwrite) as temporary:
        model.save(temporary)
    if not args.quiet:
        elapsed = time.perf_counter() - started
        print(
            f"fitted {type(model).__name__} on {X.shape[0]:,} rows x {X.shape[1]} features "
            f"in {elapsed:.1f} s -> {args.output}",
            file=sys.stderr,
        )
        if reader.bad_rows.count:
            print(reader.bad_rows.summary(), file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- score


def _register_score(subparsers) -> None:
    score = subparsers.add_parser(
        "score",
        help="score a Parquet/CSV/.npy file with a saved model, streaming",
        description="Score INPUT batch by batch (memory bounded by --batch-rows) and write OUTPUT "
        "(.parquet or .csv) in the same row order with columns [id], [row], score, label, "
        "[posterior_mean]. 'row' (0-based input row) is added with --on-bad-row skip.",
    )
    score.add_argument("model", metavar="MODEL", help="model file from `dtpm-fast fit` / save() / export()")
    score.add_argument(
        "input", type=_input_path, metavar="INPUT", help="rows to score (.parquet, .csv, .npy)"
    )
    score.add_argument(
        "-o",
        "--output",
        required=True,
        type=_output_path,
        metavar="OUTPUT",
        help="scores file (.parquet or .csv)",
    )
    score.add_argument("--id-column", metavar="NAME", help="input column copied to the output")
    score.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where scoring runs")
    score.add_argument("--threads", type=_positive_int, metavar="N", help="CPU threads for scoring")
    score.add_argument(
        "--contamination",
        type=_contamination,
        help="label threshold from this outlier share of the training scores "
        "(default: the model's threshold)",
    )
    score.add_argument(
        "--posterior-mean", action="store_true", help="also write the posterior mean of the diffusion time"
    )
    _add_input_options(score)
    score.set_defaults(func=run_score)


def run_score(args) -> int:
    streaming._require_pyarrow()
    import pyarrow as pa

    from dtpm_fast import persistence

    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"output {args.output!r} already exists; pass --overwrite to replace it")
    if args.threads is not None:
        set_threads(args.threads)
    model = persistence.load(args.model)
    if args.device is not None:
        _use_device(model, args.device)
    columns = args.columns
    if (
        columns is None
        and getattr(model, "feature_names_in_", None) is not None
        and streaming.file_format(args.input) != "npy"
    ):
        columns = [str(name) for name in model.feature_names_in_]
    reader = streaming.open_reader(
        args.input,
        columns=columns,
        id_column=args.id_column,
        batch_rows=args.batch_rows,
        on_bad_row=args.on_bad_row,
    )
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
    with streaming.atomic_output(args.output, overwrite=args.overwrite) as temporary:
        with streaming.TableWriter(temporary, streaming.file_format(args.output), schema) as writer:
            for batch in streaming.prefetch(reader):
                scores, posterior_mean = score_batch(model, batch.features, args.posterior_mean)
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
    if not want_posterior_mean:
        return model.decision_function(X), None
    if hasattr(model, "posterior_mean"):
        return model.decision_function(X), model.posterior_mean(X)
    from dtpm_fast.nonparametric import DTPMNonParametric

    if isinstance(model, DTPMNonParametric):
        if model.score == "mean":
            scores = model.decision_function(X)
            return scores, scores
        # One neighbour search gives both the mode (the score) and the mean.
        mode, mean, _ = model._score_rows(model._checked(X))
        return mode.astype(np.float64), mean
    raise ValueError(f"--posterior-mean is not available for {type(model).__name__}")


def _use_device(model, device: str) -> None:
    from dtpm_fast._device import resolve_device

    resolved = resolve_device(device)  # an explicit "cuda" without a usable GPU raises here
    model.set_params(device=device)
    if hasattr(model, "_device"):
        model._device = resolved


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


# --------------------------------------------------------------------------- info


def installation_info() -> dict:
    """Version, build, FAISS (CPU/GPU), torch and CUDA availability, as a JSON-able dict."""
    import dtpm_fast

    info: dict = {"version": dtpm_fast.__version__, "build": dtpm_fast.build_info()}
    try:
        import faiss

        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        info["faiss"] = {
            "version": faiss.__version__,
            "gpu_build": hasattr(faiss, "StandardGpuResources"),
            "gpus": int(n_gpus),
        }
    except ImportError:
        info["faiss"] = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        info["torch"] = {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [],
        }
    except ImportError:
        info["torch"] = None
    from dtpm_fast._device import resolve_device

    info["auto_device"] = resolve_device("auto")
    return info


def run_info(args) -> int:
    info = installation_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    build = info["build"]
    print(f"dtpm_fast {info['version']}")
    print("build: " + ", ".join(f"{k}={v}" for k, v in build.items() if k != "version"))
    faiss_info = info["faiss"]
    if faiss_info is None:
        print("faiss: not installed")
    else:
        kind = "GPU" if faiss_info["gpu_build"] else "CPU"
        print(f"faiss: {faiss_info['version']} ({kind} build, {faiss_info['gpus']} GPU(s) visible)")
    torch_info = info["torch"]
    if torch_info is None:
        print("torch: not installed (needed only for the parametric models)")
    else:
        cuda = ", ".join(torch_info["devices"]) if torch_info["cuda_available"] else "not available"
        print(f"torch: {torch_info['version']} (CUDA build {torch_info['cuda_build']}; CUDA {cuda})")
    print(f"device='auto' resolves to: {info['auto_device']}")
    return 0
