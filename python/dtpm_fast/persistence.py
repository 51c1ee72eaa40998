"""Saving and loading fitted detectors without pickle.

File format ("dtpm_fast-model", version 1): a ZIP archive (stored, not compressed) with

* ``manifest.json`` -- format name and version, library version, detector kind (class
  name), the detector's JSON metadata, optional extras (``feature_names``), and for every
  other member its name, byte size and SHA-256;
* ``arrays/<name>.npy`` -- numeric arrays, written and read with ``allow_pickle=False``;
* ``blobs/<name>.bin`` -- opaque bytes (a serialized FAISS index, an exported network).

Loading never executes code from the file: the manifest is JSON, arrays are plain ``.npy``
without object dtypes, and the detector class is looked up in :data:`KNOWN_KINDS` (an
explicit table), never imported by a name read from the file. Every member is checked
against its SHA-256, so a truncated or corrupted file gives a ``ValueError`` naming the
problem. Files are written to a temporary name and renamed, so a crash mid-save leaves
any previous file intact.

Exported parametric networks (TorchScript or ``torch.export`` pt2 archives, from
``model.export``) are recognised by their content and handed to
``dtpm_fast.parametric.load_exported``.

The same state (:func:`detector_state` / :func:`restore_detector`) backs pickling, so a
detector with a FAISS index pickles as its arrays and index bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import uuid
import zipfile
import zlib

import numpy as np

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "KNOWN_KINDS", "load", "save"]

FORMAT_NAME = "dtpm_fast-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Detector kinds a file may name -> the module defining the class of that name.
KNOWN_KINDS = {
    "DTPMNonParametric": "dtpm_fast.nonparametric",
    "DTPMCategorical": "dtpm_fast.parametric",
    "DTPMInverseGamma": "dtpm_fast.parametric",
    "DDPMReconstruction": "dtpm_fast.ddpm",
}

_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
# Extras the persistence layer carries besides the detector's own state.
_EXTRA_ATTRIBUTES = ("feature_names_in_",)


# --------------------------------------------------------------------------- state


def detector_state(detector) -> dict:
    """The detector's state as a plain dict (JSON metadata, arrays, blobs, extras).

    Raises whatever the detector's ``_get_state`` raises (``NotFittedError`` when unfitted).
    """
    kind = type(detector).__name__
    if kind not in KNOWN_KINDS:
        raise ValueError(f"cannot save a {kind}: known detector kinds are {sorted(KNOWN_KINDS)}")
    meta, arrays, blobs = detector._get_state()
    for name in list(arrays) + list(blobs):
        if not _MEMBER_NAME.match(name):
            raise ValueError(f"{kind}._get_state returned an unusable member name {name!r}")
    extras = {}
    names = getattr(detector, "feature_names_in_", None)
    if names is not None:
        extras["feature_names"] = [str(n) for n in names]
    return {
        "kind": kind,
        "meta": meta,
        "arrays": {k: np.asarray(v) for k, v in arrays.items()},
        "blobs": {k: bytes(v) for k, v in blobs.items()},
        "extras": extras,
    }


def detector_class(kind: str, expected_kind: str | None = None):
    """The class registered for ``kind``; ValueError if unknown or not ``expected_kind``."""
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"the file holds a {kind} model, not a {expected_kind}")
    if kind not in KNOWN_KINDS:
        raise ValueError(f"unknown detector kind {kind!r} in model file; known kinds: {sorted(KNOWN_KINDS)}")
    from dtpm_fast.base import BaseDetector

    cls = getattr(importlib.import_module(KNOWN_KINDS[kind]), kind)
    if not (isinstance(cls, type) and issubclass(cls, BaseDetector)):  # pragma: no cover - registry error
        # ValueError, not TypeError: load() documents ValueError for any bad kind and does not catch here
        raise ValueError(f"registered kind {kind!r} is not a detector class")  # noqa: TRY004
    return cls


def build_detector(state: dict, expected_kind: str | None = None):
    """A fitted detector from a state dict made by :func:`detector_state`."""
    cls = detector_class(state["kind"], expected_kind)
    detector = cls._from_state(state["meta"], state["arrays"], state["blobs"])
    names = state.get("extras", {}).get("feature_names")
    if names is not None:
        detector.feature_names_in_ = np.asarray(names, dtype=object)
    return detector


def pickle_state(detector) -> dict:
    """``BaseDetector.__getstate__``: the persistence state of a fitted detector.

    A fitted detector pickles as its metadata, arrays and blobs (a FAISS index as its
    serialized bytes, or nothing when it is rebuilt from the training rows), not as its
    live attributes. An unfitted one holds only its constructor parameters. (Pickle names
    the class itself, so subclasses outside :data:`KNOWN_KINDS` pickle too.)
    """
    from dtpm_fast._validation import NotFittedError

    try:
        meta, arrays, blobs = detector._get_state()
    except NotFittedError:
        return {"pickle_format": FORMAT_VERSION, "params": detector.get_params()}
    except NotImplementedError:  # a detector without state hooks: its attributes as they are
        return {"pickle_format": FORMAT_VERSION, "attributes": dict(detector.__dict__)}
    names = getattr(detector, "feature_names_in_", None)
    return {
        "pickle_format": FORMAT_VERSION,
        "meta": meta,
        "arrays": arrays,
        "blobs": blobs,
        "extras": {} if names is None else {"feature_names": [str(n) for n in names]},
    }


def restore_pickle_state(detector, state: dict) -> None:
    """``BaseDetector.__setstate__``: rebuild ``detector`` in place from :func:`pickle_state`."""
    version = state.get("pickle_format")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"cannot unpickle a {type(detector).__name__} of pickle format {version!r} "
            f"(this dtpm_fast reads {FORMAT_VERSION})"
        )
    if "params" in state:
        detector.__dict__.update(state["params"])
        return
    if "attributes" in state:
        detector.__dict__.update(state["attributes"])
        return
    rebuilt = type(detector)._from_state(state["meta"], state["arrays"], state["blobs"])
    detector.__dict__.update(rebuilt.__dict__)
    names = state["extras"].get("feature_names")
    if names is not None:
        detector.feature_names_in_ = np.asarray(names, dtype=object)


# --------------------------------------------------------------------------- save


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


def save(detector, path: str | os.PathLike) -> None:
    """Write a fitted detector to ``path`` in the dtpm_fast model format.

    Parameters
    ----------
    detector : BaseDetector
        A fitted dtpm_fast detector.
    path : str or path-like
        Destination; replaced atomically if it exists.

    Raises
    ------
    NotFittedError
        If the detector is not fitted.
    """
    from dtpm_fast import __version__

    state = detector_state(detector)
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.partial")
    members: dict[str, dict] = {"arrays": {}, "blobs": {}}
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in state["arrays"].items():
                if array.dtype.hasobject:
                    raise ValueError(f"array {key!r} has dtype object; only numeric arrays can be saved")
                member = f"arrays/{key}.npy"
                with archive.open(member, "w", force_zip64=True) as stream:
                    writer = _HashingWriter(stream)
                    np.lib.format.write_array(writer, np.ascontiguousarray(array), allow_pickle=False)
                members["arrays"][key] = {
                    "member": member,
                    "bytes": writer.size,
                    "sha256": writer.sha256.hexdigest(),
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
                "library_version": __version__,
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
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


# --------------------------------------------------------------------------- load


def load(path: str | os.PathLike, *, expected_kind: str | None = None):
    """Load a detector saved with ``detector.save(path)``, or an exported parametric network.

    Parameters
    ----------
    path : str or path-like
        A dtpm_fast model file, or a TorchScript / ``torch.export`` (pt2) file written by
        ``model.export`` (loaded by ``dtpm_fast.parametric.load_exported``).
    expected_kind : str, optional
        Class name the file must hold (e.g. ``"DTPMNonParametric"``).

    Returns
    -------
    BaseDetector
        A fitted detector that scores exactly as the one saved.

    Raises
    ------
    ValueError
        If the file is not a model file, is truncated or corrupted (checksum mismatch),
        has a newer format version, or holds an unknown or unexpected detector kind.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        archive = zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile:
        raise ValueError(
            f"{path!r} is not a dtpm_fast model file (not a ZIP archive, or truncated)"
        ) from None
    with archive:
        names = archive.namelist()
        if MANIFEST not in names:
            exported = _exported_kind(names)
            if exported is not None:
                return _load_exported(path, exported, expected_kind)
            raise ValueError(f"{path!r} is not a dtpm_fast model file (no {MANIFEST} inside)")
        manifest = _read_manifest(archive, path)
        cls_kind = manifest["kind"]
        detector_class(cls_kind, expected_kind)  # fail on kind before reading large members
        state = {
            "kind": cls_kind,
            "meta": manifest["meta"],
            "arrays": {k: _read_array(archive, path, k, entry) for k, entry in manifest["arrays"].items()},
            "blobs": {k: _read_member(archive, path, entry) for k, entry in manifest["blobs"].items()},
            "extras": manifest.get("extras", {}),
        }
    try:
        return build_detector(state, expected_kind)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path!r}: saved {cls_kind} state is incomplete or inconsistent ({exc!r})") from exc


