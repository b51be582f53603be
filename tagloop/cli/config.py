"""``tagloop.toml`` values as click's option defaults: every key checked against the commands' options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError


def _relative_to(config_path: Path, value: Any) -> Any:
    """File and folder options given relative in a config file are relative to that file's folder."""
    if isinstance(value, list):
        return [_relative_to(config_path, v) for v in value]
    if isinstance(value, str) and value:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else config_path.resolve().parent / p)
    return value


def _key(name: str) -> str:
    return name.replace("-", "_")


def build_default_map(group: click.Group, ctx: click.Context, path: Path, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate ``data`` against the group's commands and return click's ``default_map``."""
    commands = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    params = {name: _param_keys(cmd) for name, cmd in commands.items() if cmd is not None}
    by_key = {_key(name): name for name in params}
    top = {k: v for k, v in data.items() if not isinstance(v, dict) or _key(k) not in by_key}
    tables = {by_key[_key(k)]: v for k, v in data.items() if isinstance(v, dict) and _key(k) in by_key}
    known_anywhere = {p for ps in params.values() for p in ps}
    for k in top:
        if _key(k) not in known_anywhere:
            raise ConfigError(f"{path}: unknown key {k!r} (no command has an option of that name).")
    out: dict[str, dict[str, Any]] = {}
    for cmd_name, cmd_params in params.items():
        values: dict[str, Any] = {}
        for k, v in top.items():
            if _key(k) in cmd_params:
                values[_key(k)] = v
        for k, v in tables.get(cmd_name, {}).items():
            if _key(k) not in cmd_params:
                raise ConfigError(f"{path}: [{cmd_name}] has unknown key {k!r}.")
            values[_key(k)] = v
        by_name: dict[str, Any] = {}
        for k, v in values.items():
            param = cmd_params[k]
            if isinstance(param.type, click.Path):
                v = _relative_to(path, v)
            try:
                if isinstance(v, list) and not param.multiple and param.nargs == 1:
                    raise click.BadParameter(f"expected one value, got a list {v!r}")
                param.type_cast_value(ctx, v)
            except click.BadParameter as e:
                where = f"[{cmd_name}] {k}" if cmd_name in tables and k in map(_key, tables[cmd_name]) else k
                raise ConfigError(f"{path}: {where} = {v!r}: {e.message}") from None
            by_name[param.name] = v  # click's default_map is keyed by the parameter's name
        if by_name:
            out[cmd_name] = by_name
    return out


def _param_keys(cmd: click.Command) -> dict[str, click.Parameter]:
    """Config keys of a command's parameters: the long option names users type (``format`` for
    ``--format``, even where the Python name is ``fmt``), and the parameter names themselves."""
    keys: dict[str, click.Parameter] = {}
    for param in cmd.params:
        if not param.name:
            continue
        keys.setdefault(_key(param.name), param)
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                keys.setdefault(_key(opt[2:]), param)
    return keys
