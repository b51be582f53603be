"""The one place where tagloop's errors become exit codes and one-line messages.

Exit codes: 0 success; 1 some inputs failed (each named on stderr); 2 a usage, model, configuration
or setting error; 130 interrupted (Ctrl-C), after what was complete has been written.
"""

from __future__ import annotations

import functools
from typing import Callable

import click

from ..errors import TagloopError

EXIT_OK = 0
EXIT_INPUTS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(click.ClickException):
    """A one-sentence error on stderr (``tagloop: ...``), no ``Usage:`` block."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"tagloop: {self.format_message()}", err=True)


def exit_code_for(error: BaseException) -> int:
    """2 for every TagloopError raised out of a command (models, settings, config, unsafe outputs);
    an image that cannot be decoded where one image was asked for is a failed input (1)."""
    from ..tagger.preprocess import ImageDecodeError

    if isinstance(error, ImageDecodeError):
        return EXIT_INPUTS_FAILED
    return EXIT_USAGE


def to_command_error(error: TagloopError) -> CommandError:
    return CommandError(with_flags(str(error)), exit_code_for(error))


def with_flags(message: str, aliases: dict[str, str] | None = None) -> str:
    """Library messages name settings in backticks (`` `steps` ``); on the command line, add the
    option that sets each one: `` `steps` (--steps) ``."""
    import re

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return message
    flags: dict[str, str] = dict(aliases or {})  # settings whose name differs from their option's
    for param in ctx.command.params:
        longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if param.name and longs:
            flags.setdefault(param.name, longs[0])
            for o in longs:
                flags.setdefault(o[2:].replace("-", "_"), o)

    def add(m: re.Match) -> str:
        flag = flags.get(m.group(1))
        return f"`{m.group(1)}` ({flag})" if flag else m.group(0)

    return re.sub(r"`([a-z][a-z0-9_]*)`(?! \()", add, message)


def interrupted() -> click.exceptions.Exit:
    """What a command raises on Ctrl-C, after it has written what was complete."""
    click.echo("tagloop: interrupted", err=True)
    return click.exceptions.Exit(EXIT_INTERRUPTED)


def handle_errors(f: Callable) -> Callable:
    """Decorator for a command: TagloopError -> one sentence and its exit code; Ctrl-C -> 130."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except TagloopError as e:
            raise to_command_error(e) from None
        except KeyboardInterrupt:
            raise interrupted() from None

    return wrapper


class GracefulInterrupt:
    """Within ``with``: the first Ctrl-C only sets :attr:`requested` (the loop stops at the next
    item and writes what was complete); a second one interrupts at once. Outside the main thread
    it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> GracefulInterrupt:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
