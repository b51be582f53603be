"""What one server holds: its taggers (loaded once, at start), its generator (resolved at start,
loaded on the first image request), A1111's options, the queue and the reproduce jobs."""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from .errors import ApiError, NotFound
from .settings import ServerSettings
from .worker import Job, Worker

#: A1111's DeepDanbooru caption options and their defaults (FORMATS.md 1.8)
CAPTION_DEFAULTS: dict[str, Any] = {
    "interrogate_deepbooru_score_threshold": 0.5,
    "deepbooru_sort_alpha": True,
    "deepbooru_use_spaces": True,
    "deepbooru_escape": True,
    "deepbooru_filter_tags": "",
    "interrogate_return_ranks": False,
}


@dataclass
class TagRequest:
    """One image of a tag job: prepared in the request's thread, thresholded with its own options."""

    prepared: Any
    options: Any


@dataclass
class Checkpoint:
    """A model clients may pick (``sd_model_checkpoint``), as A1111's ``/sd-models`` lists it."""

    spec: str
    name: str
    path: Path | None
    hash: str | None = None
    sha256: str | None = None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "model_name": self.name,
            "hash": self.hash,
            "sha256": self.sha256,
            "filename": str(self.path) if self.path is not None else self.spec,
            "config": None,
        }


@dataclass
class ReproduceJob:
    job: Job
    folder: Path
    request: dict[str, Any] = field(default_factory=dict)
    result: Any = None


