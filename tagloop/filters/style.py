"""Style-conflict rules: tags that fight the target style are dropped or moved to the negative prompt.

A rules file (TOML, or YAML through pyyaml) describes one style::

    description = "anime target"
    extends = "anime"            # optional: start from a built-in style

    [[groups]]
    name = "photographic look"
    action = "negative"          # or "drop"
    tags = ["realistic", "photorealistic", "3d", "re:photo_\\(.*\\)"]

Group tags use the blocklist entry syntax (:func:`~tagloop.filters.base.parse_pattern`).
Built-in styles live in ``tagloop/data/styles.toml`` under ``[styles.NAME]``; a user file may use
that shape too if it defines exactly one style. :func:`resolve_style` takes a built-in name or
a path.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

from ..tagger.result import TagScore
from .base import FilterFileError, FilterLog, TagPattern, parse_pattern

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

StyleAction = Literal["drop", "negative"]
_ACTIONS = ("drop", "negative")
_STYLE_KEYS = {"description", "extends", "groups", "name"}
_GROUP_KEYS = {"name", "action", "tags", "reason"}


@dataclass(frozen=True)
class StyleGroup:
    """Tags that conflict with the style, and what to do with them."""

    name: str
    action: StyleAction
    patterns: tuple[TagPattern, ...]
    reason: str = ""

    def match(self, tag: str) -> TagPattern | None:
        return next((p for p in self.patterns if p.matches(tag)), None)


@dataclass(frozen=True)
class StyleRules:
    """A named target style: its conflict groups, applied in order (first matching group wins)."""

    name: str
    groups: tuple[StyleGroup, ...] = ()
    description: str = ""

    def apply(self, tags: Sequence[TagScore], log: FilterLog | None = None, force_keep: Any = None) -> list[TagScore]:
        """Drop conflicting tags or move them to ``log.negative``.

        ``force_keep``: a :class:`~tagloop.filters.blocklist.Blocklist` whose ``!tag`` rules win.
        """
        log = log if log is not None else FilterLog()
        kept: list[TagScore] = []
        for tag in tags:
            hit = next(((g, p) for g in self.groups if (p := g.match(tag.name)) is not None), None)
            if hit is None:
                kept.append(tag)
                continue
            group, pattern = hit
            why = group.reason or f"conflicts with the `{self.name}` style (group `{group.name}`, rule {pattern.describe()})"
            keeper = force_keep.keeping_rule(tag.name) if force_keep is not None else None
            if keeper is not None:
                log.add(tag, "style", f"{why}, but force-kept by !{keeper.describe()}", "force_kept")
                kept.append(tag)
            elif group.action == "negative":
                log.negative.append(tag)
                log.add(tag, "style", why, "moved_to_negative")
            else:
                log.add(tag, "style", why)
        return kept


def _parse_style(name: str, data: dict[str, Any], path: str | Path, base: StyleRules | None = None) -> StyleRules:
    unknown = set(data) - _STYLE_KEYS
    if unknown:
        raise FilterFileError(f"style `{name}` has unknown key(s) {sorted(unknown)}; allowed: {sorted(_STYLE_KEYS)}.", path)
    groups_data = data.get("groups", [])
    if not isinstance(groups_data, list):
        raise FilterFileError(f"style `{name}`: `groups` must be a list of tables.", path)
    groups: list[StyleGroup] = list(base.groups) if base else []
    for i, g in enumerate(groups_data, start=1):
        where = f"style `{name}`, group {i}"
        if not isinstance(g, dict):
            raise FilterFileError(f"{where} is not a table with `name`, `action`, `tags`.", path)
        unknown = set(g) - _GROUP_KEYS
        if unknown:
            raise FilterFileError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(_GROUP_KEYS)}.", path)
        action = g.get("action", "drop")
        if action not in _ACTIONS:
            raise FilterFileError(f"{where}: action {action!r} is not one of {list(_ACTIONS)}.", path)
        tags = g.get("tags")
        if isinstance(tags, str):
            tags = [t for t in tags.split(",")]
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            raise FilterFileError(f"{where}: `tags` must be a non-empty list of strings.", path)
        gname = str(g.get("name") or f"group {i}")
        try:
            patterns = tuple(parse_pattern(t, f"{Path(path).name}: {name}/{gname}") for t in tags if t.strip())
        except FilterFileError as e:
            raise FilterFileError(f"{where}: {e.reason}", path) from None
        groups.append(StyleGroup(gname, action, patterns, str(g.get("reason") or "")))
    desc = str(data.get("description") or (base.description if base else ""))
    return StyleRules(name, tuple(groups), desc)


def _load_mapping(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FilterFileError(f"cannot be read ({e}).", path) from None
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(raw.decode("utf-8-sig"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            raise FilterFileError(f"not valid YAML ({e}).", path, None if line is None else line + 1) from None
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8-sig"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise FilterFileError(f"not valid TOML ({e}).", path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FilterFileError("the file must hold a table (key/value mapping) at the top level.", path)
    return data


@functools.lru_cache(maxsize=1)
def builtin_styles() -> dict[str, StyleRules]:
    """The styles in ``tagloop/data/styles.toml``, by name."""
    ref = resources.files("tagloop").joinpath("data/styles.toml")
    data = tomllib.loads(ref.read_text(encoding="utf-8"))
    return {name: _parse_style(name, body, "styles.toml") for name, body in data["styles"].items()}


def read_style_file(path: str | Path) -> StyleRules:
    """Read a user style file (TOML or YAML); see the module docstring for the layout."""
    path = Path(path)
    data = _load_mapping(path)
    if "styles" in data and isinstance(data["styles"], dict):
        styles = data["styles"]
        if len(styles) != 1:
            raise FilterFileError(
                f"defines {len(styles)} styles ({', '.join(styles)}); a style file given to `--style` must define one.", path
            )
        ((name, body),) = styles.items()
    else:
        name, body = str(data.get("name") or path.stem), data
    if not isinstance(body, dict):
        raise FilterFileError(f"style `{name}` is not a table.", path)
    base = None
    extends = body.get("extends")
    if extends is not None:
        styles = builtin_styles()
        if extends not in styles:
            raise FilterFileError(f"`extends = {extends!r}` names no built-in style; choose one of {sorted(styles)}.", path)
        base = styles[extends]
    return _parse_style(name, body, path, base)


def resolve_style(style: str | Path | StyleRules | None) -> StyleRules | None:
    """A built-in style name, a path to a rules file, a :class:`StyleRules`, or None/"none" for no rules."""
    if style is None or isinstance(style, StyleRules):
        return style
    text = str(style)
    if text.lower() == "none":
        return None
    path = Path(text)
    if path.suffix.lower() in (".toml", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FilterFileError("style file does not exist; give a built-in style name or an existing file.", path)
        return read_style_file(path)
    styles = builtin_styles()
    if text not in styles:
        raise FilterFileError(f"unknown style {text!r}; choose one of {sorted(styles)} or give a TOML/YAML rules file.")
    return styles[text]


def apply_style(
    tags: Sequence[TagScore], style: str | Path | StyleRules | None, log: FilterLog | None = None, force_keep: Any = None
) -> list[TagScore]:
    """Functional form: resolve ``style`` and apply it (no style -> tags unchanged)."""
    rules = resolve_style(style)
    return list(tags) if rules is None else rules.apply(tags, log, force_keep)
