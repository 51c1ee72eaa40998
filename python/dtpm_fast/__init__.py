"""dtpm_fast: anomaly detection by diffusion-time estimation."""
from dtpm_fast import _core

__version__ = _core.__version__
