"""Shared fixtures. Datasets are read from ../shared next to the repository (never by the package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (docs, reference outputs, ADBench data); skips the test if absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def golden(shared_dir) -> dict:
    """The DTE authors' reference outputs (ALGORITHM.md section 3), as a dict of arrays."""
    with np.load(shared_dir / "reference" / "golden_dte_np.npz", allow_pickle=False) as data:
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
