"""``dtpm-fast fit TRAIN --model KEY -o MODEL``: fit a detector on a Parquet, CSV or ``.npy`` file.

The model's options are its constructor parameters; an option applies to a model when its
class takes that parameter. The feature column names travel with the saved model.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import time

import numpy as np

from dtpm_fast._registry import BY_KEY, KINDS
from dtpm_fast.cli import _args
from dtpm_fast.io import tables
from dtpm_fast.io.atomic import atomic_output

# Options that are constructor parameters (each passed only when given).
MODEL_OPTIONS = (
    "n_neighbors",
    "index",
    "index_params",
    "score",
    "T",
    "batch_size",
    "recipe",
    "inference_precision",
    "epochs",
    "lr",
    "loss",
    "random_state",
    "contamination",
    "device",
)


def register(subparsers) -> None:
    """Add ``fit`` to the ``dtpm-fast`` parser."""
    fit = subparsers.add_parser(
        "fit",
        help="fit a detector on a Parquet/CSV/.npy file and save it",
        description="Fit a detector on normal (training) rows and save it for `dtpm-fast score`. "
        "Model options not given keep the model's defaults.",
    )
    fit.add_argument(
        "train", type=_args.input_path, metavar="TRAIN", help="training rows (.parquet, .csv, .npy)"
    )
    fit.add_argument(
        "--model",
        choices=list(BY_KEY),
        default="np",
        help="; ".join(f"{kind.key}: {kind.description}" for kind in KINDS) + " (default: np)",
    )
    fit.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write")
    fit.add_argument("--n-neighbors", dest="n_neighbors", type=_args.positive_int, metavar="K", help="np: K")
    fit.add_argument(
        "--index",
        choices=("auto", "flat", "brute", "kdtree", "hnsw", "ivf"),
        help="np: neighbour index (flat/brute/kdtree exact, hnsw/ivf approximate + exact re-ranking)",
    )
    fit.add_argument(
        "--index-param",
        dest="index_params",
        type=_args.key_value,
        action="append",
        metavar="KEY=VALUE",
        help="np: index parameter, e.g. ef_search=32 (repeatable)",
    )
    fit.add_argument("--score", choices=("mean", "mode"), help="np: posterior mean (default) or mode of t")
    fit.add_argument(
        "--T", dest="T", type=_args.step_count, help=f"number of diffusion steps (at most {_args.MAX_STEPS})"
    )
    fit.add_argument(
        "--batch-size",
        dest="batch_size",
        type=_args.positive_int,
        metavar="N",
        help="rows per internal batch (np: search; parametric: training minibatch)",
    )
    fit.add_argument(
        "--recipe",
        choices=("paper", "fast"),
        help="parametric: training recipe, the faster one (fast, default) or the authors' (paper); "
        "--epochs, --batch-size and --lr override its values",
    )
    fit.add_argument(
        "--inference-precision",
        dest="inference_precision",
        choices=("float32", "bfloat16"),
        help="parametric: precision of the hidden layers when scoring (default float32; bfloat16 "
        "is ~3x faster on CPUs with bfloat16 units; scores move by up to ~3%% of their range)",
    )
    fit.add_argument("--epochs", type=_args.positive_int, help="parametric: training epochs")
    fit.add_argument("--lr", type=_args.positive_float, help="parametric: learning rate")
    fit.add_argument(
        "--loss",
        choices=("cross_entropy", "double_softmax"),
        help="categorical: cross-entropy on the logits (default) or the authors' double softmax",
    )
    fit.add_argument(
        "--random-state", dest="random_state", type=_args.seed, metavar="SEED", help="parametric: seed"
    )
    fit.add_argument(
        "--contamination", type=_args.contamination, help="expected outlier share; sets the threshold"
    )
    fit.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where fitting and scoring run")
    _args.add_input_options(fit)
    fit.set_defaults(func=run_fit, command_parser=fit)


def run_fit(args) -> int:
    kind = BY_KEY[args.model]
    cls = getattr(importlib.import_module(kind.module), kind.class_name)
    accepted = inspect.signature(cls.__init__).parameters
    model_params = {}
    for name in MODEL_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in accepted:
            flag = "--index-param" if name == "index_params" else f"--{name.replace('_', '-')}"
            args.command_parser.error(f"{flag} does not apply to --model {args.model}")
        model_params[name] = dict(value) if name == "index_params" else value
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"output {args.output!r} already exists; pass overwrite=True to replace it")

    started = time.perf_counter()
    reader = tables.open_reader(
        args.train, columns=args.columns, batch_rows=args.batch_rows, on_bad_row=args.on_bad_row
    )
    with reader:
        blocks = [batch.features for batch in reader]
    if not blocks:
        raise ValueError(f"{args.train!r} has no usable rows to fit on")
    X = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    del blocks
    model = cls(**model_params)
    try:
        model.fit(X)
    except ValueError:
        raise
    except Exception as exc:  # a failure of the model, reported on one line (exit 1)
        raise ValueError(
            f"fitting {type(model).__name__} on {X.shape[0]:,} rows x {X.shape[1]} features failed "
            f"({type(exc).__name__}: {exc or '(no message)'}); the rows passed the input checks"
        ) from exc
    if tables.file_format(args.train) != "npy":
        model.feature_names_in_ = np.asarray(reader.feature_columns, dtype=object)
    with atomic_output(args.output, overwrite=args.overwrite) as temporary:
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
