"""The filter chain: settings in one dataclass, one call from raw tagger tags to prompt tags.

Order (each step records what it did in the :class:`FilterLog`):

1. ``dedupe``   one entry per canonical tag (highest score kept)
2. ``rating``   rating tags removed, their scores kept in ``log.rating`` (unless ``keep_rating``)
3. ``replace``  ``old=new`` rewrites, then dedupe again (a rewrite may meet an existing tag)
4. ``blocklist`` files and inline entries; ``!tag`` force-keeps
5. ``style``    conflict groups: drop, or move to ``log.negative``
6. ``overlap``  general tags implied by a more specific one (unless ``overlap=False``)
7. ``order``    pinned first, category order, score order; then ``max_tags``

Replacement runs before the blocklist so that rules are written against the final names.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from ..tagger.result import TagScore
from .base import FilterLog
from .blocklist import Blocklist, load_blocklist
from .order import dedupe_tags, limit_tags, order_tags
from .overlap import drop_overlapping_tags
from .rating import drop_ratings
from .replace import ReplaceMap, load_replacements, parse_replacement
from .style import StyleRules, resolve_style


def _tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        return (value,)
    if isinstance(value, dict):
        return tuple(value.items())
    return tuple(value)


@dataclass(frozen=True)
class FilterSettings:
    """Every filter option (the CLI options of the same names fill it).

    filter_files: blocklist files (``--filters``); block: inline blocklist entries (same syntax).
    keep_rating: keep rating tags in the prompt (default: remove, keep as the result's rating).
    style: built-in style name, rules file, or None / "none" for no style rules.
    overlap: drop general tags implied by a more specific present tag.
    replace: ``"old=new"`` strings or ``(old, new)`` pairs; replace_files: files of them.
    always_first: tags pinned to the front, in this order, when present.
    category_order: categories placed first, in this order (default character first).
    max_tags: keep at most this many tags (lowest scores dropped first; pinned tags stay).
    """

    filter_files: tuple[str | Path, ...] = ()
    block: tuple[str, ...] = ()
    keep_rating: bool = False
    style: str | Path | StyleRules | None = None
    overlap: bool = True
    replace: tuple[Any, ...] = ()
    replace_files: tuple[str | Path, ...] = ()
    always_first: tuple[str, ...] = ()
    category_order: tuple[str, ...] = ("character",)
    max_tags: int | None = None

    def __post_init__(self) -> None:
        for name in ("filter_files", "block", "replace", "replace_files", "always_first", "category_order"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if self.max_tags is not None and self.max_tags < 1:
            raise ValueError(f"`max_tags` must be at least 1, got {self.max_tags}.")

    def filter_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(FilterSettings)}


@dataclass(frozen=True)
class FilterChain:
    """Compiled filters (files read once), reusable over many images."""

    settings: FilterSettings
    blocklist: Blocklist
    replacements: ReplaceMap
    style: StyleRules | None

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> FilterChain:
        """Read every file the settings name; raises :class:`FilterFileError` for a malformed one."""
        blocklist = load_blocklist(settings.filter_files, settings.block)
        pairs = []
        for item in settings.replace:
            if isinstance(item, str):
                pairs.append(item)
            else:
                old, new = item
                pairs.append(f"{old} = {new if isinstance(new, str) else ', '.join(new)}")
        replacements = load_replacements(pairs, settings.replace_files)
        return cls(settings, blocklist, replacements, resolve_style(settings.style))

    def __call__(self, tags: Sequence[TagScore], log: FilterLog | None = None) -> tuple[list[TagScore], FilterLog]:
        s = self.settings
        log = log if log is not None else FilterLog()
        out = dedupe_tags(tags, log)
        if not s.keep_rating:
            out = drop_ratings(out, log)
        if self.replacements:
            out = dedupe_tags(self.replacements.apply(out, log), log)
        if self.blocklist:
            out = self.blocklist.apply(out, log)
        if self.style is not None:
            out = self.style.apply(out, log, self.blocklist)
        if s.overlap:
            out = drop_overlapping_tags(out, log, self.blocklist)
        out = order_tags(out, s.always_first, s.category_order)
        out = limit_tags(out, s.max_tags, s.always_first, log)
        return out, log


def _mtimes(paths: Sequence[Any]) -> tuple:
    out = []
    for p in paths:
        try:
            out.append(os.stat(p).st_mtime_ns)
        except (OSError, TypeError):
            out.append(None)
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _cached_chain(settings: FilterSettings, stamp: tuple) -> FilterChain:
    return FilterChain.from_settings(settings)


def build_chain(settings: FilterSettings) -> FilterChain:
    """A :class:`FilterChain` for ``settings``, cached per process until a named file changes."""
    style = settings.style
    style_paths = (style,) if isinstance(style, (str, Path)) else ()
    stamp = _mtimes(settings.filter_files) + _mtimes(settings.replace_files) + _mtimes(style_paths)
    try:
        return _cached_chain(settings, stamp)
    except TypeError:  # unhashable values (a StyleRules with lists, ...): no cache
        return FilterChain.from_settings(settings)


def apply_filters(tags: Sequence[TagScore], settings: FilterSettings | None = None) -> tuple[list[TagScore], FilterLog]:
    """Run the whole filter chain; returns the kept tags (in prompt order) and the log.

    ``settings`` may be a :class:`FilterSettings` or a :class:`tagloop.prompt.PromptSettings`
    (which extends it). Raises :class:`~tagloop.filters.base.FilterFileError` for a bad file.
    """
    settings = settings if settings is not None else FilterSettings()
    if type(settings) is not FilterSettings:
        settings = FilterSettings(**settings.filter_fields())
    return build_chain(settings)(tags)


__all__ = ["FilterSettings", "FilterChain", "apply_filters", "build_chain", "parse_replacement"]
