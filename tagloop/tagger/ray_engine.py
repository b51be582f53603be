"""``--engine ray``: the bulk tagger as a Ray Data pipeline, writing the same manifest and captions.

Ray is an optional extra (``pip install "tagloop[ray]"``); it is imported only when
:func:`run_ray` runs. The pipeline:

1. **describe**: one Ray task with the model stage's resources loads the tagger (so backend and
   preprocessing are the ones the actors get), returns the manifest's ``run`` header and a
   lightweight copy of the tagger that only preprocesses (no weights), then lets the model go.
2. **files**: ``ray.data.from_items`` over the images still to do (sorted), each with its shard
   number (its position in that list // ``shard_size``).
3. **decode** (CPU tasks, ``map_batches``): read the bytes, SHA-256, size, decode, edge density and
   the tagger's preprocessing, exactly as :mod:`tagloop.tagger.run` does (its ``_prepare``). When
   the tagger cannot be copied without its weights, decoding moves into the model stage.
4. **model** (``map_batches`` with a callable class, an actor pool of ``num_actors``; one GPU per
   actor when the cluster has GPUs): ``predict`` on the stacked batch, the thresholds, blocklist
   and ``max_tags`` of :func:`tagloop.tagger.bulk.run_bulk`, and the same manifest record.

Results stream back to the driver (never the whole dataset at once) and are written per shard to
``MANIFEST.shards/shard-NNNNN.jsonl`` (a ``shard`` line naming its files, the ``run`` header, the
records), through a ``.part`` file renamed when every file of the shard is in. When all shards are
done the driver merges them, one at a time: it writes the shard's captions (atomically, as
``run_bulk`` does), then appends its header (once per run) and records to the manifest in one
write, then removes the shard. So ``tagloop retag``, ``tagloop stats`` and the captions are the same
whichever engine ran.

Resume: images the manifest already holds with the same bytes and settings are skipped (the rule of
``run_bulk``). Complete shards a killed run left behind are merged first and not computed again
(shards of other settings, and incomplete ones, are dropped: their images are tagged again); a
merge that was cut short is finished without duplicating records (a path already recorded by the
same run is left out).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import InputError, TagloopError
from .bulk import (
    BulkOptions,
    BulkStats,
    _image_size,
    _Info,
    _record,
    _write_caption,
    already_done,
    file_sha256,
    keeps_its_caption,
    run_header,
)
from .manifest import ManifestWriter, latest_records, read_lines, read_manifest, repair, shard_dir
from .result import TagResult
from .run import TagOptions

SHARD_GLOB = "shard-*.jsonl"
#: images per input block of the dataset (one decode task's worth)
ROWS_PER_BLOCK = 256


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError('the Ray engine needs ray: pip install "tagloop[ray]"') from None
    return ray


def shard_path(shards: Path, index: int) -> Path:
    return shards / f"shard-{index:05d}.jsonl"


# --- on the driver: what is left to do ------------------------------------------------------------


def _already_done(path: Path, rec: dict[str, Any] | None, key: str, bulk: BulkOptions, target: Path) -> bool:
    """``run_bulk``'s rule (:func:`tagloop.tagger.bulk.already_done`), reading the file only when its stat changed."""
    try:
        st = path.stat()
    except OSError:
        return False
    if already_done(rec, key, bulk, target, size=st.st_size, mtime_ns=st.st_mtime_ns):
        return True
    if rec is None or rec.get("settings_key") != key or bulk.overwrite:
        return False
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return already_done(rec, key, bulk, target, sha256=file_sha256(data))


def todo_files(
    files: Iterable[Path], latest: dict[str, dict[str, Any]], key: str, bulk: BulkOptions, stats: BulkStats, started_ns: int
) -> list[str]:
    """The paths still to tag, sorted and without repeats (skips counted in ``stats``)."""
    seen_dirs: set[Path] = set()
    chosen: set[str] = set()
    for path in files:
        path = Path(path)
        name = str(path)
        if name in chosen:
            continue
        target = path.with_suffix(bulk.caption_extension)
        rec = latest.get(name)
        if keeps_its_caption(path, rec, bulk, stats, seen_dirs, started_ns):
            continue
        if _already_done(path, rec, key, bulk, target):
            stats.skipped_done += 1
            continue
        chosen.add(name)
    return sorted(chosen)


