"""DDPM reconstruction detector: the paper's diffusion baseline (ALGORITHM.md section 5).

A denoising diffusion model (T = 1000 steps, linear beta schedule *with* drift) is trained to
predict the noise added to normal rows. A query row is scored by running the ancestral reverse
chain for ``reconstruction_steps`` steps starting from the clean row and measuring how far the
result moved: rows unlike the training data are pulled further. Every row needs one network
evaluation per reverse step (250 by default), which is why the diffusion-time detectors of this
package are orders of magnitude faster at inference; ``bench/ddpm_comparison.py`` measures that.
"""

from __future__ import annotations

import math

import numpy as np

from dtpm_fast import schedule
from dtpm_fast._device import resolve_device
from dtpm_fast._validation import check_int, check_is_fitted, check_matrix, check_n_features
from dtpm_fast.base import BaseDetector
from dtpm_fast.standardize import Standardizer

try:  # torch is an optional dependency (extra "torch"); fail with a clear message on use.
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    nn = None

__all__ = ["DDPMReconstruction"]


def _require_torch() -> None:
    if torch is None:
        raise ImportError(
            "DDPMReconstruction needs PyTorch; install it with `pip install dtpm-fast[torch]`."
        )


# --------------------------------------------------------------------------------------------
# Schedule (with drift): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
# --------------------------------------------------------------------------------------------
def ddpm_schedule(T: int) -> dict[str, np.ndarray]:
    """Linear-beta DDPM schedule.

    Parameters
    ----------
    T : int
        Number of diffusion steps (>= 1).

    Returns
    -------
    dict of str to ndarray of float64, shape (T,)
        ``betas`` = linspace(1e-4, 1e-2, T), ``alphas`` = 1 - betas,
        ``alpha_bar`` = cumprod(alphas) and ``posterior_variance`` =
        beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (0 at t = 0, where no noise is added).
    """
    betas = schedule.betas(T)
    alphas = 1.0 - betas
    alpha_bar = schedule.alpha_bar(T)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    return {
        "betas": betas,
        "alphas": alphas,
        "alpha_bar": alpha_bar,
        "posterior_variance": posterior_variance,
    }


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
def sinusoidal_time_embedding(t, width: int):
    """Transformer-style sinusoidal embedding of integer diffusion steps.

    Parameters
    ----------
    t : torch.Tensor, shape (n,), integer or float
        Diffusion steps.
    width : int
        Embedding width (even).

    Returns
    -------
    torch.Tensor, shape (n, width), float32
        ``[sin(t * f_k), cos(t * f_k)]`` with ``f_k = 10000 ** (-k / (width / 2))``.
    """
    half = width // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


