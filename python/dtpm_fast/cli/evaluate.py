"""``dtpm-fast evaluate`` (also ``python -m dtpm_fast.evaluation``): the ADBench harness."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dtpm_fast.cli import _args
from dtpm_fast.evaluation.models import model_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to ``parser``."""
    parser.add_argument(
        "--data", required=True, help="folder of ADBench .npz files (directly or in Classical/ etc.)"
    )
    parser.add_argument("--out", required=True, help="output folder: runs.csv, report.md, summary.csv, plot")
    parser.add_argument(
        "--datasets", type=_args.name_list, default=None, help="comma-separated file stems (default: all)"
    )
    parser.add_argument(
        "--models",
        type=_args.name_list,
        default=["np"],
        help=f"comma-separated, from: {', '.join(model_names())} (default: np)",
    )
    parser.add_argument("--protocol", choices=("semi", "unsup"), default="semi")
    parser.add_argument(
        "--seeds", type=_args.int_list, default=[0, 1, 2, 3, 4], help="comma-separated (default 0,1,2,3,4)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    parser.add_argument(
        "--epochs",
        type=_args.positive_int,
        default=None,
        help="training epochs of trained models (default: theirs)",
    )
    parser.add_argument(
        "--model-option",
        type=_args.key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the trained models, e.g. batch_size=256 (repeatable; recorded as budget)",
    )
    parser.add_argument(
        "--n-neighbors",
        type=_args.positive_int,
        default=None,
        metavar="K",
        help="neighbours of np, np-mode and knn (default: theirs, 5; recorded as budget). The paper's "
        "unsupervised KNN column was computed with 32",
    )
    parser.add_argument("--reference", default=None, help="folder with dte_paper_{semi,unsup}_aucroc.csv")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from runs.csv")


def run_command(args: argparse.Namespace) -> int:
    """Run the evaluation described by parsed ``args``, then write the report."""
    from dtpm_fast.evaluation.report import write_report
    from dtpm_fast.evaluation.runner import RunConfig, run

    if not args.report_only:
        config = RunConfig(
            data_dir=args.data,
            out_dir=args.out,
            models=args.models,
            protocol=args.protocol,
            seeds=args.seeds,
            datasets=args.datasets,
            device=args.device,
            epochs=args.epochs,
            extra=dict(args.model_option),
            n_neighbors=args.n_neighbors,
            command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        )
        neighbour_models = {"np", "np-mode", "knn"} & set(args.models)
        if args.protocol == "unsup" and args.n_neighbors is None and neighbour_models:
            print(
                "note: the paper's unsupervised table was computed with 32 neighbours (PyOD's KNN with "
                "K = 32 reproduces its KNN column exactly); add --n-neighbors 32 to compare like with like",
                file=sys.stderr,
            )
        run(config)
    for line in write_report(args.out, args.reference):
        print(line)
    print(f"report: {args.out}/report.md", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``evaluate`` to the ``dtpm-fast`` command's sub-parsers."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate models on ADBench data sets with the paper's protocol and compare with its table",
        description=(
            "Evaluate detectors on a folder of ADBench .npz files under the DTE paper's protocol "
            "(semi or unsup), write runs.csv (resumable), a Markdown report beside the paper's "
            "AUC-ROC table and a plot."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run_command)
