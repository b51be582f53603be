"""Hugging Face hub downloads: cache, resume and progress bars from ``huggingface_hub``.

``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read at call time, so a mirror (or a test's loopback
server) can be chosen per process. Offline or unreachable, a missing file is one sentence naming the
file, the repository and what to do instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class HubError(Exception):
    """A file could not be had from the hub; the message says which and what to do."""


def looks_like_repo_id(spec: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return bool(_REPO_ID.match(spec)) and not Path(spec).exists()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def download(repo_id: str, filename: str, revision: str | None = None, local_hint: str = "") -> Path:
    """Path of ``filename`` from ``repo_id`` in the hub cache, downloading it if needed."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - a dependency
        raise HubError("huggingface_hub is not installed: pip install huggingface_hub") from e
    endpoint = os.environ.get("HF_ENDPOINT") or None
    offline = _offline()
    hint = f" {local_hint}" if local_hint else ""
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                endpoint=endpoint,
                local_files_only=offline,
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError) as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise HubError(f"{filename} of {repo_id} is not in the hub cache and {why}.{hint}") from e
    except EntryNotFoundError as e:
        raise HubError(f"{repo_id} has no file {filename}.{hint}") from e
    except RepositoryNotFoundError as e:
        raise HubError(f"hub repository {repo_id} does not exist (or is private).{hint}") from e
    except OSError as e:
        raise HubError(f"downloading {filename} of {repo_id} failed: {e}.{hint}") from e
    except Exception as e:  # httpx/requests errors differ between huggingface_hub versions
        raise HubError(f"downloading {filename} of {repo_id} failed: {type(e).__name__}: {e}.{hint}") from e


def download_folder(repo_id: str, filenames: list[str], revision: str | None = None, local_hint: str = "") -> Path:
    """Download every file in ``filenames``; returns the snapshot folder that holds them all."""
    paths = [download(repo_id, f, revision, local_hint) for f in filenames]
    return paths[0].parent
