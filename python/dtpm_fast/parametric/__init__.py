"""Parametric DTPM models (DTE-C, DTE-IG) trained with PyTorch, and their exported scorers.

``import dtpm_fast.parametric`` does not import torch; training, scoring, exporting and
loading do (``pip install 'dtpm-fast[torch]'``).
"""

from dtpm_fast.parametric.detectors import DTPMCategorical, DTPMInverseGamma
from dtpm_fast.parametric.export import ExportedScorer, load_exported

__all__ = ["DTPMCategorical", "DTPMInverseGamma", "ExportedScorer", "load_exported"]
