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
import hashlib
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from .. import errors
from ..errors import TagloopError
from ..weights import classify_keys, describe_kind, safetensors_header  # noqa: F401  (re-exported)

Family = Literal["sd1", "sd2", "sdxl", "sd3"]
DType = Literal["auto", "fp32", "fp16", "bf16", "fp8"]
FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3")

CHECKPOINT_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")

#: Sub-folders of an A1111 / ComfyUI install, per kind of file.
A1111_DIRS = {
    "checkpoint": ("models/Stable-diffusion",),
    "vae": ("models/VAE",),
    "lora": ("models/Lora", "models/LyCORIS"),
    "embedding": ("embeddings",),
}
COMFYUI_DIRS = {
    "checkpoint": ("models/checkpoints",),
    "vae": ("models/vae",),
    "lora": ("models/loras",),
    "embedding": ("models/embeddings",),
}

PIPELINE_CLASSES = {
    "sd1": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sd2": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
}

#: Packaged config folder per family (``tagloop/data/configs/<name>``).
PACKAGED_CONFIGS = {"sd1": "sd15", "sdxl": "sdxl-base", "sd3-medium": "sd35-medium", "sd3-large": "sd35-large"}
CLIP_BPE_FILE = "clip_bpe_simple_vocab_16e6.txt.gz"


# The generator's errors are tagloop's one family (tagloop.errors), under the names this package uses.
GeneratorError = TagloopError
ModelFileError = errors.ModelFileError
ModelNotFoundError = errors.ModelNotFoundError


# --- reading checkpoint headers -----------------------------------------------------------------


def _pickle_keys(path: Path) -> dict[str, Any]:
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user problem
        raise ModelFileError(f"{path} could not be read as a torch checkpoint ({type(e).__name__}: {e}).") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelFileError(f"{path} holds a {type(sd).__name__}, not a state dict of tensors.")
    return {k: {"dtype": str(getattr(v, "dtype", "")), "shape": list(getattr(v, "shape", []))} for k, v in sd.items()}


