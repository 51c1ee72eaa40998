"""The non-parametric DTPM detector (DTE-NP) and its engines.

``detector`` holds DTPMNonParametric, ``multiscale`` DTPMMultiScale (DTE-NP averaged over
several K, on the host backend); ``host`` (a host neighbour index from ``indexes`` and the
``_core`` kernels) and ``gpu`` (device kernels and search, torch) are its two backends, one of
which is chosen at fit.
"""

from dtpm_fast.nonparametric.detector import DTPMNonParametric
from dtpm_fast.nonparametric.multiscale import DTPMMultiScale

__all__ = ["DTPMMultiScale", "DTPMNonParametric"]
