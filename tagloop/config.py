"""``tagloop.toml``: fills every CLI option's default, as black reads ``pyproject.toml``.

Lookup order: ``--config FILE``; else ``./tagloop.toml``; else ``$XDG_CONFIG_HOME/tagloop/tagloop.toml``
(``~/.config/tagloop/tagloop.toml``; ``%APPDATA%\\tagloop\\tagloop.toml`` on Windows).

Layout: top-level keys apply to every command that has an option of that name (``device``,
``a1111_dir``, ``model``...); a ``[command]`` table applies to one command and wins::

    a1111_dir = "D:/stable-diffusion-webui"
    device = "cuda"

    [tag]
    model = "deepdanbooru"
    batch_size = 32
    bands = "0.08:0.55, 0.15:0.45, 0.38"

Keys are option names with ``-`` or ``_``. Relative file and folder paths are relative to the config
file's folder. The command line overrides the file. An unknown key, or a value the option rejects, is
an error naming the file and the key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "tagloop.toml"


def user_config_dir() -> Path:
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", Path.home())) / "tagloop"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "tagloop"


def find_config(explicit: str | Path | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist.")
        return p
    for p in (Path.cwd() / CONFIG_NAME, user_config_dir() / CONFIG_NAME):
        if p.is_file():
            return p
    return None


def read_config(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}).") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e}).") from None