def _read_manifest(archive: zipfile.ZipFile, path: str) -> dict:
    try:
        manifest = json.loads(archive.read(MANIFEST).decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError, EOFError, OSError) as exc:
        raise ValueError(f"{path!r}: the manifest is corrupted ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} is not a dtpm_fast model file (manifest format is not {FORMAT_NAME!r})")
    # The type checks below are about the file's content, not an argument's type: load() documents
    # ValueError for a malformed file, so they stay ValueError (hence the TRY004 suppressions).
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path!r}: the manifest has no valid format_version")  # noqa: TRY004
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses model format version {version}, newer than this dtpm_fast supports "
            f"({FORMAT_VERSION}); it was written by dtpm_fast {manifest.get('library_version')}: upgrade dtpm_fast"
        )
    if version < 1:
        raise ValueError(f"{path!r}: unsupported model format version {version}")
    for key, kind in (("kind", str), ("meta", dict), ("arrays", dict), ("blobs", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{path!r}: the manifest's {key!r} entry is missing or malformed")  # noqa: TRY004
    return manifest


def _read_member(archive: zipfile.ZipFile, path: str, entry) -> bytes:
    if not isinstance(entry, dict) or not all(k in entry for k in ("member", "sha256", "bytes")):
        raise ValueError(f"{path!r}: malformed member entry {entry!r} in the manifest")
    member = entry["member"]
    try:
        data = archive.read(member)
    except KeyError:
        raise ValueError(f"{path!r} is truncated or corrupted: member {member!r} is missing") from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path!r} is truncated or corrupted: cannot read {member!r} ({exc})") from exc
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{path!r} is corrupted: checksum mismatch in {member!r}")
    return data


def _read_array(archive: zipfile.ZipFile, path: str, key: str, entry) -> np.ndarray:
    data = _read_member(archive, path, entry)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path!r}: array {key!r} is not a plain numeric .npy array ({exc})") from exc


# --------------------------------------------------------------------------- exported networks


def _exported_kind(names: list[str]) -> str | None:
    """'torchscript' or 'pt2' when the archive's member names look like a torch export, else None.

    Only the names are inspected; nothing is unpickled here.
    """
    tails = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return "pt2"
    if "data.pkl" in tails and "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    return None


def _load_exported(path: str, exported: str, expected_kind: str | None):
    try:
        parametric = importlib.import_module("dtpm_fast.parametric")
        load_exported = parametric.load_exported
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"{path!r} is an exported {exported} network; loading it needs dtpm_fast.parametric "
            f"and torch ({exc})"
        ) from exc
    detector = load_exported(path)
    if expected_kind is not None and type(detector).__name__ != expected_kind:
        raise ValueError(f"the file holds a {type(detector).__name__} model, not a {expected_kind}")
    return detector
