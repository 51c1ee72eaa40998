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
# Diffusion steps: the detectors' noise schedule is strictly increasing in float64 only up to
# about this many steps (beyond, fit refuses it -- after allocating T values: 2**31 - 1 took
# minutes and 16 GiB before failing).
MAX_STEPS = 100_000
# OpenMP/FAISS start one OS thread per requested thread: more than this is refused.
MAX_THREADS = 1024


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


def thread_count(value: str) -> int:
    number = positive_int(value)
    if number > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected a thread count in [1, {MAX_THREADS}], got {value!r}")
    return number


def step_count(value: str) -> int:
    number = positive_int(value)
    if number > MAX_STEPS:
        raise argparse.ArgumentTypeError(
            f"expected a number of diffusion steps in [1, {MAX_STEPS}], got {value!r}"
        )
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
    _check_literal(key, text, parsed)
    if key == "T" and isinstance(parsed, int) and parsed > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"T: at most {MAX_STEPS} diffusion steps, got {parsed}")
    return key, parsed


def _check_literal(key: str, text: str, value: object) -> None:
    """Numbers inside a KEY=VALUE literal (also inside tuples, lists, dicts) must be representable."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{key}: expected finite numbers, got {text!r}")
        return
    if isinstance(value, int):
        if abs(value) > MAX_COUNT:
            raise argparse.ArgumentTypeError(f"{key}: {value} is beyond {MAX_COUNT}")
        return
    if isinstance(value, complex):
        raise argparse.ArgumentTypeError(f"{key}: expected a real number, got {text!r}")
    items = list(value.items()) if isinstance(value, dict) else value
    if isinstance(items, (tuple, list, set, frozenset)):
        for item in items:
            if isinstance(item, tuple) and isinstance(value, dict):
                for part in item:
                    _check_literal(key, text, part)
            else:
                _check_literal(key, text, item)
        return
    raise argparse.ArgumentTypeError(f"{key}: unsupported value {text!r}")


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
