"""dtpm_fast: anomaly detection by diffusion-time estimation (DTPM / DTE, arXiv 2305.18593).

Higher scores mean more anomalous. See ``DTPMNonParametric`` (no training, K nearest neighbours)
and the PyTorch models ``DTPMCategorical`` / ``DTPMInverseGamma`` (need ``torch``).
"""

from __future__ import annotations

import importlib

from dtpm_fast import _core, _registry
from dtpm_fast._validation import NotFittedError
from dtpm_fast.nonparametric import DTPMMultiScale, DTPMNonParametric

__version__: str = _core.__version__

# Detectors that need torch are imported on first use (from the registry), so `import dtpm_fast`
# never imports torch; `load` likewise.
_LAZY = {kind.class_name: kind.module for kind in _registry.KINDS if kind.needs_torch}
_LAZY["load"] = "dtpm_fast.io.load"

# Plain strings so static tools can read it; tests/test_package.py checks it against the registry.
__all__ = [
    "DDPMReconstruction",
    "DTPMCategorical",
    "DTPMInverseGamma",
    "DTPMMultiScale",
    "DTPMNonParametric",
    "NotFittedError",
    "__version__",
    "build_info",
    "load",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dtpm_fast' has no attribute {name!r}")


def build_info() -> dict:
    """What this build contains: version, compiler, openmp, simd, cuda (bool), threads."""
    info = dict(_core.build_info())
    try:
        from dtpm_fast import _cuda  # noqa: F401

        info["cuda"] = True
    except ImportError:
        info["cuda"] = False
    info["threads"] = _core.max_threads()
    return info
