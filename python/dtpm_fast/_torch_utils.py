"""Shared PyTorch helpers for the neural detectors (parametric DTPM, DDPM baseline).

torch is an optional dependency: this module imports it lazily, so importing
``dtpm_fast._torch_utils`` never imports torch. Every helper that needs torch calls
:func:`require_torch` first, which raises an ImportError that says how to install it.

The API here is used by several modules; keep it stable:

- :func:`require_torch` -> the ``torch`` module, or ImportError with the install command.
- :func:`resolve_torch_device` -> ``torch.device`` from ``"auto" | "cpu" | "cuda"``.
- :func:`resolve_seed` -> a Python int seed from ``None | int | numpy Generator/RandomState``.
- :func:`seeded_torch` -> context manager: forked and seeded global torch RNG (CPU + CUDA),
  so network initialisation, dropout and sampling are reproducible without touching the
  caller's global RNG state.
- :func:`iter_minibatches` -> index tensors of shuffled mini-batches for one epoch.
- :func:`inference_threads` -> context manager setting the intra-op thread count.
- :func:`batched_inference` -> numpy output of a module applied chunk by chunk under
  ``torch.inference_mode``.
- :class:`ProgressReporter` -> one-line epoch / loss / rows-per-second display on stderr,
  silent when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

_INSTALL_HINT = (
    "PyTorch is required for this model but is not installed. "
    "Install it with `pip install 'dtpm-fast[torch]'` (or `pip install torch`)."
)

#: Rows per chunk for batched inference on a GPU: large enough that the GEMMs dominate the
#: per-call overhead, small enough that activations (rows x 512 floats) stay ~100 MB.
DEFAULT_INFERENCE_BATCH = 65536
#: Rows per chunk on the CPU. A chunk's widest activations (4096 x 512 float32 = 8 MiB) stay in
#: the cores' caches between one layer's matrix product, its ReLU and the next product; at
#: 65,536 rows every activation went through memory and scoring ran at 87-117% of the network's
#: bare 65,536-row GEMM rate, at 4096 rows 142-183% (studies/parametric_inference_blocks).
CPU_INFERENCE_BATCH = 4096


def require_torch() -> Any:
    """Import and return the ``torch`` module.

    Raises
    ------
    ImportError
        If torch is not installed; the message gives the install command.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError(_INSTALL_HINT) from exc
    return torch


def resolve_torch_device(device: str = "auto") -> torch.device:
    """Map a user-facing device string to a ``torch.device``.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` picks CUDA when torch sees a usable GPU and the CPU otherwise;
        ``"cuda"`` (or ``"cuda:N"``) without a usable GPU raises ValueError saying why
        (rules of ``dtpm_fast._device.resolve_device``, without needing dtpm_fast's CUDA module).

    Returns
    -------
    torch.device
    """
    torch = require_torch()
    from dtpm_fast._device import resolve_device

    # native=False: these models run on torch alone, dtpm_fast's own CUDA module is not needed.
    name = resolve_device(device, native=False)
    return torch.device(name)


def resolve_seed(random_state: Any) -> int:
    """Turn ``random_state`` into a non-negative int seed for torch.

    Parameters
    ----------
    random_state : None, int, numpy.random.Generator or numpy.random.RandomState
        ``None`` draws a fresh seed from the OS entropy pool (non-reproducible runs);
        an int is used as is; a NumPy generator supplies one draw (and advances).

    Returns
    -------
    int
        Seed in ``[0, 2**63)``.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    if isinstance(random_state, (bool, np.bool_)):
        raise ValueError("random_state must be None, an int or a NumPy random generator, not a bool.")
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"random_state must be >= 0, got {random_state}.")
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise ValueError(
        "random_state must be None, an int or a numpy.random.Generator/RandomState, "
        f"got {type(random_state).__name__}."
    )


@contextlib.contextmanager
def seeded_torch(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with torch's global RNGs forked and seeded with ``seed``.

    Weight initialisation, dropout masks and ``torch.rand*`` calls inside the block are
    then a function of ``seed`` (for a given device and torch version), and the caller's
    RNG state is restored afterwards.
    """
    torch = require_torch()
    dev = torch.device(device)
    cuda_devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


