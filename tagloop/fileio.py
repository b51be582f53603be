"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, TextIO


@contextmanager
def _atomic(path: str | Path, mode: str, encoding: str | None) -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        newline = "\n" if "b" not in mode else None
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``."""
    with _atomic(path, "wb", None) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text (whatever the locale) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_open(path: str | Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text file to stream into that appears at ``path`` only when the ``with`` block succeeds.

    Writes go to a temp file in the same folder (created, with the folder, on entry, so an
    unwritable target fails before any work); on success it is fsynced and renamed over ``path``,
    on any exception (Ctrl-C and ``sys.exit`` included) it is removed and ``path`` is untouched.
    """
    with _atomic(path, "w", encoding) as f:
        yield f  # type: ignore[misc]
