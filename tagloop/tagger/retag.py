"""``tagloop retag`` and ``tagloop stats``: new thresholds, filters and counts from a manifest, no model.

:func:`retag_manifest` re-thresholds every image of a manifest from the scores it kept (the same
rule as the tagger: :func:`tagloop.tagger.run.threshold_probs`), applies the blocklist and
``max_tags``, and rewrites each stale caption (one tagloop wrote with other settings) atomically.
A caption that is not what the manifest says tagloop wrote (edited by hand since) is left alone
unless ``force``. New records go to the end of the same manifest (the last record of a path wins)
or, with ``out``, to a new manifest holding every image.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_open, atomic_write_text
from ..tagtext import TagPolicy
from .bulk import file_sha256, merge_caption
from .captions import caption
from .manifest import ManifestWriter, iter_latest, repair, scan, settings_key


@dataclass
class RetagStats:
    images: int = 0
    failed: int = 0
    rewritten: int = 0  # stale captions written again
    unchanged: int = 0
    edited: list[str] = field(default_factory=list)  # changed since tagloop wrote them: left alone
    missing: int = 0  # the caption file is gone: written again
    gone: int = 0  # the image itself is gone: no caption written
    seconds: float = 0.0


def _scan(manifest: Path) -> tuple[dict[str, dict[str, Any]], dict[str, int], int]:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"manifest {manifest} does not exist; write one with `tagloop tag DIR --out {manifest.name}`.")
    repair(manifest)
    headers, last, end = scan(manifest)
    if not last:
        raise InputError(f"manifest {manifest} holds no image records.")
    return headers, last, end


def retag_manifest(
    manifest: Path,
    *,
    tag_overrides: dict[str, Any] | None = None,
    filter_files: tuple[str, ...] | None = None,
    max_tags: int | None = None,
    out: Path | None = None,
    force: bool = False,
) -> RetagStats:
    """Re-threshold every image of ``manifest``; write stale captions and the new records (see the module)."""
    from .. import __version__
    from .run import threshold_probs

    t0 = time.perf_counter()
    manifest = Path(manifest)
    headers, last, end = _scan(manifest)  # the records themselves are streamed: memory stays small
    blocklist_cache: dict[tuple[str, ...], Any] = {}
    stats = RetagStats()
    per_run: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        if out is None:  # appended to the same manifest (the last record of a path wins)
            writer = stack.enter_context(ManifestWriter(manifest))
            write = writer.write
        else:  # a new manifest with every image, written atomically (renamed into place at the end)
            f = stack.enter_context(atomic_open(Path(out)))

            def write(lines: list[dict[str, Any]]) -> None:
                f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))

            write(list(headers.values()))  # the failed images' records keep their runs
        buffer: list[dict[str, Any]] = []
        for rec in iter_latest(manifest, last, end):
            path = rec["path"]
            stats.images += 1
            if rec.get("error") is not None or "scores" not in rec:
                stats.failed += 1
                if out is not None:
                    buffer.append(rec)
                continue
            run = headers.get(rec.get("run") or "", {})
            run_id = str(run.get("id"))
            if run_id not in per_run:  # worked out once per run, not per image
                per_run[run_id] = _run_plan(run, tag_overrides, filter_files, max_tags, blocklist_cache, __version__)
                buffer.append(per_run[run_id]["header"])  # before the first record that names it
            plan = per_run[run_id]
            options, blocklist, limit, header, recorded = (
                plan["options"],
                plan["blocklist"],
                plan["limit"],
                plan["header"],
                plan["recorded"],
            )
            names = [s[0] for s in rec["scores"]] + [f"rating:{k}" for k in rec.get("rating", {})]
            cats = [s[1] for s in rec["scores"]] + ["rating"] * len(rec.get("rating", {}))
            probs = [float(s[2]) for s in rec["scores"]] + [float(v) for v in rec.get("rating", {}).values()]
            result = threshold_probs(names, cats, probs, rec.get("edge_density"), options, path=path)
            result.model = rec.get("model")
            if blocklist is not None:
                result.tags = blocklist.apply(result.tags)
            if limit is not None:
                result.tags = result.tags[: int(limit)]
            new = {
                k: v
                for k, v in rec.items()
                if k not in ("tags", "threshold", "thresholds", "threshold_mode", "band_threshold", "complexity")
            }
            new.update({k: v for k, v in result.to_json().items() if k not in ("path", "model")})
            new.update(run=header["id"], settings_key=header["settings_key"])
            cap_settings = recorded.get("caption")
            if rec.get("caption") and cap_settings:
                _recaption(result, rec, new, cap_settings, stats, force)
            buffer.append(new)
            if len(buffer) >= 1000:
                write(buffer)
                buffer = []
        write(buffer)
    stats.seconds = time.perf_counter() - t0
    return stats


def _run_plan(run, tag_overrides, filter_files, max_tags, blocklist_cache, version) -> dict[str, Any]:
    """For the records of one run: the new tag options (checked against its score floor), the
    blocklist, ``max_tags`` and the header the new records name."""
    from ..filters.blocklist import load_blocklist
    from ..report.build import tag_options_from_json, tag_options_json

    recorded = run.get("settings", {})
    options = tag_options_from_json(recorded.get("tag"), **(tag_overrides or {}))
    floor = float(recorded.get("score_floor", 0.0) or 0.0)
    lowest = min(
        (v for v in (options.threshold, options.general_threshold, options.character_threshold) if v is not None),
        default=None,
    )
    if lowest is not None and lowest < floor - 1e-12:
        raise InputError(
            f"threshold {lowest} is below the manifest's score floor {floor}: scores under it were not kept; "
            "tag again with a lower `score_floor`."
        )
    files = tuple(filter_files) if filter_files is not None else tuple(recorded.get("filters") or ())
    if files not in blocklist_cache:
        blocklist_cache[files] = load_blocklist(files) if files else None
    limit = max_tags if max_tags is not None else recorded.get("max_tags")
    settings = dict(recorded)  # the recorded settings with the new ones
    settings.update(tag=tag_options_json(options), filters=list(files), max_tags=limit)
    model = run.get("model", {})
    header = {
        "type": "run",
        "kind": "retag",
        "manifest_version": run.get("manifest_version", 1),
        "id": uuid.uuid4().hex[:12],
        "retag_of": run.get("id"),
        "tagloop_version": version,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "settings": settings,
        "settings_key": settings_key(model, settings),
    }
    options = dataclasses.replace(options, max_tags=None)
    return {"options": options, "blocklist": blocklist_cache[files], "limit": limit, "header": header, "recorded": recorded}


def _recaption(result, rec: dict[str, Any], new: dict[str, Any], cap: dict[str, Any], stats: RetagStats, force: bool) -> None:
    policy = TagPolicy(use_spaces=bool(cap.get("use_spaces", True)), escape=bool(cap.get("escape", True)))
    text = caption(result, policy, bool(cap.get("scores")), bool(cap.get("include_rating")), bool(cap.get("character_first")))
    text = merge_caption(text, rec.get("original_caption"), cap.get("existing", "overwrite"))
    data = text + "\n"
    target = Path(rec["caption"])
    if not Path(rec["path"]).exists():
        stats.gone += 1
        return
    try:
        current = target.read_bytes()
    except FileNotFoundError:
        current = None
    if current is not None and current == data.encode("utf-8"):
        # already what these settings write (also after a retag stopped between its captions and
        # their records: such a caption is tagloop's, not a hand edit)
        stats.unchanged += 1
    elif current is not None and file_sha256(current) != rec.get("caption_sha256") and not force:
        stats.edited.append(str(target))
        new["caption_sha256"] = rec.get("caption_sha256")
        return
    else:
        if current is None:
            stats.missing += 1
        else:
            stats.rewritten += 1
        atomic_write_text(target, data, durable=False)
    new["caption_sha256"] = file_sha256(data.encode("utf-8"))


def manifest_stats(manifest: Path, top: int | None = None) -> dict[str, Any]:
    """Tag frequencies, per-band counts, ratings and failures of a manifest's images (last record of each)."""
    headers, last, end = _scan(Path(manifest))
    tags: Counter[str] = Counter()
    bands: Counter[str] = Counter()
    ratings: Counter[str] = Counter()
    failures = []
    n_tags = []
    for rec in iter_latest(Path(manifest), last, end):
        path = rec["path"]
        if rec.get("error") is not None:
            failures.append({"path": path, "error": rec["error"]})
            continue
        names = [t["name"] for t in rec.get("tags", [])]
        tags.update(set(names))
        n_tags.append(len(names))
        bands[str(rec.get("complexity"))] += 1
        rating = rec.get("rating") or {}
        if rating:
            ratings[max(rating, key=rating.__getitem__)] += 1
    records = last
    ok = len(records) - len(failures)
    freq = [{"tag": t, "images": c, "share": c / ok if ok else 0.0} for t, c in tags.most_common(top)]
    return {
        "manifest": str(manifest),
        "images": len(records),
        "tagged": ok,
        "failed": len(failures),
        "tags_per_image": (sum(n_tags) / len(n_tags)) if n_tags else 0.0,
        "distinct_tags": len(tags),
        "bands": dict(sorted(bands.items())),
        "ratings": dict(ratings.most_common()),
        "tags": freq,
        "failures": failures,
        "runs": len(headers),
    }
