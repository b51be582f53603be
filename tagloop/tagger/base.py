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
from ..devices import resolve_device, torch_cuda_seen  # noqa: F401  (re-exported for the backends)
from ..errors import TagloopError

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "fp32", "fp16", "bf16"]


# The tagger's errors are tagloop's one family (tagloop.errors), under the names the backends use.
TaggerError = TagloopError
ModelFileError = errors.ModelFileError
ModelNotFoundError = errors.ModelNotFoundError
GPUUnavailableError = errors.GPUUnavailableError


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

    def tag(self, image, **options):
        """Tag one image (a path, bytes, a file object or a PIL image) -> :class:`TagResult`.

        ``options`` are the fields of :class:`~tagloop.tagger.run.TagOptions` (``threshold`` None =
        adaptive, ``general_threshold``, ``character_threshold``, ``mcut``, ``bands``, ``max_tags``,
        ``max_pixels``, ...). An image that cannot be decoded gives a result with ``error`` set.
        """
        return next(self.tag_many([image], **options))

    def tag_many(self, images, **options):
        """Tag many images, batched with parallel decoding, in input order -> iterator of :class:`TagResult`.

        A bad image is a result with ``error`` set; the others go on.
        """
        from .run import make_tag_options, tag_sources

        return tag_sources(self, images, make_tag_options(**options))

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
    """The registered backends, in registration order (the built-in ones register when
    :mod:`tagloop.tagger` is imported, which importing this module does first)."""
    return dict(_BACKENDS)


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
        p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".onnx", ".pt", ".pth", ".ckpt", ".safetensors")
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
            raise errors.InputError(f"Unknown tagger backend {backend!r}; choose one of: {', '.join(sorted(table))}.")
        return table[backend].load(path, options)
    check_one_model(path)
    for spec in table.values():
        if spec.detect(path):
            return spec.load(path, options)
    from .sniff import describe_foreign_file

    raise ModelFileError(describe_foreign_file(path))
