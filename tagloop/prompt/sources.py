"""Where a prompt's tags come from: a tag list as text, or ``tagloop tag`` JSON / JSONL output."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..errors import InputError
from ..tagger.result import TagResult, TagScore
from ..tagtext import canonical, split_tags

_RANKED = re.compile(r"^\((.+):\s*([0-9]*\.?[0-9]+)\s*\)$")


def parse_tag_text(text: str) -> tuple[TagResult, bool]:
    """``"1girl, (solo:0.93), long hair"`` -> (TagResult, whether every tag carried a score).

    ``(tag:0.93)`` (A1111's "include ranks" output) gives the score; a bare tag gets score 1.0 and
    keeps its position, so score order equals the order written. ``rating:*`` tags are ratings.
    """
    tags: list[TagScore] = []
    scored = True
    for item in split_tags(text):
        m = _RANKED.match(item)
        if m:
            name, score = m.group(1), float(m.group(2))
        else:
            name, score, scored = item, 1.0, False
        category = "rating" if canonical(name).startswith("rating:") else "general"
        tags.append(TagScore(name, score, category))
    return TagResult(path="", tags=tags), scored and bool(tags)


def read_results_json(text: str, source: str = "-") -> list[TagResult]:
    """One object, a list of objects, or JSONL, as ``tagloop tag --format json|jsonl`` writes."""
    text = text.strip()
    if not text:
        raise InputError(f"{source}: no JSON in the file.")
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        items = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{source}, line {lineno}: not JSON or JSONL ({e.msg}).") from None
    results = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("tags", []), list):
            raise InputError(f"{source}: item {i} is not a `tagloop tag` result object with a `tags` list.")
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in item.get("tags", [])):
            raise InputError(f"{source}: item {i} has a tag that is not an object with a string `name` and a `score`.")
        if not isinstance(item.get("rating") or {}, dict):
            raise InputError(f"{source}: item {i}: `rating` must be an object of rating name -> score.")
        try:
            results.append(TagResult.from_json(item))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{source}: item {i} has a malformed tag ({type(e).__name__}: {e}).") from None
    return results


def read_json_source(source: str) -> str:
    """The text of ``source`` (a file, or stdin for ``-``), as UTF-8 with or without a BOM."""
    try:
        if source == "-":
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
        else:
            data = Path(source).read_bytes()
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{source}: not UTF-8 text ({e}); `tagloop tag --format json` writes UTF-8.") from None
    except OSError as e:
        raise InputError(f"{source}: cannot be read ({e}).") from None
