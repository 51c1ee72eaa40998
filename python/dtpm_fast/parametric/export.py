"""Export of the parametric models to TorchScript or pt2 (torch.export), and loading them back.

An exported file is a zip archive written by PyTorch. Besides the graph (raw rows ->
standardisation -> MLP -> score head) it carries two extra files written by dtpm_fast:

- ``dtpm_meta.json``: kind, n_features, T, num_bins, threshold, contamination, versions;
- ``dtpm_train_scores.json``: the training scores (for ``predict_proba``/``predict_confidence``).

:func:`load_exported` checks the zip structure and the metadata *before* handing the file to
``torch.jit.load`` (TorchScript's own restricted deserialiser, not Python pickle) or
``torch.export.load``. pt2 files are written without sample inputs and with raw tensor bytes,
and a pt2 file that would make ``torch.export.load`` unpickle anything is refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dtpm_fast._torch_utils import batched_inference, require_torch, resolve_torch_device
from dtpm_fast._validation import check_finite_scores, check_is_fitted
from dtpm_fast.base import BaseDetector

FORMATS = ("pt2", "torchscript")
META_FILE = "dtpm_meta.json"
TRAIN_SCORES_FILE = "dtpm_train_scores.json"
PRODUCER = "dtpm_fast.parametric"
_ZIP_MAGIC = b"PK\x03\x04"
#: Rows of the example input traced by torch.export; the batch dimension is dynamic anyway.
_EXAMPLE_ROWS = 8


@contextlib.contextmanager
def _accept_torchscript_deprecation():
    """Silence only PyTorch's "torch.jit.* is deprecated" warnings (torch >= 2.11).

    TorchScript stays supported here on purpose (the design asks for it); every other
    warning still surfaces.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


def write_export(module, path, format: str, meta: dict, train_scores: np.ndarray) -> None:
    """Write ``module`` (an eval-mode scoring module on the CPU) to ``path`` in ``format``."""
    torch = require_torch()
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    meta = dict(meta, export_format=format)
    extra = {
        META_FILE: json.dumps(meta, sort_keys=True),
        TRAIN_SCORES_FILE: json.dumps([float(s) for s in np.asarray(train_scores, dtype=np.float64)]),
    }
    path = os.fspath(path)
    example = torch.zeros(_EXAMPLE_ROWS, int(meta["n_features"]), dtype=torch.float32)
    if format == "torchscript":
        with _accept_torchscript_deprecation():
            scripted = torch.jit.script(module)
            torch.jit.save(scripted, path, _extra_files=extra)
        return
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    # Without example inputs the archive's sample-inputs member is empty, so loading it never
    # reaches torch.load (which falls back to full pickle when its safe mode fails).
    program.example_inputs = None
    torch.export.save(program, path, extra_files=extra)


# ------------------------------------------------------------------------------- loading


def _fail(path: str, why: str) -> ValueError:
    return ValueError(
        f"{path!r} is not a usable dtpm_fast exported model: {why}. "
        "Pass a file written by DTPMCategorical/DTPMInverseGamma.export(path, format='pt2' or 'torchscript')."
    )


#: Members a dtpm_fast pt2 archive may hold (paths after the archive's top folder).
_PT2_ALLOWED = (
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/",
    "models/",
    "data/weights/",
    "data/constants/",
    "data/sample_inputs/",
    "extra/",
)


def _check_pt2_needs_no_pickle(archive: zipfile.ZipFile, path: str, by_tail: dict[str, str]) -> None:
    """Refuse pt2 archives whose loading would unpickle data.

    ``torch.export.load`` unpickles weights or constants flagged ``use_pickle`` and, when the
    safe ``weights_only`` load of the sample inputs fails, retries with full pickle. dtpm_fast
    writes raw tensor bytes and empty sample inputs, so anything else is not one of its files.
    """
    for tail, name in by_tail.items():
        if not tail.startswith(_PT2_ALLOWED):
            raise _fail(path, f"the pt2 archive holds an unexpected member {tail!r}")
        if tail.startswith("data/sample_inputs/") and archive.getinfo(name).file_size != 0:
            raise _fail(path, "the pt2 archive stores pickled sample inputs (dtpm_fast exports store none)")
        if tail.endswith("_config.json") and tail.startswith(("data/weights/", "data/constants/")):
            try:
                entries = json.loads(archive.read(name).decode("utf-8")).get("config", {})
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
                raise _fail(path, f"{tail} is not valid JSON ({exc})") from None
            if not isinstance(entries, dict) or any(
                not isinstance(e, dict) or e.get("use_pickle", True) is not False for e in entries.values()
            ):
                raise _fail(path, f"{tail} lists tensors that would be unpickled; dtpm_fast never unpickles")


