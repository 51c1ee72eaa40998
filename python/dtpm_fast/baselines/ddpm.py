"""DDPM reconstruction detector: the paper's diffusion baseline (docs/METHOD.md section 5).

A denoising diffusion model (T = 1000 steps, linear beta schedule *with* drift) is trained to
predict the noise added to normal rows. A query row is scored by running the reverse chain for
``reconstruction_steps`` steps starting from the clean row and measuring how far the result
moved: rows unlike the training data are pulled further. By default the chain follows the
posterior mean without the sampling noise z, as the authors' code does (this is what reproduces
the paper's DDPM numbers; docs/METHOD.md writes the ancestral chain with z, available as
``sampling_noise=True``). Every row needs one network
evaluation per reverse step (250 by default), which is why the diffusion-time detectors of this
package are orders of magnitude faster at inference; ``studies/ddpm_comparison/ddpm_comparison.py`` measures that.
"""

from __future__ import annotations

import math

import numpy as np

from dtpm_fast import schedule
from dtpm_fast._device import resolve_device
from dtpm_fast._torch_utils import (
    ProgressReporter,
    inference_threads,
    iter_minibatches,
    require_torch,
    resolve_seed,
    seeded_torch,
)
from dtpm_fast._validation import check_finite_loss, check_finite_scores, check_int, check_is_fitted
from dtpm_fast.base import BaseDetector
from dtpm_fast.standardize import Standardizer

try:  # torch is an optional dependency (extra "torch"); fail with a clear message on use.
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    nn = None

__all__ = ["DDPMReconstruction"]


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
            return self.forward_with_time_bias(x, self.time_bias(t))

        def time_bias(self, t):
            """The time branch's contribution to the residual stream, shape (len(t), width).

            It depends on t only, so the reverse chain, where every row shares t, computes it
            once per step for one row and broadcasts it (about half the per-row work at d ~ 20).
            """
            return self.time_proj(self.time_mlp(sinusoidal_time_embedding(t, self.time_width)))

        def forward_with_time_bias(self, x, bias):
            """Predicted noise for rows ``x`` (n, d) given ``time_bias`` output (n or 1, width)."""
            return self.head(self.blocks(self.input_proj(x) + bias))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def should_stop_early(epoch_losses, last_epoch_without_stop: int = 50, compare_with: int = 40) -> bool:
    """The authors' early-stop rule, applied after each epoch.

    With ``n = len(epoch_losses)`` epochs done (0-based index of the latest: ``n - 1``), stop
    when ``n - 1 > last_epoch_without_stop`` and ``epoch_losses[n - 1] > epoch_losses[n -
    compare_with]``. These are the indices of the authors' code (``epoch > 50`` and
    ``train_losses[len - 40]``): the comparison is with the epoch 39 steps before the latest,
    docs/METHOD.md section 5 states the rule with these indices; the first possible stop is after the 52nd
    epoch.

    Parameters
    ----------
    epoch_losses : sequence of float
        Mean training loss of every epoch completed so far, oldest first.
    last_epoch_without_stop : int
        0-based index of the last epoch after which no stop is possible.
    compare_with : int
        The latest loss is compared with ``epoch_losses[n - compare_with]``.

    Returns
    -------
    bool
        True when the loss has stopped improving by this rule.
    """
    n = len(epoch_losses)
    if n - 1 <= last_epoch_without_stop or n < compare_with:
        return False
    return float(epoch_losses[n - 1]) > float(epoch_losses[n - compare_with])


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
def reverse_chain(network, x0, schedule_tensors, n_steps: int, generator, sampling_noise: bool = True):
    """Run the ancestral reverse chain for ``n_steps`` steps (t = n_steps-1 .. 0) from ``x0``.

    Parameters
    ----------
    network : DDPMNoiseNetwork or callable (x (n, d), t (n,)) -> eps_hat (n, d), in eval mode
        A network with ``time_bias`` gets its time branch evaluated once per step.
    x0 : torch.Tensor, shape (n, d), float32
        Clean (standardised) rows; the chain starts here, no noise is added first.
    schedule_tensors : dict of str to torch.Tensor, shape (T,), float32
        ``betas``, ``alpha_bar`` and ``posterior_variance`` on x0's device.
    n_steps : int
        Number of reverse steps (<= T).
    generator : torch.Generator
        Source of the noise z ~ N(0, I) added at every step except t = 0.
    sampling_noise : bool
        False follows the posterior mean only (no z): deterministic, as the authors' public
        code does (its noise term is commented out).

    Returns
    -------
    torch.Tensor, shape (n, d)
        The reconstruction.
    """
    betas = schedule_tensors["betas"]
    alpha_bar = schedule_tensors["alpha_bar"]
    post_std = schedule_tensors["posterior_variance"].sqrt()
    x = x0
    shared_time = hasattr(network, "time_bias")
    t_column = torch.empty(1 if shared_time else x0.shape[0], dtype=torch.long, device=x0.device)
    for step in range(n_steps - 1, -1, -1):
        t_column.fill_(step)
        if shared_time:  # every row is at the same step: one time-branch evaluation per step
            eps_hat = network.forward_with_time_bias(x, network.time_bias(t_column))
        else:
            eps_hat = network(x, t_column)
        coef = betas[step] / torch.sqrt(1.0 - alpha_bar[step])
        x = (x - coef * eps_hat) / torch.sqrt(1.0 - betas[step])
        if sampling_noise and step > 0:
            z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = x + post_std[step] * z
    return x


