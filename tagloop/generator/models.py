"""Stable Diffusion models as users have them on disk: find, recognise, load once, reuse.

A ``model`` argument is, in this order: a local file or folder; a name (file stem or file name) in
the user's AUTOMATIC1111 folder (``models/Stable-diffusion``) or ComfyUI folder (``models/checkpoints``);
a hub id ``owner/name`` (downloaded into the hub cache with a progress bar).

The family (``sd1``, ``sd2``, ``sdxl``, ``sd3``) comes from the model itself: a diffusers folder's
``model_index.json``, or the tensor names in a single checkpoint's header, never the file name. A file
that is something else (a LoRA, a VAE, an embedding, a tagger, a ControlNet, an ONNX model) is named as
such. Single files load through diffusers' ``from_single_file`` with the family's configuration shipped in
``tagloop/data/configs`` (or ``config=`` a local diffusers folder), so nothing is downloaded.

VAE files/folders, kohya/A1111 LoRA files and textual-inversion embeddings are applied to a loaded
pipeline; FP8 checkpoints keep fp8 storage with bf16/fp16 compute (diffusers layerwise casting, CUDA).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The loading code lives here; recognising, locating and networks have their own modules, and
# their names stay importable from this one.
from ..devices import resolve_device  # noqa: F401  (the one device resolution)
from ..weights import classify_keys, describe_kind, safetensors_header  # noqa: F401
from .locate import *  # noqa: F401,F403
from .locate import ModelSource, packaged_config_dir
from .networks import *  # noqa: F401,F403
from .recognise import *  # noqa: F401,F403
from .recognise import PACKAGED_CONFIGS, PIPELINE_CLASSES, GeneratorError, ModelFileError, checkpoint_tensors

# --- loading -------------------------------------------------------------------------------------


def resolve_dtype(dtype: str, device: str, source: ModelSource | None = None) -> tuple[str, str | None]:
    """``(compute, storage)`` dtype names: storage is ``fp8`` for FP8 weights, else None.

    ``auto``: fp32 on CPU; on CUDA fp16 for SD1/SD2/SDXL, bf16 for SD3, fp8 storage for FP8 checkpoints.
    """
    if dtype not in ("auto", "fp32", "fp16", "bf16", "fp8"):
        raise GeneratorError(f"`dtype` must be auto, fp32, fp16, bf16 or fp8, not {dtype!r}.")
    on_cuda = device.startswith("cuda")
    fp8_file = bool(source and source.fp8)
    if not on_cuda:
        if dtype == "fp8" or fp8_file:
            what = "`dtype` fp8" if dtype == "fp8" else f"the FP8 checkpoint {source.name if source else ''}".rstrip()
            raise GeneratorError(
                f"{what} needs a CUDA GPU (fp8 storage with bf16/fp16 compute); on CPU use an fp16/fp32 checkpoint with --dtype fp32."
            )
        if dtype == "fp16":
            raise GeneratorError("`dtype` fp16 needs a CUDA GPU; on the CPU use fp32 (or bf16).")
        return ("bf16" if dtype == "bf16" else "fp32"), None
    family = source.family if source else "sd1"
    if dtype == "auto":
        compute = "bf16" if family == "sd3" else "fp16"
        return compute, ("fp8" if fp8_file else None)
    if dtype == "fp8":
        return ("bf16" if family == "sd3" else "fp16"), "fp8"
    return dtype, ("fp8" if fp8_file else None)


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[name]


@dataclass(frozen=True)
class LoadOptions:
    """How a pipeline is loaded (the pipeline cache key)."""

    device: str = "cpu"
    compute_dtype: str = "fp32"
    storage_dtype: str | None = None
    vae: Path | None = None
    config: Path | None = None
    offload: Literal["none", "model", "sequential"] = "none"
    compile: bool = False
    allow_pickle: bool = False


@dataclass
class LoadedModel:
    """A loaded pipeline and what was done to it (LoRA adapters, embeddings, original scheduler config)."""

    source: ModelSource
    options: LoadOptions
    pipe: Any
    scheduler_config: dict
    notices: list[str] = field(default_factory=list)
    adapters: dict[Path, str] = field(default_factory=dict)
    embeddings: dict[str, tuple[Path, int]] = field(default_factory=dict)
    img2img: Any = None
    inpaint: Any = None
    active_loras: tuple = ()
    lock: threading.RLock = field(default_factory=threading.RLock)
    control_pipes: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.source.family

    @property
    def denoiser(self):
        return self.pipe.transformer if self.family == "sd3" else self.pipe.unet

    def img2img_pipe(self):
        """The image-to-image pipeline over the same modules (no reload)."""
        if self.img2img is None:
            import diffusers

            cls = getattr(diffusers, PIPELINE_CLASSES[self.family][1])
            self.img2img = cls.from_pipe(self.pipe)
            # from_pipe does not carry the progress-bar settings (--quiet)
            self.img2img.set_progress_bar_config(**getattr(self.pipe, "_progress_bar_config", {}))
        return self.img2img

    def inpaint_pipe(self):
        """The inpainting pipeline over the same modules (no reload; see :mod:`tagloop.generator.inpaint`)."""
        if self.inpaint is None:
            import diffusers

            cls = getattr(diffusers, INPAINT_PIPELINE_CLASSES[self.family])
            self.inpaint = cls.from_pipe(self.pipe)
            self.inpaint.set_progress_bar_config(**getattr(self.pipe, "_progress_bar_config", {}))
        return self.inpaint

    def control_pipe(self, img2img: bool, controlnets: list):
        """The ControlNet pipeline (text-to-image or image-to-image) over the same modules and ``controlnets``
        (one ``ControlNetModel`` / ``SD3ControlNetModel``, or several as diffusers' multi-ControlNet); cached
        per set of models."""
        key = (bool(img2img), tuple(id(m) for m in controlnets))
        if key not in self.control_pipes:
            import diffusers

            names = CONTROL_PIPELINE_CLASSES.get(self.family)
            if names is None:
                raise GeneratorError(f"ControlNet is not supported for {self.family} models by tagloop.")
            if names[1 if img2img else 0] is None:
                raise GeneratorError(f"ControlNet image-to-image is not supported for {self.family} models by diffusers.")
            cls = getattr(diffusers, names[1 if img2img else 0])
            net = controlnets[0] if len(controlnets) == 1 else list(controlnets)
            extra = {"safety_checker": None, "feature_extractor": None} if self.family in ("sd1", "sd2") else {}
            pipe = cls.from_pipe(self.pipe, controlnet=net, **extra)
            pipe.set_progress_bar_config(**getattr(self.pipe, "_progress_bar_config", {}))
            if len(self.control_pipes) > 8:  # other unit sets of a long-running server: keep the newest
                self.control_pipes.pop(next(iter(self.control_pipes)))
            self.control_pipes[key] = pipe
        return self.control_pipes[key]


#: The diffusers ControlNet pipelines per family: (text-to-image, image-to-image).
CONTROL_PIPELINE_CLASSES = {
    "sd1": ("StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline"),
    "sd2": ("StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline"),
    "sdxl": ("StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline"),
    "sd3": ("StableDiffusion3ControlNetPipeline", None),  # diffusers has no SD3 ControlNet img2img pipeline
}


#: The diffusers inpainting pipeline per family (4-channel UNets, 16-channel SD3 transformers).
INPAINT_PIPELINE_CLASSES = {
    "sd1": "StableDiffusionInpaintPipeline",
    "sd2": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLInpaintPipeline",
    "sd3": "StableDiffusion3InpaintPipeline",
}


_CACHE: dict[tuple, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def cache_clear() -> None:
    """Release every cached pipeline (frees GPU memory once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (0.36+ warns on the old name)."""
    try:
        from diffusers.utils import deprecation_utils

        return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    except ImportError:
        return "torch_dtype"


def _load_vae(path: Path, source: ModelSource, config_dir: Path | None, dtype):
    from diffusers import AutoencoderKL

    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() and not (path / "config.json").is_file() else None
        return AutoencoderKL.from_pretrained(str(path), subfolder=sub, local_files_only=True, **{_dtype_kwarg(): dtype})
    if config_dir is None:
        config_dir = packaged_config_dir(source.family, source.variant)
    return AutoencoderKL.from_single_file(
        str(path), config=str(config_dir), subfolder="vae", local_files_only=True, **{_dtype_kwarg(): dtype}
    )


def load_model(source: ModelSource, options: LoadOptions, progress: bool = True) -> LoadedModel:
    """Load (or take from the per-process cache) the pipeline for ``source`` with ``options``."""
    key = (source.ident, source.family, options)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    from .quiet import say_library_warnings_once

    say_library_warnings_once()  # diffusers repeats some warnings on every load, once per model part
    with _progress_bars(progress):
        loaded = _load_uncached(source, options, progress)
    with _CACHE_LOCK:
        _CACHE[key] = loaded
    return loaded


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """diffusers' and transformers' loading bars on or off for the duration (restored after)."""
    if enabled:
        yield
        return
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()


def _load_uncached(source: ModelSource, options: LoadOptions, progress: bool) -> LoadedModel:
    import diffusers

    cls = getattr(diffusers, PIPELINE_CLASSES[source.family][0])
    dtype = torch_dtype(options.compute_dtype)
    notices: list[str] = []
    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype}
    config_dir = options.config
    try:
        if source.kind == "diffusers":
            if source.family == "sd1" or source.family == "sd2":
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            if source.family == "sd3":
                kwargs.update(_sd3_folder_kwargs(source.path, notices))
            pipe = cls.from_pretrained(str(source.path), local_files_only=True, **kwargs)
        elif source.kind == "hub":
            from ..hub import _offline

            if source.family in ("sd1", "sd2"):
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_pretrained(source.repo_id, local_files_only=_offline(), **kwargs)
        else:
            if config_dir is None:
                config_dir = packaged_config_dir(source.family, source.variant)
            if source.family == "sd3":
                kwargs.update(_sd3_text_encoder_kwargs(source, config_dir, notices))
            pipe = cls.from_single_file(str(source.path), config=str(config_dir), local_files_only=True, **kwargs)
    except GeneratorError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise _load_error(source, options, config_dir, e) from e

    if options.vae is not None:
        try:
            vae = _load_vae(options.vae, source, config_dir, dtype)
        except GeneratorError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise _load_error(source, options, config_dir, e, vae=options.vae) from e
        pipe.register_modules(vae=vae)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    scheduler_config = dict(pipe.scheduler.config)
    loaded = LoadedModel(source, options, pipe, scheduler_config, notices)
    _place(loaded, options)
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="steps")
    return loaded


FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sd3": "SD3"}

#: diffusers' shape mismatch: "... because NAME expected shape torch.Size([a, b]), but got torch.Size([c, d]). ..."
_SHAPE_MISMATCH = re.compile(r"(\S+) expected shape (?:torch\.Size\()?(\[[^\]]*\])\)?, but got (?:torch\.Size\()?(\[[^\]]*\])")


def family_words(family: str, variant: str | None = None) -> str:
    """``sdxl`` -> ``SDXL``; SD3 with its variant (``SD3 large``)."""
    name = FAMILY_NAMES.get(family, family)
    return f"{name} {variant}" if family == "sd3" and variant else name


def _config_words(source: ModelSource, options: LoadOptions, config_dir: Path | None) -> str:
    """Which configuration a model was loaded against, in words."""
    if source.kind != "single_file":
        return f"its own configuration ({source.path or source.repo_id})"
    if options.config is not None:
        return f"the config folder {options.config}"
    key = source.family if source.family != "sd3" else f"sd3-{source.variant or 'medium'}"
    return f"tagloop's packaged {PACKAGED_CONFIGS.get(key, key)} config"


def _load_error(
    source: ModelSource, options: LoadOptions, config_dir: Path | None, error: BaseException, vae: Path | None = None
) -> ModelFileError:
    """A failed diffusers load as one sentence: which file, which family, which config did not fit.

    diffusers words a weight of the wrong shape as advice to pass ``low_cpu_mem_usage=False`` and
    ``ignore_mismatched_sizes=True`` (which would load random weights); a tensor the config expects
    but the file lacks as a bare ``KeyError``. Both mean the file and the config are different models.
    """
    what = f"the VAE {vae}" if vae is not None else str(source.path or source.repo_id)
    role = (
        f"for an {family_words(source.family, source.variant)} model"
        if vae is not None
        else f"an {family_words(source.family, source.variant)} checkpoint"
    )
    config = _config_words(source, options, config_dir)
    if vae is not None:
        config = "its own config.json" if vae.is_dir() else f"the VAE of {config}"
        fix = f"give `vae` a VAE made for {family_words(source.family)} models"
    elif source.kind == "single_file":
        fix = "give a local diffusers folder of this very model as `config`, or the model itself as a diffusers folder"
    else:
        fix = "re-download the model; its files do not match each other"
    text = str(error).strip()
    mismatch = _SHAPE_MISMATCH.search(text)
    if mismatch is not None:
        name, expected, got = mismatch.groups()
        return ModelFileError(
            f"{what} ({role}) does not fit {config}: {name} is {got} in the file but {expected} in the config; {fix}."
        )
    if isinstance(error, KeyError):
        missing = error.args[0] if error.args else text
        return ModelFileError(
            f"{what} ({role}) does not fit {config}: the config needs the tensor {missing} that the file does not have; {fix}."
        )
    first = text.splitlines()[0] if text else type(error).__name__
    return ModelFileError(f"loading {what} ({role}) with {config} failed: {first}")


def _sd3_folder_kwargs(folder: Path, notices: list[str]) -> dict:
    """SD3 diffusers folders saved without T5 (a common memory saving) load with ``text_encoder_3=None``."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    out = {}
    for name in ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor"):
        entry = index.get(name)
        if not entry or entry[0] is None or not (folder / name).is_dir():
            out[name] = None
    if "text_encoder_3" in out:
        notices.append("SD3 runs without its T5 text encoder (the folder has none); prompts use CLIP-L/CLIP-G only.")
        out["tokenizer_3"] = None
    return out


def _sd3_text_encoder_kwargs(source: ModelSource, config_dir: Path, notices: list[str]) -> dict:
    """SD3 single files: drop T5 when the file lacks it or its tokenizer is not available offline."""
    tensors = checkpoint_tensors(source.path)
    has_t5 = any(k.startswith("text_encoders.t5xxl.") for k in tensors)
    has_clip = any(k.startswith("text_encoders.clip_l.") for k in tensors)
    if not has_clip:
        raise ModelFileError(
            f"{source.path.name} holds the SD3 transformer without its text encoders; pass a local SD3 diffusers "
            "folder as the model (or as config=) so CLIP-L/CLIP-G/T5 come from there."
        )
    t5_tokenizer = any((config_dir / "tokenizer_3").glob(n) for n in ("spiece.model", "tokenizer.json"))
    if has_t5 and t5_tokenizer:
        return {}
    why = "the file has no T5 encoder" if not has_t5 else "no T5 tokenizer is available offline"
    notices.append(f"SD3 runs without its T5 text encoder ({why}); prompts use CLIP-L/CLIP-G only.")
    return {"text_encoder_3": None, "tokenizer_3": None}


def _place(loaded: LoadedModel, options: LoadOptions) -> None:
    import torch

    pipe = loaded.pipe
    if options.storage_dtype == "fp8":
        # fp8 storage, compute in the pipeline dtype: diffusers layerwise casting (needs CUDA)
        loaded.denoiser.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=torch_dtype(options.compute_dtype)
        )
    on_cuda = options.device.startswith("cuda")
    if on_cuda and options.offload == "model":
        pipe.enable_model_cpu_offload(device=options.device)
    elif on_cuda and options.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=options.device)
    else:
        if options.offload != "none":
            loaded.notices.append(f"--offload {options.offload} has no effect on CPU.")
        pipe.to(options.device)
    if on_cuda and loaded.family != "sd3":
        pipe.unet.to(memory_format=torch.channels_last)
    if options.compile:
        loaded.denoiser.compile()
        loaded.notices.append("torch.compile: the first image is slow (compilation warm-up); later ones are faster.")


def set_memory_options(loaded: LoadedModel, *, vae_tiling: bool = False, attention_slicing: bool = False) -> None:
    """Toggle VAE tiling and attention slicing on a cached pipeline."""
    vae = loaded.pipe.vae
    if vae_tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    if hasattr(loaded.pipe, "enable_attention_slicing"):
        if attention_slicing:
            loaded.pipe.enable_attention_slicing()
        else:
            loaded.pipe.disable_attention_slicing()
