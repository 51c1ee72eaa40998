"""ADBench evaluation harness: the paper's protocol, metrics, a resumable runner and reports.

Light to import: the detectors (and torch, pyod, matplotlib) are imported only when used.
The ``dtpm-fast evaluate`` command is defined in :mod:`dtpm_fast.cli.evaluate`.
"""

from dtpm_fast.evaluation.protocol import (
    MAX_ROWS,
    MIN_ROWS,
    PROTOCOLS,
    Split,
    find_datasets,
    load_dataset,
    load_npz,
    prepare,
    prepare_split,
)

__all__ = [
    "MAX_ROWS",
    "MIN_ROWS",
    "PROTOCOLS",
    "Split",
    "find_datasets",
    "load_dataset",
    "load_npz",
    "prepare",
    "prepare_split",
]
