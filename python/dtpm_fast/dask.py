"""``dtpm_fast.dask``: the documented name of :mod:`dtpm_fast.integrations.dask`."""

from dtpm_fast.integrations.dask import decision_function

__all__ = ["decision_function"]