def checkpoint_tensors(path: str | Path, allow_pickle: bool = False) -> dict[str, dict]:
    """Tensor name -> ``{"dtype", "shape"}`` of a checkpoint file (header only for safetensors)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return {k: v for k, v in safetensors_header(path).items() if k != "__metadata__"}
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(
            f"{path} is an ONNX model (a tagger, not a Stable Diffusion checkpoint); give a .safetensors checkpoint."
        )
    if path.suffix.lower() in PICKLE_EXTS:
        if not allow_pickle:
            raise ModelFileError(
                f"{path} is a pickle file ({path.suffix}), which can run code when loaded; "
                "convert it to .safetensors or pass --allow-pickle if you trust its source."
            )
        return _pickle_keys(path)
    raise ModelFileError(
        f"{path} has an unknown extension {path.suffix!r}; give a .safetensors checkpoint or a diffusers folder."
    )


def is_fp8(tensors: dict[str, dict]) -> bool:
    """Whether the denoiser weights are stored as fp8 (``F8_E4M3``/``F8_E5M2``)."""
    n8 = sum(1 for v in tensors.values() if str(v.get("dtype", "")).upper().startswith(("F8", "FLOAT8", "TORCH.FLOAT8")))
    return n8 > 0 and n8 * 4 >= len(tensors)


def sd3_variant(tensors: dict[str, dict]) -> str:
    """Which SD3 MMDiT a checkpoint holds, from its tensor names.

    ``large`` (SD3.5 large: 38 joint blocks), ``medium`` (SD3.5 medium: dual-attention ``x_block.attn2``
    blocks and RMS q/k norms ``attn.ln_q``) or ``medium-3.0`` (SD3 medium: neither; a different
    transformer configuration from SD3.5 medium's).
    """
    depth = 1 + max((int(m.group(1)) for k in tensors if (m := re.search(r"joint_blocks\.(\d+)\.", k))), default=-1)
    if depth >= 38:
        return "large"
    if any(".x_block.attn2." in k or ".attn.ln_q." in k for k in tensors):
        return "medium"
    return "medium-3.0"


def family_of_folder(folder: str | Path) -> str:
    """Family of a diffusers folder from ``model_index.json`` (and the text encoder width for SD2)."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelFileError(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder; "
            "give the folder that holds model_index.json, or a .safetensors checkpoint."
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{index} is not valid JSON ({e}).") from None
    return family_of_index(data, folder, str(folder))


def family_of_index(data: dict, folder: Path | None, where: str) -> str:
    cls = str(data.get("_class_name", ""))
    if cls.startswith("StableDiffusionXL"):
        return "sdxl"
    if cls.startswith("StableDiffusion3"):
        return "sd3"
    if cls in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"):
        te = folder / "text_encoder" / "config.json" if folder is not None else None
        if te is not None and te.is_file():
            try:
                if json.loads(te.read_text(encoding="utf-8")).get("hidden_size") == 1024:
                    return "sd2"
            except (OSError, ValueError):
                pass
        return "sd1"
    raise ModelFileError(
        f"{where} is a {cls or 'pipeline of unknown class'} model; tagloop generates with SD1.x/2.x, SDXL and SD3.x."
    )


# --- finding files -------------------------------------------------------------------------------


def search_dirs(
    kind: str, explicit: Iterable[str | Path] = (), a1111_dir: str | Path | None = None, comfyui_dir: str | Path | None = None
) -> list[Path]:
    """Folders searched for a ``kind`` (checkpoint, vae, lora, embedding): explicit ones first."""
    out = [Path(p).expanduser() for p in explicit if p]
    if a1111_dir:
        out += [Path(a1111_dir).expanduser() / sub for sub in A1111_DIRS[kind]]
    if comfyui_dir:
        out += [Path(comfyui_dir).expanduser() / sub for sub in COMFYUI_DIRS[kind]]
    return out


def find_named_file(name: str, dirs: Iterable[Path], exts: tuple[str, ...] = CHECKPOINT_EXTS) -> Path | None:
    """A file called ``name`` (with or without extension; sub-folders searched, as A1111 lists them)."""
    name = name.strip()
    wanted = name.lower()
    for d in dirs:
        if not d.is_dir():
            continue
        direct = d / name
        if direct.is_file() or (direct.is_dir() and (direct / "model_index.json").is_file()):
            return direct
        for ext in exts:
            if (d / (name + ext)).is_file():
                return d / (name + ext)
        matches = sorted(
            p
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in exts and (p.stem.lower() == wanted or p.name.lower() == wanted)
        )
        if matches:
            return matches[0]
    return None


def list_named_files(dirs: Iterable[Path], exts: tuple[str, ...] = CHECKPOINT_EXTS) -> dict[str, Path]:
    """Stem -> path of every file with one of ``exts`` under ``dirs`` (first folder wins)."""
    out: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.rglob("*")):
                if p.is_file() and p.suffix.lower() in exts:
                    out.setdefault(p.stem, p)
    return out


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model``: where it is and what it is; nothing loaded yet.

    kind: ``diffusers`` (folder), ``single_file`` or ``hub``. ``name`` is what A1111 writes as ``Model:``
    (the file stem). ``variant`` is ``medium``/``large``/``medium-3.0`` for SD3 (see :func:`sd3_variant`). ``fp8``: weights stored as fp8.
    """

    kind: Literal["diffusers", "single_file", "hub"]
    family: str
    name: str
    path: Path | None = None
    repo_id: str | None = None
    variant: str | None = None
    fp8: bool = False

    @property
    def ident(self) -> str:
        return str(self.path.resolve()) if self.path is not None else f"hub:{self.repo_id}"


def inspect_model_file(path: Path, allow_pickle: bool = False) -> ModelSource:
    """Recognise a single checkpoint file; a file of another kind raises :class:`ModelFileError` naming it."""
    tensors = checkpoint_tensors(path, allow_pickle=allow_pickle)
    kind = classify_keys(tensors)
    if kind not in FAMILIES:
        raise ModelFileError(f"{path.name} is {describe_kind(kind)}, not a Stable Diffusion checkpoint.")
    variant = sd3_variant(tensors) if kind == "sd3" else None
    return ModelSource("single_file", kind, path.stem, path=path, variant=variant, fp8=is_fp8(tensors))


def resolve_model(
    spec: str | Path,
    *,
    a1111_dir: str | Path | None = None,
    comfyui_dir: str | Path | None = None,
    allow_pickle: bool = False,
) -> ModelSource:
    """Resolve a ``model`` argument without loading weights (reads headers / ``model_index.json`` only)."""
    from ..hub import HubError, download, looks_like_repo_id

    text = str(spec).strip()
    if not text:
        raise ModelNotFoundError(
            "`model` is empty; give a checkpoint file, a diffusers folder, a name in your A1111/ComfyUI folders or a hub id."
        )
    path = Path(text).expanduser()
    if not path.exists():
        found = find_named_file(text, search_dirs("checkpoint", (), a1111_dir, comfyui_dir))
        if found is not None:
            path = found
    if path.is_dir():
        return ModelSource("diffusers", family_of_folder(path), path.name, path=path)
    if path.is_file():
        return inspect_model_file(path, allow_pickle=allow_pickle)
    if looks_like_repo_id(text):
        try:
            index = download(text, "model_index.json", local_hint="Give a local diffusers folder or .safetensors file instead.")
        except HubError as e:
            raise ModelNotFoundError(str(e)) from None
        data = json.loads(Path(index).read_text(encoding="utf-8"))
        family = family_of_index(data, Path(index).parent, text)
        return ModelSource("hub", family, text.split("/")[-1], repo_id=text)
    where = []
    if a1111_dir:
        where.append(f"{Path(a1111_dir) / A1111_DIRS['checkpoint'][0]}")
    if comfyui_dir:
        where.append(f"{Path(comfyui_dir) / COMFYUI_DIRS['checkpoint'][0]}")
    looked = f" (looked in {', '.join(where)})" if where else " (pass --a1111-dir or --comfyui-dir to look up names there)"
    raise ModelNotFoundError(f"model {text!r} is not a file, a folder or a known name{looked}.")


def resolve_vae(spec: str | Path, *, a1111_dir=None, comfyui_dir=None, allow_pickle: bool = False) -> Path:
    """A ``vae`` argument as a local file or folder; a non-VAE file is named as such."""
    path = Path(str(spec)).expanduser()
    if not path.exists():
        found = find_named_file(str(spec), search_dirs("vae", (), a1111_dir, comfyui_dir))
        if found is None:
            raise ModelNotFoundError(f"VAE {str(spec)!r} is not a file, a folder or a name in your A1111/ComfyUI VAE folders.")
        path = found
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
            raise ModelFileError(
                f"{path} is a folder without config.json or vae/config.json; give a diffusers VAE folder or a VAE file."
            )
        return path
    kind = classify_keys(checkpoint_tensors(path, allow_pickle=allow_pickle))
    if kind in FAMILIES:
        return path  # A1111 accepts a full checkpoint's baked VAE too; diffusers extracts first_stage_model
    if kind != "vae":
        raise ModelFileError(f"{path.name} is {describe_kind(kind)}, not a VAE.")
    return path


def find_lora(name: str, lora_dirs: Iterable[Path]) -> Path | None:
    """The LoRA file A1111 would pick for ``<lora:NAME:...>``: a file whose stem is NAME (``.safetensors`` first)."""
    return find_named_file(name, lora_dirs, exts=(".safetensors", ".pt", ".ckpt"))


# --- packaged configs ----------------------------------------------------------------------------


def _data_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "configs"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tagloop" / "configs"


def clip_vocab_from_bpe(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's ``vocab.json`` and merges from the BPE merge list CLIP ships (``bpe_simple_vocab_16e6.txt.gz``).

    Recipe of CLIP's ``SimpleTokenizer``: the first 48,894 merges after the header line; vocabulary =
    256 byte characters, the same with ``</w>``, one entry per merge, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (49,408 entries).
    """
    from ..a1111.clip_bpe import clip_vocab, read_bpe_merges

    merges = read_bpe_merges(bpe_gz)
    return clip_vocab(merges), merges


