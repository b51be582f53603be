"""Scoring a reproduction: the source's tags against each variant's, with calibration.

The rules (docs/report-schema.md has every key):

* Tags are compared as sets of canonical keys (:func:`tagloop.tagtext.canonical`: underscores =
  spaces, unescaped, case-folded) after the run's filters, without ``max_tags`` (a prompt-length
  choice, not a property of the picture), leaving out the rating and the tags the composer
  injected (quality, trigger and LoRA trigger words: a variant's tagger never reads those back
  meaningfully). Set scores: recall, precision, F1 = 2|S∩V|/(|S|+|V|), Jaccard.
* Threshold-free scores use each image's probability vector (every non-rating tag down to
  :data:`PROB_FLOOR`), after the run's replacements and blocklist (style and overlap rules act on
  sets of present tags, so they apply to the set scores only): soft recall Σp·q/Σp², weighted
  Jaccard Σmin/Σmax, cosine.
* Groups from :mod:`tagloop.report.groups`: exclusive groups by top-1 agreement, open groups by
  per-group recall.
* Calibration: the same scores of the source against altered copies of itself (the ceiling: what
  the tagger's own noise allows) and against unrelated pictures (the floor).

Everything here works from stored probabilities (the report's ``images``), so a finished run can
be re-scored with other thresholds, filters or groups without its models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from ..filters.chain import FilterSettings, apply_filters
from ..tagger.result import TagResult, TagScore
from ..tagtext import canonical
from .groups import TagGroups, load_groups

#: Probabilities kept per image (and used by the threshold-free scores).
PROB_FLOOR = 0.01
#: The metrics of every variant, in the order reports show them.
SET_METRICS = ("f1", "recall", "precision", "jaccard")
SOFT_METRICS = ("soft_recall", "weighted_jaccard", "cosine")
METRICS = SET_METRICS + SOFT_METRICS + ("group_agreement",)


@dataclass(frozen=True)
class ScoreSettings:
    """What decides the scores: the run's filters, the keys never scored, the groups."""

    filters: FilterSettings = field(default_factory=FilterSettings)
    exclude: frozenset[str] = frozenset()
    groups: TagGroups = field(default_factory=load_groups)


@dataclass
class ScoredTags:
    """One image as the scores see it: the scored set (key -> score), its probabilities, categories."""

    set: dict[str, float]
    probs: dict[str, float]
    categories: dict[str, str]


def _filter_settings(filters: FilterSettings, soft: bool) -> FilterSettings:
    fields = filters.filter_fields()
    fields.update(max_tags=None, keep_rating=False)
    if soft:
        fields.update(style=None, overlap=False, always_first=())
    return FilterSettings(**fields)


def _keys(tags: Iterable[TagScore], filters: FilterSettings, exclude: frozenset[str]) -> tuple[dict[str, float], dict[str, str]]:
    kept, _ = apply_filters(list(tags), filters)
    out: dict[str, float] = {}
    cats: dict[str, str] = {}
    for t in kept:
        key = canonical(t.name)
        if t.category == "rating" or key.startswith("rating:") or key in exclude:
            continue
        if key not in out or t.score > out[key]:
            out[key] = float(t.score)
            cats[key] = t.category
    return out, cats


def scored_tags(result: TagResult, settings: ScoreSettings) -> ScoredTags:
    """The set and probability vector of ``result`` (its ``probs`` when kept, else its tags)."""
    tagset, cats = _keys(result.tags, _filter_settings(settings.filters, soft=False), settings.exclude)
    source = result.probs if result.probs is not None else result.tags
    probs, pcats = _keys(source, _filter_settings(settings.filters, soft=True), settings.exclude)
    for k, v in tagset.items():  # a scored tag always has its probability (a replacement may merge names)
        probs[k] = max(probs.get(k, 0.0), v)
    return ScoredTags(tagset, probs, {**pcats, **cats})


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def set_scores(source: Iterable[str], variant: Iterable[str]) -> dict[str, Any]:
    """Recall, precision, F1 and Jaccard of two key sets (None where the denominator is empty)."""
    s, v = set(source), set(variant)
    common = len(s & v)
    return {
        "f1": _ratio(2 * common, len(s) + len(v)),
        "recall": _ratio(common, len(s)),
        "precision": _ratio(common, len(v)),
        "jaccard": _ratio(common, len(s | v)),
        "n_source": len(s),
        "n_variant": len(v),
        "n_common": common,
    }


def soft_scores(p: Mapping[str, float], q: Mapping[str, float]) -> dict[str, float | None]:
    """Soft recall Σp·q/Σp², weighted Jaccard Σmin/Σmax and cosine of two probability vectors."""
    keys = set(p) | set(q)
    dot = sum(p.get(k, 0.0) * q.get(k, 0.0) for k in keys)
    pp = sum(x * x for x in p.values())
    qq = sum(x * x for x in q.values())
    mins = sum(min(p.get(k, 0.0), q.get(k, 0.0)) for k in keys)
    maxs = sum(max(p.get(k, 0.0), q.get(k, 0.0)) for k in keys)
    return {
        "soft_recall": _ratio(dot, pp),
        "weighted_jaccard": _ratio(mins, maxs),
        "cosine": _ratio(dot, math.sqrt(pp * qq)),
    }


