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

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from dtpm_fast._torch_utils import ProgressReporter, iter_minibatches
from dtpm_fast._validation import check_finite_loss
from dtpm_fast.parametric import manual_backprop
from dtpm_fast.parametric.network import inverse_gamma_shape
from dtpm_fast.parametric.optimizer import adam_update, make_optimizer
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


def inverse_gamma_loss(
    outputs: torch.Tensor, sigma2_t: torch.Tensor, shape_a: float, weighting: str = "none"
) -> torch.Tensor:
    """Mean inverse-Gamma NLL of sigma2_t (up to beta-free terms) given outputs (n, 1), beta_hat = s^2.

    Unweighted, a row's gradient in beta_hat is 1 / sigma2_t - a / beta_hat: its first term spans
    1.2 to 10,000 over the schedule, so the few rows drawn at small t set the size of every step.
    A weighting w(t) multiplies each row's term (docs/METHOD.md section 4, "fast recipe"):

    - ``"sigma"``: w = sigma_t, -[sigma_t * a * log(beta_hat + 1e-5) - beta_hat / sigma_t]; the
      span falls to its square root (~90) and the minimiser is a * E[sigma_t | x] / E[1/sigma_t | x],
      between the unweighted a / E[1/sigma2_t | x] and the ``"sigma2"`` a * E[sigma2_t | x];
    - ``"sigma2"``: w = sigma2_t, -[sigma2_t * a * log(beta_hat + 1e-5) - beta_hat]; every step size
      on one scale.
    - ``"importance"``: the ``"sigma"`` terms, for steps drawn with probability proportional to
      1 / sigma_t (:func:`step_proposal`, which the training loop applies): importance sampling of
      the unweighted loss. Its expectation is the unweighted loss's up to a constant factor, so
      the minimiser is the unweighted one, a / E[1/sigma2_t | x]; the spread of the terms is that
      of ``"sigma"``.
    """
    beta = outputs[:, 0] ** 2
    if weighting == "sigma2":
        return -(sigma2_t * shape_a * torch.log(beta + IG_LOG_EPS) - beta).mean()
    if weighting in ("sigma", "importance"):
        sigma_t = torch.sqrt(sigma2_t)
        return -(sigma_t * shape_a * torch.log(beta + IG_LOG_EPS) - beta / sigma_t).mean()
    if weighting != "none":
        raise ValueError(f"weighting must be one of {IG_WEIGHTINGS}, got {weighting!r}")
    return -(shape_a * torch.log(beta + IG_LOG_EPS) - beta / sigma2_t).mean()


def draw_steps(
    m: int, T: int, sampling: str, device: torch.device, cdf: torch.Tensor | None = None
) -> torch.Tensor:
    """Diffusion steps for a batch of m rows, int64 in 0..T-1, each uniform over 0..T-1 (or ``cdf``).

    ``"uniform"``: independent draws. ``"stratified"``: row i of a random order takes one draw
    from the i-th of m equal slices of [0, T), so every batch covers the whole schedule evenly
    (the same uniform marginal per row, less variance per batch).

    ``cdf`` (shape (T,), non-decreasing, last entry 1): draw each step from that distribution
    instead of the uniform one (P(t = k) = cdf[k] - cdf[k - 1]); stratified draws then take
    one point per equal slice of its probability, through the inverse of ``cdf``.
    """
    if sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {sampling!r}")
    if sampling == "uniform" and cdf is None:
        return torch.randint(0, T, (m,), device=device)
    if sampling == "uniform":
        u = torch.rand(m, device=device)
    else:  # one point in each of m equal slices of [0, m), in random order
        u = torch.randperm(m, device=device) + torch.rand(m, device=device)
        if cdf is None:
            return torch.clamp((u * (T / m)).long(), 0, T - 1)
        u = u / m
    return torch.clamp(torch.searchsorted(cdf, u, right=True), 0, T - 1)


def step_proposal(weighting: str, sigma2: torch.Tensor) -> torch.Tensor | None:
    """Cumulative distribution of the steps the inverse-Gamma loss ``weighting`` trains on.

    None (uniform steps) for every weighting but ``"importance"``, whose steps are drawn with
    probability proportional to 1 / sigma_t (float64 sums, returned as float32, last entry 1).
    """
    if weighting != "importance":
        return None
    density = 1.0 / torch.sqrt(sigma2.double())
    cdf = torch.cumsum(density, 0) / density.sum()
    cdf[-1] = 1.0
    return cdf.float()