def packaged_config_dir(family: str, variant: str | None = None) -> Path:
    """A diffusers-layout config folder (no weights) for ``family``, ready for ``from_single_file(config=...)``.

    The package ships the JSON configs and CLIP's BPE merge list once; on first use they are copied to
    the user cache and each CLIP tokenizer gets its ``vocab.json``/``merges.txt`` written there.
    """
    key = family if family != "sd3" else f"sd3-{variant or 'medium'}"
    name = PACKAGED_CONFIGS.get(key)
    if key == "sd3-medium-3.0":
        raise GeneratorError(
            "this is an SD3 (3.0) medium checkpoint and tagloop ships configs for SD3.5 medium/large only; pass a "
            "local stable-diffusion-3-medium-diffusers folder with --config-dir (Python: config=DIR) or use that folder as "
            "the model."
        )
    if name is None:
        raise GeneratorError(
            f"tagloop ships no config for {family} single files; pass a local diffusers folder of the same family "
            "as the config (Python: config=DIR), or use a diffusers folder as the model."
        )
    src = _data_dir() / name
    if not src.is_dir():
        raise GeneratorError(f"the packaged config {name} is missing from this install; reinstall tagloop.")
    from .. import __version__

    dst = _cache_root() / f"{name}-{__version__}"
    if (dst / ".complete").is_file():
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    vocab = merges = None
    for tok_cfg in tmp.glob("tokenizer*/tokenizer_config.json"):
        cfg = json.loads(tok_cfg.read_text(encoding="utf-8"))
        if "CLIPTokenizer" not in str(cfg.get("tokenizer_class", "")):
            continue
        if vocab is None:
            vocab, merges = clip_vocab_from_bpe(_data_dir() / CLIP_BPE_FILE)
        (tok_cfg.parent / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tok_cfg.parent / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (tmp / ".complete").write_text("ok\n")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dst)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


