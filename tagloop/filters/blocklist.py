"""Blocklist files in the format users already keep (A1111 / seed ``filter.txt``), plus what they ask for.

Format, one or more entries per line::

    # unrelated tags
    comic, manga, artist_name, multiple_views
    *_background          # wildcard: `*` is any text
    re:.*_(focus|request) # regular expression, runs to the end of the line
    !simple_background    # force-keep: no rule of any blocklist, style or overlap removes it

- Entries are separated by commas or newlines; ``#`` at the start of a line or after whitespace
  begins a comment (``\\#`` is a literal ``#``).
- Spaces and underscores are alike, case does not matter, ``\\(`` equals ``(``: every entry and
  every tag go through :func:`tagloop.tagtext.canonical`, so ``long hair`` removes ``long_hair``.
- ``re:`` takes the rest of its line (commas included) and is matched with ``re.fullmatch``,
  case-insensitively, against both the underscore and the space spelling of a tag.
- ``!`` before any entry (tag, wildcard or ``re:``) makes it a force-keep rule; ``\\!`` starts a
  tag that really begins with ``!``.
- Malformed entries (an invalid regular expression, an empty ``re:``, a lone ``!``, a rule made of
  ``*`` alone) raise :class:`FilterFileError` naming the file and the line; nothing is skipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..tagger.result import TagResult, TagScore
from .base import FilterFileError, FilterLog, TagPattern, parse_pattern, read_filter_text, strip_comment


@dataclass(frozen=True)
class Blocklist:
    """Remove rules and force-keep rules, from any number of files and inline entries."""

    block: tuple[TagPattern, ...] = ()
    keep: tuple[TagPattern, ...] = ()
    sources: tuple[str, ...] = ()

    def __add__(self, other: Blocklist) -> Blocklist:
        return Blocklist(self.block + other.block, self.keep + other.keep, self.sources + other.sources)

    def __bool__(self) -> bool:
        return bool(self.block or self.keep)

    def blocking_rule(self, tag: str) -> TagPattern | None:
        """The first remove rule that matches ``tag``, or None."""
        return next((p for p in self.block if p.matches(tag)), None)

    def keeping_rule(self, tag: str) -> TagPattern | None:
        """The first force-keep rule that matches ``tag``, or None."""
        return next((p for p in self.keep if p.matches(tag)), None)

    def apply(self, tags: Sequence[TagScore], log: FilterLog | None = None) -> list[TagScore]:
        """Drop tags that a remove rule matches unless a force-keep rule matches them too."""
        log = log if log is not None else FilterLog()
        kept: list[TagScore] = []
        for tag in tags:
            rule = self.blocking_rule(tag.name)
            if rule is None:
                kept.append(tag)
                continue
            keeper = self.keeping_rule(tag.name)
            if keeper is not None:
                log.add(tag, "blocklist", f"matched {rule.describe()} but force-kept by !{keeper.describe()}", "force_kept")
                kept.append(tag)
                continue
            log.add(tag, "blocklist", f"matched {rule.describe()}")
        return kept


def _split_entries(line: str) -> list[str]:
    """Comma-separated entries; an ``re:`` (or ``!re:``) entry takes the rest of the line."""
    out: list[str] = []
    rest = line
    while rest:
        head, sep, tail = rest.partition(",")
        stripped = head.strip()
        if (
            stripped.startswith("re:")
            or stripped.startswith("!re:")
            or (stripped.startswith("!") and stripped[1:].strip().startswith("re:"))
        ):
            out.append(rest.strip())
            break
        out.append(stripped)
        rest = tail if sep else ""
    return out


def parse_blocklist(text: str, source: str = "<text>") -> Blocklist:
    """Parse blocklist text; ``source`` names it in error messages and removal reasons."""
    block: list[TagPattern] = []
    keep: list[TagPattern] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = strip_comment(raw)
        if not line.strip():
            continue
        for entry in _split_entries(line):
            if not entry:
                continue  # "a, , b" or a trailing comma: an empty entry, not a rule
            where = f"{Path(source).name}:{lineno}" if source != "<text>" else "inline entry"
            if entry.startswith("\\!"):
                block.append(parse_pattern(entry[1:], where, source, lineno))
            elif entry.startswith("!"):
                body = entry[1:].strip()
                if not body:
                    raise FilterFileError("a lone `!`; write `!tag` to force-keep a tag.", source, lineno)
                keep.append(parse_pattern(body, where, source, lineno))
            else:
                block.append(parse_pattern(entry, where, source, lineno))
    return Blocklist(tuple(block), tuple(keep), (source,))


def read_blocklist(path: str | Path) -> Blocklist:
    """Read one blocklist file (UTF-8, BOM allowed)."""
    path = Path(path)
    text = read_filter_text(path, "--filters")
    return parse_blocklist(text, str(path))


def load_blocklist(paths: Iterable[str | Path] = (), entries: Iterable[str] = ()) -> Blocklist:
    """Combine several blocklist files and inline entries (same syntax, one entry per item)."""
    out = Blocklist()
    for p in paths:
        out = out + read_blocklist(p)
    entries = list(entries)
    if entries:
        out = out + parse_blocklist("\n".join(e.replace("\n", " ") for e in entries), "<text>")
    return out


def filter_blocklist(tags: Sequence[TagScore], blocklist: Blocklist, log: FilterLog | None = None) -> list[TagScore]:
    """Functional form of :meth:`Blocklist.apply`."""
    return blocklist.apply(tags, log)


def load_blocklist_filter(paths: Iterable[str | Path], entries: Iterable[str] = ()) -> Callable[[TagResult], TagResult]:
    """A blocklist as a function on tagger results (for ``tagloop tag --filters``).

    Files are read (and checked) now; the function returns a copy of the result without the
    blocked tags (ratings stay in ``result.rating``). Raises :class:`FilterFileError`.
    """
    blocklist = load_blocklist(paths, entries)

    def apply(result: TagResult) -> TagResult:
        return dataclasses.replace(result, tags=blocklist.apply(result.tags))

    return apply