#: The two training recipes (docs/METHOD.md section 4 for "paper"). A recipe supplies the values of
#: ``epochs``, ``batch_size`` and ``lr`` that the caller leaves as None, and always fixes the
#: learning-rate schedule, the numeric precision of the network's matrix products and the data
#: pipeline:
#:
#: - ``"paper"``: the authors' settings, exactly: 400 epochs of batches of 64, Adam at a constant
#:   lr of 1e-4, float32, noise and steps drawn batch by batch.
#: - ``"fast"``: 200 epochs of batches of 512 (smaller on few rows: at least 8 steps per epoch
#:   while the batch stays at 96 rows or more,
#:   :func:`batch_size_for`), Adam at a peak lr of 1e-3 with a linear warm-up over
#:   the first 5% of the steps and a cosine decay to zero, matrix products in bfloat16
#:   (``torch.autocast``; weights, optimizer state and loss stay float32), each epoch's
#:   permutation, steps and noise drawn before its batches (no per-batch random-number or
#:   indexing work), steps stratified within each batch (:func:`draw_steps`), for DTE-IG the
#:   authors' loss importance-sampled over the steps (``"importance"`` in
#:   :func:`inverse_gamma_loss`), and on the CPU the step with its backward
#:   pass written out (:mod:`~dtpm_fast.parametric.manual_backprop`). See
#:   studies/parametric_step_budget/ and studies/parametric_fast_recipe/ for the choice and its
#:   measured cost and quality.
RECIPES: dict[str, dict] = {
    "paper": {
        "epochs": 400,
        "batch_size": 64,
        "lr": 1e-4,
        "schedule": "constant",
        "precision": "float32",
        "pipeline": "per_batch",
        "t_sampling": "uniform",
        "ig_weighting": "none",
        "min_steps_per_epoch": None,
        "backprop": "autograd",
    },
    "fast": {
        "epochs": 200,
        "batch_size": 512,
        "lr": 1e-3,
        "schedule": "warmup_cosine",
        "precision": "bfloat16",
        "pipeline": "per_epoch",
        "t_sampling": "stratified",
        "ig_weighting": "importance",
        "min_steps_per_epoch": 8,
        "backprop": "manual",
    },
}
SCHEDULES = ("constant", "warmup_cosine")
PRECISIONS = ("float32", "bfloat16")
PIPELINES = ("per_batch", "per_epoch")
T_SAMPLINGS = ("uniform", "stratified")
IG_WEIGHTINGS = ("none", "sigma", "sigma2", "importance")
BACKPROPS = ("autograd", "manual")
#: Share of the steps spent warming the learning rate up linearly in the "warmup_cosine" schedule.
WARMUP_FRACTION = 0.05


#: The smallest batch the ``min_steps_per_epoch`` rule takes. A step's fixed costs (Adam's update
#: and the bfloat16 copy of the 265,000 weights of the default network) make a row of a 96-row
#: step about a quarter cheaper than one of a 64-row step, and on the ten data sets of under 500
#: rows batches of 96 (4-6 steps per epoch) rank as well as batches of 64 (8)
#: (studies/parametric_importance_sampling/README.md).
MIN_RULE_BATCH = 96


