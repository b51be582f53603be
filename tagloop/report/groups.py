"""Tag groups users judge a reproduction by (hair colour, clothing, ...), read from a data file.

The built-in file is ``tagloop/data/tag_groups.toml``; a user's file of the same shape replaces it
(the ``groups`` setting). See that file for the format.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..tagtext import canonical

KINDS = ("exclusive", "open")


@dataclass(frozen=True)
class TagGroup:
    """One group: its members by name, shell pattern or tagger category, less the exclusions."""

    name: str
    label: str
    kind: str
    tags: frozenset[str] = frozenset()
    match: tuple[str, ...] = ()
    category: str | None = None
    exclude: tuple[str, ...] = ()

    def has(self, key: str, category: str | None = None) -> bool:
        """Whether the canonical tag ``key`` (of tagger ``category``) belongs to the group."""
        if any(key == e or fnmatch.fnmatchcase(key, e) for e in self.exclude):
            return False
        if key in self.tags:
            return True
        if self.category is not None and category == self.category:
            return True
        return any(fnmatch.fnmatchcase(key, p) for p in self.match)


@dataclass(frozen=True)
class TagGroups:
    """The groups of one file, in file order; ``source`` is ``builtin`` or the file's path."""

    groups: tuple[TagGroup, ...]
    source: str = "builtin"

    def __iter__(self):
        return iter(self.groups)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: expected a list of strings, got {value!r}.")
    return tuple(canonical(v) for v in value if v.strip())


def parse_groups(data: dict[str, Any], source: str) -> TagGroups:
    """Groups from a parsed TOML table; a malformed entry is an :class:`InputError` naming it."""
    groups = []
    for name, table in data.items():
        where = f"{source}: [{name}]"
        if not isinstance(table, dict):
            raise InputError(f"{where} must be a table with `kind` and `tags`, `match` or `category`.")
        unknown = sorted(set(table) - {"label", "kind", "tags", "match", "category", "exclude"})
        if unknown:
            raise InputError(f"{where} has unknown key(s) {', '.join(unknown)}.")
        kind = table.get("kind", "open")
        if kind not in KINDS:
            raise InputError(f"{where} kind must be one of {', '.join(KINDS)}, not {kind!r}.")
        category = table.get("category")
        if category is not None and not isinstance(category, str):
            raise InputError(f'{where} category must be a string such as "character".')
        group = TagGroup(
            name=name,
            label=str(table.get("label", name.replace("_", " "))),
            kind=kind,
            tags=frozenset(_strings(table.get("tags"), f"{where} tags")),
            match=tuple(m.lower() for m in _strings(table.get("match"), f"{where} match")),
            category=category,
            exclude=_strings(table.get("exclude"), f"{where} exclude"),
        )
        if not (group.tags or group.match or group.category):
            raise InputError(f"{where} names no members: give `tags`, `match` or `category`.")
        groups.append(group)
    return TagGroups(tuple(groups), source)


def load_groups(groups: str | Path | TagGroups | None = None) -> TagGroups:
    """The built-in groups (None or ``builtin``), a group file, or ``groups`` itself."""
    if isinstance(groups, TagGroups):
        return groups
    from ..datafiles import load_data_file

    return load_data_file(groups, builtin="tag_groups.toml", setting="groups", parse=parse_groups)
