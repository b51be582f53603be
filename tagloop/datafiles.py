"""tagloop's TOML data files (``tagloop/data/*.toml``) and user files of the same shape: read,
parsed once, and read again only when the file changes."""

from __future__ import annotations

import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def load_data_file(
    value: str | Path | None,
    *,
    builtin: str,
    setting: str,
    parse: Callable[[dict[str, Any], str], T],
    error: type[InputError] = InputError,
) -> T:
    """``tagloop/data/<builtin>`` (``value`` None or ``"builtin"``) or the user's file ``value``, parsed
    by ``parse(data, source)``; a missing, unreadable or invalid file is ``error`` naming ``setting``."""
    if value is None or str(value) == "builtin":
        return _load(builtin, None, None, parse, setting, error)
    path = Path(value).expanduser()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        raise error(f"`{setting}` file {path} does not exist; give a TOML file shaped like tagloop/data/{builtin}.") from None
    return _load(builtin, str(path.resolve()), stamp, parse, setting, error)


@lru_cache(maxsize=16)
def _load(builtin: str, path: str | None, stamp: int | None, parse, setting: str, error: type[InputError]):
    if path is None:
        text = resources.files("tagloop").joinpath(f"data/{builtin}").read_text(encoding="utf-8")
        return parse(tomllib.loads(text), "builtin")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"`{setting}` file {path}: cannot read it ({getattr(e, 'strerror', None) or e}).") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"`{setting}` file {path} is not valid TOML ({e}); see tagloop/data/{builtin}.") from None
    return parse(data, path)
