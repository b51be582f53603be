"""Progress for long runs: a bar on a terminal, a line now and then in a log, a summary at the end.

On a terminal, tqdm draws a bar. When stderr is a file or a pipe (a job log, CI), a bar would be
noise or nothing, so a plain line is written at most every ``interval`` seconds. :meth:`summary`
is the one closing line: done, skipped, failed and seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        total: int | None,
        what: str = "images",
        *,
        desc: str = "tagging",
        enabled: bool = True,
        interval: float = 10.0,
        stream: TextIO | None = None,
        start: float | None = None,
    ) -> None:
        self.total = total
        self.what = what
        self.desc = desc
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.start = time.monotonic() if start is None else start  # a time.monotonic() value
        self._last = self.start
        self._bar = None
        self._lines = False
        if enabled and (total is None or total > 1):  # None: not known in advance (a folder read lazily)
            if _isatty(self.stream):
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, unit="img", desc=desc, file=self.stream)
            else:
                self._lines = True

    def update(self, ok: bool = True) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._lines:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                n = self.done + self.failed
                rate = n / max(now - self.start, 1e-9)
                pct = f" ({100 * n / self.total:.0f}%)" if self.total else ""
                of = f"/{self.total}" if self.total else ""
                print(f"tagloop: {self.desc} {n}{of}{pct}, {rate:.1f} {self.what}/s", file=self.stream, flush=True)

    def skip(self) -> None:
        """One image left alone (already done, or it had a caption): counted, and the bar moves on."""
        self.skipped += 1
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def seconds(self) -> float:
        return time.monotonic() - self.start

    def summary(self, verb: str = "tagged", interrupted: bool = False) -> str:
        parts = [f"{self.done} {verb}"]
        parts.append(f"{self.skipped} skipped")
        parts.append(f"{self.failed} failed")
        tail = " (interrupted)" if interrupted else ""
        return f"tagloop: {', '.join(parts)} in {self.seconds():.1f} s{tail}"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
