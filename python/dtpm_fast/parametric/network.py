"""The DTPM multilayer perceptron and the scoring modules that wrap it (docs/METHOD.md section 4).

This module imports torch; the detectors import it lazily, so ``import dtpm_fast`` stays
torch-free. A *scoring module* maps raw rows (float32, shape (n, d)) to anomaly scores with
standardisation, network and score head in one graph: it is what ``decision_function`` runs
and exactly what ``export`` writes, so the exported file and the detector agree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

KINDS = ("categorical", "inverse_gamma")


def build_mlp(n_features: int, hidden_sizes: Sequence[int], n_outputs: int, dropout: float) -> nn.Sequential:
    """The authors' MLP: d -> h1 -> ... -> hk -> n_outputs, ReLU after every hidden layer.

    Dropout follows every hidden layer except the first (with the default (256, 512, 256):
    after the second and third, as in the paper's code).
    """
    layers: list[nn.Module] = []
    width_in = n_features
    for i, width in enumerate(hidden_sizes):
        layers.append(nn.Linear(width_in, width))
        # In place: the Linear output is not needed by autograd (addmm keeps its input).
        layers.append(nn.ReLU(inplace=True))
        if i > 0 and dropout > 0:
            layers.append(UniformMaskDropout(dropout))
        width_in = width
    layers.append(nn.Linear(width_in, n_outputs))
    return nn.Sequential(*layers)


class UniformMaskDropout(nn.Module):
    """Inverted dropout (keep with probability 1 - p, scale by 1 / (1 - p)), identity in eval mode.

    Same distribution as ``nn.Dropout``, but the mask comes from ``torch.rand_like``: on the
    CPU, ``bernoulli_`` (what ``nn.Dropout`` uses) was ~3x slower than a uniform draw for the
    64 x 512 activations here and took a quarter of each training step.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Bfloat16Hidden(nn.Module):
    """A :func:`build_mlp` network whose hidden layers multiply in bfloat16, the last in float32.

    The hidden layers run under ``torch.autocast(dtype=torch.bfloat16)``; their output is cast
    back to float32 before the output layer, so the network output (and every score computed
    from it) keeps float32 resolution instead of bfloat16's 8-bit mantissa. Shares the wrapped
    network's parameters.
    """

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.hidden = net[:-1]
        self.output = net[-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, dtype=torch.bfloat16):
            h = self.hidden(z)
        return self.output(h.float())


class _Standardized(nn.Module):
    """Holds the network and the per-feature standardisation as float32 buffers."""

    def __init__(self, net: nn.Sequential, mean: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        self.net = net
        # Copies (torch.tensor), never views: a view of a read-only array (a memory-mapped model
        # state) would be written by load_state_dict and crash the process.
        self.register_buffer("mean", torch.tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("scale", torch.tensor(np.asarray(scale, dtype=np.float32)))

    def network_output(self, x: torch.Tensor) -> torch.Tensor:
        """Raw network output for raw rows x: (n, d) -> (n, n_outputs)."""
        # Same float32 arithmetic as Standardizer.transform on float32 input. No dtype cast here:
        # a cast would bake the export device into the pt2 graph (an input-metadata assert).
        z = (x - self.mean) / self.scale
        return self.net(z)

    def with_bfloat16_hidden(self) -> _Standardized:
        """This scorer with its network wrapped in :class:`Bfloat16Hidden`, for in-process scoring.

        Parameters and buffers are shared, not copied; the receiver is left unchanged (its
        module dictionary is copied before the network is replaced).
        """
        twin = copy.copy(self)
        twin._modules = dict(self._modules)
        twin.net = Bfloat16Hidden(self.net)
        return twin


class CategoricalScorer(_Standardized):
    """Raw rows -> expected diffusion-time bin, sum_b b * softmax(logits)_b, shape (n,), float32."""

    def __init__(self, net: nn.Sequential, mean: np.ndarray, scale: np.ndarray, num_bins: int) -> None:
        super().__init__(net, mean, scale)
        self.register_buffer("bin_index", torch.arange(num_bins, dtype=torch.float32))

    def bin_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted distribution over the bins, shape (n, num_bins)."""
        return torch.softmax(self.network_output(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mv(self.bin_probabilities(x), self.bin_index)


class InverseGammaScorer(_Standardized):
    """Raw rows -> inverse-Gamma posterior mode of the noise variance, beta_hat / (a + 1), shape (n,).

    beta_hat = s^2 with s the network output; the shape a = d/2 - 1 is fixed. The mode ranks
    rows as |s|. (The authors' code returns the signed s, whose sign the loss never sees: when
    the network happens to output s < 0 that ranking is inverted; see
    studies/parametric_quality/parametric_quality.md.)
    """

    def __init__(self, net: nn.Sequential, mean: np.ndarray, scale: np.ndarray, shape_a: float) -> None:
        super().__init__(net, mean, scale)
        self.register_buffer("mode_divisor", torch.tensor(float(shape_a) + 1.0, dtype=torch.float32))

    def inverse_gamma_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted scale beta_hat = s^2, shape (n,)."""
        s = self.network_output(x)[:, 0]
        return s * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inverse_gamma_scale(x) / self.mode_divisor


def build_scorer(
    kind: str,
    n_features: int,
    hidden_sizes: Sequence[int],
    dropout: float,
    mean: np.ndarray,
    scale: np.ndarray,
    num_bins: int | None = None,
) -> CategoricalScorer | InverseGammaScorer:
    """A freshly initialised scoring module of the given kind (uses torch's global RNG)."""
    if kind == "categorical":
        net = build_mlp(n_features, hidden_sizes, int(num_bins), dropout)
        return CategoricalScorer(net, mean, scale, int(num_bins))
    if kind == "inverse_gamma":
        net = build_mlp(n_features, hidden_sizes, 1, dropout)
        return InverseGammaScorer(net, mean, scale, inverse_gamma_shape(n_features))
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def inverse_gamma_shape(n_features: int) -> float:
    """The fixed inverse-Gamma shape a = d/2 - 1 (positive only for d >= 3)."""
    return n_features / 2.0 - 1.0
