"""Training loop of the parametric DTPM models (docs/METHOD.md section 4).

Each step draws t uniformly from 0..T-1 per row, noises the standardised row as
x_t = x_0 + sqrt(sigma2_t) * eps (variance-exploding, no drift) and fits the network to t:

- categorical: cross-entropy between the logits and the bin floor(t * num_bins / T);
- inverse-Gamma: the negative log-likelihood of sigma2_t under InvGamma(a = d/2 - 1, beta_hat = s^2)
  up to terms free of beta_hat: -[a * log(beta_hat + 1e-5) - beta_hat / sigma2_t].

All randomness comes from torch's global RNG; the caller runs this inside
``_torch_utils.seeded_torch`` so the result is a function of the seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dtpm_fast._torch_utils import ProgressReporter, iter_minibatches
from dtpm_fast.parametric.network import inverse_gamma_shape
from dtpm_fast.schedule import ve_sigma2

#: Guards log(0) when the network predicts beta_hat = 0 (the authors' constant).
IG_LOG_EPS = 1e-5
#: Losses of the categorical model: "cross_entropy" on the logits (the default), or
#: "double_softmax", the authors' code: cross-entropy applied to softmax outputs, i.e. the
#: logits go through two softmaxes (studies/parametric_quality/parametric_quality.md compares them).
CATEGORICAL_LOSSES = ("cross_entropy", "double_softmax")


def time_bins(t: torch.Tensor, T: int, num_bins: int) -> torch.Tensor:
    """Bin of each step: clamp(floor(t * num_bins / T), 0, num_bins - 1), int64."""
    return torch.clamp(torch.div(t * num_bins, T, rounding_mode="floor"), 0, num_bins - 1)


def categorical_loss(
    outputs: torch.Tensor, t: torch.Tensor, T: int, num_bins: int, loss: str
) -> torch.Tensor:
    """Mean cross-entropy of the binned diffusion time given the network outputs (n, num_bins)."""
    target = time_bins(t, T, num_bins)
    if loss == "double_softmax":
        return F.cross_entropy(torch.softmax(outputs, dim=1), target)
    return F.cross_entropy(outputs, target)


def inverse_gamma_loss(outputs: torch.Tensor, sigma2_t: torch.Tensor, shape_a: float) -> torch.Tensor:
    """Mean inverse-Gamma NLL of sigma2_t (up to beta-free terms) given outputs (n, 1), beta_hat = s^2."""
    beta = outputs[:, 0] ** 2
    return -(shape_a * torch.log(beta + IG_LOG_EPS) - beta / sigma2_t).mean()


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam with L2 weight decay (the authors' optimiser); the fused kernel where torch has one.

    The fused implementation computes the same update ~2x faster on small MLPs (one kernel
    instead of a loop over parameters); older torch versions lack it on CPU.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def train_network(
    net: torch.nn.Module,
    X_std: torch.Tensor,
    *,
    kind: str,
    T: int,
    num_bins: int | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    categorical_loss_name: str = "cross_entropy",
    progress: bool | None = None,
) -> np.ndarray:
    """Train ``net`` in place on standardised rows and return the per-epoch mean loss.

    Parameters
    ----------
    net : torch.nn.Module
        Maps (m, d) float32 to (m, num_bins) logits or (m, 1) for the inverse-Gamma model.
    X_std : torch.Tensor of shape (n, d), float32
        Standardised training rows, on the training device.
    kind : {"categorical", "inverse_gamma"}
    T, num_bins, epochs, batch_size, lr, weight_decay
        The recipe (docs/METHOD.md section 4); the last partial batch is kept.
    categorical_loss_name : {"cross_entropy", "double_softmax"}
        See :data:`CATEGORICAL_LOSSES`.
    progress : bool, optional
        Show epoch / loss / rows per second on stderr; None = only on a terminal.

    Returns
    -------
    ndarray of shape (epochs,), float64
        Row-weighted mean training loss of each epoch.
    """
    device = X_std.device
    n, d = X_std.shape
    sigma2 = torch.as_tensor(ve_sigma2(T), dtype=torch.float32, device=device)
    sigma = torch.sqrt(sigma2)
    shape_a = inverse_gamma_shape(d)
    optimizer = make_optimizer(net.parameters(), lr, weight_decay, device)
    reporter = ProgressReporter(epochs, label=f"DTPM {kind}", enabled=progress)
    history = np.empty(epochs, dtype=np.float64)
    net.train()
    try:
        for epoch in range(epochs):
            total = torch.zeros((), dtype=torch.float64, device=device)
            for idx in iter_minibatches(n, batch_size, shuffle=True, device=device):
                x0 = X_std[idx]
                t = torch.randint(0, T, (idx.shape[0],), device=device)
                x_t = x0 + sigma[t].unsqueeze(1) * torch.randn_like(x0)
                outputs = net(x_t)
                if kind == "categorical":
                    loss = categorical_loss(outputs, t, T, int(num_bins), categorical_loss_name)
                else:
                    loss = inverse_gamma_loss(outputs, sigma2[t], shape_a)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * idx.shape[0]
            # One host sync per epoch, not per step.
            history[epoch] = float(total) / n
            reporter.update(epoch + 1, history[epoch], n)
    finally:
        reporter.close()
        net.eval()
    return history
