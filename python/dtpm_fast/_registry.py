"""The one table of detector kinds: every other list of detectors is derived from it.

``__init__`` (the lazy public names), model files (the kind a file may hold), the command
line (``fit --model`` choices) and the evaluation harness (its model keys) read this table.
It holds names only, never imports a detector, so every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorKind:
    """One detector class and the names it goes by.

    Attributes
    ----------
    class_name : str
        The public class, ``dtpm_fast.<class_name>``; also the kind written in model files.
    module : str
        The module that defines it.
    key : str
        Its name on the command line (``dtpm-fast fit --model``) and in the evaluation harness.
    needs_torch : bool
        Imported on first use, so ``import dtpm_fast`` never imports torch.
    paper_column : str or None
        The paper's table column this detector reproduces (evaluation reports).
    description : str
        One line for help texts.
    """

    class_name: str
    module: str
    key: str
    needs_torch: bool
    paper_column: str | None
    description: str


KINDS: tuple[DetectorKind, ...] = (
    DetectorKind(
        "DTPMNonParametric",
        "dtpm_fast.nonparametric",
        "np",
        False,
        "DTE-NP",
        "non-parametric DTPM: K nearest neighbours -> inverse-Gamma posterior (no training)",
    ),
    DetectorKind(
        "DTPMMultiScale",
        "dtpm_fast.nonparametric",
        "plus",
        False,
        None,
        "DTE-NP's posterior-mean time averaged over K = 1, 2, 4, 8, 16, 32 (CPU)",
    ),
    DetectorKind(
        "DTPMCategorical",
        "dtpm_fast.parametric",
        "categorical",
        True,
        "DTE-C",
        "parametric DTPM, categorical head over diffusion-time bins (PyTorch)",
    ),
    DetectorKind(
        "DTPMInverseGamma",
        "dtpm_fast.parametric",
        "inverse-gamma",
        True,
        "DTE-IG",
        "parametric DTPM, inverse-Gamma head (PyTorch)",
    ),
    DetectorKind(
        "DDPMReconstruction",
        "dtpm_fast.baselines",
        "ddpm",
        True,
        "DDPM",
        "the paper's DDPM reconstruction comparator (PyTorch)",
    ),
)

BY_CLASS_NAME = {kind.class_name: kind for kind in KINDS}
BY_KEY = {kind.key: kind for kind in KINDS}