# --- loading -------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error.

    tagloop's one device resolution (:func:`tagloop.devices.resolve_device`): the error says what torch
    shows (a CPU-only build, or a CUDA build and how many GPUs it sees) instead of guessing the cause.
    """
    from ..devices import resolve_device as resolve

    return resolve(device)


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
    active_loras: tuple = ()
    lock: threading.RLock = field(default_factory=threading.RLock)

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


# --- LoRA and textual inversion ------------------------------------------------------------------


@dataclass(frozen=True)
class LoraUse:
    """One LoRA applied to a generation: file, A1111 name, text-encoder and UNet multipliers."""

    path: Path
    name: str
    te: float = 1.0
    unet: float = 1.0


def _adapter_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", path.stem)[:40]
    return f"{stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def apply_loras(loaded: LoadedModel, loras: tuple[LoraUse, ...]) -> None:
    """Make exactly ``loras`` active on the pipeline with their weights (kohya/A1111 files via diffusers+peft)."""
    pipe = loaded.pipe
    if loras == loaded.active_loras:
        return
    if not loras:
        if loaded.adapters:
            pipe.disable_lora()
        loaded.active_loras = ()
        return
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise GeneratorError("LoRA needs the peft package: pip install peft") from e
    for use in loras:
        if use.path not in loaded.adapters:
            name = _adapter_name(use.path)
            try:
                pipe.load_lora_weights(str(use.path), adapter_name=name)
            except (ValueError, KeyError, RuntimeError, OSError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelFileError(f"LoRA {use.path.name} does not fit this {loaded.family} model: {first}") from e
            loaded.adapters[use.path] = name
    names = [loaded.adapters[u.path] for u in loras]
    weights = []
    te_parts = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    for u, name in zip(loras, names):
        w: dict[str, float] = {"unet" if loaded.family != "sd3" else "transformer": u.unet}
        for part in te_parts:
            if name in _adapters_of(getattr(pipe, part)):
                w[part] = u.te
        weights.append(w)
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=weights)
    loaded.active_loras = loras


def _adapters_of(module) -> set[str]:
    cfg = getattr(module, "peft_config", None)
    return set(cfg) if cfg else set()


def word_pattern(name: str) -> re.Pattern:
    """A prompt word equal to ``name`` (A1111 matches embeddings as whole tokens)."""
    return re.compile(r"(?<![\w\-])" + re.escape(name) + r"(?![\w\-])")


def find_embeddings(texts: Iterable[str], embedding_dirs: Iterable[Path]) -> dict[str, Path]:
    """Embedding files whose stem appears as a word in any of ``texts``."""
    files = list_named_files(embedding_dirs, exts=(".safetensors", ".pt", ".bin"))
    joined = "\n".join(texts)
    return {stem: p for stem, p in files.items() if stem in joined and word_pattern(stem).search(joined)}


def load_embeddings(loaded: LoadedModel, found: dict[str, Path]) -> None:
    """Load textual-inversion embeddings into the tokenizer(s)/text encoder(s) under their file stem."""
    if loaded.family == "sd3" or not found:
        return
    import torch

    pipe = loaded.pipe
    for name, path in found.items():
        if name in loaded.embeddings:
            continue
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            if loaded.family == "sdxl":
                if not isinstance(sd, dict) or "clip_l" not in sd or "clip_g" not in sd:
                    raise ValueError("an SDXL embedding needs clip_l and clip_g tensors")
                pipe.load_textual_inversion(sd["clip_l"], token=name, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(
                    sd["clip_g"], token=name, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
                )
                vectors = sd["clip_l"].shape[0] if sd["clip_l"].ndim == 2 else 1
            else:
                tensor = _embedding_tensor(sd)
                pipe.load_textual_inversion(tensor, token=name)
                vectors = tensor.shape[0] if tensor.ndim == 2 else 1
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"embedding {path.name} does not fit this {loaded.family} model: {first}") from e
        loaded.embeddings[name] = (path, vectors)


def _embedding_tensor(sd: Any):
    if hasattr(sd, "ndim"):
        return sd
    if "emb_params" in sd:
        return sd["emb_params"]
    if "string_to_param" in sd:
        return next(iter(sd["string_to_param"].values()))
    if len(sd) == 1:
        return next(iter(sd.values()))
    raise ValueError("no emb_params or string_to_param tensor")


def expand_embeddings(text: str, embeddings: dict[str, tuple[Path, int]]) -> str:
    """Multi-vector embeddings take one token per vector (``name name_1 ...``), as diffusers registers them."""
    for name, (_, n) in embeddings.items():
        if n > 1:
            text = word_pattern(name).sub(" ".join([name] + [f"{name}_{i}" for i in range(1, n)]), text)
    return text


def short_file_hash(path: Path, digits: int = 12) -> str:
    """First ``digits`` hex of a (small) file's SHA-256: A1111's TI hash."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:digits]