#: Bytes per element of the storage classes a TorchScript archive names.
_STORAGE_ITEM_BYTES = {
    "torch FloatStorage": 4,
    "torch DoubleStorage": 8,
    "torch HalfStorage": 2,
    "torch BFloat16Storage": 2,
    "torch LongStorage": 8,
    "torch IntStorage": 4,
    "torch ShortStorage": 2,
    "torch CharStorage": 1,
    "torch ByteStorage": 1,
    "torch BoolStorage": 1,
}


def _check_torchscript_storages(archive: zipfile.ZipFile, path: str, by_tail: dict[str, str]) -> None:
    """Each storage the archive's pickles name must be a ``data/<key>`` member of exactly its size.

    ``torch.jit.load`` allocates a storage of the size its pickle declares and copies what the
    member holds: a shorter member leaves the rest uninitialised (a different score every
    run), an empty one an invalid storage. The pickles are disassembled (pickletools), never run.
    """

    for name in ("data.pkl", "constants.pkl"):
        if name not in by_tail:
            continue
        try:
            for kind, key, numel in _persistent_storages(archive.read(by_tail[name])):
                member = by_tail.get(f"data/{key}")
                size = _STORAGE_ITEM_BYTES.get(kind)
                if size is None or member is None or not isinstance(numel, int):
                    raise ValueError(f"storage {key!r} of type {kind!r}")
                if archive.getinfo(member).file_size != numel * size:
                    raise _fail(
                        path,
                        f"tensor storage data/{key} holds {archive.getinfo(member).file_size} bytes, "
                        f"its tensor needs {numel * size}",
                    )
        except ValueError as exc:
            if str(exc).startswith(repr(path)):
                raise
            raise _fail(path, f"its {name} does not describe its tensor storages ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - pickletools on an untrusted pickle: any failure
            raise _fail(path, f"its {name} cannot be read ({type(exc).__name__})") from None


def _persistent_storages(data: bytes):
    """(storage type, key, numel) of each ``('storage', type, key, location, numel)`` persistent id.

    Follows the pickle's opcodes and its memo (values are referred to again by BINGET) without
    running anything.
    """
    import pickletools

    memo: dict = {}
    since_mark: list | None = None
    last = None
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "MARK":
            since_mark, last = [], None
            continue
        if name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = last
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = last
            continue
        if name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(arg)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            last = arg.replace("\n", " ") if isinstance(arg, str) else arg
        elif name == "TUPLE":
            last = tuple(since_mark or ())
            since_mark = None
            continue
        elif name == "BINPERSID":
            if not (isinstance(last, tuple) and len(last) == 5 and last[0] == "storage"):
                raise ValueError("a persistent id that is not a storage")
            yield last[1], last[2], last[4]
            continue
        else:
            last = arg
        if since_mark is not None:
            since_mark.append(last)


def inspect_export(path) -> tuple[str, dict, np.ndarray]:
    """Check that ``path`` is an intact dtpm_fast export and read its metadata, without torch.

    Returns
    -------
    format : {"pt2", "torchscript"}
    meta : dict
        The parsed ``dtpm_meta.json``.
    train_scores : ndarray of shape (n_train,), float64

    Raises
    ------
    ValueError
        Missing file, not a zip archive, damaged archive (CRC error), not written by
        PyTorch, without dtpm_fast metadata, or a pt2 archive whose loading would unpickle
        (pickled weights/constants, non-empty sample inputs, unexpected members).
    """
    path = os.fspath(path)
    return _inspect(_read_file(path), path)


#: Largest exported file read (the scoring networks are megabytes; this bounds a hostile file).
MAX_EXPORT_BYTES = 4 << 30


def _read_file(path: str) -> bytes:
    if not Path(path).is_file():
        raise _fail(path, "no such file")
    size = os.path.getsize(path)
    if size > MAX_EXPORT_BYTES:
        raise _fail(path, f"it holds {size} bytes, more than the {MAX_EXPORT_BYTES} an exported network may")
    with open(path, "rb") as fh:
        return fh.read()


def _inspect(data: bytes, path: str) -> tuple[str, dict, np.ndarray]:
    """:func:`inspect_export` on the file's bytes (``path`` names it in messages)."""
    magic = data[:4]
    if magic != _ZIP_MAGIC:
        raise _fail(path, f"it does not start with the zip signature (first bytes {magic!r})")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            if len(set(names)) != len(names):
                raise _fail(path, "the archive holds a member name twice")
            bad = archive.testzip()
            if bad is not None:
                raise _fail(path, f"the archive is damaged (CRC mismatch in {bad!r})")
            by_tail = {name.split("/", 1)[1]: name for name in names if "/" in name}
            if "archive_format" in by_tail and archive.read(by_tail["archive_format"]).strip() == b"pt2":
                fmt = "pt2"
            elif (
                "constants.pkl" in by_tail
                and "data.pkl" in by_tail
                and any(t.startswith("code/") for t in by_tail)
            ):
                fmt = "torchscript"
            else:
                raise _fail(
                    path, "the zip archive is neither a TorchScript module nor a torch.export pt2 file"
                )
            if fmt == "torchscript":
                _check_torchscript_storages(archive, path, by_tail)
            meta_name = by_tail.get("extra/" + META_FILE)
            if meta_name is None:
                raise _fail(path, f"the {fmt} file carries no {META_FILE} (not exported by dtpm_fast)")
            meta = json.loads(archive.read(meta_name).decode("utf-8"))
            if fmt == "pt2":
                _check_pt2_needs_no_pickle(archive, path, by_tail)
            scores_name = by_tail.get("extra/" + TRAIN_SCORES_FILE)
            train_scores = (
                np.asarray(json.loads(archive.read(scores_name).decode("utf-8")), dtype=np.float64)
                if scores_name is not None
                else np.empty(0)
            )
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        zlib.error,
        NotImplementedError,
        RuntimeError,
        OverflowError,  # a header offset beyond what seek takes
    ) as exc:
        raise _fail(path, f"the zip archive cannot be read ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(repr(path)):
            raise
        raise _fail(path, f"its metadata is not valid ({type(exc).__name__}: {exc})") from None
    _check_meta(meta, train_scores, path)
    return fmt, meta, train_scores


def _check_meta(meta, train_scores: np.ndarray, path: str) -> None:
    """The metadata's fields, each of the type and range dtpm_fast writes."""
    required = {"producer", "kind", "n_features", "T", "threshold", "contamination", "version"}
    if not isinstance(meta, dict) or meta.get("producer") != PRODUCER or not required <= set(meta):
        raise _fail(path, f"{META_FILE} lacks the dtpm_fast fields {sorted(required)}")

    def is_int(value, low):
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    def is_real(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)

    kind, n_features, T = meta["kind"], meta["n_features"], meta["T"]
    if kind not in ("categorical", "inverse_gamma"):
        raise _fail(path, f"{META_FILE} has an unknown kind {kind!r}")
    if not is_int(n_features, 3 if kind == "inverse_gamma" else 1):
        raise _fail(path, f"{META_FILE} has an invalid n_features {n_features!r}")
    if not is_int(T, 2):
        raise _fail(path, f"{META_FILE} has an invalid T {T!r}")
    num_bins = meta.get("num_bins")
    if kind == "categorical" and not (is_int(num_bins, 2) and num_bins <= T):
        raise _fail(path, f"{META_FILE} has an invalid num_bins {num_bins!r} for T={T}")
    if kind == "inverse_gamma" and (num_bins is not None or meta.get("shape_a") != n_features / 2.0 - 1.0):
        raise _fail(
            path,
            f"{META_FILE} is not an inverse-Gamma head's (num_bins {num_bins!r}, shape_a {meta.get('shape_a')!r})",
        )
    c = meta["contamination"]
    if not is_real(meta["threshold"]) or not (is_real(c) and 0.0 < c <= 0.5):
        raise _fail(path, f"{META_FILE} has an invalid threshold or contamination")
    if train_scores.ndim != 1 or not np.isfinite(train_scores).all():
        raise _fail(path, f"{TRAIN_SCORES_FILE} is not a list of finite training scores")


def _check_tensor_storage(module, path: str) -> None:
    """Every weight, buffer and constant lies inside its storage.

    The loaders take a tensor's size and strides from the archive's code or JSON and its bytes
    from another member without comparing the two: a shortened storage member loads, and the
    first multiplication reads past the end of the buffer (a segfault).
    """
    torch = require_torch()
    tensors = list(module.state_dict().values())
    for _, value in getattr(module, "named_buffers", lambda: [])():
        tensors.append(value)
    for name in dir(module):
        if name.startswith("_tensor_constant") or name.startswith("lifted_tensor"):
            tensors.append(getattr(module, name, None))
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
            continue
        storage = tensor.untyped_storage()
        try:
            usable = storage.data_ptr() != 0
        except RuntimeError:  # "invalid python storage": the member held fewer bytes than the tensor
            usable = False
        last = tensor.storage_offset() + sum(
            (n - 1) * abs(st) for n, st in zip(tensor.shape, tensor.stride(), strict=False)
        )
        if not usable or (last + 1) * tensor.element_size() > storage.nbytes():
            raise _fail(path, "a tensor of the network is larger than its stored bytes (truncated archive)")


def _check_graph(module, meta: dict, path: str, device) -> None:
    """Run the graph on two rows: it must take n_features columns and give one finite score per row.

    An archive whose metadata disagrees with its graph (another width, another head) fails here,
    at load, instead of at the first scoring call or with silently different scores.
    """
    torch = require_torch()
    try:
        probe = torch.zeros(2, int(meta["n_features"]), dtype=torch.float32, device=device)
        with torch.inference_mode():
            out = module(probe)
        scores = out.detach().to("cpu").numpy() if isinstance(out, torch.Tensor) else None
    except Exception as exc:  # noqa: BLE001 - the graph is untrusted: any failure means a bad file
        raise _fail(
            path, f"its graph does not take {meta['n_features']} features ({type(exc).__name__})"
        ) from None
    if scores is None or scores.shape != (2,) or not np.isfinite(scores).all():
        raise _fail(path, "its graph does not return one finite score per row")
    upper = (meta["num_bins"] - 1) if meta["kind"] == "categorical" else np.inf
    if not ((scores >= -1e-5) & (scores <= upper + 1e-4)).all():
        raise _fail(path, f"its graph's scores are outside the range of a {meta['kind']} head")


def load_exported(path, device: str = "auto") -> ExportedScorer:
    """Load an exported parametric model as a ready scorer (``decision_function``, ``predict``...).

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``DTPMCategorical.export`` or ``DTPMInverseGamma.export`` in either format.
    device : {"auto", "cpu", "cuda"}, default "auto"

    Returns
    -------
    ExportedScorer
        Picklable: it pickles as the file's bytes and is loaded again (same checks) when unpickled.

    Notes
    -----
    The file is read once and validated (zip signature, CRCs, PyTorch layout, dtpm_fast
    metadata) before ``torch.jit.load`` / ``torch.export.load`` reads the archive rebuilt from
    the checked member bytes (:func:`_rebuilt_archive`); the loaded graph is then run on two rows to check it against the metadata. No Python pickle
    is loaded by dtpm_fast.
    """
    path = os.fspath(path)
    return _load_bytes(_read_file(path), path, device)


def _rebuilt_archive(data: bytes) -> bytes:
    """The archive written anew from its members' CRC-checked bytes, with plain zip headers.

    PyTorch's zip reader interprets header fields that Python's ``zipfile`` ignores: one
    changed byte in a central-directory entry's file attributes made ``torch.export.load`` read
    a weight from the wrong bytes. PyTorch therefore only ever reads this rebuilt archive,
    whose headers carry nothing but names, sizes and checksums.
    """
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rebuilt,
    ):
        for info in source.infolist():
            rebuilt.writestr(info.filename, source.read(info))
    return out.getvalue()


