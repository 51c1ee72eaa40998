"""One atomic writer: output appears complete under its name, or not at all."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it to ``path`` atomically.

    The temporary file is a hidden name with ``.partial`` in it, in the same directory
    (so the final rename never crosses file systems). On any exception -- including
    ``KeyboardInterrupt`` -- it is deleted, so no complete-looking file is left behind.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False (checked before and at the end).
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output {path!r} already exists; pass overwrite=True to replace it")
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"output directory {directory!r} does not exist")
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        yield temporary
        _flush_to_disk(temporary)
        if overwrite:
            os.replace(temporary, path)
        else:
            # link() fails if the target appeared meanwhile: never clobber without overwrite=True.
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise FileExistsError(
                    f"output {path!r} already exists; pass overwrite=True to replace it"
                ) from None
            except OSError:  # file systems without hard links
                if os.path.exists(path):
                    raise FileExistsError(
                        f"output {path!r} already exists; pass overwrite=True to replace it"
                    ) from None
                os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _flush_to_disk(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
