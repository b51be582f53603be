"""The bulk-tagging manifest: append-only JSON Lines, one record per image, a header per run.

Lines (``type``):

* ``run``: one per run that appended to the file: ``id``, ``tagloop_version``, ``started``,
  ``model`` (its ``source``, ``family``, ``backend``, ``sha256``), ``settings`` (the tag options,
  the filter files and ``max_tags``, the score floor) and ``settings_key`` (a hash of model and
  settings: a record made with another key is not "already done").
* ``image``: the ``tagloop tag --format jsonl`` object of one image (``path``, ``threshold``,
  ``edge_density``, ``complexity``, ``tags``, ``rating``, ...) plus ``run``, ``settings_key``,
  ``width``, ``height``, ``bytes``, ``mtime_ns``, ``sha256`` (of the file's bytes), ``scores``
  (``[[name, category, probability], ...]`` for every non-rating tag at or above the floor,
  highest first), ``caption`` (the sidecar written, or null), ``caption_sha256`` and, when the
  caption was merged with one the user had, ``original_caption``. A bad image is a record with
  ``error`` set (and no tags).

The last record of a path wins. Records are appended a batch at a time with one ``write`` and an
``fsync``; a crash can tear only the last line, which :func:`repair` cuts off on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

MANIFEST_VERSION = 1


def repair(path: Path) -> int:
    """Cut a torn last line (no newline, or not JSON) off ``path``; returns the bytes removed."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        # find the start of the last line
        block = 1 << 16
        pos = size
        tail = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut != -1:
                start = pos + cut + 1
                break
        else:
            start = 0
        f.seek(start)
        last = f.read()
        good = last.endswith(b"\n")
        if good:
            try:
                json.loads(last)
            except ValueError:
                good = False
        if good:
            return 0
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
        return size - start


def read_lines(path: Path, end: int | None = None) -> Iterator[dict[str, Any]]:
    """Every whole JSON object line of a manifest (a torn or foreign line is skipped), up to byte ``end``."""
    with open(path, "rb") as f:
        pos = 0
        for raw in f:
            pos += len(raw)
            if end is not None and pos > end:
                return
            if not raw.endswith(b"\n"):
                return
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


def read_manifest(
    path: Path, fields: tuple[str, ...] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """One pass over a manifest: the last ``image`` record of every path, and the ``run`` headers by id.

    ``fields``: keep only these keys of each record (memory stays small for millions of images).
    """
    records: dict[str, dict[str, Any]] = {}
    headers: dict[str, dict[str, Any]] = {}
    if not Path(path).is_file():
        return records, headers
    for obj in read_lines(path):
        kind = obj.get("type")
        if kind == "image" and "path" in obj:
            records[obj["path"]] = obj if fields is None else {k: obj[k] for k in fields if k in obj}
        elif kind == "run" and "id" in obj:
            headers[obj["id"]] = obj
    return records, headers


def scan(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, int], int]:
    """The ``run`` headers, the line number of each path's last record, and the file's size now (one pass)."""
    headers: dict[str, dict[str, Any]] = {}
    last: dict[str, int] = {}
    end = Path(path).stat().st_size
    for n, obj in enumerate(read_lines(path, end)):
        kind = obj.get("type")
        if kind == "image" and "path" in obj:
            last[obj["path"]] = n
        elif kind == "run" and "id" in obj:
            headers[obj["id"]] = obj
    return headers, last, end


def iter_latest(path: Path, last: dict[str, int], end: int) -> Iterator[dict[str, Any]]:
    """The last record of every path, streamed (a second pass after :func:`scan`; lines appended since are not read)."""
    for n, obj in enumerate(read_lines(path, end)):
        if obj.get("type") == "image" and last.get(obj.get("path")) == n:
            yield obj


def latest_records(path: Path, fields: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """The last ``image`` record of every path in the manifest (empty for a missing file)."""
    return read_manifest(path, fields)[0]


def runs(path: Path) -> dict[str, dict[str, Any]]:
    """The ``run`` headers of a manifest, by id."""
    return read_manifest(path)[1]


def settings_key(model: dict[str, Any], settings: dict[str, Any]) -> str:
    """A short hash of the model and the settings that decide a record's tags."""
    blob = json.dumps({"model": model.get("sha256") or model.get("source"), "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class ManifestWriter:
    """Appends whole lines: one ``write`` + flush + fsync per batch of records."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies, as open() does
        self._f = os.fdopen(fd, "ab")
        if new:
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        try:
            dfd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        self._f.write(data)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_dir(manifest: Path) -> Path:
    """Where the shards of a multi-process run of ``manifest`` live: ``MANIFEST.shards/``."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + ".shards")


def merge_shard(manifest: Path, shard: Path) -> int:
    """Append a shard's lines to ``manifest`` (those already there from an interrupted merge are
    left out: a record is the same when path and run match), then remove the shard; returns the
    image records added."""
    manifest, shard = Path(manifest), Path(shard)
    repair(shard)
    have: set[tuple[str, str]] = set()
    runs_there: set[str] = set()
    if manifest.is_file():
        repair(manifest)
        for obj in read_lines(manifest):
            if obj.get("type") == "image":
                have.add((str(obj.get("path")), str(obj.get("run"))))
            elif obj.get("type") == "run":
                runs_there.add(str(obj.get("id")))
    lines = []
    added = 0
    for obj in read_lines(shard):
        if obj.get("type") == "run" and str(obj.get("id")) in runs_there:
            continue
        if obj.get("type") == "image":
            if (str(obj.get("path")), str(obj.get("run"))) in have:
                continue
            added += 1
        lines.append(obj)
    with ManifestWriter(manifest) as w:
        w.write(lines)
    shard.unlink()
    return added
