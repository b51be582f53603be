"""Bulk tagging: sidecar captions and a resumable manifest over folders of any size.

:func:`run_bulk` tags files with the batched runner (:func:`tagloop.tagger.run.tag_sources`) and
yields each image's result (after the blocklist and ``max_tags``) in input order. Along the way:

* **captions** (``sidecar``): ``IMAGE_STEM.txt`` written atomically; ``existing`` decides what
  happens to a caption the user already has: ``overwrite``, ``skip`` (the image is not tagged),
  ``append`` or ``prepend`` (merged, duplicates dropped; the user's own text is kept in the
  manifest, so a re-run merges with it again instead of with its own output).
* **the manifest** (``manifest``): see :mod:`tagloop.tagger.manifest`. Records are appended a
  batch at a time after the batch's captions were written, so ``kill -9`` loses at most the batch in
  flight and never records an image whose caption is missing.
* **resume**: an image already recorded with the same bytes (size and mtime, else its SHA-256)
  and the same model and settings is skipped; ``overwrite=True`` tags everything again. A torn
  last manifest line is cut off first, and temporary files a killed run left beside captions are
  removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..fileio import atomic_write_text
from ..tagtext import TagPolicy, canonical, split_tags
from .captions import caption
from .manifest import MANIFEST_VERSION, ManifestWriter, latest_records, repair, settings_key
from .result import TagResult

EXISTING_MODES = ("overwrite", "skip", "append", "prepend")
#: What resume reads of each record (not the scores: memory stays small for millions of images).
RESUME_FIELDS = ("path", "settings_key", "bytes", "mtime_ns", "sha256", "error", "caption", "caption_sha256", "original_caption")
DEFAULT_SCORE_FLOOR = 0.05


@dataclass
class BulkOptions:
    """What a bulk run writes besides its results (see the module docstring)."""

    manifest: Path | None = None
    sidecar: bool = False
    caption_extension: str = ".txt"
    existing: str = "overwrite"
    overwrite: bool = False
    score_floor: float = DEFAULT_SCORE_FLOOR
    policy: TagPolicy = field(default_factory=TagPolicy)
    show_scores: bool = False
    include_rating: bool = False
    character_first: bool = False
    filter_files: tuple[str, ...] = ()
    max_tags: int | None = None
    #: more manifests whose records count as done (a worker of a multi-process run reads the main one)
    previous_manifests: tuple[Path, ...] = ()

    def check(self) -> None:
        from ..errors import InputError

        if self.existing not in EXISTING_MODES:
            raise InputError(f"`existing` must be one of {', '.join(EXISTING_MODES)}, not {self.existing!r}.")
        if not 0.0 <= float(self.score_floor) <= 1.0:
            raise InputError(f"`score_floor` must be in 0..1, not {self.score_floor!r}.")


@dataclass
class BulkStats:
    tagged: int = 0
    failed: int = 0
    skipped_done: int = 0  # already in the manifest with the same content and settings
    skipped_existing: int = 0  # had a caption and `existing` is skip
    repaired_bytes: int = 0
    removed_temp: int = 0


@dataclass
class _Info:
    path: Path
    size: int
    mtime_ns: int
    sha256: str
    width: int | None = None
    height: int | None = None
    previous: dict[str, Any] | None = None


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None, None


def merge_caption(mine: str, theirs: str | None, mode: str) -> str:
    """``mine`` merged with the user's caption ``theirs`` (``append``: theirs first), duplicates dropped."""
    if not theirs or not theirs.strip() or mode in ("overwrite", "skip"):
        return mine
    first, second = (theirs, mine) if mode == "append" else (mine, theirs)
    seen: set[str] = set()
    parts = []
    for tag in split_tags(first) + split_tags(second):
        key = canonical(tag)
        if key and key not in seen:
            seen.add(key)
            parts.append(tag.strip())
    return ", ".join(parts)


def run_header(tagger, options, bulk: BulkOptions) -> dict[str, Any]:
    """The manifest's ``run`` line for this model and these settings."""
    from .. import __version__
    from ..report.build import tag_options_json

    sha = None
    src = Path(tagger.source) if tagger.source else None
    if src is not None and src.is_file():
        from ..a1111.hashes import sha256_file

        sha = sha256_file(src)
    model = {"source": tagger.source, "family": tagger.family, "backend": tagger.backend, "sha256": sha}
    settings = {
        "tag": tag_options_json(options),
        "filters": [str(f) for f in bulk.filter_files],
        "max_tags": bulk.max_tags,
        "score_floor": bulk.score_floor,
        "caption": caption_settings(bulk),
    }
    return {
        "type": "run",
        "manifest_version": MANIFEST_VERSION,
        "id": uuid.uuid4().hex[:12],
        "tagloop_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "settings": settings,
        "settings_key": settings_key(model, settings),
    }


