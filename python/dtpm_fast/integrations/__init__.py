"""Front ends that run detectors inside other engines (Dask)."""