def iter_minibatches(
    n_rows: int,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors covering ``range(n_rows)`` in mini-batches (one epoch).

    Parameters
    ----------
    n_rows, batch_size : int
        Data size and batch size (``batch_size >= 1``).
    shuffle : bool
        Random permutation (drawn from ``generator`` or the global torch RNG) or in order.
    drop_last : bool
        Skip the final partial batch (DDPM recipe); otherwise it is yielded.
    device : torch.device or str
        Where the index tensors live (put them where the data lives).
    """
    torch = require_torch()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if shuffle:
        order = torch.randperm(n_rows, generator=generator).to(device)
    else:
        order = torch.arange(n_rows, device=device)
    stop = n_rows - (n_rows % batch_size) if drop_last else n_rows
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def default_num_threads() -> int:
    """Intra-op threads for CPU inference: the CPUs this process may use.

    ``OMP_NUM_THREADS`` (when set) wins, so a user or a job scheduler keeps control.
    """
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def inference_threads(n_threads: int | None = None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (restored on exit).

    ``None`` uses :func:`default_num_threads`.
    """
    torch = require_torch()
    wanted = default_num_threads() if n_threads is None else int(n_threads)
    previous = torch.get_num_threads()
    if wanted == previous:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def batched_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    X: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Apply ``fn`` to the rows of ``X`` chunk by chunk and return a NumPy array.

    Parameters
    ----------
    fn : callable
        Maps a float32 tensor of shape (m, d) on ``device`` to a tensor whose first
        dimension is m (e.g. an ``nn.Module`` in eval mode).
    X : ndarray of shape (n, d), float32
        Validated, C-contiguous input (no copy is made on CPU: chunks are views).
    device : torch.device or str
        Device where ``fn`` lives.
    batch_size : int, optional
        Rows per call; None: :data:`CPU_INFERENCE_BATCH` on the CPU,
        :data:`DEFAULT_INFERENCE_BATCH` on a GPU.
    n_threads : int, optional
        Intra-op threads for CPU execution (see :func:`inference_threads`).

    Returns
    -------
    ndarray of shape (n, ...)
        The concatenated outputs, on the host, in the output dtype of ``fn``.
    """
    torch = require_torch()
    dev = torch.device(device)
    if batch_size is None:
        batch_size = CPU_INFERENCE_BATCH if dev.type == "cpu" else DEFAULT_INFERENCE_BATCH
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    with warnings.catch_warnings():
        # Read-only inputs (e.g. memory-mapped arrays) are only read here; torch warns
        # because it cannot express read-only tensors. Nothing writes through this view.
        warnings.filterwarnings(
            "ignore", message="The given NumPy array is not writable", category=UserWarning
        )
        X_t = torch.from_numpy(X)
    outputs = []
    with inference_threads(n_threads), torch.inference_mode():
        for start in range(0, X.shape[0], batch_size):
            chunk = X_t[start : start + batch_size]
            if dev.type != "cpu":
                chunk = chunk.to(dev, non_blocking=True)
            outputs.append(fn(chunk).to("cpu"))
        if not outputs:
            raise ValueError("X has no rows; pass at least one sample.")
        result = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
    return result.numpy()


class ProgressReporter:
    """One-line training progress (epoch, loss, rows/s) on stderr.

    Silent unless ``enabled`` is True, or ``enabled`` is None and stderr is a terminal,
    so logs and test output stay clean.

    Parameters
    ----------
    total_epochs : int
        Number of epochs planned (shown as ``epoch k/total``).
    label : str
        Prefix naming the model being trained.
    enabled : bool, optional
        Force on or off; None means "only on a terminal".
    min_interval : float
        Seconds between redraws (the last epoch is always drawn).
    """

    def __init__(
        self,
        total_epochs: int,
        label: str = "training",
        enabled: bool | None = None,
        min_interval: float = 0.2,
    ) -> None:
        if enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.enabled = enabled
        self.total_epochs = total_epochs
        self.label = label
        self.min_interval = min_interval
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._rows = 0
        self._line_open = False

    def update(self, epoch: int, loss: float, rows: int) -> None:
        """Record that epoch ``epoch`` (1-based) finished with mean ``loss`` over ``rows`` rows."""
        self._rows += rows
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval and epoch < self.total_epochs:
            return
        self._last_draw = now
        rate = self._rows / max(now - self._start, 1e-9)
        self._line_open = True
        sys.stderr.write(
            f"\r{self.label}: epoch {epoch}/{self.total_epochs}  loss {loss:.4f}  {rate:,.0f} rows/s"
        )
        if epoch >= self.total_epochs:
            sys.stderr.write("\n")
            self._line_open = False
        sys.stderr.flush()

    def close(self) -> None:
        """End the line if the display was interrupted before the last epoch."""
        if self._line_open:
            self._line_open = False
            sys.stderr.write("\n")
            sys.stderr.flush()
