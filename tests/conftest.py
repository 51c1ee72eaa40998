"""Shared fixtures.

The golden outputs of the authors' implementation and the paper's AUC-ROC tables are vendored in
tests/data/, so every test that needs them runs in any clone. The ADBench data sets are read from
../shared next to the repository (never by the package); tests that need them skip when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
#: golden_dte_np.npz, dte_paper_semi_aucroc.csv, dte_paper_unsup_aucroc.csv (copied from the reference set).
DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (docs, reference outputs, ADBench data); skips the test if absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """tests/data: the golden outputs and the paper's tables (part of the repository, never skipped)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def golden(reference_dir) -> dict:
    """The DTE authors' reference outputs (docs/METHOD.md section 3), as a dict of arrays."""
    with np.load(reference_dir / "golden_dte_np.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small synthetic data: (X_train normal, X_test, y_test) with clear anomalies, 6 features."""
    rng = np.random.default_rng(0)
    X_train = rng.standard_normal((300, 6)).astype(np.float32)
    normal = rng.standard_normal((60, 6))
    anomalies = rng.standard_normal((20, 6)) * 0.5 + 4.0
    X_test = np.vstack([normal, anomalies]).astype(np.float32)
    y_test = np.r_[np.zeros(60, dtype=np.int64), np.ones(20, dtype=np.int64)]
    return X_train, X_test, y_test
