"""Private CUDA kernels (device memory, raw pointers). Use dtpm_fast._gpu or the public API instead.

Every array argument is a device pointer as an int (0 = none) to a C-contiguous array; ``stream``
is a cudaStream_t as an int (0 = legacy default stream). Launches are asynchronous. Bad shapes
raise ValueError; CUDA failures raise RuntimeError naming the source file and line.
"""

__version__: str
architectures: str
toolkit_version: str
STATUS_NAN_DISTANCE: int
STATUS_ID_OUT_OF_RANGE: int

def device_count() -> int: ...
def device_status() -> str: ...
def runtime_version() -> int: ...
def driver_version() -> int: ...
def smallest_per_row_max_k() -> int: ...
def posterior(
    sqdist: int,
    dtype: str,
    n: int,
    k: int,
    n_features: int,
    log_sigma2: int,
    inv_sigma2: int,
    T: int,
    mode: int,
    mean: int,
    posterior: int,
    status: int,
    stream: int,
) -> None: ...
def neighbour_sqdist(
    queries: int,
    train: int,
    dtype: str,
    n: int,
    n_train: int,
    d: int,
    ids: int,
    k: int,
    sqdist: int,
    contribution: int,
    status: int,
    stream: int,
) -> None: ...
def smallest_per_row(
    values: int,
    rows: int,
    cols: int,
    ld: int,
    k: int,
    id_offset: int,
    exclude_diagonal: bool,
    diagonal_offset: int,
    out_values: int,
    out_ids: int,
    out_ld: int,
    stream: int,
) -> None: ...
