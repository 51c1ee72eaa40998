"""Comparators from the paper, not DTPM detectors: the DDPM reconstruction baseline."""

from dtpm_fast.baselines.ddpm import DDPMReconstruction

__all__ = ["DDPMReconstruction"]
