"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

The file that appears has the mode a plain ``open()`` would give it: an existing target keeps its
mode, a new one gets ``0o666`` less the process umask (``mkstemp``'s private ``0o600`` would hide
captions, PNGs and reports from a trainer or web server running as another user).
:func:`check_outputs` refuses, before any work, an output path that is one of the inputs.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator, TextIO

from .errors import OutputPathError

_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (read once: ``os.umask`` can only be read by setting it)."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            old = os.umask(0o022)
            os.umask(old)
            _UMASK = old
        return _UMASK


def _final_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextmanager
def _atomic(path: str | Path, mode: str, encoding: str | None, durable: bool = True) -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _final_mode(path))
        newline = "\n" if "b" not in mode else None
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``.

    ``durable=False`` skips the fsync: still all-or-nothing for a killed process (the rename is
    atomic), but a power cut may lose the newest content; for many small files whose writer checks
    them again on resume (bulk captions), where one fsync each would cost more than the tagging.
    """
    with _atomic(path, "wb", None, durable) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    """Write UTF-8 text (whatever the locale) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable)


@contextmanager
def atomic_open(path: str | Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text file to stream into that appears at ``path`` only when the ``with`` block succeeds.

    Writes go to a temp file in the same folder (created, with the folder, on entry, so an
    unwritable target fails before any work); on success it is fsynced and renamed over ``path``,
    on any exception (Ctrl-C and ``sys.exit`` included) it is removed and ``path`` is untouched.
    """
    with _atomic(path, "w", encoding) as f:
        yield f  # type: ignore[misc]


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def check_outputs(outputs: Iterable[tuple[str, str | Path | None]], inputs: Iterable[str | Path]) -> None:
    """Raise :class:`OutputPathError` when an output path is one of the inputs.

    ``outputs`` are ``(what, path)`` pairs (``what`` names the setting in the message; ``None``
    paths are skipped). Paths are compared as files on disk (device and inode), so ``./a.png``,
    a symlink to it or a hard link all count as the same input. An output that does not exist yet
    cannot be an input.
    """
    wanted: dict[tuple[int, int], tuple[str, str]] = {}
    for what, path in outputs:
        if path is None:
            continue
        ident = _identity(path)
        if ident is not None:
            wanted.setdefault(ident, (what, str(path)))
    if not wanted:
        return
    for src in inputs:
        ident = _identity(src)
        if ident is not None and ident in wanted:
            what, path = wanted[ident]
            raise OutputPathError(
                f"{what} {path} is an input of this run ({src}); writing it would destroy that input: choose another path."
            )