class ServerState:
    """Models, options and queue of one server; routes call it, it never imports FastAPI."""

    def __init__(self, settings: ServerSettings, *, tagger_objects: dict[str, Any] | None = None, generator: Any = None):
        settings.check()
        self.settings = settings
        self.started = time.time()
        self.worker = Worker(settings.queue_size, settings.tag_batch, run_batch=self._run_tag_batch)
        self.taggers: dict[str, Any] = dict(tagger_objects or {})
        self.tagger_specs: dict[str, str] = {}
        self._load_taggers()
        self._generator = generator
        self._generator_lock = threading.Lock()
        self.checkpoints: list[Checkpoint] = self._list_checkpoints()
        self.current_checkpoint: Checkpoint | None = self.checkpoints[0] if self.checkpoints else None
        self.options = self._initial_options()
        self.jobs: OrderedDict[str, ReproduceJob] = OrderedDict()
        self._jobs_tmp: tempfile.TemporaryDirectory | None = None
        self.worker.start()

    # -- taggers -----------------------------------------------------------------------------------

    def _load_taggers(self) -> None:
        from ..api import load_tagger

        s = self.settings
        wanted: dict[str, str] = {}
        if s.tagger:
            wanted["default"] = s.tagger
        wanted.update(s.taggers)
        for name, spec in wanted.items():
            if name in self.taggers:
                continue
            self.taggers[name] = load_tagger(
                spec,
                device=s.device,
                a1111_dir=s.a1111_dir,
                comfyui_dir=s.comfyui_dir,
                allow_pickle=s.allow_pickle,
                **s.tagger_options,
            )
            self.tagger_specs[name] = str(spec)
        if "default" not in self.taggers and self.taggers:
            self.taggers["default"] = next(iter(self.taggers.values()))

    def tagger_names(self) -> list[str]:
        """Names clients may ask for: ``deepdanbooru`` (A1111's name for the server's tagger), the
        default tagger's model name, and every configured name."""
        names: list[str] = []
        if "default" in self.taggers:
            names.append("deepdanbooru")
            names.append(self.tagger_label(self.taggers["default"]))
        names += [n for n in self.taggers if n != "default"]
        return list(dict.fromkeys(names))

    @staticmethod
    def tagger_label(tagger: Any) -> str:
        source = str(getattr(tagger, "source", "") or "tagger")
        return Path(source).name or source

    def tagger_for(self, name: str | None, *, a1111: bool = False) -> Any:
        """The tagger called ``name`` (None: the default), or a 404 "Model not found" as A1111 answers."""
        if not self.taggers:
            raise NotFound("Model not found: this server has no tagger; start it with a `tagger` model.")
        if name is None or name in ("", "deepdanbooru", "deepbooru", "default"):
            return self.taggers["default"]
        if name in self.taggers:
            return self.taggers[name]
        for tagger in self.taggers.values():
            if name == self.tagger_label(tagger):
                return tagger
        known = ", ".join(self.tagger_names())
        raise NotFound(f"Model not found: no tagger named {name!r} on this server (it has {known}).")

    def tag_job(self, tagger: Any, sources: Sequence[Any], names: Sequence[str], options: Sequence[Any]) -> Job:
        """Prepare ``sources`` here (decode, edge density, preprocessing) and queue one tag job."""
        from ..tagger.run import prepare_image

        items = [TagRequest(prepare_image(tagger, src, name, opt), opt) for src, name, opt in zip(sources, names, options)]
        job = Job("tag", batch_key=("tag", id(tagger)), payload=(tagger, items), size=len(items), name="tag")
        return self.worker.submit(job)

    def _run_tag_batch(self, jobs: list[Job]) -> list[Any]:
        from ..tagger.run import run_prepared

        tagger = jobs[0].payload[0]
        items = [item for job in jobs for item in job.payload[1]]
        results = run_prepared(tagger, [i.prepared for i in items], [i.options for i in items])
        out: list[Any] = []
        k = 0
        for job in jobs:
            n = len(job.payload[1])
            out.append(results[k : k + n])
            k += n
        return out

    # -- checkpoints and the generator -------------------------------------------------------------

    def _list_checkpoints(self) -> list[Checkpoint]:
        from ..generator.locate import list_named_files, resolve_model, search_dirs

        s = self.settings
        out: list[Checkpoint] = []
        seen: set[str] = set()
        specs = ([s.model] if s.model else []) + list(s.models)
        for spec in specs:
            source = resolve_model(spec, a1111_dir=s.a1111_dir, comfyui_dir=s.comfyui_dir, allow_pickle=s.allow_pickle)
            key = source.ident
            if key not in seen:
                seen.add(key)
                out.append(Checkpoint(str(spec), source.name, source.path))
        for name, path in list_named_files(search_dirs("checkpoint", (), s.a1111_dir, s.comfyui_dir)).items():
            key = str(path.resolve())
            if key not in seen:
                seen.add(key)
                out.append(Checkpoint(str(path), name, path))
        if out:
            self._hash(out[0])
        return out

    @staticmethod
    def _hash(cp: Checkpoint) -> None:
        if cp.path is not None and cp.path.is_file() and cp.hash is None:
            from ..a1111.hashes import sha256_file

            cp.sha256 = sha256_file(cp.path)
            cp.hash = cp.sha256[:10]

    def find_checkpoint(self, title: str) -> Checkpoint:
        """A checkpoint by A1111 title (``name [hash]``), name, or file name; else a 404 naming them."""
        text = str(title).strip()
        bare = text.split(" [", 1)[0].strip()
        for cp in self.checkpoints:
            if (
                text in (cp.title, cp.name, cp.spec)
                or bare == cp.name
                or (cp.path is not None and bare in (cp.path.name, str(cp.path)))
            ):
                return cp
        known = ", ".join(cp.title for cp in self.checkpoints) or "none"
        raise NotFound(f"Model not found: no checkpoint {text!r} on this server (`sd_model_checkpoint` may be {known}).")

    def select_checkpoint(self, title: str) -> Checkpoint:
        """Switch the generator to another checkpoint (loaded on the next image request)."""
        cp = self.find_checkpoint(title)
        if self.current_checkpoint is None or cp.spec != self.current_checkpoint.spec:
            with self._generator_lock:
                self._hash(cp)
                self.current_checkpoint = cp
                self._generator = None
            import sys

            if "tagloop.generator.models" in sys.modules:  # the old pipeline's memory goes with it
                sys.modules["tagloop.generator.models"].cache_clear()
        self.options["sd_model_checkpoint"] = cp.title
        return cp

    def generator(self) -> Any:
        """The generator of the current checkpoint (resolved now; weights load on its first use)."""
        with self._generator_lock:
            if self._generator is None:
                if self.current_checkpoint is None:
                    raise ApiError(
                        "this server has no Stable Diffusion model; start it with a `model` (a checkpoint, a diffusers "
                        "folder or a hub id).",
                        404,
                    )
                from ..generator.generate import Generator

                s = self.settings
                self._generator = Generator(
                    self.current_checkpoint.spec,
                    vae=s.vae,
                    lora_dirs=s.lora_dirs,
                    embeddings_dirs=s.embeddings_dirs,
                    a1111_dir=s.a1111_dir,
                    comfyui_dir=s.comfyui_dir,
                    device=s.device,
                    dtype=s.dtype,
                    allow_pickle=s.allow_pickle,
                    config=s.generator_config,
                    controlnet_dirs=getattr(s, "controlnet_dirs", ()),
                    progress=False,
                )
            return self._generator

    @property
    def has_generator(self) -> bool:
        return self._generator is not None or self.current_checkpoint is not None

    # -- A1111 options -----------------------------------------------------------------------------

    def _initial_options(self) -> dict[str, Any]:
        from .a1111_schema import default_options

        opts = default_options()
        opts.update(CAPTION_DEFAULTS)
        opts.update({k: v for k, v in self.settings.caption.items()})
        if self.current_checkpoint is not None:
            opts["sd_model_checkpoint"] = self.current_checkpoint.title
        return opts

    def get_options(self) -> dict[str, Any]:
        return copy.deepcopy(self.options)

    def set_options(self, values: dict[str, Any]) -> None:
        """A1111's ``POST /options``: store every key, act on the ones tagloop understands."""
        if not isinstance(values, dict):
            raise InputError("the options body must be a JSON object of option names and values.")
        checkpoint = values.get("sd_model_checkpoint")
        if checkpoint and (self.current_checkpoint is None or checkpoint != self.current_checkpoint.title):
            self.select_checkpoint(str(checkpoint))
        for key, value in values.items():
            if key == "sd_model_checkpoint" and checkpoint:
                continue
            self.options[key] = value

    def caption_options(self) -> dict[str, Any]:
        return {k: self.options.get(k, v) for k, v in CAPTION_DEFAULTS.items()}

    # -- reproduce jobs ----------------------------------------------------------------------------

    def jobs_dir(self) -> Path:
        if self.settings.jobs_dir is not None:
            path = Path(self.settings.jobs_dir)
            path.mkdir(parents=True, exist_ok=True)
            return path
        if self._jobs_tmp is None:
            self._jobs_tmp = tempfile.TemporaryDirectory(prefix="tagloop-serve-")
        return Path(self._jobs_tmp.name)

    def remember(self, rjob: ReproduceJob) -> None:
        self.jobs[rjob.job.id] = rjob
        finished = [k for k, j in self.jobs.items() if j.job.state in ("done", "failed", "cancelled")]
        while len(self.jobs) > self.settings.keep_jobs and finished:
            self.jobs.pop(finished.pop(0), None)

    def close(self) -> None:
        self.worker.close()
        self.worker.join(timeout=30)
        if self._jobs_tmp is not None:
            self._jobs_tmp.cleanup()
