"""What a server runs with: its models, its limits and A1111's caption options, in one dataclass.

``tagloop serve`` fills it from its options (and so from ``tagloop.toml``'s ``[serve]`` table);
Python callers build it directly. Every limit is checked before any work is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: A1111's default port; clients (SillyTavern, Open WebUI, webuiapi) assume it.
DEFAULT_PORT = 7860


@dataclass
class ServerLimits:
    """Caps on one request, so no client can exhaust the machine or stall the worker."""

    #: the request body, in bytes (a base64 image is 4/3 of its file)
    max_body_bytes: int = 64 * 1024 * 1024
    #: pixels of one decoded image (decompression bombs are refused before decoding)
    max_pixels: int = 40_000_000
    #: images in one tag or upscale request
    max_images: int = 64
    #: sampling steps of one generation request
    max_steps: int = 150
    #: width and height of one generated image
    max_size: int = 2048
    #: images of one generation request (batch_size x n_iter)
    max_batch: int = 16
    #: variants x rounds of one reproduce job
    max_variants: int = 32

    def check(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"server limit `{name}` must be a whole number >= 1, not {value!r}.")


@dataclass
class ServerSettings:
    """One server: where it listens, which models it has, how large its queue and requests may be.

    tagger: the tagger model (as the ``tag`` command's model setting); named ``deepdanbooru`` for
    A1111's interrogate route and by its own name; ``taggers`` adds more by name (name -> model).
    model: the Stable Diffusion checkpoint (as the ``generate`` command's), loaded on the first image
    request; ``models`` are more checkpoints clients may switch to through ``sd_model_checkpoint``
    (names in ``a1111_dir``/``comfyui_dir`` are listed too).
    api_auth: ``user:password`` pairs (comma-separated) for HTTP basic auth on every route.
    queue_size: requests waiting for the worker at most; one more is answered 503 with Retry-After.
    tag_batch: tag requests waiting together run as one forward pass of at most this many images.
    caption: A1111's DeepDanbooru caption options (``interrogate_deepbooru_score_threshold``,
    ``deepbooru_sort_alpha``, ``deepbooru_use_spaces``, ``deepbooru_escape``,
    ``deepbooru_filter_tags``, ``interrogate_return_ranks``) over A1111's defaults.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tagger: str | None = None
    taggers: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    models: list[str] = field(default_factory=list)
    device: str = "auto"
    dtype: str = "auto"
    a1111_dir: str | Path | None = None
    comfyui_dir: str | Path | None = None
    lora_dirs: list[str | Path] = field(default_factory=list)
    embeddings_dirs: list[str | Path] = field(default_factory=list)
    #: folders of ControlNet models named by ``alwayson_scripts.controlnet`` units (A1111/ComfyUI folders too)
    controlnet_dirs: list[str | Path] = field(default_factory=list)
    vae: str | Path | None = None
    generator_config: str | Path | None = None
    allow_pickle: bool = False
    api_auth: str | None = None
    queue_size: int = 64
    tag_batch: int = 32
    limits: ServerLimits = field(default_factory=ServerLimits)
    caption: dict[str, Any] = field(default_factory=dict)
    #: where reproduce jobs write their folders (a temporary folder when None)
    jobs_dir: str | Path | None = None
    #: finished jobs kept for ``/tagloop/v1/jobs/{id}`` (the oldest are forgotten first)
    keep_jobs: int = 100
    #: tagger load settings beyond the model (``dd_preprocess``, ``tags_file``, ``backend``...)
    tagger_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot be used."""
        if not isinstance(self.port, int) or not (0 <= self.port <= 65535):
            raise ConfigError(f"server `port` must be 0..65535, not {self.port!r}.")
        for name in ("queue_size", "tag_batch", "keep_jobs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"server `{name}` must be a whole number >= 1, not {v!r}.")
        self.limits.check()
        self.auth_pairs()
        for name in self.taggers:
            if not name or name.lower() in ("clip",):
                raise ConfigError(f"tagger name {name!r} in `taggers` cannot be used; pick another name.")

    def auth_pairs(self) -> dict[str, str]:
        """``api_auth`` as user -> password (A1111's ``--api-auth user:pass,user2:pass2``)."""
        if not self.api_auth:
            return {}
        pairs: dict[str, str] = {}
        for item in str(self.api_auth).split(","):
            item = item.strip()
            if not item:
                continue
            user, sep, password = item.partition(":")
            if not sep or not user:
                raise ConfigError(f"`api_auth` must be user:password (comma-separated for several), not {item!r}.")
            pairs[user] = password
        return pairs
