"""The dtpm_fast model file: a fitted detector's state on disk, without pickle.

File format ("dtpm_fast-model", version 1): a ZIP archive (stored, not compressed) with

* ``manifest.json`` -- format name and version, library version, detector kind (class
  name), the detector's JSON metadata, optional extras (``feature_names``), and for every
  other member its name, byte size and SHA-256 (arrays also their dtype and shape);
* ``arrays/<name>.npy`` -- numeric arrays, written and read with ``allow_pickle=False``;
* ``blobs/<name>.bin`` -- opaque bytes (a serialized FAISS index).

This module only writes and reads that container; it imports nothing of dtpm_fast above
``io``, so the detectors' base class can use it. Which class a kind names is decided by
:func:`dtpm_fast.io.load.load` from the registry, never by importing a name read from a file.

Reading never executes code from the file and never trusts it: the manifest is JSON of
bounded size and depth, every member is read with a cap of its declared size and checked
against its SHA-256, duplicate or unexpected member names are refused, and arrays must be
plain numeric ``.npy`` whose dtype and shape match the manifest. Any defect is a
``ValueError`` naming the file. Files are written to a temporary name and renamed
(:func:`dtpm_fast.io.atomic.atomic_output`), so a crash mid-save leaves any previous file intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib

import numpy as np

from dtpm_fast.io.atomic import atomic_output

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelFileState",
    "SavedState",
    "exported_format",
    "read",
    "write",
]

FORMAT_NAME = "dtpm_fast-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # feature names of a very wide table fit many times over
MAX_MANIFEST_DEPTH = 32
MEMBER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_CHUNK = 1 << 20

ModelFileState = dict  # {"kind", "meta", "arrays", "blobs", "extras"}: see write()


# --------------------------------------------------------------------------- write


class _HashingWriter:
    """File-like object that hashes and counts what passes through to ``target``."""

    def __init__(self, target):
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += view.nbytes
        return self._target.write(view)


def write(path: str | os.PathLike, state: ModelFileState, library_version: str) -> None:
    """Write ``state`` to ``path`` atomically (replacing an existing file).

    Parameters
    ----------
    path : str or path-like
    state : dict
        ``kind`` (str), ``meta`` (JSON-able dict), ``arrays`` (name -> numeric ndarray),
        ``blobs`` (name -> bytes), ``extras`` (JSON-able dict).
    library_version : str
        Recorded in the manifest.
    """
    for name in list(state["arrays"]) + list(state["blobs"]):
        if not MEMBER_NAME.match(name):
            raise ValueError(f"{state['kind']} state has an unusable member name {name!r}")
    members: dict[str, dict] = {"arrays": {}, "blobs": {}}
    with (
        atomic_output(path, overwrite=True) as temporary,
        zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for key, value in state["arrays"].items():
            array = np.ascontiguousarray(value)
            if array.dtype.hasobject:
                raise ValueError(f"array {key!r} has dtype object; only numeric arrays can be saved")
            member = f"arrays/{key}.npy"
            with archive.open(member, "w", force_zip64=True) as stream:
                writer = _HashingWriter(stream)
                np.lib.format.write_array(writer, array, allow_pickle=False)
            members["arrays"][key] = {
                "member": member,
                "bytes": writer.size,
                "sha256": writer.sha256.hexdigest(),
                "dtype": array.dtype.str,
                "shape": list(array.shape),
            }
        for key, blob in state["blobs"].items():
            member = f"blobs/{key}.bin"
            archive.writestr(member, blob)
            members["blobs"][key] = {
                "member": member,
                "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": library_version,
            "kind": state["kind"],
            "meta": state["meta"],
            "extras": state["extras"],
            **members,
        }
        try:
            text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=True)
        except TypeError as exc:
            raise ValueError(f"{state['kind']} metadata is not JSON-serialisable: {exc}") from exc
        archive.writestr(MANIFEST, text)


# --------------------------------------------------------------------------- read


def _open(path: str) -> zipfile.ZipFile:
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} is not a regular file")
    try:
        return zipfile.ZipFile(path, "r")
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        ValueError,
        EOFError,
        OverflowError,
    ) as exc:
        raise ValueError(
            f"{path!r} is not a dtpm_fast model file (not a readable ZIP archive: {exc})"
        ) from None


def exported_format(path: str | os.PathLike) -> str | None:
    """'torchscript' or 'pt2' when ``path`` is a torch export archive, None for a model file.

    Only member names are inspected; nothing is read or unpickled. Raises ValueError when the
    file is neither a ZIP archive nor readable.
    """
    path = os.fspath(path)
    with _open(path) as archive:
        names = archive.namelist()
    if MANIFEST in names:
        return None
    tails = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return "pt2"
    if "data.pkl" in tails and "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    raise ValueError(f"{path!r} is not a dtpm_fast model file (no {MANIFEST} inside)")


def read(path: str | os.PathLike, check_kind=None) -> ModelFileState:
    """Read and verify a model file; returns the state dict that :func:`write` took.

    ``check_kind(kind)`` is called with the manifest's kind before any large member is read
    (it raises to refuse the file).
    """
    path = os.fspath(path)
    with _open(path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"{path!r} is corrupted: member(s) {duplicated} appear more than once")
        if MANIFEST not in names:
            raise ValueError(f"{path!r} is not a dtpm_fast model file (no {MANIFEST} inside)")
        by_name = {info.filename: info for info in infos}
        manifest = _read_manifest(archive, by_name[MANIFEST], path)
        if check_kind is not None:
            check_kind(manifest["kind"])
        expected = {MANIFEST}
        arrays, blobs = {}, {}
        for section, out in (("arrays", arrays), ("blobs", blobs)):
            for key, entry in manifest[section].items():
                _check_entry(entry, key, section, path)
                if entry["member"] in expected:
                    raise ValueError(f"{path!r}: the manifest names member {entry['member']!r} twice")
                expected.add(entry["member"])
                data = _read_member(archive, by_name, entry, path)
                out[key] = _parse_array(data, key, entry, path) if section == "arrays" else data
        unexpected = sorted(set(names) - expected)
        if unexpected:
            raise ValueError(f"{path!r} is corrupted: unexpected member(s) {unexpected[:5]}")
    extras = manifest.get("extras", {})
    if not isinstance(extras, dict):
        raise ValueError(f"{path!r}: the manifest's 'extras' entry is malformed")
    return {
        "kind": manifest["kind"],
        "meta": manifest["meta"],
        "arrays": arrays,
        "blobs": blobs,
        "extras": extras,
    }


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: str) -> bytes:
    """The member's bytes, refusing it as soon as it yields more than ``limit`` bytes."""
    if info.file_size > limit:
        raise ValueError(
            f"{path!r} is corrupted: member {info.filename!r} holds {info.file_size} bytes, "
            f"more than the {limit} the manifest allows"
        )
    parts, total = [], 0
    try:
        with archive.open(info) as stream:
            while True:
                chunk = stream.read(min(_CHUNK, limit + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ValueError(
                        f"{path!r} is corrupted: member {info.filename!r} is larger than declared"
                    )
                parts.append(chunk)
    except (
        zipfile.BadZipFile,
        NotImplementedError,
        RuntimeError,
        EOFError,
        OSError,
        OverflowError,  # a header offset beyond what seek takes
        zlib.error,
    ) as exc:
        raise ValueError(
            f"{path!r} is truncated or corrupted: cannot read {info.filename!r} ({exc})"
        ) from None
    return b"".join(parts)


def _depth(value, limit: int) -> int:
    """Nesting depth of a JSON value, stopping once it passes ``limit`` (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _read_manifest(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> dict:
    data = _read_capped(archive, info, MAX_MANIFEST_BYTES, path)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path!r}: the manifest is corrupted ({type(exc).__name__})") from None
    if _depth(manifest, MAX_MANIFEST_DEPTH) > MAX_MANIFEST_DEPTH:
        raise ValueError(f"{path!r}: the manifest is nested deeper than {MAX_MANIFEST_DEPTH} levels")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} is not a dtpm_fast model file (manifest format is not {FORMAT_NAME!r})")
    # The type checks below are about the file's content, not an argument's type: reading
    # documents ValueError for a malformed file, so they stay ValueError (hence TRY004).
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path!r}: the manifest has no valid format_version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses model format version {version}, newer than this dtpm_fast supports "
            f"({FORMAT_VERSION}); it was written by dtpm_fast {manifest.get('library_version')}: upgrade dtpm_fast"
        )
    if version < 1:
        raise ValueError(f"{path!r}: unsupported model format version {version}")
    for key, kind in (("kind", str), ("meta", dict), ("arrays", dict), ("blobs", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{path!r}: the manifest's {key!r} entry is missing or malformed")
    return manifest


def _check_entry(entry, key, section: str, path: str) -> None:
    ok = (
        isinstance(entry, dict)
        and isinstance(key, str)
        and MEMBER_NAME.match(key) is not None
        and entry.get("member") == f"{section}/{key}.{'npy' if section == 'arrays' else 'bin'}"
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("bytes"), int)
        and not isinstance(entry.get("bytes"), bool)
        and entry["bytes"] >= 0
    )
    if not ok:
        raise ValueError(f"{path!r}: malformed {section} entry {key!r} in the manifest")


def _read_member(archive: zipfile.ZipFile, by_name: dict, entry: dict, path: str) -> bytes:
    info = by_name.get(entry["member"])
    if info is None:
        raise ValueError(f"{path!r} is truncated or corrupted: member {entry['member']!r} is missing")
    data = _read_capped(archive, info, entry["bytes"], path)
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{path!r} is corrupted: checksum mismatch in {entry['member']!r}")
    return data


def _parse_array(data: bytes, key: str, entry: dict, path: str) -> np.ndarray:
    """The array in ``data`` (.npy bytes), its header checked before any array is allocated.

    NumPy allocates the header's shape before reading the data, so a small member whose header
    claims a huge shape would allocate without bound: the header's dtype and shape must match
    the manifest and account for exactly the member's bytes.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # noqa: BLE001 - NumPy parses the header with tokenize/ast: any failure
        raise ValueError(
            f"{path!r}: array {key!r} is not a plain numeric .npy array ({type(exc).__name__})"
        ) from None
    if (
        dtype.hasobject
        or not (np.issubdtype(dtype, np.number) or dtype == np.bool_)
        or dtype.fields is not None
    ):
        raise ValueError(f"{path!r}: array {key!r} is not a plain numeric .npy array (dtype {dtype})")
    if "dtype" in entry and (dtype.str != entry["dtype"] or list(shape) != entry.get("shape")):
        raise ValueError(
            f"{path!r}: array {key!r} is {dtype.str} {list(shape)} but the manifest "
            f"declares {entry['dtype']} {entry.get('shape')}"
        )
    count = 1
    for size in shape:
        count *= int(size)
    if stream.tell() + count * dtype.itemsize != len(data):
        raise ValueError(
            f"{path!r}: array {key!r} declares {list(shape)} {dtype.str} but holds "
            f"{len(data) - stream.tell()} data bytes"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    array = flat.reshape(shape, order="F" if fortran_order else "C")
    return np.array(array, order="C")  # a writable copy, owned


# --------------------------------------------------------------------------- state checks


class SavedState:
    """The checks every detector's ``_from_state`` makes on what a file (or a pickle) holds.

    One reader per rebuild: each ``array`` / ``integer`` / ``number`` call checks a member
    against what the detector expects (kind of dtype, shape -- with sizes shared between
    members, such as the feature count -- and finiteness), and :meth:`finish` refuses members
    nobody asked for. Every failure is a ValueError saying which member and why, raised before
    anything is built from the state.
    """

    def __init__(self, meta, arrays, blobs):
        if not isinstance(meta, dict) or not isinstance(arrays, dict) or not isinstance(blobs, dict):
            raise ValueError("saved state is malformed: metadata, arrays and blobs must be mappings")
        self.meta, self._arrays, self._blobs = meta, arrays, blobs
        self._used_arrays: set[str] = set()
        self._used_blobs: set[str] = set()

    @staticmethod
    def _fail(what: str) -> ValueError:
        return ValueError(f"saved state is inconsistent: {what}")

    def array(self, key: str, shape, *, kinds: str = "f", finite: bool = True, optional: bool = False):
        """Array ``key`` of ``shape`` (a tuple of ints, None for any size) and a dtype of ``kinds``.

        Returns None for a missing ``optional`` array.
        """
        self._used_arrays.add(key)
        if key not in self._arrays:
            if optional:
                return None
            raise self._fail(f"array {key!r} is missing")
        value = self._arrays[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
            kind = getattr(getattr(value, "dtype", None), "str", type(value).__name__)
            raise self._fail(f"array {key!r} has dtype {kind}, expected one of kinds {kinds!r}")
        if len(shape) != value.ndim or any(
            s is not None and s != v for s, v in zip(shape, value.shape, strict=False)
        ):
            expected = tuple("any" if s is None else s for s in shape)
            raise self._fail(f"array {key!r} has shape {value.shape}, expected {expected}")
        if finite and value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise self._fail(f"array {key!r} contains NaN or infinity")
        return value

    def arrays_with_prefix(self, prefix: str) -> dict:
        """All arrays whose name starts with ``prefix`` (checked by the caller, e.g. torch)."""
        found = {k: v for k, v in self._arrays.items() if k.startswith(prefix)}
        for key, value in found.items():
            self.array(key, (None,) * getattr(value, "ndim", 0), kinds="fiub")
        return found

    def check_layer_count(self, prefix: str, n_layers: int, parameter: str) -> None:
        """Refuse a ``parameter`` asking for more layers than the file holds arrays under ``prefix``.

        Every layer stores at least one array, so this bounds the network before even a
        skeleton is built: building one on the "meta" device allocates no memory but still
        creates one Python module per layer (a forged ``n_blocks = 10^9`` would never finish).
        """
        held = sum(1 for k in self._arrays if k.startswith(prefix))
        if n_layers > held:
            raise self._fail(
                f"parameter {parameter} asks for {n_layers} layers but the file holds {held} weight arrays"
            )

    def weights(self, prefix: str, expected: dict) -> dict:
        """The arrays named ``prefix + name``, exactly the names of ``expected`` with its shapes
        and dtypes (``expected``: name -> (shape tuple, NumPy dtype name), e.g. from a network
        built on torch's "meta" device, which allocates nothing), finite."""
        found = {k[len(prefix) :]: v for k, v in self._arrays.items() if k.startswith(prefix)}
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        if missing or extra:
            raise self._fail(
                f"saved network weights do not match the saved parameters (missing {missing[:5]}, "
                f"unexpected {extra[:5]})"
            )
        for name, (shape, dtype) in expected.items():
            value = found[name]
            if tuple(shape) == () and getattr(value, "shape", None) == (1,):
                shape = (1,)  # a 0-d buffer saved as shape (1,): torch's load_state_dict takes it too
            value = self.array(prefix + name, tuple(shape), kinds="fiub")
            if value.dtype.name != dtype:
                raise self._fail(
                    f"array {prefix + name!r} has dtype {value.dtype.name}, the network holds {dtype}"
                )
        return found

    def blob(self, key: str, *, allowed: bool = True):
        """Blob ``key`` or None; a blob present where the model has none is refused."""
        self._used_blobs.add(key)
        value = self._blobs.get(key)
        if value is not None and not allowed:
            raise self._fail(f"blob {key!r} is present but this model has none")
        if value is not None and not isinstance(value, (bytes, bytearray)):
            raise self._fail(f"blob {key!r} is not bytes")
        return value

    def integer(self, key: str, minimum: int = 0, maximum: int | None = None, source=None) -> int:
        value = (self.meta if source is None else source).get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise self._fail(f"{key!r} is {value!r}, expected an integer {bound}")
        return int(value)

    def number(self, key: str, source=None) -> float:
        value = (self.meta if source is None else source).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise self._fail(f"{key!r} is {value!r}, expected a finite number")
        return float(value)

    def mapping(self, key: str) -> dict:
        value = self.meta.get(key)
        if not isinstance(value, dict):
            raise self._fail(f"{key!r} is {type(value).__name__}, expected a mapping")
        return value

    def finish(self) -> None:
        """Refuse arrays or blobs that no check asked for (a member swapped in from elsewhere)."""
        extra = sorted(set(self._arrays) - self._used_arrays) + sorted(set(self._blobs) - self._used_blobs)
        if extra:
            raise self._fail(f"unexpected member(s) {extra[:5]}")
