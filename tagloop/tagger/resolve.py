"""From a ``--model`` argument to a loaded tagger, once per process.

A model argument is, in this order:
1. a local file or folder;
2. ``deepdanbooru`` (or ``deepbooru``): AUTOMATIC1111's ``models/torch_deepdanbooru/
   model-resnet_custom_v3.pt`` under ``--a1111-dir``;
3. a WD14 short name (``wd-swinv2-tagger-v3``) found as ComfyUI-WD14-Tagger keeps them under
   ``--comfyui-dir`` (``custom_nodes/ComfyUI-WD14-Tagger/models/NAME.onnx`` + ``NAME.csv``), else
   the ``SmilingWolf/NAME`` hub repository;
4. a hub id ``owner/name``: ``model.onnx`` + ``selected_tags.csv`` (CPU, or ``--backend onnx``), or the
   timm files ``config.json`` + ``model.safetensors`` + ``selected_tags.csv`` (CUDA, or ``--backend
   wd-timm``), downloaded into the hub cache with a progress bar.
"""

from __future__ import annotations

import threading
from dataclasses import astuple
from pathlib import Path

from ..devices import guess_device
from ..hub import HubError, download_folder, looks_like_repo_id
from ..layouts import A1111_DEEPDANBOORU_FILE, A1111_DIRS, COMFYUI_DIRS
from .base import GPUUnavailableError, LoadOptions, ModelNotFoundError, Tagger, TaggerError, check_one_model, load_tagger

#: The default ``--model`` (configurable with ``model = ...`` in tagloop.toml).
DEFAULT_MODEL = "SmilingWolf/wd-swinv2-tagger-v3"

WD14_MODELS = (
    "wd-v1-4-moat-tagger-v2",
    "wd-v1-4-swinv2-tagger-v2",
    "wd-v1-4-convnext-tagger-v2",
    "wd-v1-4-convnextv2-tagger-v2",
    "wd-v1-4-vit-tagger-v2",
    "wd-vit-tagger-v3",
    "wd-swinv2-tagger-v3",
    "wd-convnext-tagger-v3",
    "wd-vit-large-tagger-v3",
    "wd-eva02-large-tagger-v3",
)
DEEPDANBOORU_NAMES = ("deepdanbooru", "deepbooru", "deepdanbooru-v3")
A1111_DD_RELPATH = Path(A1111_DIRS["deepdanbooru"][0]) / A1111_DEEPDANBOORU_FILE
COMFY_WD14_RELDIR = Path(COMFYUI_DIRS["wd14"][0])

