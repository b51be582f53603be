"""What diffusers, transformers and huggingface_hub print while tagloop loads and runs a model.

* :func:`quiet_libraries` silences their logging (warnings included), their progress bars and their
  Python warnings for the duration of a call, and restores the previous settings afterwards
  (``quiet`` generation, ``tagloop generate -q``). Nested and concurrent calls share one silence:
  the first to enter sets it, the last to leave restores it.
* :func:`say_library_warnings_once` makes a warning those libraries repeat on every load (diffusers'
  "There are modules in UNet2DConditionModel that should be kept in float32", said once per model
  part and per load) appear at most once per process.

Importing this module imports neither torch nor diffusers; both functions import the libraries
only when they are already installed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import threading
import warnings
from typing import Iterator

#: The loggers whose records are said once per process (records propagate from their children).
_LIBRARY_LOGGERS = ("diffusers", "transformers", "huggingface_hub")
#: Modules whose Python warnings (FutureWarning, UserWarning, ...) ``quiet`` ignores.
_WARNING_MODULES = r"(diffusers|transformers|huggingface_hub|peft|accelerate)(\.|$)"

_LOCK = threading.Lock()
_depth = 0
_restore: list = []


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """Within the ``with`` block (when ``quiet``): diffusers and transformers log errors only, and
    their and huggingface_hub's progress bars are off, as are those libraries' Python warnings.
    Everything is restored on leaving the block, as it was before."""
    if not quiet:
        yield
        return
    global _depth
    with _LOCK:
        _depth += 1
        if _depth == 1:
            _restore[:] = _silence()
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                undo, _restore[:] = list(_restore), []
                for step in reversed(undo):
                    with contextlib.suppress(Exception):
                        step()


def _silence() -> list:
    """Silence the libraries now; return the steps that undo it."""
    undo = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        lib = _module(name)
        if lib is None:
            continue
        verbosity = lib.get_verbosity()
        bars = lib.is_progress_bar_enabled()
        lib.set_verbosity_error()
        lib.disable_progress_bar()
        undo.append(
            lambda lib=lib, verbosity=verbosity, bars=bars: (
                lib.set_verbosity(verbosity),
                lib.enable_progress_bar() if bars else lib.disable_progress_bar(),
            )
        )
    hub = _module("huggingface_hub.utils")
    if hub is not None and hasattr(hub, "are_progress_bars_disabled"):
        hub_was_disabled = hub.are_progress_bars_disabled()
        hub.disable_progress_bars()
        if not hub_was_disabled:
            undo.append(hub.enable_progress_bars)
    warnings.filterwarnings("ignore", module=_WARNING_MODULES)
    entry = warnings.filters[0]

    def drop_warning_filter() -> None:
        with contextlib.suppress(ValueError):
            warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)
        if mutated is not None:
            mutated()

    undo.append(drop_warning_filter)
    return undo


# --- once per process ----------------------------------------------------------------------------

#: Repeated warnings that differ only in the model part they name count as one.
_SAME_WARNING = ((re.compile(r"^There are modules in \w+ that should be kept in float32"), "modules kept in float32"),)


def _warning_key(message: str) -> str:
    for pattern, key in _SAME_WARNING:
        if pattern.search(message):
            return key
    return message


class _OncePerProcess(logging.Filter):
    """Lets a warning through the first time it is said in this process, never again."""

    def __init__(self) -> None:
        super().__init__("tagloop-once")
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno >= logging.ERROR:
            return True
        judged = getattr(record, "_tagloop_once", None)
        if judged is not None:  # the same record met at its logger and again at a handler
            return judged
        try:
            key = _warning_key(record.getMessage())
        except Exception:  # a malformed record is not ours to judge
            return True
        with self._lock:
            first = key not in self._seen
            self._seen.add(key)
        record._tagloop_once = first
        return first


_ONCE = _OncePerProcess()


def say_library_warnings_once() -> None:
    """Install (once; idempotent) the filter that says each library warning at most once per process.

    The filter sits on the libraries' root loggers' handlers (records of their modules propagate to
    them) and on the loggers that say the float32 warning, so it also holds where an application
    has added handlers of its own elsewhere.
    """
    names = list(_LIBRARY_LOGGERS) + ["diffusers.models.modeling_utils", "diffusers.models.model_loading_utils"]
    for name in names:
        logger = logging.getLogger(name)
        if _ONCE not in logger.filters:
            logger.addFilter(_ONCE)
        for handler in logger.handlers:
            if _ONCE not in handler.filters:
                handler.addFilter(_ONCE)