def caption_settings(bulk: BulkOptions) -> dict[str, Any] | None:
    """How captions were written (None without sidecars): what ``tagloop retag`` writes them with again."""
    if not bulk.sidecar:
        return None
    return {
        "extension": bulk.caption_extension,
        "use_spaces": bulk.policy.use_spaces,
        "escape": bulk.policy.escape,
        "scores": bulk.show_scores,
        "include_rating": bulk.include_rating,
        "character_first": bulk.character_first,
        "existing": bulk.existing,
    }


def _remove_temp_captions(folder: Path, ext: str, before_ns: int) -> int:
    """Temporary caption files a killed run's atomic writes left in ``folder``: ``.STEM{ext}.XXXX.tmp``
    beside an image ``STEM.*``, older than this run (so never another writer's file in flight)."""
    from .preprocess import IMAGE_EXTENSIONS

    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    stems = {os.path.splitext(e.name)[0] for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS}
    n = 0
    for e in entries:
        name = e.name
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        target = name[1:].rsplit(".", 2)[0]  # ".a.txt.k3j2x.tmp" -> "a.txt"
        if not target.endswith(ext) or target[: -len(ext)] not in stems:
            continue
        try:
            if e.is_file() and e.stat().st_mtime_ns < before_ns:
                os.unlink(e.path)
                n += 1
        except OSError:
            pass
    return n


def run_bulk(
    tagger,
    files: Iterable[Path],
    options,
    bulk: BulkOptions,
    stats: BulkStats | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
) -> Iterator[TagResult]:
    """Tag ``files``; write captions and manifest records as described in the module docstring.

    Yields one :class:`TagResult` per tagged image (``error`` set for a bad one, or for a caption
    that could not be written); skipped images are counted in ``stats`` and passed to ``on_skip``.
    """
    from ..filters.blocklist import load_blocklist
    from .run import tag_sources

    bulk.check()
    stats = stats if stats is not None else BulkStats()
    blocklist = load_blocklist(bulk.filter_files) if bulk.filter_files else None
    run_options = dataclasses.replace(options, prob_floor=bulk.score_floor, max_tags=None if blocklist else options.max_tags)
    max_tags = bulk.max_tags if bulk.max_tags is not None else options.max_tags
    previous: dict[str, dict[str, Any]] = {}
    writer = None
    header = None
    for other in bulk.previous_manifests:
        previous.update(latest_records(other, RESUME_FIELDS))
    if bulk.manifest is not None:
        stats.repaired_bytes = repair(bulk.manifest)
        previous.update(latest_records(bulk.manifest, RESUME_FIELDS))
        header = run_header(tagger, options, bulk)
    key = header["settings_key"] if header else None
    infos: dict[str, _Info] = {}
    seen_dirs: set[Path] = set()
    started_ns = time.time_ns()

    def todo() -> Iterator[tuple[bytes | str, str]]:
        for path in files:
            path = Path(path)
            name = str(path)
            target = path.with_suffix(bulk.caption_extension)
            rec = previous.get(name)
            if keeps_its_caption(path, rec, bulk, stats, seen_dirs, started_ns):
                if on_skip is not None:
                    on_skip(path, "has a caption file")
                continue
            try:
                st = path.stat()
            except OSError:
                infos[name] = _Info(path, 0, 0, "", previous=rec)
                yield name, name  # the decoder says what is wrong with it
                continue
            if already_done(rec, key, bulk, target, size=st.st_size, mtime_ns=st.st_mtime_ns):
                stats.skipped_done += 1
                if on_skip is not None:
                    on_skip(path, "already in the manifest")
                continue
            try:
                data = path.read_bytes()
            except OSError:
                infos[name] = _Info(path, st.st_size, st.st_mtime_ns, "", previous=rec)
                yield name, name
                continue
            sha = file_sha256(data)
            if already_done(rec, key, bulk, target, sha256=sha):  # touched, not changed
                stats.skipped_done += 1
                if on_skip is not None:
                    on_skip(path, "already in the manifest")
                continue
            w, h = _image_size(data)
            infos[name] = _Info(path, st.st_size, st.st_mtime_ns, sha, w, h, rec)
            yield data, name

    pending: list[dict[str, Any]] = []
    batch = max(1, int(options.batch_size))

    def flush() -> None:
        if writer is not None and pending:
            writer.write(pending)
        pending.clear()

    gen = todo()
    pairs = _Pairs(gen)
    try:
        if bulk.manifest is not None:
            writer = ManifestWriter(bulk.manifest)
            writer.write([header])
        for result in tag_sources(tagger, pairs.sources(), run_options, names=pairs.names()):
            info = infos.pop(result.path)
            if result.error is None and blocklist is not None:
                result = dataclasses.replace(result, tags=blocklist.apply(result.tags))
            if result.error is None and max_tags is not None:
                result.tags = result.tags[:max_tags]
            record: dict[str, Any] | None = None
            if result.error is None and bulk.sidecar:
                result, record = _write_caption(result, info, bulk)
            if result.error is None:
                stats.tagged += 1
            else:
                stats.failed += 1
            if writer is not None:
                pending.append(_record(result, info, header, record))
                if len(pending) >= batch:
                    flush()
            yield result
    finally:
        flush()
        if writer is not None:
            writer.close()