#: Extensions of files a tagger model argument may name; a value ending in one is a path, never a hub id.
MODEL_FILE_EXTS = (".onnx", ".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".csv", ".txt", ".json")

ONNX_FILES = ["model.onnx", "selected_tags.csv"]
TIMM_FILES = ["config.json", "model.safetensors", "selected_tags.csv"]


def looks_like_local_path(spec: str) -> bool:
    """True when a model argument that does not exist can only have meant a local file or folder.

    That is a value with a model file extension, one written as a path (``./x``, ``../x``, ``/x``,
    ``~/x``, backslashes, more than one ``/``), or ``folder/name`` where ``folder`` exists here.
    Anything else shaped ``owner/name`` may be a hub id.
    """
    s = spec.strip()
    if not s:
        return False
    if s.lower().endswith(MODEL_FILE_EXTS):
        return True
    if s.startswith(("./", "../", "/", "~", ".\\", "..\\")) or "\\" in s or s.count("/") > 1:
        return True
    if len(s) > 1 and s[1] == ":":  # a Windows drive
        return True
    parent = Path(s).parent
    return str(parent) not in ("", ".") and parent.expanduser().is_dir()


def resolve_model_path(
    spec: str,
    *,
    a1111_dir: str | Path | None = None,
    comfyui_dir: str | Path | None = None,
    device: str = "cpu",
    backend: str | None = None,
) -> Path:
    """The local path (file or folder) a ``--model`` argument names, downloading hub files if needed."""
    spec = raw_spec = str(spec).strip()
    local = Path(spec).expanduser()
    if local.exists():
        return local
    name = spec.lower()
    if name in DEEPDANBOORU_NAMES:
        if a1111_dir is None:
            raise ModelNotFoundError(
                "`--model deepdanbooru` needs your AUTOMATIC1111 folder: pass --a1111-dir DIR (or set a1111_dir in "
                f"tagloop.toml), or give the file itself, {A1111_DD_RELPATH.name}, with --model FILE."
            )
        path = Path(a1111_dir).expanduser() / A1111_DD_RELPATH
        if not path.is_file():
            raise ModelNotFoundError(
                f"DeepDanbooru model not found: put {A1111_DD_RELPATH.name} (from the TorchDeepDanbooru release) at {path}."
            )
        return path
    if looks_like_local_path(spec):
        raise ModelNotFoundError(f"Tagger model {spec}: no such file or folder.")
    short = spec.split("/")[-1]
    if comfyui_dir is not None and ("/" not in spec or short in WD14_MODELS):
        onnx = Path(comfyui_dir).expanduser() / COMFY_WD14_RELDIR / f"{short}.onnx"
        if onnx.is_file():
            return onnx
    if "/" not in spec and short in WD14_MODELS:
        spec = f"SmilingWolf/{short}"
    if looks_like_repo_id(spec):
        try:
            return _download_tagger(spec, backend, device)
        except HubError as e:
            if spec.lower().startswith("smilingwolf/") or raw_spec != spec:
                raise
            # `folder/name` may have meant a local path as much as a hub id: say both
            raise HubError(f"Tagger model {spec}: no such file or folder here, and as a hub id: {e}") from None
    raise ModelNotFoundError(
        f"Tagger model {spec!r} is neither a file, a folder, `deepdanbooru`, a WD14 name "
        f"({', '.join(WD14_MODELS[-5:])}, ...) nor a hub id owner/name."
    )


def _download_tagger(spec: str, backend: str | None, device: str) -> Path:
    """The hub snapshot folder of a WD tagger: the timm files on CUDA (or ``backend`` wd-timm), else ONNX."""
    want_timm = backend == "wd-timm" or (backend is None and device.startswith("cuda"))
    hint = (
        "Download it with network access once, or put the files "
        f"({', '.join(TIMM_FILES if want_timm else ONNX_FILES)}) in a folder and give that folder as the model."
    )
    try:
        return download_folder(spec, TIMM_FILES if want_timm else ONNX_FILES, local_hint=hint)
    except HubError:
        if not want_timm or backend == "wd-timm":
            raise
        # no timm weights in this repo (WD v2): the ONNX files then
        return download_folder(spec, ONNX_FILES, local_hint=hint)


_CACHE: dict[tuple, Tagger] = {}
_LOCK = threading.Lock()


def get_tagger(
    spec: str,
    options: LoadOptions | None = None,
    *,
    a1111_dir: str | Path | None = None,
    comfyui_dir: str | Path | None = None,
    backend: str | None = None,
) -> Tagger:
    """Resolve and load a tagger, reusing one already loaded in this process with the same settings."""
    options = options or LoadOptions()
    device = guess_device(options.device)  # asks the driver, not torch: ONNX taggers never import torch
    path = resolve_model_path(spec, a1111_dir=a1111_dir, comfyui_dir=comfyui_dir, device=device, backend=backend)
    if backend is None and path.is_dir():
        from .wd_timm import prefer_backend

        check_one_model(path)
        backend = prefer_backend(path, device)
    key = (str(path.resolve()), backend, repr(astuple(options)))
    with _LOCK:
        tagger = _CACHE.get(key)
        if tagger is None:
            tagger = load_tagger(path, options, backend=backend)
            if options.require_gpu and not str(tagger.device).startswith("cuda"):
                tagger.close()
                raise GPUUnavailableError(
                    f"`require_gpu` is set but the tagger runs on {tagger.device}, not on a CUDA GPU "
                    "(torch sees no GPU, or the model's runtime cannot use it)."
                )
            if options.tensorrt and (tagger.backend != "onnx" or not str(tagger.device).startswith("cuda")):
                from ..notices import notice

                notice(
                    f"`tensorrt` (--tensorrt) ignored: TensorRT runs ONNX models on CUDA, and this tagger is {tagger.describe()}."
                )
            _CACHE[key] = tagger
        return tagger


def clear_cache() -> None:
    """Release every cached tagger (GPU memory included)."""
    with _LOCK:
        for tagger in _CACHE.values():
            try:
                tagger.close()
            except Exception:
                pass
        _CACHE.clear()


__all__ = ["DEFAULT_MODEL", "WD14_MODELS", "get_tagger", "resolve_model_path", "clear_cache", "TaggerError", "HubError"]