def _top(tags: ScoredTags, group) -> str | None:
    members = [(p, k) for k, p in tags.probs.items() if group.has(k, tags.categories.get(k))]
    return max(members, key=lambda m: (m[0], m[1]))[1] if members else None


def group_scores(source: ScoredTags, variant: ScoredTags, groups: TagGroups) -> dict[str, dict[str, Any]]:
    """Per group: top-1 agreement (exclusive) or recall (open); groups that do not apply are left out."""
    out: dict[str, dict[str, Any]] = {}
    for g in groups:
        if g.kind == "exclusive":
            top = _top(source, g)
            if top is None or top not in source.set:
                continue
            other = _top(variant, g)
            out[g.name] = {"kind": "exclusive", "label": g.label, "source": top, "variant": other, "agree": float(other == top)}
        else:
            mine = sorted(k for k in source.set if g.has(k, source.categories.get(k)))
            if not mine:
                continue
            found = [k for k in mine if k in variant.set]
            out[g.name] = {"kind": "open", "label": g.label, "source": mine, "found": found, "recall": len(found) / len(mine)}
    return out


def compare_tags(source: ScoredTags, variant: ScoredTags, groups: TagGroups) -> dict[str, Any]:
    """Every score of one variant: metrics, missing and spurious tags, groups."""
    scores: dict[str, Any] = set_scores(source.set, variant.set)
    scores.update(soft_scores(source.probs, variant.probs))
    grp = group_scores(source, variant, groups)
    values = [g["agree"] if g["kind"] == "exclusive" else g["recall"] for g in grp.values()]
    scores["group_agreement"] = sum(values) / len(values) if values else None
    scores["missing"] = [
        {"tag": k, "source_score": source.set[k], "variant_score": variant.probs.get(k, 0.0)}
        for k in sorted(set(source.set) - set(variant.set), key=lambda k: (-source.set[k], k))
    ]
    scores["spurious"] = [
        {"tag": k, "variant_score": variant.set[k], "source_score": source.probs.get(k, 0.0)}
        for k in sorted(set(variant.set) - set(source.set), key=lambda k: (-variant.set[k], k))
    ]
    scores["groups"] = grp
    return scores


def metric_stats(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float | None]]:
    """Mean, standard deviation (population), min and max of each metric over ``rows`` (Nones left out)."""
    out: dict[str, dict[str, float | None]] = {"mean": {}, "std": {}, "min": {}, "max": {}}
    for m in metrics:
        vals = [float(r[m]) for r in rows if r.get(m) is not None]
        if not vals:
            for k in out:
                out[k][m] = None
            continue
        mean = sum(vals) / len(vals)
        out["mean"][m] = mean
        out["std"][m] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        out["min"][m] = min(vals)
        out["max"][m] = max(vals)
    return out


def position(score: float | None, ceiling: float | None, floor: float | None) -> float | None:
    """Where ``score`` lies between ``floor`` (0) and ``ceiling`` (1); floor 0 when there is none."""
    if score is None or ceiling is None:
        return None
    low = floor if floor is not None else 0.0
    if abs(ceiling - low) < 1e-12:
        return None
    return (score - low) / (ceiling - low)


# --- raw tagger outputs, as reports keep them --------------------------------------------------


def raw_output(result: TagResult) -> dict[str, Any]:
    """What a report keeps of one tagger reading: edge density, probabilities >= the floor, rating."""
    source = result.probs if result.probs is not None else result.tags
    return {
        "edge_density": None if result.edge_density is None else round(float(result.edge_density), 6),
        "scores": [[t.name, t.category, round(float(t.score), 6)] for t in source],
        "rating": {k: round(float(v), 6) for k, v in result.rating.items()},
    }


def result_from_raw(raw: Mapping[str, Any], options, path: str = "", model: str | None = None) -> TagResult:
    """The :class:`TagResult` the tag options give for kept probabilities (the tagger's own thresholding)."""
    from ..tagger.run import threshold_probs

    rows = list(raw.get("scores") or [])
    rating = dict(raw.get("rating") or {})
    names = [r[0] for r in rows] + [f"rating:{k}" for k in rating]
    cats = [r[1] for r in rows] + ["rating"] * len(rating)
    probs = [float(r[2]) for r in rows] + [float(v) for v in rating.values()]
    return threshold_probs(names, cats, probs, raw.get("edge_density"), replace(options, prob_floor=0.0), path=path, model=model)


__all__ = [
    "METRICS",
    "PROB_FLOOR",
    "ScoreSettings",
    "ScoredTags",
    "compare_tags",
    "group_scores",
    "metric_stats",
    "position",
    "raw_output",
    "result_from_raw",
    "scored_tags",
    "set_scores",
    "soft_scores",
]
