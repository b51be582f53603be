"""What every filter shares: the record of what it did, the file-error type and tag patterns.

Filters take and return ``list[TagScore]`` and append :class:`Removal` records to a
:class:`FilterLog`, so a report can say which tag went where and why. Every comparison goes
through :func:`tagloop.tagtext.canonical`, the one normalisation policy of the project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from ..errors import InputError
from ..tagger.result import TagScore
from ..tagtext import canonical

Action = Literal["removed", "moved_to_negative", "replaced", "force_kept"]


class FilterFileError(InputError, ValueError):
    """A blocklist, style, replacement or preset file has a malformed line (CLI exit code 2).

    The message names the file and, where there is one, the line: ``filter.txt, line 3: ...``.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = self.path or ""
        if line is not None:
            where = f"{where}, line {line}" if where else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class Removal:
    """One thing a filter did to one tag.

    tag: the tag as it came in (tagger name); filter: which filter (``blocklist``, ``rating``,
    ``style``, ``overlap``, ``replace``, ``dedupe``, ``max_tags``, ``budget``...);
    reason: one sentence a person can read; action: ``removed``, ``moved_to_negative``,
    ``replaced`` (``replacement`` holds the new names) or ``force_kept`` (a ``!tag`` rule kept a
    tag another rule would have removed).
    """

    tag: str
    filter: str
    reason: str
    action: Action = "removed"
    score: float | None = None
    category: str | None = None
    replacement: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tag": self.tag, "filter": self.filter, "action": self.action, "reason": self.reason}
        if self.score is not None:
            out["score"] = round(float(self.score), 6)
        if self.category is not None:
            out["category"] = self.category
        if self.replacement or self.action == "replaced":
            out["replacement"] = list(self.replacement)
        return out


@dataclass
class FilterLog:
    """Everything the filters did, in order; ``negative`` holds tags moved to the negative prompt."""

    events: list[Removal] = field(default_factory=list)
    negative: list[TagScore] = field(default_factory=list)
    rating: dict[str, float] = field(default_factory=dict)

    def add(
        self,
        tag: TagScore | str,
        filter: str,
        reason: str,
        action: Action = "removed",
        replacement: Iterable[str] = (),
    ) -> None:
        if isinstance(tag, TagScore):
            self.events.append(Removal(tag.name, filter, reason, action, tag.score, tag.category, tuple(replacement)))
        else:
            self.events.append(Removal(tag, filter, reason, action, replacement=tuple(replacement)))

    def removed(self) -> list[Removal]:
        """Records of tags that left the positive prompt (removed or moved to the negative)."""
        return [e for e in self.events if e.action in ("removed", "moved_to_negative")]

    def removed_names(self) -> list[str]:
        return [e.tag for e in self.removed()]

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [e.to_json() for e in self.events],
            "negative": [t.to_json() for t in self.negative],
            "rating": {k: round(float(v), 6) for k, v in self.rating.items()},
        }


_PatternKind = Literal["tag", "wildcard", "regex"]


@dataclass(frozen=True)
class TagPattern:
    """One matching rule: an exact tag, a ``*`` wildcard, or an ``re:`` regular expression.

    Exact tags and wildcards are compared in canonical form (lower case, underscores, unescaped),
    so ``long hair``, ``Long_Hair`` and ``long_hair`` are one rule. A regular expression is matched
    case-insensitively with ``re.fullmatch`` against the canonical form *and* the same text with
    spaces for underscores, so ``re:.*_background`` and ``re:.* background`` both work.
    """

    text: str
    kind: _PatternKind
    key: str
    source: str = ""
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, tag: str) -> bool:
        """Whether ``tag`` (any spelling) matches this rule."""
        key = canonical(tag)
        if self.kind == "tag":
            return key == self.key
        assert self._regex is not None
        if self._regex.fullmatch(key):
            return True
        return self.kind == "regex" and bool(self._regex.fullmatch(key.replace("_", " ")))

    def describe(self) -> str:
        where = f" ({self.source})" if self.source else ""
        if self.kind == "regex":
            return f"`re:{self.key}`{where}"
        return f"`{self.key}`{where}"


def parse_pattern(entry: str, source: str = "", path: str | Path | None = None, line: int | None = None) -> TagPattern:
    """Build a :class:`TagPattern` from one blocklist entry (without any leading ``!``).

    Raises :class:`FilterFileError` for an empty ``re:``, an invalid regular expression or a rule
    made of ``*`` alone (it would remove every tag).
    """
    entry = entry.strip()
    if entry.startswith("re:"):
        body = entry[3:].strip()
        if not body:
            raise FilterFileError("`re:` is followed by no regular expression; write e.g. `re:.*_background`.", path, line)
        try:
            rx = re.compile(body, re.IGNORECASE)
        except re.error as e:
            raise FilterFileError(f"`re:{body}` is not a valid regular expression ({e}).", path, line) from None
        return TagPattern(entry, "regex", body, source, rx)
    key = canonical(entry)
    if not key:
        raise FilterFileError("empty tag.", path, line)
    if "*" in key:
        if not key.replace("*", "").strip("_"):
            raise FilterFileError(f"`{entry}` would match every tag; name part of the tag, e.g. `*_background`.", path, line)
        rx = re.compile(".*".join(re.escape(p) for p in key.split("*")))
        return TagPattern(entry, "wildcard", key, source, rx)
    return TagPattern(entry, "tag", key, source)


_COMMENT = re.compile(r"(?:^|(?<=\s))#")


def strip_comment(line: str) -> str:
    """Cut a ``#`` comment: a ``#`` at the start of a line or after whitespace; ``\\#`` is a literal ``#``."""
    m = _COMMENT.search(line)
    if m is not None:
        line = line[: m.start()]
    return line.replace("\\#", "#")


def read_filter_text(path: str | Path, option: str) -> str:
    """A filter file's text (UTF-8, BOM allowed); a missing or unreadable file is a :class:`FilterFileError`."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FilterFileError(f"file does not exist; check the path given to `{option}`.", path) from None
    except UnicodeDecodeError as e:
        raise FilterFileError(f"not UTF-8 text ({e}); save the file as UTF-8.", path) from None
    except OSError as e:
        raise FilterFileError(f"cannot be read ({e}).", path) from None
