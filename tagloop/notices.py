"""One-line notices for the user (stderr by default), each said at most once per process.

Library code says what it chose or ignored through :func:`notice`; the command line prints it as
``tagloop: ...`` on stderr, and a server or an embedding program can route it with :func:`set_sink`.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

_SEEN: set[str] = set()
_LOCK = threading.Lock()


def _stderr(message: str) -> None:
    print(f"tagloop: {message}", file=sys.stderr, flush=True)


_sink: Callable[[str], None] = _stderr


def set_sink(sink: Callable[[str], None] | None) -> None:
    """Send notices to ``sink`` (None: back to stderr)."""
    global _sink
    _sink = sink or _stderr


def notice(message: str, *, once: bool = True) -> None:
    """Tell the user ``message`` (one sentence); with ``once``, a message already said is not repeated."""
    with _LOCK:
        if once and message in _SEEN:
            return
        _SEEN.add(message)
    _sink(message)
