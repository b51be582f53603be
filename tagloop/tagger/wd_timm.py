"""WD v3 taggers in PyTorch through timm (``config.json`` + ``model.safetensors`` + ``selected_tags.csv``).

SmilingWolf's v3 releases (wd-vit-tagger-v3, wd-swinv2-tagger-v3, wd-convnext-tagger-v3,
wd-vit-large-tagger-v3, wd-eva02-large-tagger-v3) ship timm-format weights beside the ONNX graph.
``config.json`` is timm's hub format, e.g. wd-swinv2-tagger-v3::

    {"architecture": "swinv2_base_window8_256", "num_classes": 10861, "num_features": 1024,
     "global_pool": "avg", "model_args": {"act_layer": "gelu_tanh", "img_size": 448, "window_size": 14},
     "pretrained_cfg": {"input_size": [3, 448, 448], "interpolation": "bicubic", "crop_pct": 1.0,
                        "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], ...}}

Preprocessing follows neggles/wdv3-timm (``wdv3_timm.py``, with SmilingWolf's channel-order fix):
alpha on white, white square pad, timm's eval transform from ``pretrained_cfg`` (bicubic resize,
centre crop, ``/255``, ``(x - mean) / std`` in RGB order), then **RGB -> BGR** on the NCHW tensor.
The network outputs **logits**; the sigmoid is applied here. Because :func:`preprocess.wd14` already
hands over BGR pixels, the mean/std are applied in reversed (BGR) order, which is the same numbers.

On CUDA the model runs in bf16 (fp16 where bf16 is missing) and channels_last; on CPU in fp32.
"""

from __future__ import annotations

import difflib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import preprocess as pp
from .base import (
    GPUUnavailableError,
    LoadOptions,
    ModelFileError,
    ModelNotFoundError,
    Tagger,
    TaggerError,
    register_backend,
    resolve_device,
)
from .labels import find_label_file, read_label_file

__all__ = [
    "TimmConfig",
    "WdTimmTagger",
    "detect_wd_timm",
    "export_wd_timm_to_onnx",
    "load_wd_timm",
    "prefer_backend",
    "read_timm_config",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimmConfig:
    """The parts of a timm hub ``config.json`` a tagger needs."""

    architecture: str
    num_classes: int
    model_args: dict[str, Any]
    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]  # RGB order, as timm stores it
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _model_folder(path: Path) -> Path | None:
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file() and (path.name == CONFIG_NAME or path.suffix == ".safetensors"):
        return path.parent
    return None