def reconstruction_score(network, x0, schedule_tensors, n_steps: int, generator, sampling_noise: bool = True):
    """Mean over features of (x0 - reverse_chain(x0))**2, shape (n,)."""
    recon = reverse_chain(network, x0, schedule_tensors, n_steps, generator, sampling_noise)
    return torch.mean((x0 - recon) ** 2, dim=1)


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------
def _seed_from(random_state) -> int:
    """A seed: ``random_state`` itself when it is an int, fresh OS entropy when None.

    Only None or an int are accepted (not a NumPy generator): the scoring chain is reseeded
    from ``random_state`` on every call, and the value is saved with the model.
    """
    if random_state is not None and (
        isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, (int, np.integer))
    ):
        raise ValueError(f"random_state must be None or a non-negative int, got {random_state!r}")
    return resolve_seed(random_state)


def _schedule_tensors(T: int, device) -> dict:
    return {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in ddpm_schedule(T).items()}


class DDPMReconstruction(BaseDetector):
    """Anomaly detector scoring rows by their DDPM reconstruction error (the paper's baseline).

    Parameters
    ----------
    T : int, default 1000
        Diffusion steps of the training schedule (betas = linspace(1e-4, 1e-2, T)).
    reconstruction_steps : int, default 250
        Reverse steps run at scoring time (t = reconstruction_steps - 1 .. 0); at most ``T``.
        Scoring costs this many network evaluations per row.
    epochs : int, default 400
        Maximum training epochs.
    batch_size : int, default 64
        Training minibatch size; the last partial batch of each epoch is dropped (as the
        authors' loader does). With fewer rows than this, one batch of all rows is used.
    lr, weight_decay : float, default 1e-4, 5e-4
        Adam settings.
    standardize : bool, default True
        Fit a per-feature standardiser on the training rows (the noise scale assumes it).
    contamination : float in (0, 0.5], default 0.1
        Share of training rows labelled anomalous by ``threshold_``.
    device : {"auto", "cpu", "cuda"}, default "auto"
        Where the network trains and scores; "auto" takes CUDA when torch sees a GPU.
    random_state : int or None, default None
        Seeds initialisation, dropout and the training noise, and (with ``sampling_noise``)
        the scoring noise: z ~ N(0, I) is then drawn at every reverse step from a
        ``torch.Generator`` reseeded with ``random_state`` at the start of every
        ``decision_function`` call, so with an int the same rows give the same scores on the
        same device and ``inference_batch_size``. With None each fit and each noisy scoring
        call draws fresh entropy.
    sampling_noise : bool, default False
        True adds z ~ N(0, I) at each reverse step (ancestral sampling, as docs/METHOD.md
        section 5 writes it). False (the default) follows the posterior mean only: this is
        what the authors' public code runs (its noise term is commented out) and what
        reproduces the paper's DDPM column (42_WBC seed 0: AUC-ROC 99.6 without the noise,
        93.7 with it, paper 99.2; ``studies/ddpm_comparison/ddpm_comparison.md`` has more). The
        noise-free chain is deterministic given the network.
    early_stopping : bool, default True
        The authors' rule (:func:`should_stop_early`): after epoch 50, stop once the epoch's
        mean loss exceeds the one ~40 epochs earlier.
    width, block_hidden, time_width, n_blocks : int, default 128, 256, 256, 3
        Network shape (the paper's defaults; see :class:`DDPMNoiseNetwork`).
    dropout : tuple of two floats, default (0.4, 0.1)
        Dropout inside each residual block and on its output.
    inference_batch_size : int, default 2048
        Rows per reverse-chain batch at scoring time.
    verbose : bool or None, default None
        Training progress line (epoch, loss, rows/s) on stderr; None shows it only when stderr
        is a terminal.

    Attributes
    ----------
    network_ : DDPMNoiseNetwork
        The trained noise predictor (eval mode) on ``device_``.
    device_ : str
        The resolved device.
    n_features_in_ : int
    standardizer_ : Standardizer
    loss_history_ : ndarray of float64, shape (n_epochs_,)
        Mean training loss of each epoch run.
    n_epochs_ : int
        Epochs actually run (fewer than ``epochs`` when early stopping fired).
    decision_scores_, threshold_, labels_
        PyOD conventions: training-set scores (same chain and seed), threshold, labels.
    """

    def __init__(
        self,
        T: int = 1000,
        reconstruction_steps: int = 250,
        epochs: int = 400,
        batch_size: int = 64,
        lr: float = 1e-4,
        weight_decay: float = 5e-4,
        standardize: bool = True,
        contamination: float = 0.1,
        device: str = "auto",
        random_state=None,
        sampling_noise: bool = False,
        early_stopping: bool = True,
        width: int = 128,
        block_hidden: int = 256,
        time_width: int = 256,
        n_blocks: int = 3,
        dropout: tuple = (0.4, 0.1),
        inference_batch_size: int = 2048,
        verbose: bool | None = None,
    ):
        self.T = T
        self.reconstruction_steps = reconstruction_steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.contamination = contamination
        self.device = device
        self.random_state = random_state
        self.sampling_noise = sampling_noise
        self.early_stopping = early_stopping
        self.width = width
        self.block_hidden = block_hidden
        self.time_width = time_width
        self.n_blocks = n_blocks
        self.dropout = dropout
        self.inference_batch_size = inference_batch_size
        self.verbose = verbose

    # ---- parameter checks ------------------------------------------------------------------
    def _check_params(self) -> None:
        T = check_int(self.T, "T", 1, schedule.MAX_STEPS)
        steps = check_int(self.reconstruction_steps, "reconstruction_steps", 1)
        if steps > T:
            raise ValueError(f"reconstruction_steps must be <= T ({T}), got {steps}")
        check_int(self.epochs, "epochs", 1)
        check_int(self.batch_size, "batch_size", 2)
        check_int(self.width, "width", 1)
        check_int(self.block_hidden, "block_hidden", 1)
        check_int(self.n_blocks, "n_blocks", 0)
        check_int(self.inference_batch_size, "inference_batch_size", 1)
        tw = check_int(self.time_width, "time_width", 2)
        if tw % 2:
            raise ValueError(f"time_width must be even (sin and cos halves), got {tw}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        drop = tuple(self.dropout) if isinstance(self.dropout, (tuple, list)) else None
        if (
            drop is None
            or len(drop) != 2
            or not all(isinstance(p, (int, float)) and 0.0 <= p < 1.0 for p in drop)
        ):
            raise ValueError(f"dropout must be two probabilities in [0, 1), got {self.dropout!r}")
        for name in ("sampling_noise", "early_stopping", "standardize"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.verbose not in (None, True, False):
            raise ValueError(f"verbose must be True, False or None, got {self.verbose!r}")
        self._check_contamination()
        _seed_from(self.random_state)

    def _build_network(self, n_features: int):
        return DDPMNoiseNetwork(
            n_features,
            width=self.width,
            block_hidden=self.block_hidden,
            time_width=self.time_width,
            n_blocks=self.n_blocks,
            dropout=tuple(float(p) for p in self.dropout),
        )

    # ---- fit -------------------------------------------------------------------------------
    def fit(self, X, y=None) -> DDPMReconstruction:
        """Train the noise predictor on ``X`` (normal rows; ``y`` is ignored) and set the threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows, n_samples >= 2 (batch norm needs two rows per batch).
        y : ignored

        Returns
        -------
        self
        """
        require_torch()
        self._check_params()
        X = self._validate_rows(X, fitting=True, dtype=np.float64)
        if X.shape[0] < 2:
            raise ValueError(f"X needs at least 2 rows to train (batch norm), got n_samples = {X.shape[0]}")
        device = resolve_device(self.device, native=False)
        standardizer = Standardizer.fit(X) if self.standardize else Standardizer.identity(X.shape[1])
        x_train = torch.as_tensor(standardizer.transform(X, np.float32), device=device)
        seed = _seed_from(self.random_state)

        # Init and dropout use torch's global generators: fork them so fitting neither depends
        # on nor disturbs the caller's random state.
        with seeded_torch(seed, device):
            network = self._build_network(X.shape[1]).to(device)
            losses = self._train(network, x_train, seed)
        network.eval()

        self.device_ = device
        self.n_features_in_ = int(X.shape[1])
        self.standardizer_ = standardizer
        self.network_ = network
        self.loss_history_ = np.asarray(losses, dtype=np.float64)
        self.n_epochs_ = len(losses)
        self._set_threshold(self._score_standardized(x_train))
        return self

    def _train(self, network, x_train, seed: int) -> list[float]:
        # Batch order from a CPU generator (iter_minibatches permutes on the host); t and eps
        # from one on the data's device.
        order_generator = torch.Generator().manual_seed(seed)
        generator = torch.Generator(device=x_train.device).manual_seed(seed)
        alpha_bar = _schedule_tensors(self.T, x_train.device)["alpha_bar"]
        optimizer = torch.optim.Adam(network.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = x_train.shape[0]
        batch = min(self.batch_size, n)
        n_batches = n // batch  # the last partial batch is dropped
        network.train()
        progress = ProgressReporter(self.epochs, label="DDPMReconstruction", enabled=self.verbose)
        losses: list[float] = []
        try:
            for epoch in range(1, self.epochs + 1):
                total = torch.zeros((), device=x_train.device)
                for idx in iter_minibatches(
                    n, batch, drop_last=True, generator=order_generator, device=x_train.device
                ):
                    loss = noise_prediction_loss(network, x_train[idx], alpha_bar, generator)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach()
                losses.append(check_finite_loss(float(total) / n_batches, epoch, "DDPMReconstruction"))
                progress.update(epoch, losses[-1], n_batches * batch)
                if self.early_stopping and should_stop_early(losses):
                    break
        finally:
            progress.close()
        return losses

    # ---- scoring ---------------------------------------------------------------------------
    def _score_standardized(self, x):
        """Reconstruction scores (float64, shape (n,)) of standardised rows ``x`` on ``device_``."""
        generator = torch.Generator(device=x.device).manual_seed(_seed_from(self.random_state))
        sched = _schedule_tensors(self.T, x.device)
        out = np.empty(x.shape[0], dtype=np.float64)
        step = self.inference_batch_size
        with inference_threads(), torch.inference_mode():
            for start in range(0, x.shape[0], step):
                chunk = x[start : start + step]
                scores = reconstruction_score(
                    self.network_, chunk, sched, self.reconstruction_steps, generator, self.sampling_noise
                )
                out[start : start + chunk.shape[0]] = scores.double().cpu().numpy()
        return out

    # They shape the scoring noise draw and the batching, not the fitted model (see base.py).
    _runtime_params = ("random_state", "inference_batch_size", "verbose")

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores: mean squared difference between each row and its reconstruction.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of float64, shape (n_samples,)
            Higher = more anomalous. In standardised units when ``standardize=True``.
            Stochastic (the reverse chain adds noise); see ``random_state``.
        """
        check_is_fitted(self, "network_")
        self._check_unchanged()
        check_int(self.inference_batch_size, "inference_batch_size", 1)
        _seed_from(self.random_state)  # validates it
        X = self._validate_rows(X, fitting=False, dtype=np.float64)
        x = torch.as_tensor(self.standardizer_.transform(X, np.float32), device=self.device_)
        return check_finite_scores(self._score_standardized(x), "DDPMReconstruction")

    def to_device(self, device: str) -> DDPMReconstruction:
        """Move the fitted network to ``device`` ("auto", "cpu", "cuda", "cuda:N"); returns self."""
        check_is_fitted(self, "network_")
        self._check_unchanged()
        target = resolve_device(device, native=False)
        self.network_.to(target)
        self.device_ = target
        self.device = device
        self._fitted_params["device"] = device
        return self

    # ---- persistence -----------------------------------------------------------------------
    def _get_state(self) -> tuple[dict, dict[str, np.ndarray], dict[str, bytes]]:
        """(metadata, arrays, blobs): network weights as ``network.<parameter>`` arrays, no pickle."""
        check_is_fitted(self, "network_")
        self._check_unchanged()
        params = self.get_params()
        params["dropout"] = [float(p) for p in self.dropout]
        meta = {
            "params": params,
            "n_features_in": self.n_features_in_,
            "n_epochs": self.n_epochs_,
            "threshold": self.threshold_,
        }
        arrays = {
            f"network.{name}": tensor.detach().cpu().numpy().copy()
            for name, tensor in self.network_.state_dict().items()
        }
        arrays["standardizer_mean"] = self.standardizer_.mean
        arrays["standardizer_scale"] = self.standardizer_.scale
        arrays["decision_scores"] = self.decision_scores_
        arrays["loss_history"] = self.loss_history_
        return meta, arrays, {}

    @classmethod
    def _from_state(cls, meta: dict, arrays: dict, blobs: dict) -> DDPMReconstruction:
        """Rebuild a fitted detector from :meth:`_get_state` output.

        The network goes to ``resolve_device(device)``; a model saved with ``device="cuda"``
        loads onto the CPU when this machine has no usable GPU (so saved files stay portable).
        """
        require_torch()
        from dtpm_fast.io.model_files import SavedState

        saved = SavedState(meta, arrays, blobs)
        params = dict(saved.mapping("params"))
        unknown = sorted(set(params) - set(cls._param_names()))
        if unknown:
            raise ValueError(f"saved parameters {unknown} are not parameters of {cls.__name__}")
        if not isinstance(params.get("dropout"), list):
            raise ValueError("saved state is inconsistent: 'dropout' is not a list")
        params["dropout"] = tuple(params["dropout"])
        model = cls(**params)
        model._check_params()  # bounds T (schedule.MAX_STEPS) before any table is built
        try:
            device = resolve_device(model.device, native=False)
        except ValueError:
            device = "cpu"
        n_features = saved.integer("n_features_in", 1)
        n_epochs = saved.integer("n_epochs", 0)
        mean = saved.array("standardizer_mean", (n_features,))
        scale = saved.array("standardizer_scale", (n_features,))
        if not (scale > 0).all():
            raise ValueError("saved state is inconsistent: array 'standardizer_scale' has a value <= 0")
        scores = saved.array("decision_scores", (None,))
        if scores.size == 0:
            raise ValueError("saved state is inconsistent: array 'decision_scores' is empty")
        history = saved.array("loss_history", (None,))
        threshold = saved.number("threshold")
        saved.blob("index", allowed=False)
        prefix = "network."
        saved.check_layer_count(prefix, model.n_blocks, "n_blocks")
        # Shapes from a skeleton on the "meta" device (nothing allocated): a file asking for a
        # huge network is refused before it is built.
        with torch.device("meta"):
            skeleton = model._build_network(n_features)
        expected = {
            name: (tuple(t.shape), str(t.dtype).replace("torch.", ""))
            for name, t in skeleton.state_dict().items()
        }
        weights = saved.weights(prefix, expected)
        saved.finish()
        network = model._build_network(n_features)
        state = {name: torch.as_tensor(np.array(value)) for name, value in weights.items()}
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"saved network weights do not match the saved parameters: {exc}") from None
        network.to(device).eval()
        model.device_ = device
        model.n_features_in_ = n_features
        model.network_ = network
        model.standardizer_ = Standardizer(mean, scale)
        model.loss_history_ = np.asarray(history, dtype=np.float64)
        model.n_epochs_ = n_epochs
        model._restore_threshold(scores, threshold)
        return model
