"""The tagger interface and the backend registry.

A backend is one file in this package that registers itself with :func:`register_backend`: a
``detect(path)`` that recognises the files it loads, and a ``load(path, options)`` that returns a
:class:`Tagger`. :func:`load_tagger` asks each backend in registration order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image

from .. import errors
from ..errors import TagloopError

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "fp32", "fp16", "bf16"]


class TaggerError(TagloopError):
    """A user-facing problem with a tagger: the message is one sentence naming the thing and the fix."""


class ModelFileError(TaggerError, errors.ModelFileError):
    """A file is not the model it was given as (wrong kind, missing key, wrong shape)."""


class ModelNotFoundError(TaggerError, errors.ModelNotFoundError):
    """A model (or one of its files) is not on disk and cannot be downloaded."""


class GPUUnavailableError(TaggerError, errors.GPUUnavailableError):
    """CUDA was required (``require_gpu``) but the model does not run on it."""


@dataclass
class LoadOptions:
    """How to load and run a tagger.

    device: ``auto`` picks CUDA when available. dtype: ``auto`` = fp16 (ONNX) / bf16 (torch) on
    CUDA, fp32 on CPU. tensorrt: ask onnxruntime for the TensorRT provider first.
    require_gpu: fail instead of falling back to CPU. allow_pickle: permit full-pickle ``.ckpt/.pt``.
    dd_preprocess: ``a1111`` (Lanczos, edge-stretch bands) or ``kdd`` (area resize, edge padding).
    """

    device: Device = "auto"
    dtype: DType = "auto"
    tensorrt: bool = False
    require_gpu: bool = False
    allow_pickle: bool = False
    dd_preprocess: Literal["a1111", "kdd"] = "a1111"
    tags_file: Path | None = None
    extra: dict = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise TaggerError(f"`--device` must be auto, cpu or cuda, not {device!r}.")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a dependency
        has_cuda = False
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device.startswith("cuda") and not has_cuda:
        raise GPUUnavailableError(f"device {device} was asked for, but {torch_cuda_seen()}; or set device to cpu.")
    return device


def torch_cuda_seen() -> str:
    """What torch shows of CUDA, in words, with the likely fix (for 'no GPU' messages)."""
    try:
        import torch
    except Exception:  # pragma: no cover - torch is a dependency
        return "torch cannot be imported"
    cuda = getattr(torch.version, "cuda", None)
    if not cuda:
        return f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of torch"
    try:
        count = torch.cuda.device_count()
    except Exception:
        count = 0
    return (
        f"this torch is a CUDA {cuda} build and sees {count} GPU(s): check the NVIDIA driver "
        "(nvidia-smi) and CUDA_VISIBLE_DEVICES"
    )


class Tagger(ABC):
    """A loaded tagging model: one preprocessing, one batched forward pass, a label table.

    Subclasses fill the attributes in ``__init__``. ``preprocess`` turns a decoded image into a
    uint8 ``(H, W, 3)`` array in the model's channel order (every reference preprocessing ends in
    8-bit pixels, so uint8 is lossless and moves 4x fewer bytes to the GPU); ``predict`` takes a
    stack of those and returns probabilities (sigmoid applied), shape ``(N, len(tags))``, float32.
    Scaling (``/255`` for DeepDanbooru, 0..255 floats for WD14) happens inside ``predict``.
    """

    family: str = ""  # "deepdanbooru" | "wd14"
    backend: str = ""  # "torch" | "onnx"
    tags: list[str]
    categories: list[str]
    input_size: tuple[int, int]  # (height, width)
    max_batch: int | None = None  # a fixed batch dimension (1 for old WD v2 exports), None = any
    source: str = ""
    device: str = "cpu"

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One decoded RGB/RGBA image -> the model's input for it, uint8 ``(H, W, 3)``."""

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, len(tags))`` float32 probabilities."""

    def close(self) -> None:
        """Release the model's memory (GPU included)."""

    def describe(self) -> str:
        return f"{self.family}/{self.backend} {self.source} on {self.device}"


@dataclass(frozen=True)
class Backend:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, LoadOptions], Tagger]


_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, detect: Callable[[Path], bool]):
    """Decorator for a backend's ``load(path, options) -> Tagger``."""

    def wrap(load: Callable[[Path, LoadOptions], Tagger]):
        _BACKENDS[name] = Backend(name, detect, load)
        return load

    return wrap


def backends() -> dict[str, Backend]:
    _import_builtin_backends()
    return dict(_BACKENDS)


def _import_builtin_backends() -> None:
    from . import deepdanbooru, onnx_tagger, wd_timm  # noqa: F401  (they register themselves)


def check_one_model(path: Path) -> None:
    """Raise :class:`ModelFileError` when the folder ``path`` holds models of several backends.

    A WD v3 release that ships both ``model.onnx`` and the timm files is one model (the device
    picks the runtime); a DeepDanbooru file beside a WD14 model is two, and picking one silently
    would tag with a model the user may not have meant.
    """
    if not path.is_dir():
        return
    found = [name for name, spec in backends().items() if spec.detect(path)]
    if len({"onnx" if name == "wd-timm" else name for name in found}) <= 1:
        return
    files = sorted(
        p.name for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in (".onnx", ".pt", ".pth", ".ckpt", ".safetensors")
    )
    raise ModelFileError(
        f"{path} holds several tagger models ({', '.join(files)}: {', '.join(found)}); "
        "give the model file itself, or a folder holding one model."
    )


def load_tagger(path: str | Path, options: LoadOptions | None = None, backend: str | None = None) -> Tagger:
    """Load the tagger in ``path`` (a model file or a folder) with the first backend that knows it."""
    options = options or LoadOptions()
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"Tagger model {str(path)!r} does not exist.")
    table = backends()
    if backend is not None:
        if backend not in table:
            raise TaggerError(f"Unknown tagger backend {backend!r}; choose one of: {', '.join(sorted(table))}.")
        return table[backend].load(path, options)
    check_one_model(path)
    for spec in table.values():
        if spec.detect(path):
            return spec.load(path, options)
    from .sniff import describe_foreign_file

    raise ModelFileError(describe_foreign_file(path))