def read_timm_config(path: Path) -> TimmConfig:
    """Parse ``config.json`` (folder or file) in timm's hub format, new or legacy single-dict form."""
    folder = _model_folder(path)
    file = (folder / CONFIG_NAME) if folder is not None else Path(path)
    if not file.is_file():
        raise ModelNotFoundError(
            f"No {CONFIG_NAME} in {path}; a WD v3 timm folder holds config.json, model.safetensors and selected_tags.csv."
        )
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{file} is not valid JSON ({e}).") from None
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise ModelFileError(f"{file} is not a timm config: it has no `architecture` key.")
    pretrained = cfg.get("pretrained_cfg")
    if pretrained is None:  # legacy form: everything in one dict
        pretrained = {k: v for k, v in cfg.items() if k not in ("architecture", "num_features")}
    if not isinstance(pretrained, dict):
        raise ModelFileError(f"{file}: `pretrained_cfg` must be an object.")
    num_classes = cfg.get("num_classes", pretrained.get("num_classes"))
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ModelFileError(f"{file}: `num_classes` is missing or not a positive integer ({num_classes!r}).")
    model_args = cfg.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise ModelFileError(f"{file}: `model_args` must be an object, not {type(model_args).__name__}.")
    input_size = pretrained.get("input_size")
    img_size = model_args.get("img_size")
    if input_size is None and img_size is not None:
        side = img_size if isinstance(img_size, (list, tuple)) else (img_size, img_size)
        input_size = [3, *side]
    if not (isinstance(input_size, (list, tuple)) and len(input_size) == 3 and input_size[0] == 3):
        raise ModelFileError(f"{file}: `pretrained_cfg.input_size` must be [3, H, W], not {input_size!r}.")
    mean = tuple(float(v) for v in pretrained.get("mean", (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in pretrained.get("std", (0.5, 0.5, 0.5)))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ModelFileError(f"{file}: `mean`/`std` must hold 3 numbers each (std > 0), not {mean} / {std}.")
    arch = str(cfg["architecture"])
    if arch.startswith("timm/"):
        arch = arch[len("timm/") :]
    arch = arch.split(".", 1)[0]  # drop a pretrained tag ("vit_base_patch16_224.augreg_in21k")
    return TimmConfig(
        architecture=arch,
        num_classes=num_classes,
        model_args=dict(model_args),
        input_size=(int(input_size[1]), int(input_size[2])),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        interpolation=str(pretrained.get("interpolation", "bicubic")),
        crop_pct=float(pretrained.get("crop_pct", 1.0) or 1.0),
        crop_mode=str(pretrained.get("crop_mode", "center")),
        raw=cfg,
    )


def detect_wd_timm(path: Path) -> bool:
    """A folder (or its ``config.json`` / ``model.safetensors``) with a timm ``config.json`` and weights."""
    folder = _model_folder(Path(path))
    if folder is None or not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        return False
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "architecture" in cfg


def prefer_backend(path: Path, device: str = "auto") -> str | None:
    """Which backend should load ``path`` when nobody asked for one: ``"wd-timm"``, ``"onnx"`` or None.

    A WD v3 folder often holds both ``model.onnx`` and the timm files. On CUDA the timm path wins
    (batched bf16, channels_last, no onnxruntime-gpu/CUDA/cuDNN version puzzles); on the CPU the
    ONNX graph wins (onnxruntime's fused CPU kernels beat eager PyTorch). A folder holding only one
    of the two gets that one; None when neither is there.
    """
    from .onnx_tagger import detect_onnx

    has_timm = detect_wd_timm(path)
    has_onnx = detect_onnx(path)
    if has_timm and has_onnx:
        if device == "auto":
            try:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            except Exception:
                device = "cpu"
        return "wd-timm" if str(device).startswith("cuda") else "onnx"
    if has_timm:
        return "wd-timm"
    if has_onnx:
        return "onnx"
    return None


# --------------------------------------------------------------------------------------------
# State dict
# --------------------------------------------------------------------------------------------

_PREFIXES = ("module.", "model.", "_orig_mod.", "base_model.", "backbone.")


def _strip_prefix(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """Drop a wrapper prefix (``module.``, ``model.``, ``_orig_mod.`` ...) that every key carries."""
    for _ in range(3):
        if set(state) & expected:
            return state
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                break
        else:
            return state
    return state


def _check_state_dict(weights: Path, state: dict[str, Any], model: Any) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys ({', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''})")
    if shapes:
        parts.append(f"wrong shapes ({'; '.join(shapes[:5])}{'; ...' if len(shapes) > 5 else ''})")
    raise ModelFileError(
        f"{weights} does not match the {type(model).__name__} that config.json describes: "
        + ", ".join(parts)
        + "; config.json and model.safetensors must come from the same release."
    )


# --------------------------------------------------------------------------------------------
# The tagger
# --------------------------------------------------------------------------------------------


class WdTimmTagger(Tagger):
    """A WD v3 timm model: WD14 preprocessing, timm normalisation in BGR order, sigmoid of logits."""

    family = "wd14"
    backend = "torch"

    def __init__(
        self,
        *,
        model: Any,
        config: TimmConfig,
        folder: Path,
        label_file: Path,
        tags: list[str],
        categories: list[str],
        device: str,
        dtype: str,
        chunk: int | None = None,
    ) -> None:
        import torch

        self.model = model
        self.config = config
        self.folder = folder
        self.label_file = label_file
        self.tags = tags
        self.categories = categories
        self.input_size = config.input_size
        self.max_batch = None
        self.source = str(folder)
        self.device = device
        self.dtype = dtype
        self._torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self._chunk = chunk
        # pixels arrive BGR, timm's mean/std are RGB: apply them reversed
        self._mean = torch.tensor(config.mean[::-1], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std[::-1], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        scale = math.floor(config.input_size[0] / config.crop_pct)
        self._resize_side = scale

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Alpha on white, white square pad, bicubic to ``floor(S / crop_pct)``, centre crop ``S``, BGR uint8."""
        side = self.input_size[0]
        arr = pp.wd14(image, self._resize_side)
        if self._resize_side != side:
            top = int(round((self._resize_side - side) / 2.0))
            arr = np.ascontiguousarray(arr[top : top + side, top : top + side])
        return arr

    def preprocess_tensor(self, image):
        """:meth:`preprocess` on a decoded ``(3, H, W)`` uint8 tensor, on its device."""
        from .gpu_host import preprocess_torch

        side = self.input_size[0]
        arr = preprocess_torch(image, "wd14", (self._resize_side, self._resize_side))
        if self._resize_side != side:
            top = int(round((self._resize_side - side) / 2.0))
            arr = arr[top : top + side, top : top + side].contiguous()
        return arr

    def to_model_input(self, batch: np.ndarray):
        """``(N, H, W, 3)`` BGR uint8 (numpy, or a torch tensor on any device) -> normalised float32 NCHW on the model's device."""
        import torch

        h, w = self.input_size
        if tuple(batch.shape[1:]) != (h, w, 3) or batch.ndim != 4 or str(batch.dtype) not in ("uint8", "torch.uint8"):
            raise TaggerError(f"predict expects a (N, {h}, {w}, 3) uint8 batch, got {batch.dtype} {tuple(batch.shape)}.")
        if isinstance(batch, torch.Tensor):
            x = batch.to(self.device, non_blocking=True)
        else:
            x = torch.from_numpy(np.ascontiguousarray(batch))
            if self.device != "cpu":
                x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self._mean) / self._std
        if self.device != "cpu":
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, len(tags))`` float32 probabilities (sigmoid of the logits)."""
        import torch

        if len(batch) == 0:
            return np.zeros((0, len(self.tags)), dtype=np.float32)
        step = self._chunk or len(batch)
        outs = []
        with torch.inference_mode():
            for i in range(0, len(batch), step):
                x = self.to_model_input(batch[i : i + step]).to(self._torch_dtype)
                logits = self.model(x)
                outs.append(torch.sigmoid(logits.float()).cpu())
        probs = torch.cat(outs).numpy()
        if probs.shape != (len(batch), len(self.tags)):
            raise ModelFileError(
                f"{self.folder} returned scores of shape {probs.shape}, expected ({len(batch)}, {len(self.tags)})."
            )
        return probs.astype(np.float32, copy=False)

    def close(self) -> None:
        import torch

        self.model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def describe(self) -> str:
        h, w = self.input_size
        return f"wd14/torch-timm {self.config.architecture} {self.source} ({w}x{h}) on {self.device} ({self.dtype})"


def _pick_dtype(options: LoadOptions, device: str) -> str:
    import torch

    if device == "cpu":
        if options.dtype == "fp16":
            raise TaggerError("`dtype` fp16 is not supported on the CPU; use fp32 or bf16.")
        return "bf16" if options.dtype == "bf16" else "fp32"
    if options.dtype != "auto":
        return options.dtype
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _create_model(config: TimmConfig, file: Path):
    import timm

    if not timm.is_model(config.architecture):
        close = difflib.get_close_matches(config.architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelFileError(
            f"{file}: timm {timm.__version__} has no architecture {config.architecture!r}{hint}; "
            "upgrade timm (`pip install -U timm`) or fix `architecture`."
        )
    try:
        return timm.create_model(config.architecture, pretrained=False, num_classes=config.num_classes, **config.model_args)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as e:
        raise ModelFileError(
            f"{file}: timm {timm.__version__} cannot build {config.architecture} with model_args "
            f"{config.model_args} ({type(e).__name__}: {e})."
        ) from None


@register_backend("wd-timm", detect=detect_wd_timm)
def load_wd_timm(path: Path, options: LoadOptions | None = None) -> WdTimmTagger:
    """Load a WD v3 timm folder: ``config.json`` + ``model.safetensors`` + ``selected_tags.csv``.

    ``options.extra`` keys: ``compile`` (bool, ``torch.compile`` the model), ``chunk`` (largest
    forward batch; default: the whole batch).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    options = options or LoadOptions()
    folder = _model_folder(Path(path))
    if folder is None:
        raise ModelFileError(f"{path} is not a WD v3 timm folder (config.json + model.safetensors + selected_tags.csv).")
    config = read_timm_config(folder)
    cfg_file = folder / CONFIG_NAME
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelNotFoundError(f"No {WEIGHTS_NAME} in {folder}; download it beside config.json.")
    label_file = find_label_file(folder, options.tags_file)
    if label_file is None or not Path(label_file).is_file():
        raise ModelNotFoundError(f"No selected_tags.csv in {folder}; download it beside config.json or set `tags_file`.")
    label_file = Path(label_file)
    tags, categories = read_label_file(label_file)
    if len(tags) != config.num_classes:
        raise ModelFileError(
            f"{cfg_file} says the model has {config.num_classes} classes but {label_file.name} lists {len(tags)} tags; "
            "use the label file of the same release."
        )
    h, w = config.input_size
    if h != w:
        raise ModelFileError(f"{cfg_file}: input_size {w}x{h} is not square; WD preprocessing pads to a square.")
    if config.interpolation != "bicubic":
        raise ModelFileError(f"{cfg_file}: interpolation {config.interpolation!r} is not supported (WD models use bicubic).")
    if config.crop_mode not in ("center", "squash"):
        raise ModelFileError(f"{cfg_file}: crop_mode {config.crop_mode!r} is not supported (center or squash).")

    device = resolve_device(options.device)
    if options.require_gpu and not device.startswith("cuda"):
        raise GPUUnavailableError(
            f"`require_gpu` is set but {folder} would run on the CPU; set `device` to cuda on a GPU machine."
        )
    dtype = _pick_dtype(options, device)

    model = _create_model(config, cfg_file)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{weights} is not a readable safetensors file ({e}); download it again.") from None
    state = _strip_prefix(state, set(model.state_dict()))
    _check_state_dict(weights, state, model)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = model.to(device=device, dtype=torch_dtype)
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    if options.extra.get("compile"):
        model = torch.compile(model)
    chunk = options.extra.get("chunk")
    return WdTimmTagger(
        model=model,
        config=config,
        folder=folder,
        label_file=label_file,
        tags=tags,
        categories=categories,
        device=device,
        dtype=dtype,
        chunk=int(chunk) if chunk else None,
    )


# --------------------------------------------------------------------------------------------
# Export to WD's ONNX layout, and tiny models for tests
# --------------------------------------------------------------------------------------------


def _onnx_wrapper(model: Any, mean: tuple[float, ...], std: tuple[float, ...]):
    """A module that behaves like WD's ONNX graphs: NHWC BGR 0..255 in, probabilities out."""
    import torch
    from torch import nn

    class WdOnnxGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean[::-1], dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std[::-1], dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            x = x.permute(0, 3, 1, 2) / 255.0
            x = (x - self.mean) / self.std
            return torch.sigmoid(self.model(x))

    return WdOnnxGraph()


def export_wd_timm_to_onnx(folder: str | Path, out_folder: str | Path, dynamic_batch: bool = True) -> Path:
    """Export a WD v3 timm folder to WD's ONNX layout (``model.onnx`` + ``selected_tags.csv``) in ``out_folder``.

    The graph takes NHWC BGR float 0..255, normalises with the config's mean/std, and ends in a
    sigmoid, as SmilingWolf's own ``model.onnx`` files do.
    """
    import torch

    from .onnx_tagger import export_onnx

    tagger = load_wd_timm(Path(folder), LoadOptions(device="cpu", dtype="fp32"))
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    graph = _onnx_wrapper(tagger.model, tagger.config.mean, tagger.config.std).eval()
    h, w = tagger.input_size
    export_onnx(graph, torch.full((1, h, w, 3), 200.0), out / "model.onnx", "input", ["output"], dynamic_batch)
    shutil.copyfile(tagger.label_file, out / "selected_tags.csv")
    return out
