"""Overlap removal: drop a general tag that a more specific present tag already says.

Rule (Danbooru names in canonical form, words split on ``_``):

A general tag ``A`` is dropped when another present general tag ``B`` ends with ``A``'s words and
has more words, e.g. ``long_hair`` in ``very_long_hair``, ``hair`` in ``long_hair``, ``ribbon`` in
``hair_ribbon``, ``thighhighs`` in ``white_thighhighs``. Words are whole words (``hair`` is not in
``hairband``, ``bow`` not in ``bowtie``). In an English compound the last word names the thing and
the earlier ones qualify it, so only a trailing match is an implication: ``hair_ornament`` is an
ornament and keeps ``hair``, ``cat_ears`` keeps ``cat`` (a cat in the picture), ``heart_hands``
keeps ``heart``. Exceptions, because there the longer tag does not imply the shorter one:

- a parenthesised qualifier disambiguates, it does not specialise: ``bow`` and ``bow_(weapon)``
  are different things, so qualifiers are not words; when ``A`` has a qualifier ``B`` must carry
  the same one;
- negations: ``B`` containing ``no``, ``not`` or ``without`` (``no_shoes`` does not imply ``shoes``);
- ``B`` ending in ``print``, ``pattern``, ``focus``, ``request`` or ``theme`` (``cloud_print`` is
  a fabric pattern, not a cloud; ``solo_focus`` means there are several people);
- kaomoji (``^_^``) are never compared.

Only ``general`` tags take part (a character name containing ``hair`` is not a hair tag).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..tagger.result import TagScore
from ..tagtext import canonical, is_kaomoji
from .base import FilterLog

NEGATION_WORDS: frozenset[str] = frozenset({"no", "not", "without"})
NON_IMPLYING_LAST_WORDS: frozenset[str] = frozenset({"print", "pattern", "focus", "request", "theme"})
_QUALIFIER = re.compile(r"_?(\([^()]*\))$")


def _words(tag: str) -> tuple[tuple[str, ...], str | None]:
    """Canonical words without the trailing ``(qualifier)``, and the qualifier."""
    key = canonical(tag)
    m = _QUALIFIER.search(key)
    qualifier = None
    if m and m.start() > 0:
        qualifier = m.group(1)
        key = key[: m.start()]
    return tuple(w for w in key.split("_") if w), qualifier


def _ends_with(seq: tuple[str, ...], sub: tuple[str, ...]) -> bool:
    return len(seq) >= len(sub) and seq[len(seq) - len(sub) :] == sub


def implied_by(short: str, long: str) -> bool:
    """Whether tag ``long`` makes tag ``short`` redundant under the rule in the module docstring."""
    if is_kaomoji(short) or is_kaomoji(long):
        return False
    sw, sq = _words(short)
    lw, lq = _words(long)
    if not sw or len(lw) <= len(sw):
        return False
    if sq is not None and sq != lq:
        return False
    if NEGATION_WORDS.intersection(lw) and not NEGATION_WORDS.intersection(sw):
        return False
    if lw[-1] in NON_IMPLYING_LAST_WORDS and lw[-1] not in sw:
        return False
    return _ends_with(lw, sw)


def drop_overlapping_tags(tags: Sequence[TagScore], log: FilterLog | None = None, force_keep=None) -> list[TagScore]:
    """Remove general tags that a more specific present general tag implies; record which one.

    ``force_keep``: a :class:`~tagloop.filters.blocklist.Blocklist` whose ``!tag`` rules win.
    """
    log = log if log is not None else FilterLog()
    general = [t for t in tags if t.category == "general"]
    kept: list[TagScore] = []
    for tag in tags:
        if tag.category != "general":
            kept.append(tag)
            continue
        impliers = [o for o in general if o is not tag and implied_by(tag.name, o.name)]
        by = max(impliers, key=lambda o: len(_words(o.name)[0]), default=None)
        if by is None:
            kept.append(tag)
            continue
        keeper = force_keep.keeping_rule(tag.name) if force_keep is not None else None
        if keeper is not None:
            log.add(tag, "overlap", f"implied by `{canonical(by.name)}`, but force-kept by !{keeper.describe()}", "force_kept")
            kept.append(tag)
        else:
            log.add(tag, "overlap", f"implied by the more specific tag `{canonical(by.name)}`")
    return kept