# --- shards ----------------------------------------------------------------------------------------


class ShardWriter:
    """Writes one shard: ``.part`` first, renamed to ``shard-NNNNN.jsonl`` once all its files are in."""

    def __init__(self, shards: Path, index: int, files: list[str], header: dict[str, Any]) -> None:
        self.path = shard_path(shards, index)
        self.part = self.path.with_name(self.path.name + ".part")
        self.files = len(files)
        self.done = 0
        self.part.unlink(missing_ok=True)
        self._w = ManifestWriter(self.part)
        self._w.write([{"type": "shard", "index": index, "files": files}, header])

    def write(self, records: list[dict[str, Any]]) -> None:
        self._w.write(records)
        self.done += sum(1 for r in records if r.get("type") == "image")

    @property
    def complete(self) -> bool:
        return self.done >= self.files

    def finish(self) -> Path:
        self._w.close()
        os.replace(self.part, self.path)
        return self.path

    def abandon(self) -> None:
        self._w.close()


def write_shard(shards: Path, index: int, header: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """A complete shard file from finished records (what a run writes as its results come in)."""
    shards.mkdir(parents=True, exist_ok=True)
    w = ShardWriter(shards, index, [r["path"] for r in records], header)
    w.write(records)
    return w.finish()


def _read_shard(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]] | None:
    """``(run header, image records)`` of a complete shard file, else None."""
    head = run = None
    records: list[dict[str, Any]] = []
    for obj in read_lines(path):
        kind = obj.get("type")
        if kind == "shard" and head is None:
            head = obj
        elif kind == "run" and run is None:
            run = obj
        elif kind == "image" and "path" in obj:
            records.append(obj)
    if head is None or run is None or not isinstance(head.get("files"), list):
        return None
    paths = [r["path"] for r in records]
    if len(paths) != len(head["files"]) or set(paths) != set(head["files"]):
        return None
    return run, records


def _merge_shard(
    path: Path,
    writer: ManifestWriter,
    latest: dict[str, dict[str, Any]],
    run_ids: set[str],
    key: str,
    bulk: BulkOptions,
    stats: BulkStats,
) -> int:
    """Captions, then header + records in one append; then the shard is removed. Returns records added."""
    got = _read_shard(path)
    if got is None or got[0].get("settings_key") != key:
        path.unlink(missing_ok=True)  # incomplete, or other settings: its images are tagged again
        return 0
    run, records = got
    out: list[dict[str, Any]] = []
    if str(run.get("id")) not in run_ids:
        out.append(run)
        run_ids.add(str(run.get("id")))
    added = 0
    for rec in records:
        prev = latest.get(rec["path"])
        if prev is not None and prev.get("run") == rec.get("run"):
            continue  # appended by a merge that was stopped before it removed the shard
        if bulk.sidecar and rec.get("error") is None:
            info = _Info(Path(rec["path"]), rec["bytes"], rec["mtime_ns"], rec["sha256"], rec["width"], rec["height"], prev)
            result, caption_rec = _write_caption(TagResult.from_json(rec), info, bulk)
            if result.error is not None:
                rec = _record(result, info, run, caption_rec)
            else:
                rec.update(caption_rec)
        if rec.get("error") is None:
            stats.tagged += 1
        else:
            stats.failed += 1
        latest[rec["path"]] = rec
        out.append(rec)
        added += 1
    writer.write(out)
    path.unlink()
    return added


# --- on the workers --------------------------------------------------------------------------------


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool, Path)):
        return True
    return isinstance(value, (tuple, list)) and len(value) <= 16 and all(_plain(v) for v in value)


def _probes():
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8), "RGB")
    rgba = Image.fromarray(rng.integers(0, 256, (83, 29, 4), dtype=np.uint8), "RGBA")
    return [rgb, rgba]


def light_copy(tagger):
    """The tagger without its weights (its plain attributes only), if that preprocesses exactly as it does; else None."""
    try:
        light = object.__new__(type(tagger))
        light.__dict__.update({k: v for k, v in vars(tagger).items() if k not in ("tags", "categories") and _plain(v)})
        light = pickle.loads(pickle.dumps(light))
        for img in _probes():
            if not np.array_equal(light.preprocess(img), tagger.preprocess(img)):
                return None
        return light
    except Exception:  # noqa: BLE001 - a backend that needs more than plain attributes decodes in the model stage
        return None


