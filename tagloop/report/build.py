"""Filling a report from its raw tagger outputs: every number of docs/report-schema.md.

A report skeleton holds ``images`` (raw outputs per scorer), ``variants``, ``rounds`` and
``excluded``; :func:`score_report` computes the rest with a tag options' thresholds and a
:class:`~tagloop.report.compare.ScoreSettings`. The loop calls it after every round (refinement
reads the scores), ``tagloop report DIR`` calls it again on a finished run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from ..tagger.run import TagOptions
from .compare import (
    METRICS,
    ScoredTags,
    ScoreSettings,
    compare_tags,
    metric_stats,
    position,
    result_from_raw,
    scored_tags,
)

SCHEMA_VERSION = 1
KIND = "tagloop-reproduce-report"
COMPARE_KIND = "tagloop-compare-report"
TAGGER_SCORERS = ("tagger", "judge")


def round_floats(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def jsonable(value: Any) -> Any:
    """Settings values as JSON: paths and objects as strings, tuples as lists, dataclasses as dicts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    name = getattr(value, "name", None)
    if isinstance(name, str):  # presets, style rules, token counters, LoRA specs
        tag = getattr(value, "tag", None)
        return tag() if callable(tag) else name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def tag_options_json(options: TagOptions) -> dict[str, Any]:
    from ..tagger.threshold import format_bands

    return {
        "threshold": options.threshold,
        "general_threshold": options.general_threshold,
        "character_threshold": options.character_threshold,
        "mcut": options.mcut,
        "bands": format_bands(options.bands),
        "max_tags": options.max_tags,
    }


def tag_options_from_json(data: Mapping[str, Any] | None, **overrides: Any) -> TagOptions:
    """The tag options a report recorded, with ``overrides`` (every key given is set; ``threshold=None`` is adaptive)."""
    from ..tagger.run import make_tag_options

    names = ("threshold", "general_threshold", "character_threshold", "mcut", "bands", "max_tags")
    fields = {k: v for k, v in dict(data or {}).items() if k in names}
    fields.update(overrides)
    return make_tag_options(**fields)


def filter_settings_from_json(data: Mapping[str, Any] | None, **overrides: Any):
    """The filter settings of a report's prompt settings, with ``overrides`` (None leaves the recorded one)."""
    from ..filters.chain import FilterSettings

    names = {f.name for f in dataclasses.fields(FilterSettings)}
    fields = {k: v for k, v in dict(data or {}).items() if k in names and v is not None}
    for k, v in overrides.items():
        if v is not None:
            fields[k] = v
    for k in ("filter_files", "block", "replace", "replace_files", "always_first", "category_order"):
        if k in fields:
            fields[k] = tuple(tuple(x) if isinstance(x, list) else x for x in fields[k])
    return FilterSettings(**fields)


def _scored(
    report: Mapping[str, Any], image_id: str, scorer: str, options: TagOptions, settings: ScoreSettings
) -> ScoredTags | None:
    image = report["images"].get(image_id)
    if not image or image.get("error"):
        return None
    raw = (image.get("outputs") or {}).get(scorer)
    if raw is None:
        return None
    return scored_tags(result_from_raw(raw, options, path=image.get("path", "")), settings)


def _calibration(report, source: ScoredTags, scorer: str, kind: str, options, settings) -> dict[str, Any] | None:
    copies: dict[str, Any] = {}
    for image_id, image in report["images"].items():
        if image.get("kind") != kind:
            continue
        other = _scored(report, image_id, scorer, options, settings)
        if other is not None:
            scores = compare_tags(source, other, settings.groups)
            copies[image_id] = {m: scores.get(m) for m in METRICS + ("n_source", "n_variant", "n_common")}
    if not copies:
        return None
    return {"mean": metric_stats(list(copies.values()))["mean"], "copies": copies}


def _clip_calibration(report, kind: str, field: str = "clip_cosine", metric: str = "cosine") -> dict[str, Any] | None:
    copies = {
        i: {metric: im[field]} for i, im in report["images"].items() if im.get("kind") == kind and im.get(field) is not None
    }
    if not copies:
        return None
    return {"mean": metric_stats(list(copies.values()), (metric,))["mean"], "copies": copies}


