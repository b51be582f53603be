"""File hashes as A1111 writes them into infotext (``Model hash``, ``VAE hash``, ``Lora hashes``).

* ``Model hash`` / ``VAE hash``: the first 10 hex digits of the SHA-256 of the whole file.
* old 8-digit model hash: SHA-256 of the 64 KiB at offset 1 MiB (still accepted by A1111 as an alias).
* ``Lora hashes``: 12 hex digits of the "addnet" hash (SHA-256 of a ``.safetensors`` file after its
  8-byte length and JSON header), unless the file's metadata carries ``sshs_model_hash``.
* ``TI hashes``: 12 hex digits of the file's SHA-256.

Full-file hashes are cached in ``$XDG_CACHE_HOME/tagloop/hashes.json`` (``~/.cache/tagloop``), keyed
by absolute path, size and modification time, so a 6 GB checkpoint is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

BLOCK_SIZE = 1024 * 1024
CACHE_FILE_NAME = "hashes.json"
_lock = threading.Lock()


def cache_dir() -> Path:
    """The user cache folder of tagloop: ``$XDG_CACHE_HOME/tagloop`` or ``~/.cache/tagloop``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "tagloop"


def _cache_path() -> Path:
    return cache_dir() / CACHE_FILE_NAME


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".hashes-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=1, sort_keys=True)
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
    except OSError:
        pass  # a read-only cache folder costs speed, not correctness


def _hash_stream(file, start: int = 0) -> str:
    digest = hashlib.sha256()
    file.seek(start)
    for block in iter(lambda: file.read(BLOCK_SIZE), b""):
        digest.update(block)
    return digest.hexdigest()


def _cached(path: str | Path, kind: str, compute: Callable[[Path], str]) -> str:
    """``compute(path)``, remembered under (absolute path, size, mtime, kind)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = str(resolved)
    cache_path = _cache_path()
    with _lock:
        entry = _read_cache(cache_path).get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime") == stat.st_mtime_ns
        and isinstance(entry.get(kind), str)
    ):
        return entry[kind]
    value = compute(resolved)
    with _lock:
        data = _read_cache(cache_path)
        entry = data.get(key)
        if not (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime_ns):
            entry = {"size": stat.st_size, "mtime": stat.st_mtime_ns}
        entry[kind] = value
        data[key] = entry
        _write_cache(cache_path, data)
    return value


def _sha256_uncached(path: Path) -> str:
    with open(path, "rb") as file:
        return _hash_stream(file)


def _addnet_uncached(path: Path) -> str:
    with open(path, "rb") as file:
        header = file.read(8)
        if len(header) < 8:
            raise ValueError(f"{path.name} is too short to be a .safetensors file (no 8-byte header length).")
        return _hash_stream(file, 8 + int.from_bytes(header, "little"))


def sha256_file(path: str | Path) -> str:
    """Full SHA-256 (64 hex digits) of a file, read in 1 MiB blocks and cached."""
    return _cached(path, "sha256", _sha256_uncached)


def model_hash(path: str | Path) -> str:
    """A1111's ``Model hash``: the first 10 hex digits of the file's SHA-256."""
    return sha256_file(path)[:10]


def vae_hash(path: str | Path) -> str:
    """A1111's ``VAE hash`` (same rule as the model hash)."""
    return sha256_file(path)[:10]


def legacy_model_hash(path: str | Path) -> str:
    """A1111's pre-2023 8-digit hash: SHA-256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as file:
        file.seek(0x100000)
        return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def addnet_hash(path: str | Path) -> str:
    """The kohya "addnet" hash (64 hex) A1111 uses for LoRA files.

    For ``.safetensors``: SHA-256 of the bytes after the 8-byte header length and the JSON header,
    so editing metadata does not change it. Other files: the plain file SHA-256.
    """
    path = Path(path)
    if not _is_safetensors(path):
        return sha256_file(path)
    return _cached(path, "addnet", _addnet_uncached)


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` header (empty when absent or unreadable)."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if size <= 0 or size > 100 * 1024 * 1024:
                return {}
            header = json.loads(file.read(size))
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def lora_short_hash(path: str | Path) -> str:
    """The 12-digit hash A1111 writes in ``Lora hashes``: ``sshs_model_hash`` metadata, else addnet."""
    path = Path(path)
    if _is_safetensors(path):
        stored = safetensors_metadata(path).get("sshs_model_hash")
        if stored:
            return stored[:12]
    return addnet_hash(path)[:12]


def textual_inversion_hash(path: str | Path) -> str:
    """The 12-digit hash A1111 writes in ``TI hashes``."""
    return sha256_file(path)[:12]


def infotext_name(name: str) -> str:
    """A LoRA/embedding name as A1111 writes it in hash lists (``:`` and ``,`` removed)."""
    return name.replace(":", "").replace(",", "")


def hash_list(entries: dict[str, str]) -> str:
    """``{"name": "hash"}`` -> ``"name: hash, name2: hash2"`` (``build_infotext`` quotes it)."""
    return ", ".join(f"{infotext_name(name)}: {value}" for name, value in entries.items())
