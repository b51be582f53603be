"""Several devices (``--devices 0,1,...``): one process per device, each on its own shard, one manifest.

Files are dealt round-robin to the devices. Each process loads the tagger on its device and runs
:func:`tagloop.tagger.bulk.run_bulk` on its shard, writing captions and its own manifest shard
(``MANIFEST.shards/dev-N.jsonl``) and treating the main manifest's records as done. When every
process has finished, the shards are appended to the main manifest and removed; shards a killed run
left are merged first on the next run, so resume works as on one device.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError, TagloopError
from .bulk import BulkOptions, BulkStats, run_bulk
from .manifest import merge_shard, shard_dir


def parse_devices(text: str) -> list[str]:
    """``0,1`` -> ``["cuda:0", "cuda:1"]``; names (``cpu``, ``cuda:2``) pass as they are."""
    from ..devices import check_device

    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        out.append(f"cuda:{item}" if item.isdigit() else check_device(item))
    if not out:
        raise InputError("`devices` names no device; give indexes such as 0,1 or names such as cuda:0,cuda:1.")
    return out


def _worker(device: str, files: list[str], model: str | None, load_kwargs: dict[str, Any], options, bulk: BulkOptions) -> dict:
    from ..api import load_tagger

    tagger = load_tagger(model, **{**load_kwargs, "device": device})
    stats = BulkStats()
    for _ in run_bulk(tagger, [Path(f) for f in files], options, bulk, stats):
        pass
    return stats.__dict__


def run_devices(
    files: Sequence[Path],
    *,
    devices: Sequence[str],
    model: str | None,
    load_kwargs: dict[str, Any],
    options,
    bulk: BulkOptions,
    echo: Callable[[str], None] = lambda m: None,
) -> BulkStats:
    """Tag ``files`` on every device of ``devices`` at once (see the module docstring)."""
    if bulk.manifest is None:
        raise InputError("several `devices` write one manifest: give it (`out`).")
    manifest = Path(bulk.manifest)
    shards = shard_dir(manifest)
    for left in sorted(shards.glob("dev-*.jsonl")) if shards.is_dir() else []:
        n = merge_shard(manifest, left)
        echo(f"tagloop: merged {n} record(s) a stopped run left in {left.name}")
    shards.mkdir(parents=True, exist_ok=True)
    files = [str(f) for f in files]
    parts = [files[i :: len(devices)] for i in range(len(devices))]
    jobs = []
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    total = BulkStats()
    with ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx) as pool:
        for i, (device, part) in enumerate(zip(devices, parts)):
            shard_bulk = replace(bulk, manifest=shards / f"dev-{i}.jsonl", previous_manifests=(manifest,))
            jobs.append((device, pool.submit(_worker, device, part, model, load_kwargs, options, shard_bulk)))
        errors = []
        for device, job in jobs:
            try:
                got = job.result()
            except Exception as e:  # noqa: BLE001 - one device's failure is said; the others' work is kept
                errors.append(f"{device}: {type(e).__name__}: {e}")
                continue
            for k, v in got.items():
                if isinstance(v, int):
                    setattr(total, k, getattr(total, k) + v)
            echo(f"tagloop: {device}: {got['tagged']} tagged, {got['failed']} failed, {got['skipped_done']} already done")
    for shard in sorted(shards.glob("dev-*.jsonl")):
        merge_shard(manifest, shard)
    try:
        shards.rmdir()
    except OSError:
        pass
    if errors:
        raise TagloopError("a device process failed (" + "; ".join(errors) + "); re-run to finish: what was done is kept.")
    return total
