"""The ``dtpm-fast`` command line: one parser, one sub-command per module, one error policy.

Exit codes: 0 success, 1 an error in the input or the environment (the message goes to
stderr, without a traceback), 2 a usage error (argparse), 130 interrupted. Every sub-command
uses the library's public API only; the library's messages name parameters, and
:func:`_as_command_line` turns those names into this command's flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes register(subparsers), adding its sub-command with set_defaults(func=...);
# func(args) returns the exit code.
_COMMAND_MODULES = (
    "dtpm_fast.cli.demo",
    "dtpm_fast.cli.fit",
    "dtpm_fast.cli.score",
    "dtpm_fast.cli.info",
    "dtpm_fast.cli.evaluate",
)

# Library wording -> the flag that sets the same thing on this command line.
_FLAG_FOR = {
    "overwrite=True": "--overwrite",
    "on_bad_row='skip'": "--on-bad-row skip",
    "id_column ": "--id-column ",
    "id_column is": "--id-column is",
    "columns=[...]": "--columns",
    # dtpm_fast.evaluation (RunConfig and write_report parameters)
    "as data_dir": "with --data",
    "as reference_dir": "with --reference",
    "another out_dir": "another --out",
    "with this out_dir": "with this --out",
    "seeds=[0]": "--seeds 0",
    "the model options": "--model-option",
}


def build_parser() -> argparse.ArgumentParser:
    from dtpm_fast._core import __version__

    parser = argparse.ArgumentParser(
        prog="dtpm-fast", description="Anomaly detection by diffusion-time estimation (DTPM / DTE)."
    )
    parser.add_argument("--version", action="version", version=f"dtpm-fast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _as_command_line(message: str) -> str:
    for library, flag in _FLAG_FOR.items():
        message = message.replace(library, flag)
    return message


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser()
    if prog is not None:
        parser.prog = prog
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as exc:
        print(f"dtpm-fast {args.command}: error: {_as_command_line(str(exc))}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        detail = f" ({exc})" if str(exc) else ""
        print(
            f"dtpm-fast {args.command}: error: not enough memory{detail}; use smaller options "
            "(--batch-rows, model sizes) or a smaller input",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"dtpm-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
