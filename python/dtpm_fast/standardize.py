"""Per-feature standardisation fitted on training data (docs/METHOD.md section 2)."""

from __future__ import annotations

import numpy as np


class Standardizer:
    """Zero mean, unit variance per feature; constant features get scale 1 (never inf/NaN).

    Statistics are computed in float64; ``transform`` returns the requested dtype.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        mean = X.mean(axis=0, dtype=np.float64)
        std = X.std(axis=0, dtype=np.float64)
        # sklearn's rule: a (near-)constant feature is only centred.
        scale = np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0), 1.0, std)
        return cls(mean, scale)

    @classmethod
    def identity(cls, n_features: int) -> Standardizer:
        return cls(np.zeros(n_features), np.ones(n_features))

    def transform(self, X: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Return (X - mean) / scale as a new C-contiguous array of ``dtype``.

        Computed in X's dtype. An entry far out (|x| near float32's 3.4e38 with a scale below
        1) that overflows there, or lies beyond ``dtype``'s range, is computed again in float64
        and clipped to +-``dtype``'s largest value, still farther out than any distance can
        tell. The rule is per entry: a row's values never depend on the rows batched with it.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            out = (X - self.mean.astype(X.dtype, copy=False)) / self.scale.astype(X.dtype, copy=False)
        limit = np.finfo(dtype).max
        far = ~(np.abs(out) <= limit)
        if far.any():
            rows, cols = np.nonzero(far)
            exact = (np.asarray(X[rows, cols], dtype=np.float64) - self.mean[cols]) / self.scale[cols]
            out[rows, cols] = np.clip(exact, -limit, limit)
        return np.ascontiguousarray(out, dtype=dtype)


def standardize_tensor(t, mean, scale):
    """``Standardizer.transform`` of a float32 torch tensor, with the same per-entry rule, on its device.

    ``mean`` and ``scale`` are float64 tensors on ``t``'s device. Entries that overflow in
    float32 take the float64 value clipped to float32's largest, as on the host; both forms are
    computed (no device synchronisation to find out whether any entry overflowed).
    """
    out = (t - mean.to(t.dtype)) / scale.to(t.dtype)
    limit = float(np.finfo(np.float32).max)
    far = ((t.to(mean.dtype) - mean) / scale).clamp(-limit, limit).to(t.dtype)
    return out.where(out.isfinite(), far).contiguous()