def _load_bytes(data: bytes, path: str, device) -> ExportedScorer:
    torch = require_torch()
    fmt, meta, train_scores = _inspect(data, path)
    dev = resolve_torch_device(device)
    archive = io.BytesIO(_rebuilt_archive(data))
    try:
        if fmt == "torchscript":
            with _accept_torchscript_deprecation():
                module = torch.jit.load(archive, map_location=dev)
        else:
            program = torch.export.load(archive)
            if dev.type != "cpu":
                # Exported on the CPU; the pass rewrites device constants in the graph as well.
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, dev)
            module = program.module()
    except Exception as exc:  # noqa: BLE001 - PyTorch's loaders on an untrusted file: any failure is a bad file
        raise _fail(path, f"PyTorch could not load the {fmt} program ({type(exc).__name__}: {exc})") from None
    _check_tensor_storage(module, path)
    _check_graph(module, meta, path, dev)
    scorer = ExportedScorer._from_loaded(module, fmt, meta, train_scores, dev)
    scorer._path = path
    scorer._file_bytes = data
    scorer._device_spec = device
    return scorer


class ExportedScorer(BaseDetector):
    """Inference-only detector backed by an exported TorchScript or pt2 program.

    Offers ``decision_function``, ``predict``, ``predict_proba``, ``predict_confidence``
    (the last two need the training scores stored in the file). It cannot be refitted:
    refit the original detector class instead.

    Attributes
    ----------
    meta_ : dict
        The file's metadata (kind, n_features, T, num_bins, threshold, version...).
    format_ : {"pt2", "torchscript"}
    n_features_in_ : int
    threshold_ : float
    decision_scores_ : ndarray of shape (n_train,), float64
    """

    def __init__(self):
        pass

    @classmethod
    def _from_loaded(cls, module, fmt: str, meta: dict, train_scores: np.ndarray, device) -> ExportedScorer:
        self = cls()
        self._module = module
        self._torch_device = device
        self.format_ = fmt
        self.meta_ = meta
        self.kind_ = meta["kind"]
        self.contamination = float(meta["contamination"])
        self.n_features_in_ = int(meta["n_features"])
        self.threshold_ = float(meta["threshold"])
        if train_scores.size:
            self.decision_scores_ = train_scores
            self.labels_ = (train_scores > self.threshold_).astype(np.int64)
        return self

    def __repr__(self) -> str:
        return f"ExportedScorer(kind={self.meta_.get('kind')!r}, format={self.format_!r})"

    def to_device(self, device: str) -> ExportedScorer:
        """Load the exported program again onto ``device`` ("auto", "cpu", "cuda"); returns self."""
        check_is_fitted(self, "_module")
        self.__dict__.update(_load_bytes(self._file_bytes, self._path, device).__dict__)
        return self

    def __getstate__(self) -> dict:
        """Pickles as the exported file's bytes (a loaded graph cannot be pickled), with its device."""
        check_is_fitted(self, "_module")
        device = self._device_spec if isinstance(self._device_spec, str) else str(self._torch_device)
        return {"pickle_format": 1, "exported": self._file_bytes, "path": self._path, "device": device}

    def __setstate__(self, state: dict) -> None:
        """Load the bytes again, with every check of :func:`load_exported`."""
        if not isinstance(state, dict) or state.get("pickle_format") != 1 or "exported" not in state:
            raise ValueError("cannot unpickle an ExportedScorer: not a pickle of this dtpm_fast version")
        device = state.get("device", "auto")
        try:
            resolve_torch_device(device)
        except ValueError:
            device = "auto"  # pickled on a GPU machine, unpickled where that device is missing
        self.__dict__.update(_load_bytes(state["exported"], state.get("path", "<pickled>"), device).__dict__)

    def fit(self, X, y=None):
        raise TypeError(
            "An exported model is inference-only; fit a DTPMCategorical / DTPMInverseGamma and export it again."
        )

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores, shape (n_samples,), float64 (computed in float32); higher = more anomalous."""
        check_is_fitted(self, "_module")
        X = self._validate_rows(X, fitting=False)
        scores = batched_inference(self._module, X, device=self._torch_device).astype(np.float64)
        return check_finite_scores(scores, f"the exported {self.kind_} network")
