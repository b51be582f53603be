"""One normalisation policy for tag text: matching, output and prompts use the same rules.

Taggers emit Danbooru names with underscores (``long_hair``, ``hair_ribbon_(blue)``, ``^_^``).
Users write blocklists and prompts with spaces and escaped parentheses (``hair ribbon \\(blue\\)``).
Peers compare those strings as they come and so miss matches; here every comparison goes through
:func:`canonical`, and every displayed tag through :meth:`TagPolicy.format`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

#: Kaomoji whose underscore is part of the face; SmilingWolf's reference app keeps these intact.
KAOMOJI: frozenset[str] = frozenset(
    {
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    }
)

_ESCAPED = re.compile(r"\\([\\()\[\]])")
_TO_ESCAPE = re.compile(r"([\\()])")
_SPACES = re.compile(r"\s+")


def unescape(text: str) -> str:
    """Undo A1111 prompt escaping: ``\\(`` -> ``(``, ``\\)`` -> ``)``, ``\\[``, ``\\]``, ``\\\\``."""
    return _ESCAPED.sub(r"\1", text)


def escape(text: str) -> str:
    """Escape as A1111's DeepBooru does (regex ``([\\\\()])``): backslash, ``(`` and ``)``."""
    return _TO_ESCAPE.sub(r"\\\1", text)


def _has_bare_paren(text: str) -> bool:
    """Whether ``text`` has a ``(`` or ``)`` that no backslash escapes (so it is not A1111-escaped text)."""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "\\()[]":
            i += 2
            continue
        if c in "()":
            return True
        i += 1
    return False


@lru_cache(maxsize=1 << 16)
def canonical(tag: str) -> str:
    """The matching key of a tag: unescaped, lower-case, trimmed, spaces as underscores.

    ``"Hair Ribbon \\(Blue\\)"``, ``"hair_ribbon_(blue)"`` and ``"hair ribbon (blue)"`` all give
    ``"hair_ribbon_(blue)"``; the kaomoji ``"^ ^"`` gives ``"^_^"``.

    Text with a bare ``(`` or ``)`` cannot be A1111-escaped (escaping leaves none), so it is a raw
    tag name and is not unescaped: Danbooru's ``\\(^o^)/`` keeps its backslash, and the A1111
    spelling ``\\\\\\(^o^\\)/`` gives the same key.
    """
    text = (tag if _has_bare_paren(tag) else unescape(tag)).strip().lower()
    return _SPACES.sub("_", text)


@lru_cache(maxsize=1 << 16)
def _written(tag: str, use_spaces: bool, escape_text: bool, keep_kaomoji: bool) -> str:
    """A tag as :meth:`TagPolicy.format` writes it (names repeat over a dataset: computed once each)."""
    text = canonical(tag)
    if use_spaces and not (keep_kaomoji and text in KAOMOJI):
        text = text.replace("_", " ")
    if escape_text:
        text = escape(text)
    return text


def is_kaomoji(tag: str) -> bool:
    return canonical(tag) in KAOMOJI


@dataclass(frozen=True)
class TagPolicy:
    """How tags are written out.

    use_spaces: underscores become spaces (A1111 "use spaces"), except in kaomoji when
        ``keep_kaomoji`` is set.
    escape: ``(``/``)``/``\\`` get a backslash so a prompt parser reads them as text, not emphasis.
    keep_kaomoji: keep the underscore of ``^_^``-style faces (A1111 does not; the WD app does).
    score_digits: decimals of ``(tag:0.87)`` weights when scores are shown.
    """

    use_spaces: bool = True
    escape: bool = True
    keep_kaomoji: bool = True
    score_digits: int = 2

    def format(self, tag: str, score: float | None = None) -> str:
        text = _written(tag, self.use_spaces, self.escape, self.keep_kaomoji)
        if score is not None:
            text = f"({text}:{score:.{self.score_digits}f})"
        return text

    def join(
        self,
        tags: Iterable[str],
        scores: Mapping[str, float] | Sequence[float] | None = None,
        separator: str = ", ",
    ) -> str:
        """Format and join tags; ``scores`` (by tag name or position) adds ``(tag:score)`` weights."""
        if scores is None:
            return separator.join(self.format(tag) for tag in tags)
        by_name = isinstance(scores, Mapping)  # asked once: a typing isinstance per tag is slow
        return separator.join(
            self.format(tag, scores.get(tag) if by_name else scores[i])  # type: ignore[union-attr,index]
            for i, tag in enumerate(tags)
        )


def split_tags(text: str) -> list[str]:
    """Split a ``tag, tag`` caption (commas or newlines) into stripped, non-empty tags.

    A comma inside escaped parentheses belongs to the tag only if escaped itself; Danbooru tags
    contain no commas, so a plain split is right for tag lists.
    """
    return [t.strip() for t in re.split(r"[,\n]", text) if t.strip()]