#: Scorers with one number per image (not tag sets): scorer -> (image field, metric).
SINGLE_METRIC_SCORERS = {"clip": ("clip_cosine", "cosine"), "structure": ("structure", "f1")}


def score_report(report: dict[str, Any], options: TagOptions, settings: ScoreSettings) -> dict[str, Any]:
    """Compute every score of ``report`` (in place, and returned) from its raw outputs."""
    scorers = [s for s in TAGGER_SCORERS if (report["images"].get("source", {}).get("outputs") or {}).get(s) is not None]
    if any(im.get("clip_cosine") is not None for im in report["images"].values()):
        scorers.append("clip")
    if any(im.get("structure") is not None for im in report["images"].values()):
        scorers.append("structure")
    report["scorers"] = scorers
    report["source_tags"] = {}
    report["calibration"] = {}
    sources: dict[str, ScoredTags] = {}
    for scorer in scorers:
        if scorer in SINGLE_METRIC_SCORERS:
            field, metric = SINGLE_METRIC_SCORERS[scorer]
            report["calibration"][scorer] = {
                "ceiling": _clip_calibration(report, "ceiling", field, metric),
                "floor": _clip_calibration(report, "floor", field, metric),
            }
            continue
        raw = report["images"]["source"]["outputs"][scorer]
        result = result_from_raw(raw, options, path=report["images"]["source"].get("path", ""))
        src = scored_tags(result, settings)
        sources[scorer] = src
        report["source_tags"][scorer] = {
            "tags": [t.to_json() for t in result.tags],
            "set": sorted(src.set, key=lambda k: (-src.set[k], k)),
            "threshold": result.threshold,
            "threshold_mode": result.threshold_mode,
            "band_threshold": result.band_threshold,
            "edge_density": result.edge_density,
            "complexity": result.complexity,
            "rating": result.rating,
        }
        report["calibration"][scorer] = {
            "ceiling": _calibration(report, src, scorer, "ceiling", options, settings),
            "floor": _calibration(report, src, scorer, "floor", options, settings),
        }

    def bounds(scorer: str, metric: str) -> tuple[float | None, float | None]:
        cal = report["calibration"].get(scorer) or {}
        ceiling = (cal.get("ceiling") or {}).get("mean", {}).get(metric)
        floor = (cal.get("floor") or {}).get("mean", {}).get(metric)
        return ceiling, floor

    for variant in report["variants"]:
        variant["scores"] = {}
        for scorer in scorers:
            if scorer in SINGLE_METRIC_SCORERS:
                field, metric = SINGLE_METRIC_SCORERS[scorer]
                value = report["images"].get(variant["id"], {}).get(field)
                if value is not None:
                    variant["scores"][scorer] = {metric: value, "position": position(value, *bounds(scorer, metric))}
                continue
            other = _scored(report, variant["id"], scorer, options, settings)
            if other is None:
                continue
            scores = compare_tags(sources[scorer], other, settings.groups)
            scores["position"] = {m: position(scores.get(m), *bounds(scorer, m)) for m in METRICS}
            variant["scores"][scorer] = scores

    by_id = {v["id"]: v for v in report["variants"]}
    for rnd in report["rounds"]:
        rows = [by_id[i] for i in rnd["variants"] if i in by_id]
        rnd["mean"], rnd["std"] = {}, {}
        for scorer in scorers:
            metrics = (SINGLE_METRIC_SCORERS[scorer][1],) if scorer in SINGLE_METRIC_SCORERS else METRICS
            stats = metric_stats([r["scores"][scorer] for r in rows if scorer in r["scores"]], metrics)
            rnd["mean"][scorer], rnd["std"][scorer] = stats["mean"], stats["std"]
    styles = (report.get("styles") or {}).get("by_style") or {}
    for entry in styles.values():  # a compared prompt style: its mean like a round's, and its best variant
        rows = [by_id[i] for i in entry["variants"] if i in by_id]
        entry["mean"], entry["std"] = {}, {}
        for scorer in scorers:
            metrics = (SINGLE_METRIC_SCORERS[scorer][1],) if scorer in SINGLE_METRIC_SCORERS else METRICS
            stats = metric_stats([r["scores"][scorer] for r in rows if scorer in r["scores"]], metrics)
            entry["mean"][scorer], entry["std"][scorer] = stats["mean"], stats["std"]
        entry["best"] = best_variant({"variants": rows, "calibration": report.get("calibration")})
    if styles:
        means = {k: (e["mean"].get("tagger") or {}).get("f1") for k, e in styles.items()}
        scored = [k for k, m in means.items() if m is not None]
        report["styles"]["best"] = max(scored, key=lambda k: means[k]) if scored else None  # ties: the first
    # the run's own summary and best: its rounds' variants (a compared style's are in ``styles``)
    own = [v for v in report["variants"] if not v.get("style")]
    report["summary"] = {}
    for scorer in scorers:
        metrics = (SINGLE_METRIC_SCORERS[scorer][1],) if scorer in SINGLE_METRIC_SCORERS else METRICS
        report["summary"][scorer] = metric_stats([v["scores"][scorer] for v in own if scorer in v["scores"]], metrics)
    report["best"] = best_variant({**report, "variants": own})
    return report