def _describe(model: str, load_kwargs: dict[str, Any], options: TagOptions, bulk: BulkOptions):
    """(in a Ray task) the run header and the preprocessing-only copy of the tagger."""
    from ..api import clear_cache, load_tagger

    tagger = load_tagger(model, **load_kwargs)
    try:
        return run_header(tagger, options, bulk), light_copy(tagger)
    finally:
        del tagger
        clear_cache()


def _decode_batch(batch: dict[str, np.ndarray], *, light, options: TagOptions) -> dict[str, np.ndarray]:
    """(CPU stage) file facts, and decoded + preprocessed pixels when ``light`` can preprocess."""
    from .run import _prepare

    cols: dict[str, list] = {
        k: []
        for k in (
            "path",
            "shard",
            "bytes",
            "mtime_ns",
            "sha256",
            "width",
            "height",
            "decoded",
            "error",
            "density",
            "data",
            "shape",
        )
    }
    for name, shard in zip(batch["path"], batch["shard"]):
        name = str(name)
        path = Path(name)
        size = mtime = 0
        data: bytes | None = None
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
            data = path.read_bytes()
        except OSError:
            pass  # the decoder says what is wrong with it
        sha, (w, h) = (file_sha256(data), _image_size(data)) if data is not None else ("", (None, None))
        error, density, shape, out = "", math.nan, "", b""
        if light is not None:
            prep = _prepare(light, 0, data if data is not None else name, name, options)
            if prep.error is not None:
                error = prep.error
            else:
                arr = np.ascontiguousarray(prep.array, dtype=np.uint8)
                out, shape = arr.tobytes(), ",".join(str(s) for s in arr.shape)
                density = math.nan if prep.density is None else float(prep.density)
        else:  # raw bytes for the model stage; "raw" tells a file read empty from one not read
            out, shape = data or b"", "raw" if data is not None else ""
        for k, v in (
            ("path", name),
            ("shard", int(shard)),
            ("bytes", size),
            ("mtime_ns", mtime),
            ("sha256", sha),
            ("width", -1 if w is None else w),
            ("height", -1 if h is None else h),
            ("decoded", light is not None),
            ("error", error),
            ("density", density),
            ("data", out),
            ("shape", shape),
        ):
            cols[k].append(v)
    return {
        "path": np.array(cols["path"], dtype=object),
        "shard": np.array(cols["shard"], dtype=np.int64),
        "bytes": np.array(cols["bytes"], dtype=np.int64),
        "mtime_ns": np.array(cols["mtime_ns"], dtype=np.int64),
        "sha256": np.array(cols["sha256"], dtype=object),
        "width": np.array(cols["width"], dtype=np.int64),
        "height": np.array(cols["height"], dtype=np.int64),
        "decoded": np.array(cols["decoded"], dtype=bool),
        "error": np.array(cols["error"], dtype=object),
        "density": np.array(cols["density"], dtype=np.float64),
        "data": np.array(cols["data"], dtype=object),
        "shape": np.array(cols["shape"], dtype=object),
    }


