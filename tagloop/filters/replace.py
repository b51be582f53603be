"""Replacement maps: ``old=new`` rewrites that apply to every tagger family alike.

Elsewhere replacement compares raw strings, so a map written ``long hair=very long hair`` works
for one tagger's output and not another's (underscores vs spaces, escaped parentheses). Here both
sides go through :func:`tagloop.tagtext.canonical`, so it applies to DeepDanbooru names, WD14 names
and A1111-formatted text alike.

- ``new`` may be a comma list (``1girl=girl, solo``): one tag becomes several, each with the old
  tag's score and category.
- An empty ``new`` (``watermark=``) removes the tag (recorded as a removal by ``replace``).
- Files: one ``old=new`` per line, ``#`` comments as in blocklists. When a tag itself contains
  ``=`` (the kaomoji ``=_=``) put spaces around the separator: ``=_= = closed eyes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..tagger.result import TagScore
from ..tagtext import canonical, split_tags
from .base import FilterFileError, FilterLog, read_filter_text, strip_comment


def parse_replacement(text: str, path: str | Path | None = None, line: int | None = None) -> tuple[str, tuple[str, ...]]:
    """``"old=new1, new2"`` -> (canonical old, canonical new names)."""
    if " = " in text:
        old, _, new = text.partition(" = ")
    else:
        i = text.find("=", 1)
        if i < 0:
            raise FilterFileError(f"`{text.strip()}` is not an `old=new` replacement.", path, line)
        old, new = text[:i], text[i + 1 :]
    key = canonical(old)
    if not key:
        raise FilterFileError(f"`{text.strip()}` has no tag before `=`.", path, line)
    return key, tuple(canonical(t) for t in split_tags(new))


@dataclass(frozen=True)
class ReplaceMap:
    """Canonical old tag -> canonical new tags (empty tuple = remove)."""

    pairs: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | Sequence[str]]) -> ReplaceMap:
        pairs = []
        for old, new in mapping.items():
            news = split_tags(new) if isinstance(new, str) else list(new)
            pairs.append((canonical(old), tuple(canonical(n) for n in news)))
        return cls(tuple(pairs))

    def __add__(self, other: ReplaceMap) -> ReplaceMap:
        return ReplaceMap(self.pairs + other.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        """Later pairs win over earlier ones for the same old tag."""
        return dict(self.pairs)

    def apply(self, tags: Sequence[TagScore], log: FilterLog | None = None) -> list[TagScore]:
        """Rewrite matching tags in place of the old one; record each rewrite."""
        log = log if log is not None else FilterLog()
        table = self.as_dict()
        out: list[TagScore] = []
        for tag in tags:
            new = table.get(canonical(tag.name))
            if new is None:
                out.append(tag)
            elif not new:
                log.add(tag, "replace", "replaced by nothing (an `old=` rule with no new tag)")
            else:
                log.add(tag, "replace", f"rewritten to `{', '.join(new)}` by a replacement rule", "replaced", new)
                out.extend(TagScore(n, tag.score, tag.category) for n in new)
        return out


def parse_replace_text(text: str, source: str | Path | None = None) -> ReplaceMap:
    """Parse a replacement file's text: one ``old=new`` per line."""
    pairs = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = strip_comment(raw)
        if line.strip():
            pairs.append(parse_replacement(line, source, lineno))
    return ReplaceMap(tuple(pairs))


def read_replace_file(path: str | Path) -> ReplaceMap:
    path = Path(path)
    text = read_filter_text(path, "--replace-file")
    return parse_replace_text(text, path)


def load_replacements(pairs: Iterable[str] = (), files: Iterable[str | Path] = ()) -> ReplaceMap:
    """Files first, then ``old=new`` strings (so the command line wins over a file)."""
    out = ReplaceMap()
    for f in files:
        out = out + read_replace_file(f)
    extra = tuple(parse_replacement(p) for p in pairs)
    return out + ReplaceMap(extra)


def replace_tags(
    tags: Sequence[TagScore], mapping: ReplaceMap | Mapping[str, str], log: FilterLog | None = None
) -> list[TagScore]:
    """Functional form of :meth:`ReplaceMap.apply` that also accepts a plain ``{old: new}`` dict."""
    rmap = mapping if isinstance(mapping, ReplaceMap) else ReplaceMap.from_mapping(mapping)
    return rmap.apply(tags, log)
