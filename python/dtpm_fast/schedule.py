"""Noise schedules (docs/METHOD.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BETA_START = 1e-4
BETA_END = 1e-2
# Beyond this the linear schedule's steps are so small that sigma2 stops increasing strictly in
# float64, and the (T,) tables and (n, T) posteriors grow without a use: T is checked against it.
MAX_STEPS = 100_000


def betas(T: int) -> np.ndarray:
    """Linear beta schedule, float64 array of shape (T,): linspace(1e-4, 1e-2, T)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return np.linspace(BETA_START, BETA_END, T, dtype=np.float64)


def alpha_bar(T: int) -> np.ndarray:
    """Cumulative product of (1 - beta_t), float64 array of shape (T,)."""
    return np.cumprod(1.0 - betas(T))


def ve_sigma2(T: int) -> np.ndarray:
    """Noise variance sigma2_t = 1 - alpha_bar_t of the variance-exploding DTPM diffusion, shape (T,)."""
    return 1.0 - alpha_bar(T)


@dataclass(frozen=True)
class PosteriorGrid:
    """The precomputed tables the posterior kernel needs: log(sigma2_t) and 1/sigma2_t, shape (T,)."""

    log_sigma2: np.ndarray
    inv_sigma2: np.ndarray

    @classmethod
    def for_steps(cls, T: int) -> PosteriorGrid:
        sigma2 = ve_sigma2(T)
        return cls(np.log(sigma2), 1.0 / sigma2)

    @property
    def T(self) -> int:
        return int(self.log_sigma2.shape[0])
