"""Private native kernels (host memory). Use the public dtpm_fast API instead."""

import numpy as np
import numpy.typing as npt

__version__: str

def posterior(
    sqdist: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    n_features: int,
    log_sigma2: npt.NDArray[np.float64],
    inv_sigma2: npt.NDArray[np.float64],
    want_mode: bool = True,
    want_mean: bool = True,
    want_posterior: bool = False,
) -> tuple[npt.NDArray[np.int32] | None, npt.NDArray[np.float64] | None, npt.NDArray[np.float64] | None]: ...
def neighbour_sqdist(
    queries: npt.NDArray[np.floating],
    train: npt.NDArray[np.floating],
    ids: npt.NDArray[np.int64],
    want_contribution: bool = False,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating] | None]: ...

class BruteForceIndex:
    """Exact brute-force k-NN over float32 rows (squared L2); copies the rows."""

    def __init__(self, train: npt.NDArray[np.float32]) -> None: ...
    def search(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    @property
    def ntotal(self) -> int: ...
    @property
    def d(self) -> int: ...

def build_info() -> dict[str, str | bool]: ...
def max_threads() -> int: ...
def set_max_threads(n: int) -> None: ...