class TagStage:
    """(actor) one loaded tagger; a decoded batch -> manifest records (JSON) with their shard numbers.

    A tagloop error (the model does not load here, does not fit its labels, ...) is not an image's
    problem: it comes back as a ``fatal`` row (the pickled error) that the driver raises, since Ray
    would hand the driver only its own wrapper of it.
    """

    def __init__(self, model: str, load_kwargs: dict[str, Any], options: TagOptions, blocklist, max_tags, header) -> None:
        from ..api import load_tagger

        self.options = options
        self.blocklist = blocklist
        self.max_tags = max_tags
        self.header = header
        self.fatal: TagloopError | None = None
        try:
            self.tagger = load_tagger(model, **load_kwargs)
        except TagloopError as e:
            self.tagger, self.fatal = None, e

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fatal is None:
            try:
                return self._tag(batch)
            except TagloopError as e:
                self.fatal = e
        return {
            "shard": np.array([-1], dtype=np.int64),
            "record": np.array([""], dtype=object),
            "fatal": np.array([pickle.dumps(self.fatal)], dtype=object),
        }

    def _tag(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .run import _prepare, _Prepared, _run_group

        n = len(batch["path"])
        group = []
        for i in range(n):
            name = str(batch["path"][i])
            if not batch["decoded"][i]:
                source = bytes(batch["data"][i]) if batch["shape"][i] == "raw" else name
                group.append(_prepare(self.tagger, i, source, name, self.options))
            elif batch["error"][i]:
                group.append(_Prepared(i, name, error=str(batch["error"][i])))
            else:
                shape = tuple(int(s) for s in str(batch["shape"][i]).split(","))
                arr = np.frombuffer(bytes(batch["data"][i]), dtype=np.uint8).reshape(shape)
                density = float(batch["density"][i])
                group.append(_Prepared(i, name, arr, None if math.isnan(density) else density))
        records = []
        for i, result in enumerate(_run_group(self.tagger, group, self.options)):
            if result.error is None and self.blocklist is not None:
                result = dataclasses.replace(result, tags=self.blocklist.apply(result.tags))
            if result.error is None and self.max_tags is not None:
                result.tags = result.tags[: self.max_tags]
            w, h = int(batch["width"][i]), int(batch["height"][i])
            info = _Info(
                Path(result.path),
                int(batch["bytes"][i]),
                int(batch["mtime_ns"][i]),
                str(batch["sha256"][i]),
                None if w < 0 else w,
                None if h < 0 else h,
            )
            records.append(json.dumps(_record(result, info, self.header, None), ensure_ascii=False))
        return {
            "shard": np.asarray(batch["shard"], dtype=np.int64),
            "record": np.array(records, dtype=object),
            "fatal": np.array([b""] * len(records), dtype=object),
        }


# --- the run ---------------------------------------------------------------------------------------


def _tagloop_error(e: BaseException) -> TagloopError | None:
    """The tagloop error inside a Ray error (the model would not load, does not fit its labels, ...)."""
    seen = set()
    stack = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, TagloopError) and type(cur).__module__.startswith("tagloop"):
            return cur
        stack.extend([getattr(cur, "cause", None), cur.__cause__, cur.__context__])
    return None


