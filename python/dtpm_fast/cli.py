"""The ``dtpm-fast`` command line: one sub-command per feature module.

Exit codes: 0 success, 1 error (the message goes to stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes register(subparsers), adding sub-commands with set_defaults(func=...);
# func(args) returns the exit code.
_COMMAND_MODULES = [
    "dtpm_fast.demo",
    "dtpm_fast.commands",
    "dtpm_fast.evaluation.cli",
]


def build_parser() -> argparse.ArgumentParser:
    from dtpm_fast import __version__

    parser = argparse.ArgumentParser(
        prog="dtpm-fast", description="Anomaly detection by diffusion-time estimation (DTPM / DTE)."
    )
    parser.add_argument("--version", action="version", version=f"dtpm-fast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as exc:
        print(f"dtpm-fast {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dtpm-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
