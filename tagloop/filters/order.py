"""Deduplication, ordering and the ``--max-tags`` cut.

Order of the result:

1. pinned tags (``--always-first "1girl, solo"``), in the order given, if present (a pin never adds
   a tag the tagger did not find; use trigger words for that);
2. tags of the categories in ``category_order`` (default ``("character",)``: character first),
   category by category;
3. every other tag.

Within each group the tagger's score order is kept (highest first, ties in input order).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..tagger.result import TagScore
from ..tagtext import canonical
from .base import FilterLog


def dedupe_tags(tags: Sequence[TagScore], log: FilterLog | None = None) -> list[TagScore]:
    """Keep the first spelling of each canonical tag with the highest score among its duplicates."""
    log = log if log is not None else FilterLog()
    best: dict[str, int] = {}
    out: list[TagScore] = []
    for tag in tags:
        key = canonical(tag.name)
        if key not in best:
            best[key] = len(out)
            out.append(tag)
            continue
        i = best[key]
        first = out[i]
        if tag.score > first.score:
            out[i] = TagScore(first.name, tag.score, first.category)
        log.add(tag, "dedupe", f"same tag as `{first.name}` (spaces, underscores, case and escaping are alike)")
    return out


def order_tags(
    tags: Sequence[TagScore],
    always_first: Iterable[str] = (),
    category_order: Sequence[str] = ("character",),
) -> list[TagScore]:
    """Pinned tags first (given order), then ``category_order`` categories, then the rest; score order within."""
    pins = [canonical(p) for p in always_first]
    indexed = list(enumerate(tags))
    by_key = {canonical(t.name): (i, t) for i, t in indexed}
    pinned_keys: list[str] = []
    for p in pins:
        if p in by_key and p not in pinned_keys:
            pinned_keys.append(p)
    rest = [(i, t) for i, t in indexed if canonical(t.name) not in pinned_keys]
    cat_rank: dict[str, int] = {}
    for r, c in enumerate(category_order):
        cat_rank.setdefault(canonical(c), r)
    rest.sort(key=lambda it: (cat_rank.get(canonical(str(it[1].category)), len(cat_rank)), -it[1].score, it[0]))
    return [by_key[k][1] for k in pinned_keys] + [t for _, t in rest]


def limit_tags(
    tags: Sequence[TagScore], max_tags: int | None, protected: Iterable[str] = (), log: FilterLog | None = None
) -> list[TagScore]:
    """Keep at most ``max_tags`` tags, dropping the lowest-scoring unprotected ones (ties: later first).

    The order of the survivors is unchanged. ``protected`` (pinned tags) are never dropped.
    """
    log = log if log is not None else FilterLog()
    if max_tags is None or len(tags) <= max_tags:
        return list(tags)
    keep_keys = {canonical(p) for p in protected}
    candidates = [(t.score, -i, i) for i, t in enumerate(tags) if canonical(t.name) not in keep_keys]
    candidates.sort()
    n_drop = len(tags) - max_tags
    drop = {i for _, _, i in candidates[:n_drop]}
    for i in sorted(drop):
        log.add(tags[i], "max_tags", f"more than {max_tags} tags (`--max-tags`); lowest score dropped first")
    return [t for i, t in enumerate(tags) if i not in drop]