def best_variant(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The variant with the highest F1 by the prompt's tagger (ties: soft recall, then the earlier one), and why."""
    scored = [v for v in report["variants"] if "tagger" in v.get("scores", {}) and v["scores"]["tagger"].get("f1") is not None]
    if not scored:
        return None

    def key(v):
        s = v["scores"]["tagger"]
        return (s["f1"], s.get("soft_recall") or 0.0)

    best = max(scored, key=key)  # max keeps the first of equal keys
    s = best["scores"]["tagger"]
    why = (
        f"highest F1 by the prompt's tagger ({s['f1']:.3f}): {s['n_common']} of the source's {s['n_source']} tags "
        f"found again, {len(s['spurious'])} spurious"
    )
    cal = (report.get("calibration", {}).get("tagger") or {}).get("ceiling")
    if cal and cal["mean"].get("f1") is not None:
        why += f"; the tagger's own ceiling on the source is {cal['mean']['f1']:.3f}"
    judge = best["scores"].get("judge")
    if judge and judge.get("f1") is not None:
        why += f"; the judge tagger gives it {judge['f1']:.3f}"
    why += "."
    return {
        "id": best["id"],
        "round": best.get("round", 0),
        "seed": best.get("seed"),
        "file": best.get("file"),
        "f1": s["f1"],
        "why": why,
    }


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """``report.html`` then ``report.json`` (last: a finished source is one with its report.json), atomically."""
    from ..fileio import atomic_write_text
    from .html import render_report_html

    report = round_floats(report)
    atomic_write_text(folder / "report.html", render_report_html(report, folder))
    atomic_write_text(folder / "report.json", json.dumps(report, ensure_ascii=False, indent=1) + "\n")


def read_report(path: Path) -> dict[str, Any] | None:
    """A finished report (current schema), or None for a missing, torn or older one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return None
    return data


def write_index(out: Path, entries: list[dict[str, Any]]) -> None:
    """``OUT/index.json`` and ``OUT/index.html``: every source with its status and best score."""
    from ..fileio import atomic_write_text
    from .html import render_index_html

    index = round_floats({"schema_version": SCHEMA_VERSION, "sources": entries})
    atomic_write_text(out / "index.json", json.dumps(index, ensure_ascii=False, indent=1) + "\n")
    atomic_write_text(out / "index.html", render_index_html(index))


def read_index(path: Path) -> list[dict[str, Any]]:
    """The source entries of an ``index.json`` (empty for a missing or torn one)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return list(data.get("sources") or []) if isinstance(data, dict) else []


def index_entry(stem: str, report: Mapping[str, Any]) -> dict[str, Any]:
    summary = (report.get("summary") or {}).get("tagger") or {}
    best = report.get("best") or {}
    return {
        "stem": stem,
        "path": (report.get("source") or {}).get("path"),
        "status": report.get("status"),
        "message": report.get("message"),
        "best_f1": best.get("f1"),
        "mean_f1": (summary.get("mean") or {}).get("f1"),
        "report": f"{stem}/report.json",
    }
