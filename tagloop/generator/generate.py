"""Prompts to PNGs, as AUTOMATIC1111 makes them: seeds, batches, img2img, hires fix, infotext.

:class:`Generator` holds one model (loaded on first use, cached per process) and turns
:class:`GenerationSettings` into :class:`GeneratedImage` values, written as ``00000-SEED.png`` with the
A1111 ``parameters`` text when an output folder is given.

Seeds follow A1111: ``-1`` draws a random seed and records it; image ``k`` of a prompt gets
``seed + k`` from its own ``torch.Generator`` (on the GPU when generating there, as A1111's default
"GPU" RNG), so an image does not depend on which batch it landed in. Several prompts (and several
images of one prompt) are packed into forwards of up to ``max_batch`` images instead of one pipeline
call per prompt; each prompt restarts at the base seed, as A1111's "prompts from file" does.

Prompts for SD1/SD2/SDXL are encoded here with A1111 semantics (weights, ``BREAK``, 75-token chunks,
clip skip) by :mod:`tagloop.generator.encode` and passed to diffusers as embeddings; SD3 gets the
plain text. Everything is validated before a model is loaded.
"""

from __future__ import annotations

import contextlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from ..devices import empty_cache, is_oom
from .models import (
    GeneratorError,
    LoadedModel,
    LoadOptions,
    LoraUse,
    ModelFileError,
    ModelNotFoundError,
    ModelSource,
    apply_loras,
    expand_embeddings,
    find_embeddings,
    find_lora,
    load_embeddings,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_model,
    resolve_vae,
    search_dirs,
    set_memory_options,
    short_file_hash,
)
from .settings import (  # noqa: F401  (re-exported: the settings are part of this module's API)
    EMPHASIS_MODES,
    FAMILY_DEFAULTS,
    INFOTEXT_IMAGE_EXTS,
    MAX_SEED,
    FamilyDefaults,
    GeneratedImage,
    GenerationSettings,
    SettingsError,
    check_settings,
    make_settings,
    read_prompt_file,
    read_prompt_json,
    settings_from_infotext,
    with_family_defaults,
)


@dataclass
class _Job:
    index: int  # order of the image in the request
    pair: int  # which prompt pair
    positive: str
    negative: str
    clean_positive: str
    clean_negative: str
    seed: int
    loras: tuple[LoraUse, ...]
    path: Path | None = None  # the PNG this image is written to (planned before any work)


@dataclass
class _ControlRun:
    """One control unit of a request: its resolved and loaded ControlNet and its condition image."""

    index: int
    unit: Any
    source: Any
    model: Any
    condition: Any
    hash: str | None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _plain_text(text: str) -> str:
    """Prompt text without A1111 emphasis syntax (for SD3, whose own encoders read plain text)."""
    from ..a1111.prompt_parser import is_break, parse_prompt_attention

    return "".join(t for t, w in parse_prompt_attention(text) if not is_break((t, w))).strip() if text.strip() else ""


def _check_config_family(config: Path, source: ModelSource) -> None:
    """A ``config`` folder of another family than the checkpoint is refused before any weights load."""
    from .models import family_of_folder, family_words

    family = family_of_folder(config)
    if family != source.family:
        raise ModelFileError(
            f"the config folder {config} is an {family_words(family)} pipeline but {source.path.name} is an "
            f"{family_words(source.family, source.variant)} checkpoint; give `config` a diffusers folder of the same model."
        )