if nn is not None:

    class _ResidualBlock(nn.Module):
        """BatchNorm -> Linear -> ReLU -> Dropout -> Linear -> Dropout, added to the input."""

        def __init__(self, width: int, hidden: int, dropout_inner: float, dropout_outer: float):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm1d(width),
                nn.Linear(width, hidden),
                nn.ReLU(),
                nn.Dropout(dropout_inner),
                nn.Linear(hidden, width),
                nn.Dropout(dropout_outer),
            )

        def forward(self, h):
            return h + self.body(h)

    class DDPMNoiseNetwork(nn.Module):
        """Residual MLP that predicts the noise eps from (x_t, t) (the authors' tabular DDPM).

        Parameters
        ----------
        n_features : int
            Input and output width d.
        width : int
            Residual stream width (128 in the paper).
        block_hidden : int
            Hidden width inside each residual block (256).
        time_width : int
            Sinusoidal embedding width and time-MLP width (256).
        n_blocks : int
            Number of residual blocks (3).
        dropout : tuple of two floats
            Dropout inside each block and on its output (0.4, 0.1).
        """

        def __init__(
            self,
            n_features: int,
            width: int = 128,
            block_hidden: int = 256,
            time_width: int = 256,
            n_blocks: int = 3,
            dropout: tuple[float, float] = (0.4, 0.1),
        ):
            super().__init__()
            self.time_width = time_width
            self.time_mlp = nn.Sequential(
                nn.Linear(time_width, time_width), nn.SiLU(), nn.Linear(time_width, time_width)
            )
            self.input_proj = nn.Linear(n_features, width)
            self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_width, width))
            self.blocks = nn.Sequential(
                *[_ResidualBlock(width, block_hidden, dropout[0], dropout[1]) for _ in range(n_blocks)]
            )
            self.head = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, n_features))

        def forward(self, x, t):
            """Predicted noise, shape (n, d), for rows ``x`` (n, d) at steps ``t`` (n,)."""
            temb = self.time_mlp(sinusoidal_time_embedding(t, self.time_width))
            h = self.input_proj(x) + self.time_proj(temb)
            return self.head(self.blocks(h))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def should_stop_early(epoch_losses, min_epochs: int = 50, lookback: int = 40) -> bool:
    """The authors' early-stop rule, applied after each epoch.

    Parameters
    ----------
    epoch_losses : sequence of float
        Mean training loss of every epoch completed so far, oldest first.
    min_epochs : int
        No stop while at most this many epochs have run.
    lookback : int
        Compare the latest epoch with the one this many epochs earlier.

    Returns
    -------
    bool
        True once more than ``min_epochs`` epochs have run and the latest epoch's mean loss
        exceeds the one ``lookback`` epochs earlier (the loss has stopped improving).
    """
    n = len(epoch_losses)
    if n <= min_epochs or n <= lookback:
        return False
    return float(epoch_losses[-1]) > float(epoch_losses[-1 - lookback])


def noise_prediction_loss(network, x0, alpha_bar, generator):
    """MSE between the true and predicted noise for one minibatch (t uniform per row).

    Parameters
    ----------
    network : DDPMNoiseNetwork
    x0 : torch.Tensor, shape (n, d), float32
        Clean standardised rows.
    alpha_bar : torch.Tensor, shape (T,), float32, on x0's device
    generator : torch.Generator
        Source of t and eps (on x0's device).
    """
    T = alpha_bar.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    ab = alpha_bar[t][:, None]
    x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
    return torch.mean((network(x_t, t) - eps) ** 2)


# --------------------------------------------------------------------------------------------
# Scoring: ancestral reverse chain from the clean row
# --------------------------------------------------------------------------------------------
def reverse_chain(network, x0, schedule_tensors, n_steps: int, generator):
    """Run the ancestral reverse chain for ``n_steps`` steps (t = n_steps-1 .. 0) from ``x0``.

    Parameters
    ----------
    network : callable (x (n, d), t (n,)) -> eps_hat (n, d), in eval mode
    x0 : torch.Tensor, shape (n, d), float32
        Clean (standardised) rows; the chain starts here, no noise is added first.
    schedule_tensors : dict of str to torch.Tensor, shape (T,), float32
        ``betas``, ``alpha_bar`` and ``posterior_variance`` on x0's device.
    n_steps : int
        Number of reverse steps (<= T).
    generator : torch.Generator
        Source of the noise z ~ N(0, I) added at every step except t = 0.

    Returns
    -------
    torch.Tensor, shape (n, d)
        The reconstruction.
    """
    betas = schedule_tensors["betas"]
    alpha_bar = schedule_tensors["alpha_bar"]
    post_std = schedule_tensors["posterior_variance"].sqrt()
    x = x0
    t_column = torch.empty(x0.shape[0], dtype=torch.long, device=x0.device)
    for step in range(n_steps - 1, -1, -1):
        t_column.fill_(step)
        eps_hat = network(x, t_column)
        coef = betas[step] / torch.sqrt(1.0 - alpha_bar[step])
        x = (x - coef * eps_hat) / torch.sqrt(1.0 - betas[step])
        if step > 0:
            z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = x + post_std[step] * z
    return x


def reconstruction_score(network, x0, schedule_tensors, n_steps: int, generator):
    """Mean over features of (x0 - reverse_chain(x0))**2, shape (n,)."""
    recon = reverse_chain(network, x0, schedule_tensors, n_steps, generator)
    return torch.mean((x0 - recon) ** 2, dim=1)