class _Pairs:
    """Splits an iterator of ``(data, name)`` into the two lazy iterators tag_sources takes."""

    def __init__(self, it: Iterator[tuple[bytes | str, str]]) -> None:
        self._it = it
        self._names: list[str] = []

    def sources(self) -> Iterator[bytes | str]:
        for data, name in self._it:
            self._names.append(name)
            yield data

    def names(self) -> Iterator[str]:
        while True:
            if self._names:
                yield self._names.pop(0)
            else:  # tag_sources asks for a name right after the source it belongs to
                return


def keeps_its_caption(
    path: Path, rec: dict[str, Any] | None, bulk: BulkOptions, stats: BulkStats, seen_dirs: set[Path], started_ns: int
) -> bool:
    """First look at an image of a bulk run: a killed run's temporary captions in its folder are
    removed (once a folder), and with ``existing`` skip, an image whose caption is the user's is
    left alone (counted in ``stats``; True)."""
    if bulk.sidecar and path.parent not in seen_dirs:
        seen_dirs.add(path.parent)
        stats.removed_temp += _remove_temp_captions(path.parent, bulk.caption_extension, started_ns)
    target = path.with_suffix(bulk.caption_extension)
    if bulk.sidecar and bulk.existing == "skip" and target.exists() and not _ours(rec, target):
        stats.skipped_existing += 1
        return True
    return False


def already_done(
    rec: dict[str, Any] | None,
    key: str | None,
    bulk: BulkOptions,
    target: Path,
    *,
    size: int | None = None,
    mtime_ns: int | None = None,
    sha256: str | None = None,
) -> bool:
    """Whether an image needs no tagging: recorded with these settings (``key``), its caption the
    recorded one, and the same file: size and mtime as recorded, or else the same SHA-256."""
    if rec is None or bulk.overwrite or rec.get("settings_key") != key:
        return False
    if bulk.sidecar and rec.get("error") is None and not _ours(rec, target):
        return False  # lost (a power cut) or edited since: tagged again
    if size is not None and rec.get("bytes") == size and rec.get("mtime_ns") == mtime_ns:
        return True
    return sha256 is not None and rec.get("sha256") == sha256


def _ours(rec: dict[str, Any] | None, target: Path) -> bool:
    """Whether the caption file is the one this manifest's last run wrote (same content hash)."""
    if rec is None or not rec.get("caption_sha256"):
        return False
    try:
        return file_sha256(target.read_bytes()) == rec["caption_sha256"]
    except OSError:
        return False


def _write_caption(result: TagResult, info: _Info, bulk: BulkOptions) -> tuple[TagResult, dict[str, Any]]:
    text = caption(result, bulk.policy, bulk.show_scores, bulk.include_rating, bulk.character_first)
    target = info.path.with_suffix(bulk.caption_extension)
    original = None
    if bulk.existing in ("append", "prepend"):
        prev = info.previous
        if prev is not None and _ours(prev, target):
            original = prev.get("original_caption")
        elif target.exists():
            try:
                original = target.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                original = None
        text = merge_caption(text, original, bulk.existing)
    data = text + "\n"
    try:
        atomic_write_text(target, data, durable=False)  # checked by content on resume: see _ours
    except OSError as e:
        return dataclasses.replace(result, error=f"cannot write its caption {target} ({e.strerror or e})"), {}
    rec = {"caption": str(target), "caption_sha256": file_sha256(data.encode("utf-8"))}
    if original is not None:
        rec["original_caption"] = original
    return result, rec


def _record(result: TagResult, info: _Info, header: dict[str, Any] | None, caption_rec: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "image", **result.to_json()}
    out.update(
        run=header["id"] if header else None,
        settings_key=header["settings_key"] if header else None,
        width=info.width,
        height=info.height,
        bytes=info.size,
        mtime_ns=info.mtime_ns,
        sha256=info.sha256,
    )
    if result.error is None:
        out["scores"] = [[t.name, t.category, round(float(t.score), 6)] for t in (result.probs or [])]
    out["caption"] = None
    out.update(caption_rec or {})
    return out