def batch_size_for(n_rows: int, largest: int, min_steps_per_epoch: int) -> int:
    """Rows per step so that an epoch over ``n_rows`` has at least ``min_steps_per_epoch`` steps.

    min(largest, max(96, ceil(n_rows / min_steps_per_epoch))): ``largest`` on many rows; on few
    rows the steps an epoch takes would otherwise fall to one or two (a 450-row training set
    in batches of 512 trains 200 steps in 200 epochs, too few for the models to converge).
    Under ``96 * min_steps_per_epoch`` rows the batch stays at :data:`MIN_RULE_BATCH`, so an
    epoch takes ceil(n_rows / 96) steps (5 for 450 rows).
    """
    return int(min(largest, max(MIN_RULE_BATCH, -(-n_rows // min_steps_per_epoch))))


def learning_rates(schedule: str, peak_lr: float, total_steps: int) -> np.ndarray:
    """Learning rate of every optimizer step, shape (total_steps,), float64.

    ``"constant"``: ``peak_lr`` throughout. ``"warmup_cosine"``: rises linearly from
    ``peak_lr / warmup`` to ``peak_lr`` over the first ``warmup = max(1, round(5% of steps))``
    steps, then follows half a cosine from ``peak_lr`` down to 0 (reached after the last step).
    """
    if schedule == "constant":
        return np.full(total_steps, peak_lr, dtype=np.float64)
    if schedule != "warmup_cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    step = np.arange(total_steps, dtype=np.float64)
    rising = peak_lr * (step + 1) / warmup
    progress = (step - warmup + 1) / max(1, total_steps - warmup)
    falling = peak_lr * 0.5 * (1.0 + np.cos(np.pi * np.clip(progress, 0.0, 1.0)))
    return np.where(step < warmup, rising, falling)


# The class a kind of network belongs to, for messages.
_OWNER = {"categorical": "DTPMCategorical", "inverse_gamma": "DTPMInverseGamma"}


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
    schedule: str = "constant",
    precision: str = "float32",
    pipeline: str = "per_batch",
    t_sampling: str = "uniform",
    ig_weighting: str = "none",
    backprop: str = "autograd",
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
        docs/METHOD.md section 4; ``lr`` is the peak rate of the schedule; the last partial
        batch is kept.
    categorical_loss_name : {"cross_entropy", "double_softmax"}
        See :data:`CATEGORICAL_LOSSES`.
    schedule : {"constant", "warmup_cosine"}
        Learning rate per step, see :func:`learning_rates`.
    precision : {"float32", "bfloat16"}
        ``"bfloat16"`` runs the forward and backward matrix products under
        ``torch.autocast(dtype=torch.bfloat16)``; parameters, gradients, Adam state and the
        loss stay float32.
    pipeline : {"per_batch", "per_epoch"}
        ``"per_batch"`` (the authors' loop): each batch gathers its rows, then draws its steps
        and noise. ``"per_epoch"``: one permutation, one draw of n steps and one of n x d noise
        per epoch, the noised rows built in one pass, batches are contiguous slices of it. The
        same distribution; a different random stream.
    t_sampling : {"uniform", "stratified"}
        How each batch's steps are drawn, see :func:`draw_steps`.
    ig_weighting : {"none", "sigma", "sigma2", "importance"}
        The inverse-Gamma loss's weighting, see :func:`inverse_gamma_loss` (unused by the
        categorical model); ``"importance"`` also draws the steps from :func:`step_proposal`.
    backprop : {"autograd", "manual"}
        ``"manual"``: the step of :mod:`~dtpm_fast.parametric.manual_backprop` (the backward
        pass written out, cheap dropout masks), where it applies (a ``build_mlp`` network on the
        CPU); elsewhere, and with ``"autograd"``, ``loss.backward()`` under autocast.
    progress : bool, optional
        Show epoch / loss / rows per second on stderr; None = only on a terminal.

    Returns
    -------
    ndarray of shape (epochs,), float64
        Row-weighted mean training loss of each epoch.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")
    if ig_weighting not in IG_WEIGHTINGS:
        raise ValueError(f"ig_weighting must be one of {IG_WEIGHTINGS}, got {ig_weighting!r}")
    if backprop not in BACKPROPS:
        raise ValueError(f"backprop must be one of {BACKPROPS}, got {backprop!r}")
    device = X_std.device
    n, d = X_std.shape
    sigma2 = torch.as_tensor(ve_sigma2(T), dtype=torch.float32, device=device)
    sigma = torch.sqrt(sigma2)
    shape_a = inverse_gamma_shape(d)
    steps_per_epoch = -(-n // batch_size)
    rates = learning_rates(schedule, lr, epochs * steps_per_epoch)
    optimizer = make_optimizer(net.parameters(), lr, weight_decay, device)
    update = adam_update(optimizer)
    group = optimizer.param_groups[0]
    vary_lr = schedule != "constant"
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )
    reporter = ProgressReporter(epochs, label=f"DTPM {kind}", enabled=progress)
    history = np.empty(epochs, dtype=np.float64)
    manual = None
    if backprop == "manual" and manual_backprop.supports(net, device):
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        manual = manual_backprop.ManualBackpropStep(net, dtype)

    def loss_of(outputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if kind == "categorical":
            return categorical_loss(outputs, t, T, int(num_bins), categorical_loss_name)
        return inverse_gamma_loss(outputs, sigma2[t], shape_a, ig_weighting)

    def step(x_t: torch.Tensor, t: torch.Tensor, number: int) -> torch.Tensor:
        if vary_lr:
            group["lr"] = float(rates[number])
        if manual is not None:
            loss = manual(x_t, lambda outputs: loss_of(outputs, t))
        else:
            with autocast:
                outputs = net(x_t)
            loss = loss_of(outputs.float(), t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        update()
        return loss.detach()

    # The inverse-Gamma loss's step distribution; None = uniform (every categorical fit).
    cdf = step_proposal(ig_weighting, sigma2) if kind == "inverse_gamma" else None
    net.train()
    number = 0
    try:
        for epoch in range(epochs):
            total = torch.zeros((), dtype=torch.float64, device=device)
            if pipeline == "per_batch":
                for idx in iter_minibatches(n, batch_size, shuffle=True, device=device):
                    x0 = X_std[idx]
                    t = draw_steps(idx.shape[0], T, t_sampling, device, cdf)
                    x_t = x0 + sigma[t].unsqueeze(1) * torch.randn_like(x0)
                    total += step(x_t, t, number) * idx.shape[0]
                    number += 1
            else:
                order = torch.randperm(n, device=device)
                if t_sampling == "uniform":
                    t_all = draw_steps(n, T, t_sampling, device, cdf)
                else:  # strata per batch, so that each batch covers the schedule
                    t_all = torch.cat(
                        [
                            draw_steps(min(batch_size, n - start), T, t_sampling, device, cdf)
                            for start in range(0, n, batch_size)
                        ]
                    )
                noise = torch.randn(n, d, device=device)
                x_all = torch.addcmul(X_std[order], sigma[t_all].unsqueeze(1), noise)
                for start in range(0, n, batch_size):
                    stop = min(start + batch_size, n)
                    total += step(x_all[start:stop], t_all[start:stop], number) * (stop - start)
                    number += 1
            # One host sync per epoch, not per step.
            history[epoch] = check_finite_loss(float(total) / n, epoch + 1, _OWNER[kind])
            reporter.update(epoch + 1, history[epoch], n)
    finally:
        reporter.close()
        net.eval()
    return history
