"""Rating removal: rating tags describe the image, they are not things to draw.

Both DeepDanbooru generations name them ``rating:safe|questionable|explicit`` (2019-2021) or
``rating:general|sensitive|questionable|explicit`` (2022+); WD14 tables have category 9 rows
named ``general``, ``sensitive``, ``questionable``, ``explicit``. A tag is a rating when its
category is ``rating`` or its canonical name starts with ``rating:``. Removed ratings are kept
in :attr:`FilterLog.rating` (name without the prefix -> score) so the result still has them.
"""

from __future__ import annotations

from typing import Sequence

from ..tagger.result import TagScore
from ..tagtext import canonical
from .base import FilterLog


def is_rating(tag: TagScore) -> bool:
    """Whether ``tag`` is a rating tag of any tagger family."""
    return tag.category == "rating" or canonical(tag.name).startswith("rating:")


def rating_name(tag: TagScore | str) -> str:
    """``rating:general`` and WD14's ``general`` -> ``general``."""
    key = canonical(tag.name if isinstance(tag, TagScore) else tag)
    return key[len("rating:") :] if key.startswith("rating:") else key


def drop_ratings(tags: Sequence[TagScore], log: FilterLog | None = None) -> list[TagScore]:
    """Remove rating tags; record each, and its score in ``log.rating``."""
    log = log if log is not None else FilterLog()
    kept: list[TagScore] = []
    for tag in tags:
        if is_rating(tag):
            name = rating_name(tag)
            log.rating[name] = max(tag.score, log.rating.get(name, 0.0))
            log.add(
                tag,
                "rating",
                "rating tags describe the image, not what to draw (kept as the result's rating; `--keep-rating` keeps them)",
            )
        else:
            kept.append(tag)
    return kept
