"""Argument types and option groups shared by the ``dtpm-fast`` sub-commands.

Every value is checked here, where it enters, with argparse's usage error (exit 2).
"""

from __future__ import annotations

import argparse
import ast
import math

from dtpm_fast.io import tables

# Counts are passed to native code as C ints: larger values are refused here.
MAX_COUNT = 2**31 - 1


def input_path(value: str) -> str:
    try:
        tables.file_format(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def output_path(value: str) -> str:
    try:
        fmt = tables.file_format(value, role="output")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if fmt == "npy" or value.lower().endswith(".gz"):
        raise argparse.ArgumentTypeError(f"output {value!r} must end in .parquet, .pq or .csv")
    return value


def column_list(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"--columns takes comma-separated names, got {value!r}")
    return names


def name_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def int_list(value: str) -> list[int]:
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        numbers = None
    if not numbers or any(not 0 <= n <= MAX_COUNT for n in numbers):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers in [0, {MAX_COUNT}] like 0,1,2, got {value!r}"
        )
    return numbers


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {MAX_COUNT}], got {value!r}")
    return number


def seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32 - 1], got {value!r}")
    return number


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value!r}")
    return number


def contamination(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 < number <= 0.5:
        raise argparse.ArgumentTypeError(f"contamination must be in (0, 0.5], got {value!r}")
    return number


def key_value(value: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE a Python literal (number, string, tuple...) or a bare word."""
    key, sep, text = value.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. ef_search=32), got {value!r}")
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        parsed = text  # a bare word such as a device name stays a string
    if isinstance(parsed, float) and not math.isfinite(parsed):
        raise argparse.ArgumentTypeError(f"{key}: expected a finite number, got {text!r}")
    if isinstance(parsed, int) and not isinstance(parsed, bool) and abs(parsed) > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{key}: {parsed} is beyond {MAX_COUNT}")
    return key, parsed


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """--columns, --batch-rows, --on-bad-row, --overwrite, --quiet (fit and score)."""
    parser.add_argument(
        "--columns",
        type=column_list,
        metavar="A,B,...",
        help="feature columns, comma-separated (.npy: column positions); "
        "default: the model's columns when scoring, else every numeric column",
    )
    parser.add_argument(
        "--batch-rows",
        type=positive_int,
        default=65536,
        metavar="N",
        help="rows read and scored at a time; bounds memory (default 65536)",
    )
    parser.add_argument(
        "--on-bad-row",
        choices=tables.ON_BAD_ROW_CHOICES,
        default="error",
        help="a row with a missing/NaN/inf/non-numeric value or a wrong field count: "
        "stop with its row number (error, default) or skip and count it (skip)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress or summary on stderr")