def _connect(ray, address: str | None) -> bool:
    """Start or join Ray unless the caller already did; True when this call did (and shuts it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a local Ray for this run only
    ray.init(address=address, **kwargs)
    return True


def _compute(
    ray,
    todo: list[str],
    shards: Path,
    *,
    model: str,
    load_kwargs: dict[str, Any],
    run_options: TagOptions,
    blocklist,
    max_tags,
    header: dict[str, Any],
    light,
    shard_size: int,
    num_actors: int,
    gpus: float,
) -> None:
    """Run the pipeline over ``todo``; every shard ends as a complete shard file."""
    batch = max(1, int(run_options.batch_size))
    # small input blocks: a decode task's output (preprocessed pixels) stays a few hundred MB at most
    blocks = max(1, math.ceil(len(todo) / max(ROWS_PER_BLOCK, batch)))
    named = "override_num_blocks" if "override_num_blocks" in inspect.signature(ray.data.from_items).parameters else "parallelism"
    ds = ray.data.from_items([{"path": p, "shard": i // shard_size} for i, p in enumerate(todo)], **{named: blocks})
    # Decoding is its own stage of CPU tasks. max_calls=0 (no limit) is Ray's default for CPU tasks, given
    # explicitly so the stage's remote arguments differ from the actors' and Ray Data does not fuse the two.
    ds = ds.map_batches(
        _decode_batch,
        batch_size=batch,
        batch_format="numpy",
        num_cpus=1,
        max_calls=0,
        fn_kwargs={"light": light, "options": run_options},
    )
    stage_resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
    ds = ds.map_batches(
        TagStage,
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        fn_constructor_kwargs={
            "model": model,
            "load_kwargs": load_kwargs,
            "options": run_options,
            "blocklist": blocklist,
            "max_tags": max_tags,
            "header": header,
        },
        **stage_resources,
    )
    open_shards: dict[int, ShardWriter] = {}
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for fatal in out["fatal"]:
                if len(fatal):
                    raise pickle.loads(bytes(fatal))
            by_shard: dict[int, list[dict[str, Any]]] = {}
            for s, rec in zip(out["shard"], out["record"]):
                by_shard.setdefault(int(s), []).append(json.loads(rec))
            for s, records in by_shard.items():
                w = open_shards.get(s)
                if w is None:
                    w = open_shards[s] = ShardWriter(shards, s, todo[s * shard_size : (s + 1) * shard_size], header)
                w.write(records)
                if w.complete:
                    del open_shards[s]
                    w.finish()
    finally:
        for w in open_shards.values():
            w.abandon()


def run_ray(
    files: list[Path],
    *,
    model: str,
    load_kwargs: dict,
    options: TagOptions,
    bulk: BulkOptions,
    address: str | None = None,
    shard_size: int = 1000,
    num_actors: int | None = None,
    stats: BulkStats | None = None,
) -> BulkStats:
    """Tag ``files`` on Ray (see the module docstring); records go to ``bulk.manifest``, captions beside the images.

    ``address``: a Ray cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``); None starts a local
    Ray, and a Ray this process already started is used as it is. ``num_actors``: model copies
    (default: one per GPU, else half the CPUs). ``load_kwargs`` are :func:`tagloop.load_tagger`'s.
    """
    from ..filters.blocklist import load_blocklist

    bulk.check()
    options.check()
    if bulk.manifest is None:
        raise InputError("the Ray engine writes its results to a manifest: give it (`manifest`).")
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise InputError(f"`shard_size` must be an integer >= 1, not {shard_size!r}.")
    if num_actors is not None and (not isinstance(num_actors, int) or isinstance(num_actors, bool) or num_actors < 1):
        raise InputError(f"`num_actors` must be an integer >= 1, not {num_actors!r}.")
    ray = _import_ray()
    stats = stats if stats is not None else BulkStats()
    started_ns = time.time_ns()
    blocklist = load_blocklist(bulk.filter_files) if bulk.filter_files else None
    run_options = dataclasses.replace(options, prob_floor=bulk.score_floor, max_tags=None if blocklist else options.max_tags)
    max_tags = bulk.max_tags if bulk.max_tags is not None else options.max_tags
    manifest = Path(bulk.manifest)
    shards = shard_dir(manifest)
    load_kwargs = dict(load_kwargs or {})

    started = _connect(ray, address)
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        if num_actors is None:
            num_actors = max(1, int(gpus)) if gpus >= 1 else max(1, int(resources.get("CPU", 2)) // 2)
        describe = ray.remote(_describe).options(num_cpus=1, num_gpus=1 if gpus >= 1 else 0)
        try:
            header, light = ray.get(describe.remote(model, load_kwargs, options, bulk))
            key = header["settings_key"]

            stats.repaired_bytes = repair(manifest)
            latest: dict[str, dict[str, Any]] = {}
            for other in bulk.previous_manifests:  # as run_bulk reads them
                latest.update(latest_records(other))
            records, headers = read_manifest(manifest)
            latest.update(records)
            run_ids = set(headers)
            manifest.parent.mkdir(parents=True, exist_ok=True)
            if shards.is_dir():  # what a stopped run left: finished shards are merged, the rest is redone
                for part in shards.glob(SHARD_GLOB + ".part"):
                    part.unlink(missing_ok=True)
                with ManifestWriter(manifest) as writer:
                    for left in sorted(shards.glob(SHARD_GLOB)):
                        _merge_shard(left, writer, latest, run_ids, key, bulk, stats)

            todo = todo_files(files, latest, key, bulk, stats, started_ns)
            if todo:
                shards.mkdir(parents=True, exist_ok=True)
                _compute(
                    ray,
                    todo,
                    shards,
                    model=model,
                    load_kwargs=load_kwargs,
                    run_options=run_options,
                    blocklist=blocklist,
                    max_tags=max_tags,
                    header=header,
                    light=light,
                    shard_size=shard_size,
                    num_actors=num_actors,
                    gpus=gpus,
                )
        except Exception as e:
            inner = _tagloop_error(e)
            if inner is not None and inner is not e:
                raise inner from None
            raise
        with ManifestWriter(manifest) as writer:
            for done in sorted(shards.glob(SHARD_GLOB)) if shards.is_dir() else []:
                _merge_shard(done, writer, latest, run_ids, key, bulk, stats)
            if header["id"] not in run_ids:  # every run leaves its header, as run_bulk's do
                writer.write([header])
        try:
            shards.rmdir()
        except OSError:
            pass
    finally:
        if started:
            ray.shutdown()
    return stats
