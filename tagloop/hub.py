"""Hugging Face hub downloads: cache, resume and progress bars from ``huggingface_hub``.

``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read at call time, so a mirror (or a test's loopback
server) can be chosen per process. Offline or unreachable, a missing file is one sentence naming the
file, the repository and what to do instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import HubError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(spec: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return bool(_REPO_ID.match(spec)) and not Path(spec).exists()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


#: Seconds to wait for the hub to answer a connection before giving up (``TAGLOOP_HUB_TIMEOUT``).
HUB_CONNECT_TIMEOUT = 5.0


def _endpoint() -> str:
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        return endpoint.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def hub_unreachable(endpoint: str | None = None) -> str | None:
    """Why the hub cannot be reached (one attempt, a short timeout), or None when it answers a connection.

    ``huggingface_hub`` retries a failed connection with growing pauses (half a minute offline);
    one TCP connection with a short timeout tells the same in a few seconds at most.
    """
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(endpoint or _endpoint())
    host = url.hostname
    if not host:
        return f"the hub address {endpoint!r} has no host"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        timeout = float(os.environ.get("TAGLOOP_HUB_TIMEOUT", HUB_CONNECT_TIMEOUT))
    except ValueError:
        timeout = HUB_CONNECT_TIMEOUT
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"the hub's host {host} cannot be resolved (no network?)"
    except TimeoutError:
        return f"the hub ({host}) did not answer within {timeout:g} s"
    except OSError as e:
        return f"the hub ({host}:{port}) cannot be reached ({e.strerror or e})"


def download(repo_id: str, filename: str, revision: str | None = None, local_hint: str = "") -> Path:
    """Path of ``filename`` from ``repo_id`` in the hub cache, downloading it if needed.

    The cache is asked first, without any network; then, unless ``HF_HUB_OFFLINE`` is set, the hub
    is tried once with a short timeout before the download, so an unreachable hub is one sentence
    in seconds rather than a series of retries.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - a dependency
        raise HubError("huggingface_hub is not installed: pip install huggingface_hub") from e
    endpoint = os.environ.get("HF_ENDPOINT") or None
    hint = f" {local_hint}" if local_hint else ""
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    except Exception:  # a cache layout this huggingface_hub version does not know: ask the hub
        pass
    if _offline():
        raise HubError(f"{filename} of {repo_id} is not in the hub cache and HF_HUB_OFFLINE is set.{hint}")
    why = hub_unreachable(endpoint)
    if why is not None:
        raise HubError(f"{filename} of {repo_id} is not in the hub cache and {why}.{hint}")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint))
    except LocalEntryNotFoundError as e:
        raise HubError(f"{filename} of {repo_id} is not in the hub cache and the hub cannot be reached.{hint}") from e
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