class Generator:
    """One Stable Diffusion model, loaded once, generating A1111-compatible images.

    ``model`` is a checkpoint file, a diffusers folder, a name in ``a1111_dir``/``comfyui_dir``, or a hub
    id. It is resolved (and recognised) at construction; weights load on the first :meth:`generate`.
    ``progress``: tagloop's and diffusers' progress bars. ``quiet`` (default: ``not progress``):
    diffusers, transformers and huggingface_hub print nothing while this generator loads and
    generates (their logging and bars are restored after each call); tagloop's own notices still go
    to ``notice``. Not quiet, a warning those libraries repeat on every load is said once per process.

    Example::

        gen = Generator("models/Stable-diffusion/anything-v5.safetensors", lora_dirs=["models/Lora"])
        images = gen.generate(GenerationSettings(prompt="1girl, (silver hair:1.2)", seed=42, out_dir=Path("out")))
    """

    def __init__(
        self,
        model: str | Path,
        *,
        vae: str | Path | None = None,
        lora_dirs: Iterable[str | Path] = (),
        embeddings_dirs: Iterable[str | Path] = (),
        a1111_dir: str | Path | None = None,
        comfyui_dir: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        offload: Literal["none", "model", "sequential"] = "none",
        vae_tiling: bool = False,
        attention_slicing: bool = False,
        compile: bool = False,
        allow_pickle: bool = False,
        config: str | Path | None = None,
        controlnet_dirs: Iterable[str | Path] = (),
        progress: bool = True,
        notice: Callable[[str], None] = _stderr,
        quiet: bool | None = None,
    ) -> None:
        if offload not in ("none", "model", "sequential"):
            raise SettingsError(f"`offload` must be none, model or sequential, not {offload!r}.")
        self.notice = notice
        self.progress = progress
        # quiet: diffusers/transformers say nothing (no warnings, no bars) while this generator works
        self.quiet = (not progress) if quiet is None else bool(quiet)
        self.source: ModelSource = resolve_model(model, a1111_dir=a1111_dir, comfyui_dir=comfyui_dir, allow_pickle=allow_pickle)
        self.device = resolve_device(device)
        compute, storage = resolve_dtype(dtype, self.device, self.source)
        vae_path = resolve_vae(vae, a1111_dir=a1111_dir, comfyui_dir=comfyui_dir, allow_pickle=allow_pickle) if vae else None
        cfg = Path(config).expanduser() if config else None
        if cfg is not None and not (cfg / "model_index.json").is_file():
            raise GeneratorError(
                f"config folder {cfg} has no model_index.json; give a local diffusers folder of the same family."
            )
        if cfg is not None and self.source.kind == "single_file":
            _check_config_family(cfg, self.source)
        self.options = LoadOptions(
            device=self.device,
            compute_dtype=compute,
            storage_dtype=storage,
            vae=vae_path,
            config=cfg,
            offload=offload,
            compile=compile,
            allow_pickle=allow_pickle,
        )
        self.vae_tiling = vae_tiling
        self.attention_slicing = attention_slicing
        self.lora_dirs = search_dirs("lora", lora_dirs, a1111_dir, comfyui_dir)
        self.embedding_dirs = search_dirs("embedding", embeddings_dirs, a1111_dir, comfyui_dir)
        #: folders searched for ControlNet names (``controlnet_dirs``, then A1111's and ComfyUI's)
        self.controlnet_dirs = search_dirs("controlnet", controlnet_dirs, a1111_dir, comfyui_dir)
        self._loaded: LoadedModel | None = None
        self._said: set[str] = set()
        self._hashes: dict[Path, str] = {}
        #: called after every sampling step as ``hook(step, steps)``; a True return stops the
        #: generation there (A1111's interrupt: the images so far are decoded and returned)
        self.step_hook: Callable[[int, int], bool] | None = None

    @property
    def family(self) -> str:
        return self.source.family

    def _say(self, msg: str | None) -> None:
        if msg and msg not in self._said:
            self._said.add(msg)
            self.notice(msg)

    # -- validation ------------------------------------------------------------------------------

    def prepare(self, settings: GenerationSettings) -> tuple[GenerationSettings, list[_Job], Any]:
        """Validate ``settings`` against this model and plan the images; loads no weights."""
        from ..a1111.prompt_parser import extract_extra_networks

        check_settings(settings, self.family)
        if self.family == "sd3":
            from ..a1111.prompt_parser import strip_extra_networks
            from .schedule import refuse_sd3

            refuse_sd3([tuple(strip_extra_networks(t) for t in pair) for pair in settings.pairs()])
        init = None
        if settings.init_image is not None:
            init = _load_init_image(settings.init_image)
        if settings.control:
            self._control_sources(settings)  # models named and of this family, images readable
        if settings.mask_image is not None:
            from .inpaint import load_mask_image

            load_mask_image(settings.mask_image)  # a mask that cannot be read fails before any weights load
        s = with_family_defaults(settings, self.family, init.size if init is not None else None)
        base_seed = s.seed if s.seed != -1 else random.randint(0, MAX_SEED)
        per_prompt = s.batch_size * s.batch_count
        jobs: list[_Job] = []
        lora_cache: dict[str, Path] = {}
        for pi, (pos, neg) in enumerate(s.pairs()):
            clean_pos, nets = extract_extra_networks(pos)
            clean_neg, neg_nets = extract_extra_networks(neg)
            if neg_nets:
                self._say("extra networks in the negative prompt are ignored (A1111 applies them from the positive prompt).")
            uses: list[LoraUse] = []
            for net in nets:
                if net.kind not in ("lora", "lyco"):
                    self._say(f"<{net.kind}:{net.name}> is not supported by tagloop and is ignored.")
                    continue
                path = lora_cache.get(net.name) or find_lora(net.name, self.lora_dirs)
                if path is None and not self.lora_dirs:
                    raise ModelNotFoundError(
                        f"LoRA {net.name!r} named in the prompt was not found: no LoRA folder is set; set `lora_dirs` to "
                        f"the folder that holds {net.name}.safetensors (or `a1111_dir`/`comfyui_dir` to your WebUI or "
                        f"ComfyUI folder), or remove the <lora:{net.name}:...> tag."
                    )
                if path is None:
                    where = ", ".join(str(d) for d in self.lora_dirs)
                    raise ModelNotFoundError(
                        f"LoRA {net.name!r} named in the prompt is not in {where}; add {net.name}.safetensors there or remove the <lora:{net.name}:...> tag."
                    )
                lora_cache[net.name] = path
                uses.append(LoraUse(path, net.name, float(net.te_multiplier), float(net.unet_multiplier)))
            for k in range(per_prompt):
                seed = (base_seed + k) % (MAX_SEED + 1)
                jobs.append(_Job(len(jobs), pi, pos, neg, clean_pos, clean_neg, seed, tuple(uses)))
        if s.out_dir is not None:
            self._plan_outputs(s, jobs)
        return s, jobs, init

    def _plan_outputs(self, s: GenerationSettings, jobs: list[_Job]) -> None:
        """Give every job the exact PNG path it will be written to, and refuse outputs over inputs.

        The names continue the folder's A1111 counter (``00000-SEED.png``), one per image in order,
        skipping names that are taken. Before any weights load, those paths are compared (as files on
        disk) with the run's inputs: the init image, the infotext file, the model, VAE and LoRA files.
        """
        from ..a1111.infotext import plan_image_paths
        from ..errors import OutputPathError
        from ..fileio import check_outputs

        out = Path(s.out_dir)
        if out.exists() and not out.is_dir():
            raise OutputPathError(f"`out_dir` {out} is a file, not a folder; give a folder for the images.")
        for job, path in zip(jobs, plan_image_paths(out, [j.seed for j in jobs])):
            job.path = path
        outputs = [("the output image in `out_dir`", j.path) for j in jobs]
        if s.control:
            from .control import condition_path

            outputs += [
                ("a ControlNet condition image in `out_dir`", condition_path(j.path, i))
                for j in jobs
                for i in range(len(s.control))
            ]
        check_outputs(outputs, self._input_files(s, jobs))

    def _input_files(self, s: GenerationSettings, jobs: list[_Job]) -> list[Path]:
        """The files this run reads, which no output may be written over."""
        inputs: list[Path] = []
        if isinstance(s.init_image, (str, Path)):
            inputs.append(Path(s.init_image))
        if isinstance(s.mask_image, (str, Path)):
            inputs.append(Path(s.mask_image))
        if s.infotext_file is not None:
            inputs.append(Path(s.infotext_file))
        if self.source.path is not None and self.source.kind == "single_file":
            inputs.append(self.source.path)
        if self.options.vae is not None and self.options.vae.is_file():
            inputs.append(self.options.vae)
        inputs += sorted({u.path for j in jobs for u in j.loras})
        for unit in s.control:
            if isinstance(unit.image, (str, Path)):
                inputs.append(Path(unit.image))
            model = Path(str(unit.model)).expanduser()
            if model.is_file():
                inputs.append(model)
        return inputs

    # -- ControlNet ------------------------------------------------------------------------------

    def _control_sources(self, s: GenerationSettings) -> list:
        """Each control unit's ControlNet resolved and checked against this checkpoint's family, and its
        image read (no weights load)."""
        from .control import base_context_dim, check_family, controlnet_traits, load_control_image, resolve_controlnet

        out = []
        base_dim = base_context_dim(self.source)
        for i, unit in enumerate(s.control):
            source = resolve_controlnet(unit.model, self.controlnet_dirs, allow_pickle=self.options.allow_pickle)
            check_family(source, controlnet_traits(source, self.options.allow_pickle), self.source, base_dim)
            load_control_image(unit.image, where=f"the `control` unit {i} image")
            out.append(source)
        return out

    def _control_run(self, loaded: LoadedModel, s: GenerationSettings) -> list | None:
        """The active units of ``s`` with their loaded ControlNets and condition images (None: no control)."""
        if not s.control:
            return None
        from .control import condition_image, load_controlnet

        runs = []
        dtype = _compute_dtype(self.options)
        unet = loaded.denoiser  # SD3: the transformer (an SD3 ControlNet is loaded against it)
        for i, (unit, source) in enumerate(zip(s.control, self._control_sources(s))):
            cond = condition_image(unit, s.width, s.height)
            model = (
                load_controlnet(source, unet, dtype, self.device, allow_pickle=self.options.allow_pickle) if unit.active else None
            )
            h = None
            if source.kind == "single_file":
                from ..a1111.hashes import legacy_model_hash

                h = legacy_model_hash(source.path)
            runs.append(_ControlRun(i, unit, source, model, cond, h))
        if not any(r.unit.active for r in runs):
            self._say("no control unit acts on any step (each guidance window is empty); generating without ControlNet.")
        return runs

    def _control_kwargs(self, loaded: LoadedModel, runs: list, img2img: bool) -> tuple[Any, dict]:
        """The ControlNet pipeline over the loaded modules and its ControlNet arguments."""
        active = [r for r in runs if r.unit.active]
        pipe = loaded.control_pipe(img2img, [r.model for r in active])
        one = len(active) == 1
        conds = [r.condition for r in active]
        kwargs = dict(
            controlnet_conditioning_scale=float(active[0].unit.weight) if one else [float(r.unit.weight) for r in active],
            control_guidance_start=[float(r.unit.guidance_start) for r in active],
            control_guidance_end=[float(r.unit.guidance_end) for r in active],
        )
        # SD1/SDXL txt2img take the condition as `image`; their img2img and SD3 as `control_image`
        kwargs["control_image" if img2img or self.family == "sd3" else "image"] = conds[0] if one else conds
        return pipe, kwargs

    # -- generation ------------------------------------------------------------------------------

    def load(self) -> LoadedModel:
        """Load the pipeline now (it is cached per process)."""
        if self._loaded is None:
            from .quiet import quiet_libraries

            with quiet_libraries(self.quiet):
                self._loaded = load_model(self.source, self.options, progress=self.progress)
            for n in self._loaded.notices:
                self._say(n)
        set_memory_options(self._loaded, vae_tiling=self.vae_tiling, attention_slicing=self.attention_slicing)
        return self._loaded

    def generate(self, settings: GenerationSettings | None = None, **fields: Any) -> list[GeneratedImage]:
        """Generate every image of ``settings`` (a :class:`GenerationSettings`, or its fields as keywords,
        or both: keywords replace the settings' fields); PNGs are written to ``out_dir`` when set."""
        from .quiet import quiet_libraries

        settings = make_settings(settings, **fields)
        with quiet_libraries(self.quiet):
            return self._generate(settings)

    def _generate(self, settings: GenerationSettings) -> list[GeneratedImage]:
        from tqdm.auto import tqdm

        from .tiling import circular_padding

        s, jobs, init = self.prepare(settings)
        loaded = self.load()
        plan = self._inpaint_plan(s, init)
        control = self._control_run(loaded, s)
        if s.tiling and self.family == "sd3":
            self._say(
                "SD3's transformer has no padded convolutions: with tiling only its VAE wraps around, "
                "so the images do not tile seamlessly (as in A1111)."
            )
        texts = [j.clean_positive for j in jobs] + [j.clean_negative for j in jobs]
        if self.family != "sd3":
            load_embeddings(loaded, find_embeddings(texts, self.embedding_dirs))
        # One forward holds jobs with the same LoRAs and the same number of 75-token chunks: cond and
        # uncond are padded to the longer of the two, so a short prompt batched beside a long one would
        # otherwise get padding it does not get alone, and its infotext would not re-create it.
        groups: dict[tuple, list[_Job]] = {}
        for j in jobs:
            groups.setdefault(j.loras, []).append(j)
        forward = max(s.batch_size, s.max_batch)
        results: dict[int, GeneratedImage] = {}
        bar = tqdm(total=len(jobs), desc="images", unit="img", file=sys.stderr, disable=not self.progress)
        try:
            # tiling: circular padding for this run, LoRA layers included (undone on the way out)
            with loaded.lock, contextlib.ExitStack() as tiled:
                for loras, by_loras in groups.items():
                    apply_loras(loaded, loras)
                    tiled.enter_context(circular_padding(loaded.pipe, bool(s.tiling)))
                    by_length: dict[int, list[_Job]] = {}
                    for j in by_loras:
                        by_length.setdefault(self._chunk_count(loaded, s, j), []).append(j)
                    group = [j for same in by_length.values() for j in same]
                    edges = [len(same) for same in by_length.values()]
                    queue = _split(group, edges, forward)
                    while queue:
                        batch = queue.pop(0)
                        try:
                            images = self._run_batch(loaded, s, batch, init, plan, control)
                        except Exception as e:  # noqa: BLE001 - only OOM is handled here
                            if not is_oom(e):
                                raise
                            empty_cache()
                            if len(batch) == 1:
                                raise GeneratorError(
                                    f"CUDA ran out of memory even with one {s.width}x{s.height} image; use --offload model, "
                                    "--vae-tiling, a smaller --size or --dtype fp16."
                                ) from None
                            half = max(1, len(batch) // 2)
                            self.notice(f"CUDA ran out of memory with a batch of {len(batch)}; retrying with batches of {half}.")
                            forward = half
                            queue = [b[i : i + forward] for b in [batch] + queue for i in range(0, len(b), forward)]
                            continue
                        for job, image in zip(batch, images):
                            results[job.index] = self._finish(loaded, s, job, image, plan, control)
                            bar.update(1)
        finally:
            bar.close()
        return [results[i] for i in sorted(results)]

    def _chunk_count(self, loaded: LoadedModel, s: GenerationSettings, job: _Job) -> int:
        """75-token chunks of a job's conditioning (the longer of prompt and negative; 0 for SD3)."""
        if self.family == "sd3":
            return 0
        from .encode import count_chunks
        from .schedule import prompt_passes, scheduled_texts

        passes = prompt_passes(s)
        texts = [t for c in (job.clean_positive, job.clean_negative) for t in scheduled_texts(c, passes)]
        return max(
            count_chunks(loaded.pipe.tokenizer, expand_embeddings(t, loaded.embeddings), emphasis=s.emphasis) for t in texts
        )

    def _run_batch(self, loaded: LoadedModel, s: GenerationSettings, batch: list[_Job], init, plan=None, control=None) -> list:
        import torch

        from ..a1111.samplers import make_scheduler

        pipe = loaded.pipe
        scheduler, notice = make_scheduler(s.sampler, s.schedule_type, loaded.scheduler_config, self.family, version=s.version)
        self._say(notice)
        gen_device = "cuda" if self.device.startswith("cuda") else "cpu"
        generators = [torch.Generator(device=gen_device).manual_seed(j.seed) for j in batch]
        cond = self._conditioning(loaded, s, batch)
        common = dict(guidance_scale=s.cfg_scale, generator=generators, **cond)
        if self.family == "sd3" and s.clip_skip > 1:
            common["clip_skip"] = s.clip_skip - 1
        if plan is not None and plan.active:
            return self._inpaint(loaded, s, batch, plan, scheduler, generators, common)
        controlled = control is not None and any(r.unit.active for r in control)
        if init is not None:
            from PIL import Image

            img2img, extra = self._control_kwargs(loaded, control, True) if controlled else (loaded.img2img_pipe(), {})
            src = init.convert("RGB").resize((s.width, s.height), Image.LANCZOS)
            steps, strength = img2img_schedule(s.steps, s.denoising_strength, self.family)
            img2img.scheduler = self._watch(img2img, scheduler, int(steps * strength))
            out = img2img(image=[src] * len(batch), strength=strength, num_inference_steps=steps, **extra, **common)
            return list(out.images)
        if controlled:
            cpipe, extra = self._control_kwargs(loaded, control, False)
            cpipe.scheduler = self._watch(cpipe, scheduler, s.steps)
            if self.family != "sd3":
                out = cpipe(width=s.width, height=s.height, num_inference_steps=s.steps, **extra, **common)
                return list(out.images)
            # diffusers' SD3 ControlNet pipeline samples the condition's VAE latent from the global RNG:
            # seed it from the first image's seed (restored after) so a seed gives the same image again
            devices = [torch.device(self.device)] if self.device.startswith("cuda") else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(batch[0].seed)
                out = cpipe(width=s.width, height=s.height, num_inference_steps=s.steps, **extra, **common)
            return list(out.images)
        pipe.scheduler = self._watch(pipe, scheduler, s.steps)
        if not s.hires:
            out = pipe(width=s.width, height=s.height, num_inference_steps=s.steps, **common)
            return list(out.images)
        return self._hires(loaded, s, common, len(batch))

    def _inpaint_plan(self, s: GenerationSettings, init):
        """What inpainting does to the init image (:mod:`tagloop.generator.inpaint`); None without a mask."""
        if s.mask_image is None or init is None:
            return None
        from .inpaint import load_mask_image, plan_inpaint

        plan = plan_inpaint(
            init,
            load_mask_image(s.mask_image),
            width=s.width,
            height=s.height,
            mask_blur=s.mask_blur,
            inpainting_fill=s.inpainting_fill,
            invert=bool(s.inpainting_mask_invert),
            full_res=bool(s.inpaint_full_res),
            padding=s.inpaint_full_res_padding,
        )
        self._say(plan.notice)
        return plan

    def _inpaint(
        self, loaded: LoadedModel, s: GenerationSettings, batch: list[_Job], plan, scheduler, generators, common
    ) -> list:
        """One batch inpainted as A1111 does (latent mask at every step, original pixels put back)."""
        from .inpaint import run_inpaint

        pipe = loaded.inpaint_pipe()
        steps, strength = img2img_schedule(s.steps, s.denoising_strength, self.family)
        pipe.scheduler = self._watch(pipe, scheduler, int(steps * strength))
        return run_inpaint(
            pipe,
            plan,
            seeds=[j.seed for j in batch],
            generators=generators,
            width=s.width,
            height=s.height,
            strength=strength,
            steps=steps,
            dtype=_compute_dtype(self.options),
            call_kwargs=common,
        )

    def _hires(self, loaded: LoadedModel, s: GenerationSettings, common: dict, n: int) -> list:
        """A1111 hires fix: first pass, upscale (latent bilinear or Lanczos), img2img second pass."""
        import torch
        from PIL import Image

        from ..a1111.samplers import make_scheduler

        w2 = int(s.width * s.hires_scale) // 8 * 8
        h2 = int(s.height * s.hires_scale) // 8 * 8
        latent = s.hires_upscaler == "latent"
        first = loaded.pipe(
            width=s.width, height=s.height, num_inference_steps=s.steps, output_type="latent" if latent else "pil", **common
        )
        if latent:
            f = getattr(loaded.pipe, "vae_scale_factor", 8)
            image = torch.nn.functional.interpolate(first.images, size=(h2 // f, w2 // f), mode="bilinear", antialias=False)
        else:
            image = [im.resize((w2, h2), Image.LANCZOS) for im in first.images]
        # A1111 runs exactly `Hires steps` (0: the first pass's steps) of a schedule stretched by 1/denoise.
        steps, strength = img2img_schedule(s.steps, s.hires_denoise, self.family, requested=s.hires_steps or s.steps)
        second_sched, _ = make_scheduler(s.sampler, s.schedule_type, loaded.scheduler_config, self.family, version=s.version)
        img2img = loaded.img2img_pipe()
        img2img.scheduler = self._watch(img2img, second_sched, int(steps * strength))
        from .schedule import second_pass

        out = img2img(image=image, strength=strength, num_inference_steps=steps, **second_pass(common))
        return list(out.images)

    def _watch(self, pipe: Any, scheduler: Any, steps: int) -> Any:
        """``scheduler`` reporting each step to :attr:`step_hook`; a True answer interrupts ``pipe``
        (diffusers skips the remaining steps and decodes what it has, as A1111's interrupt does)."""
        hook = self.step_hook
        if hook is None:
            return scheduler
        original = scheduler.step
        done = [0]
        total = max(1, int(steps))

        def step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            done[0] += 1
            if hook(min(done[0], total), total):
                pipe._interrupt = True
            return out

        scheduler.step = step
        return scheduler

    def _conditioning(self, loaded: LoadedModel, s: GenerationSettings, batch: list[_Job]) -> dict:
        """Prompt embeddings (SD1/SD2/SDXL, A1111 semantics) or plain text (SD3) for one forward."""
        import torch

        pipe = loaded.pipe
        if self.family == "sd3":
            return dict(
                prompt=[_plain_text(j.clean_positive) for j in batch],
                negative_prompt=[_plain_text(j.clean_negative) for j in batch],
            )
        from .encode import count_chunks, encode_prompt_a1111, encode_prompt_sdxl
        from .schedule import prompt_passes, scheduled_texts, step_conditioning

        pos = [expand_embeddings(j.clean_positive, loaded.embeddings) for j in batch]
        neg = [expand_embeddings(j.clean_negative, loaded.embeddings) for j in batch]
        # every text a step of this forward may use (the prompts themselves without editing/alternation)
        passes = prompt_passes(s)
        every = [t for j in batch for c in (j.clean_positive, j.clean_negative) for t in scheduled_texts(c, passes)]
        every = [expand_embeddings(t, loaded.embeddings) for t in every]
        chunks = max(count_chunks(pipe.tokenizer, t, emphasis=s.emphasis) for t in every)
        device = getattr(pipe, "_execution_device", None) or torch.device(self.device)
        dtype = loaded.denoiser.dtype if self.options.storage_dtype is None else _compute_dtype(self.options)
        cache: dict[str, Any] = {}

        layers = int(pipe.text_encoder.config.num_hidden_layers)
        if self.family != "sdxl" and s.clip_skip > layers:
            raise SettingsError(f"`clip_skip` {s.clip_skip} skips more layers than this model's text encoder has ({layers}).")
        if self.family == "sdxl" and s.clip_skip > 1:
            self._say(
                f"A1111 ignores Clip skip on SDXL (both text encoders use their penultimate layer); "
                f"Clip skip {s.clip_skip} is recorded but does not change the image."
            )

        def enc(text: str):
            if text not in cache:
                if self.family == "sdxl":
                    cache[text] = encode_prompt_sdxl(
                        [pipe.tokenizer, pipe.tokenizer_2],
                        [pipe.text_encoder, pipe.text_encoder_2],
                        text,
                        clip_skip=1,
                        emphasis=s.emphasis,
                        device=device,
                        dtype=dtype,
                        pad_to_chunks=chunks,
                    )
                else:
                    cache[text] = encode_prompt_a1111(
                        pipe.tokenizer,
                        pipe.text_encoder,
                        text,
                        clip_skip=s.clip_skip,
                        emphasis=s.emphasis,
                        device=device,
                        dtype=dtype,
                        pad_to_chunks=chunks,
                    )
            return cache[text]

        per_step = step_conditioning(
            s,
            [j.clean_positive for j in batch],
            [j.clean_negative for j in batch],
            lambda text: enc(expand_embeddings(text, loaded.embeddings)),
            sdxl=self.family == "sdxl",
        )
        with torch.no_grad():
            if per_step is not None:  # prompt editing / alternation: embeddings switched per step
                return per_step.kwargs()
            if self.family == "sdxl":
                p = [enc(t) for t in pos]
                n = [enc(t) for t in neg]
                return dict(
                    prompt_embeds=torch.cat([e for e, _ in p]),
                    pooled_prompt_embeds=torch.cat([q for _, q in p]),
                    negative_prompt_embeds=torch.cat([e for e, _ in n]),
                    negative_pooled_prompt_embeds=torch.cat([q for _, q in n]),
                )
            return dict(prompt_embeds=torch.cat([enc(t) for t in pos]), negative_prompt_embeds=torch.cat([enc(t) for t in neg]))

    # -- output ----------------------------------------------------------------------------------

    def _file_hash(self, path: Path, kind: Literal["model", "lora", "ti"]) -> str | None:
        key = path.resolve()
        if (key, kind) not in self._hashes:
            from ..a1111 import hashes

            try:
                if kind == "model":
                    h = hashes.model_hash(path)
                elif kind == "lora":
                    h = hashes.lora_short_hash(path)
                else:
                    h = short_file_hash(path)
            except OSError:
                h = None
            self._hashes[(key, kind)] = h
        return self._hashes[(key, kind)]

    def params_for(
        self,
        s: GenerationSettings,
        job: _Job,
        width: int | None = None,
        height: int | None = None,
        inpaint=None,
        control: list | None = None,
    ) -> dict:
        """The A1111 parameter line of one image, in A1111's key order (None = not written).

        ``inpaint``: the request's :class:`~tagloop.generator.inpaint.InpaintPlan` (its keys depend on
        the mask: a blank "only masked" mask writes no ``Inpaint area``); without it they follow the settings.
        """
        from .. import __version__
        from ..a1111.samplers import resolve_sampler

        sampler, schedule = resolve_sampler(s.sampler, s.schedule_type, version=s.version)
        src = self.source
        p: dict[str, Any] = {
            "Steps": s.steps,
            "Sampler": sampler,
            "Schedule type": schedule,
            "CFG scale": _num(s.cfg_scale),
            "Seed": job.seed,
            "Size": f"{width or s.width}x{height or s.height}",
            "Model hash": self._file_hash(src.path, "model") if src.kind == "single_file" else None,
            "Model": src.name,
        }
        if self.options.storage_dtype == "fp8":
            p["FP8 weight"] = "Enable"
        vae = self.options.vae
        if vae is not None:
            p["VAE hash"] = self._file_hash(vae, "model") if vae.is_file() else None
            p["VAE"] = vae.name
        if s.init_image is not None:
            p["Denoising strength"] = _num(s.denoising_strength)
        if s.clip_skip > 1:
            p["Clip skip"] = s.clip_skip
        if s.tiling:
            p["Tiling"] = "True"
        if s.mask_image is not None:
            from .inpaint import settings_params

            p.update(inpaint.params if inpaint is not None else settings_params(s))
        if s.hires:
            p["Denoising strength"] = _num(s.hires_denoise)
            p["Hires upscale"] = _num(s.hires_scale)
            if s.hires_steps:
                p["Hires steps"] = s.hires_steps
            p["Hires upscaler"] = "Latent" if s.hires_upscaler == "latent" else "Lanczos"
        if job.loras:
            p["Lora hashes"] = ", ".join(f"{_clean_name(u.name)}: {self._file_hash(u.path, 'lora')}" for u in job.loras)
        if self._loaded is not None and self._loaded.embeddings:
            used = [n for n in self._loaded.embeddings if n in job.clean_positive + "\n" + job.clean_negative]
            if used:
                p["TI hashes"] = ", ".join(
                    f"{_clean_name(n)}: {self._file_hash(self._loaded.embeddings[n][0], 'ti')}" for n in used
                )
        if s.emphasis != "Original":
            p["Emphasis"] = s.emphasis
        if s.control:
            from .control import unit_infotext

            runs = control or [
                _ControlRun(i, u, src, None, None, None) for i, (u, src) in enumerate(zip(s.control, self._control_sources(s)))
            ]
            for r in runs:
                p[f"ControlNet {r.index}"] = unit_infotext(r.unit, r.source.name, r.hash, width or s.width, height or s.height)
        p["Version"] = f"tagloop {__version__}"
        return p

    def _finish(self, loaded: LoadedModel, s: GenerationSettings, job: _Job, image, plan=None, control=None) -> GeneratedImage:
        from ..a1111.infotext import build_infotext, next_image_path, save_png

        infotext = build_infotext(job.positive, job.negative, self.params_for(s, job, inpaint=plan, control=control))
        path = None
        if s.out_dir is not None:
            out = Path(s.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            path = job.path
            if path is None or path.exists():  # taken since it was planned (another run in this folder)
                path = next_image_path(out, job.seed)
            path = save_png(image, path, infotext)
            if control:
                from .control import condition_path

                for r in control:  # the condition image beside the image: 00000-SEED-control0.png
                    r.condition.save(condition_path(path, r.index))
        result = GeneratedImage(path, job.seed, infotext, image, job.positive, job.negative)
        if control:
            result.conditions = [r.condition for r in control]
        return result


def img2img_schedule(steps: int, denoise: float, family: str, requested: int | None = None) -> tuple[int, float]:
    """``(num_inference_steps, strength)`` for diffusers' img2img so it runs A1111's steps.

    A1111 (``setup_img2img_steps``): img2img runs ``int(min(denoise, 0.999) * steps) + 1`` steps of a
    ``steps`` schedule; with ``requested`` (the hires pass), exactly ``requested`` steps of a schedule of
    ``int(requested / min(denoise, 0.999))``; either way the last steps of the schedule. diffusers runs
    ``int(total * strength)`` steps (SD1/SDXL) or starts at ``int(total - total * strength)`` (SD3), so
    the strength passed is nudged half a step to land on A1111's count whatever the float rounding.
    """
    d = min(denoise, 0.999)
    if requested is None:
        total, run = steps, int(d * steps) + 1
    else:
        total, run = max(1, int(requested / d)), requested
    run = max(1, min(run, total))
    strength = (run - 0.5) / total if family == "sd3" else (run + 0.5) / total
    return total, min(1.0, strength)


def _split(jobs: list, sizes: list[int], forward: int) -> list[list]:
    """``jobs`` cut into runs of ``sizes`` (jobs that may share a forward), each cut into batches of ``forward``."""
    out, start = [], 0
    for size in sizes:
        run = jobs[start : start + size]
        out += [run[i : i + forward] for i in range(0, len(run), forward)]
        start += size
    return out


def _compute_dtype(options: LoadOptions):
    from .models import torch_dtype

    return torch_dtype(options.compute_dtype)


def _num(v: float | None):
    """A1111 writes 7 for 7.0 and 7.5 for 7.5."""
    if v is None:
        return None
    return int(v) if float(v).is_integer() else v


def _clean_name(name: str) -> str:
    return name.replace(":", "").replace(",", "")


def _load_init_image(source):
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        with Image.open(source) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise SettingsError(f"`init_image` {source} does not exist.") from None
    except (UnidentifiedImageError, OSError) as e:
        raise SettingsError(f"`init_image` {source} is not an image Pillow can read ({e}).") from None
