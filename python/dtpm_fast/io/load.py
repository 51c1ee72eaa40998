"""``dtpm_fast.load``: a fitted detector (or an exported network) back from its file."""

from __future__ import annotations

import importlib
import os

from dtpm_fast import _registry
from dtpm_fast.io import model_files


def detector_class(kind: str, expected_kind: str | None = None) -> type:
    """The class registered for ``kind``; ValueError if unknown or not ``expected_kind``."""
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"the file holds a {kind} model, not a {expected_kind}")
    entry = _registry.BY_CLASS_NAME.get(kind)
    if entry is None:
        raise ValueError(
            f"unknown detector kind {kind!r} in model file; known kinds: {sorted(_registry.BY_CLASS_NAME)}"
        )
    try:
        return getattr(importlib.import_module(entry.module), kind)
    except ImportError as exc:
        raise ValueError(f"a {kind} model needs {exc.name or 'a missing package'} to load: {exc}") from None


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
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a model file, is truncated or corrupted (checksum mismatch), has a
        newer format version, holds an unknown or unexpected detector kind, or a state that is
        inconsistent with itself.
    """
    path = os.fspath(path)
    exported = model_files.exported_format(path)
    if exported is not None:
        return _load_exported(path, exported, expected_kind)
    state = model_files.read(path, check_kind=lambda kind: detector_class(kind, expected_kind))
    cls = detector_class(state["kind"], expected_kind)
    try:
        return cls._from_model_file_state(state)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"{path!r}: saved {state['kind']} state is incomplete or inconsistent ({exc!r})"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None


def _load_exported(path: str, exported: str, expected_kind: str | None):
    try:
        from dtpm_fast.parametric import load_exported
    except ImportError as exc:
        raise ValueError(
            f"{path!r} is an exported {exported} network; loading it needs dtpm_fast.parametric "
            f"and torch ({exc})"
        ) from None
    detector = load_exported(path)
    if expected_kind is not None and type(detector).__name__ != expected_kind:
        raise ValueError(f"the file holds a {type(detector).__name__} model, not a {expected_kind}")
    return detector
