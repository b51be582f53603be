"""DeepDanbooru v3 (``resnet_custom_v3``) in PyTorch: the network, its loaders and the tagger.

The network is the layout of AUTOMATIC1111's TorchDeepDanbooru port of KichangKim's Keras model:
179 convolutions ``n_Conv_0 … n_Conv_178`` with batch norm folded into their biases (the head,
``n_Conv_178``, has none), TensorFlow "SAME" padding written out as explicit ``F.pad`` calls, a
sigmoid inside the model. A1111's ``model-resnet_custom_v3.pt`` loads into it with ``strict=True``.

Which convolution plays which part is data (:data:`STAGES`), not index arithmetic, because the
numbering has a quirk: in stage 4 the projection shortcut comes *after* the main branch (97-99
main, 100 shortcut) while every other stage numbers it first.

Widths are read from the weights (:meth:`DeepDanbooruNet.from_state_dict`), so a tiny model with
the same key layout (see :func:`tagloop.testing.taggers.make_random_state_dict`) runs through the very code users hit.

Files understood:

* ``.pt/.pth/.ckpt``: a dict of tensors plus ``"tags"`` (list of str), read with
  ``torch.load(weights_only=True)``; full unpickling only with ``allow_pickle``.
* ``.safetensors``: the same tensors, the tags as a JSON list in the metadata key ``"tags"`` or in
  a label file beside the model (``tags.txt``).
* a folder holding ``model-resnet_custom_v3.pt`` (or ``.safetensors``), or one model file.
"""

from __future__ import annotations

import gc
import json
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
from PIL import Image

from .base import GPUUnavailableError, LoadOptions, ModelFileError, Tagger, TaggerError, register_backend, resolve_device
from .labels import category_of, find_label_file, read_label_file

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: File name of A1111's checkpoint (``models/torch_deepdanbooru/`` in the web UI).
A1111_FILENAME = "model-resnet_custom_v3.pt"
#: Extensions read as torch pickles/zip archives.
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
#: The tag count of the v3-20211112 release (``n_Conv_178`` output channels).
FULL_NUM_TAGS = 9176
#: Parameters of the full model (160,851,136 conv weights + 105,408 biases).
FULL_PARAMETER_COUNT = 160_956_544
#: The side the released model was trained at; any multiple of 128 works with the fixed paddings.
DEFAULT_INPUT_SIZE = 512
#: Every stride-2 input must be even for the fixed paddings to equal TF "SAME": side % 128 == 0.
SIZE_MULTIPLE = 128
HEAD_INDEX = 178
STEM_INDEX = 0


@dataclass(frozen=True)
class StageSpec:
    """One stage's convolution indices.

    ``first_block`` = (1x1 reduce, 3x3, 1x1 expand) of the projection block, ``projection`` = its
    1x1 shortcut, ``identity_start`` = first index of the identity blocks that follow (three
    consecutive indices each), ``identity_blocks`` = how many, ``stride`` = stride of the first
    block's 3x3 and of the projection.
    """

    first_block: tuple[int, int, int]
    projection: int
    identity_start: int
    identity_blocks: int
    stride: int


#: The v3 numbering (KDD repeats [2, 7, 19, 19, 2, 2]). Stage 4 numbers its projection last.
STAGES: tuple[StageSpec, ...] = (
    StageSpec(first_block=(2, 3, 4), projection=1, identity_start=5, identity_blocks=2, stride=1),
    StageSpec(first_block=(12, 13, 14), projection=11, identity_start=15, identity_blocks=7, stride=2),
    StageSpec(first_block=(37, 38, 39), projection=36, identity_start=40, identity_blocks=19, stride=2),
    StageSpec(first_block=(97, 98, 99), projection=100, identity_start=101, identity_blocks=19, stride=2),
    StageSpec(first_block=(159, 160, 161), projection=158, identity_start=162, identity_blocks=2, stride=2),
    StageSpec(first_block=(169, 170, 171), projection=168, identity_start=172, identity_blocks=2, stride=2),
)


@dataclass(frozen=True)
class Bottleneck:
    """One bottleneck block: conv indices, stride of its 3x3 (and projection), stage number (0-5)."""

    reduce: int
    conv3: int
    expand: int
    projection: int | None
    stride: int
    stage: int


def _blocks() -> tuple[Bottleneck, ...]:
    blocks: list[Bottleneck] = []
    for s, spec in enumerate(STAGES):
        a, b, c = spec.first_block
        blocks.append(Bottleneck(a, b, c, spec.projection, spec.stride, s))
        for k in range(spec.identity_blocks):
            i = spec.identity_start + 3 * k
            blocks.append(Bottleneck(i, i + 1, i + 2, None, 1, s))
    return tuple(blocks)


#: All 57 bottlenecks in execution order.
BLOCKS: tuple[Bottleneck, ...] = _blocks()


def _check_table() -> None:
    used = [STEM_INDEX, HEAD_INDEX]
    for blk in BLOCKS:
        used += [blk.reduce, blk.conv3, blk.expand] + ([blk.projection] if blk.projection is not None else [])
    if sorted(used) != list(range(HEAD_INDEX + 1)):  # pragma: no cover - guards the table above
        raise AssertionError("DeepDanbooru conv table does not cover n_Conv_0..178 exactly once")


_check_table()


@dataclass(frozen=True)
class DeepDanbooruWidths:
    """Channel widths: stem, per-stage output and bottleneck (inner) widths, tag count."""

    stem: int = 64
    stages: tuple[int, ...] = (256, 512, 1024, 1024, 2048, 4096)
    inner: tuple[int, ...] = (64, 128, 256, 256, 512, 1024)
    num_tags: int = FULL_NUM_TAGS

    def __post_init__(self) -> None:
        if len(self.stages) != len(STAGES) or len(self.inner) != len(STAGES):
            raise ValueError(f"`stages` and `inner` need {len(STAGES)} widths each, got {self.stages} and {self.inner}.")
        if min(self.stem, self.num_tags, *self.stages, *self.inner) < 1:
            raise ValueError(f"widths must be positive, got {self}.")

    @classmethod
    def full(cls, num_tags: int = FULL_NUM_TAGS) -> DeepDanbooruWidths:
        """The released model's widths (KDD filters [256, 512, 1024, 1024, 2048, 4096])."""
        return cls(num_tags=num_tags)

    @classmethod
    def tiny(cls, num_tags: int = 32) -> DeepDanbooruWidths:
        """Small widths for tests and demos (stem 8, stages 16..64, inner = out / 4)."""
        stages = (16, 16, 32, 32, 32, 64)
        return cls(stem=8, stages=stages, inner=tuple(w // 4 for w in stages), num_tags=num_tags)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """``n_Conv_<i>.weight/.bias`` -> shape, every key of the state dict in index order."""
        shapes: dict[int, tuple[int, int, int]] = {STEM_INDEX: (self.stem, 3, 7)}
        channels = self.stem
        for blk in BLOCKS:
            out, inner = self.stages[blk.stage], self.inner[blk.stage]
            shapes[blk.reduce] = (inner, channels, 1)
            shapes[blk.conv3] = (inner, inner, 3)
            shapes[blk.expand] = (out, inner, 1)
            if blk.projection is not None:
                shapes[blk.projection] = (out, channels, 1)
            channels = out
        shapes[HEAD_INDEX] = (self.num_tags, channels, 1)
        table: dict[str, tuple[int, ...]] = {}
        for i in sorted(shapes):
            o, c, k = shapes[i]
            table[f"n_Conv_{i}.weight"] = (o, c, k, k)
            if i != HEAD_INDEX:
                table[f"n_Conv_{i}.bias"] = (o,)
        return table


# --------------------------------------------------------------------------------------------
# The network (torch is imported on first use, so importing this module stays light)


@cache
def _net_class() -> type:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class DeepDanbooruNet(nn.Module):
        """DeepDanbooru ``resnet_custom_v3``: float NHWC ``(N, H, W, 3)`` in 0..1 -> ``(N, T)`` probabilities.

        Submodules are ``n_Conv_0 … n_Conv_178`` so A1111's state dict loads with ``strict=True``.
        H and W must be multiples of 128.
        """

        def __init__(self, widths: DeepDanbooruWidths | None = None, device: Any = None, dtype: Any = None) -> None:
            super().__init__()
            self.widths = widths or DeepDanbooruWidths.full()
            strides = {STEM_INDEX: 2}
            for blk in BLOCKS:
                strides[blk.conv3] = blk.stride
                if blk.projection is not None:
                    strides[blk.projection] = blk.stride
            shapes = self.widths.expected_shapes()
            for i in range(HEAD_INDEX + 1):
                out, cin, kh, kw = shapes[f"n_Conv_{i}.weight"]
                conv = nn.Conv2d(cin, out, (kh, kw), stride=strides.get(i, 1), bias=i != HEAD_INDEX, device=device, dtype=dtype)
                setattr(self, f"n_Conv_{i}", conv)

        @classmethod
        def full(cls, num_tags: int = FULL_NUM_TAGS, device: Any = None, dtype: Any = None) -> DeepDanbooruNet:
            """The released model's architecture (160,956,544 parameters at 9,176 tags)."""
            return cls(DeepDanbooruWidths.full(num_tags), device=device, dtype=dtype)

        @classmethod
        def from_state_dict(
            cls, state_dict: Mapping[str, Any], source: str = "state dict", device: Any = "meta", dtype: Any = None
        ) -> DeepDanbooruNet:
            """An unloaded net shaped for ``state_dict`` (checked key by key; :class:`ModelFileError` on a mismatch).

            Built on the meta device by default; fill it with ``load_state_dict(sd, assign=True)``.
            """
            return cls(widths_from_state_dict(state_dict, source), device=device, dtype=dtype)

        def conv(self, index: int) -> nn.Conv2d:
            """``n_Conv_<index>``."""
            return getattr(self, f"n_Conv_{index}")

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """NHWC 0..1 -> the last stage's output, NCHW ``(N, C, H/128, W/128)``."""
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"DeepDanbooru takes NHWC input (N, H, W, 3), got shape {tuple(x.shape)}.")
            h, w = int(x.shape[1]), int(x.shape[2])
            if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
                raise ValueError(f"DeepDanbooru input sides must be multiples of {SIZE_MULTIPLE}, got {h}x{w}.")
            x = x.permute(0, 3, 1, 2)
            x = F.relu(self.n_Conv_0(F.pad(x, (2, 3, 2, 3))))
            x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), kernel_size=3, stride=2)
            for blk in BLOCKS:
                y = F.relu(self.conv(blk.reduce)(x))
                y = F.pad(y, (1, 1, 1, 1) if blk.stride == 1 else (0, 1, 0, 1))
                y = F.relu(self.conv(blk.conv3)(y))
                y = self.conv(blk.expand)(y)
                shortcut = x if blk.projection is None else self.conv(blk.projection)(x)
                x = F.relu(y + shortcut)
            return x

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            """NHWC 0..1 -> pooled head output ``(N, T)`` before the sigmoid, in fp32 (fp64 for fp64 input)."""
            out = self.n_Conv_178(self.features(x))
            return (out if out.dtype == torch.float64 else out.float()).mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """NHWC 0..1 -> ``(N, T)`` probabilities; pooling and sigmoid run in fp32 whatever the dtype."""
            return torch.sigmoid(self.logits(x))

    DeepDanbooruNet.__module__ = __name__
    return DeepDanbooruNet


def __getattr__(name: str) -> Any:
    """``DeepDanbooruNet`` is defined on first access (it imports torch)."""
    if name == "DeepDanbooruNet":
        return _net_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# State dicts: widths and validation


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(t, "shape", ()))


def widths_from_state_dict(state_dict: Mapping[str, Any], source: str = "state dict") -> DeepDanbooruWidths:
    """Read the widths off the weights, then check every key and shape against the v3 layout."""
    probes = [STEM_INDEX, HEAD_INDEX] + [i for s in STAGES for i in (s.first_block[0], s.first_block[2])]
    for i in probes:
        key = f"n_Conv_{i}.weight"
        if key not in state_dict:
            raise ModelFileError(
                f"{source}: key {key!r} is missing; a DeepDanbooru v3 model holds n_Conv_0 … n_Conv_178 "
                f"(A1111's {A1111_FILENAME} layout)."
            )
        if len(_shape(state_dict[key])) != 4:
            raise ModelFileError(f"{source}: key {key!r} has shape {_shape(state_dict[key])}, expected a 4-d convolution weight.")
    widths = DeepDanbooruWidths(
        stem=_shape(state_dict[f"n_Conv_{STEM_INDEX}.weight"])[0],
        stages=tuple(_shape(state_dict[f"n_Conv_{s.first_block[2]}.weight"])[0] for s in STAGES),
        inner=tuple(_shape(state_dict[f"n_Conv_{s.first_block[0]}.weight"])[0] for s in STAGES),
        num_tags=_shape(state_dict[f"n_Conv_{HEAD_INDEX}.weight"])[0],
    )
    check_state_dict(state_dict, widths, source)
    return widths


def check_state_dict(state_dict: Mapping[str, Any], widths: DeepDanbooruWidths, source: str = "state dict") -> None:
    """Raise :class:`ModelFileError` naming the first missing, mis-shaped, non-float or extra key."""
    expected = widths.expected_shapes()
    for key, shape in expected.items():
        if key not in state_dict:
            raise ModelFileError(f"{source}: key {key!r} is missing (expected shape {shape}).")
        found = _shape(state_dict[key])
        if found != shape:
            raise ModelFileError(f"{source}: key {key!r} has shape {found}, expected {shape}.")
        is_float = getattr(state_dict[key], "is_floating_point", None)
        if is_float is None or not is_float():
            dtype = getattr(state_dict[key], "dtype", type(state_dict[key]).__name__)
            raise ModelFileError(f"{source}: key {key!r} has dtype {dtype}, expected a floating-point tensor.")
    extra = [k for k in state_dict if k not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ModelFileError(
            f"{source}: unexpected key {extra[0]!r}{more}; a DeepDanbooru v3 file holds only the "
            f"n_Conv_0 … n_Conv_178 weights and biases (and `tags`)."
        )


def check_tags(tags: Sequence[str], widths: DeepDanbooruWidths, source: str) -> None:
    """The tag list must have one name per output channel of ``n_Conv_178``."""
    if len(tags) != widths.num_tags:
        raise ModelFileError(
            f"{source}: the tag list has {len(tags)} names but key 'n_Conv_178.weight' has "
            f"{widths.num_tags} output channels (shape {widths.expected_shapes()['n_Conv_178.weight']}); "
            f"use the tag list that came with these weights."
        )


# --------------------------------------------------------------------------------------------
# Random weights for tests, demos and benchmarks

# --------------------------------------------------------------------------------------------
# Files: reading, writing, converting


def _safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a ``.safetensors`` file (8-byte little-endian length, then JSON), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            n = int.from_bytes(head, "little")
            if n <= 1 or n > 100_000_000 or n > path.stat().st_size - 8:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


_DATA_PKL_CAP = 32 * 1024 * 1024
_LEGACY_PEEK = 8 * 1024 * 1024
_MARKERS = (b"n_Conv_0.weight", b"n_Conv_178.weight")


def _torch_file_has_dd_keys(path: Path) -> bool:
    """Peek at a torch file's pickle bytes for the DeepDanbooru key names, without unpickling anything."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.filename.endswith("data.pkl") and info.file_size <= _DATA_PKL_CAP:
                        blob = zf.read(info)
                        return all(m in blob for m in _MARKERS)
            return False
        with open(path, "rb") as f:
            blob = f.read(_LEGACY_PEEK)
        return all(m in blob for m in _MARKERS)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return False


def _file_is_deepdanbooru(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header = _safetensors_header(path)
        return header is not None and all(m.decode() in header for m in _MARKERS)
    if suffix in TORCH_SUFFIXES:
        return _torch_file_has_dd_keys(path)
    return False


def _folder_candidates(folder: Path) -> list[Path]:
    """DeepDanbooru files in ``folder``: A1111's file name first, else every file whose keys match."""
    names = (A1111_FILENAME, Path(A1111_FILENAME).with_suffix(".safetensors").name)
    for name in names:
        if (folder / name).is_file():
            return [folder / name]
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TORCH_SUFFIXES + (".safetensors",))
    except OSError:
        return []
    return [p for p in files if _file_is_deepdanbooru(p)]


def _say_choice(folder: Path, chosen: Path) -> None:
    """A1111's file name wins in a folder; say so when other DeepDanbooru files are beside it."""
    try:
        others = [
            p.name
            for p in sorted(folder.iterdir())
            if p != chosen and p.is_file() and p.suffix.lower() in TORCH_SUFFIXES + (".safetensors",) and _file_is_deepdanbooru(p)
        ]
    except OSError:
        return
    if others:
        from ..notices import notice

        notice(f"{folder} holds several DeepDanbooru files; using {chosen.name} (AUTOMATIC1111's name), not {', '.join(others)}.")


def detect(path: str | Path) -> bool:
    """True for a DeepDanbooru v3 file or a folder holding one; reads headers only, never unpickles."""
    path = Path(path)
    try:
        if path.is_dir():
            return bool(_folder_candidates(path))
        return path.is_file() and _file_is_deepdanbooru(path)
    except OSError:
        return False


def resolve_model_file(path: str | Path) -> Path:
    """A model file as given, or the one DeepDanbooru file in a folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = _folder_candidates(path)
    if not found:
        raise ModelFileError(
            f"Folder {str(path)!r} holds no DeepDanbooru model: expected {A1111_FILENAME} or one "
            f".pt/.safetensors file with n_Conv_0 … n_Conv_178 weights."
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelFileError(f"Folder {str(path)!r} holds several DeepDanbooru models ({names}); pass one file.")
    _say_choice(path, found[0])
    return found[0]


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    import pickle

    import torch

    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format (torch >= 1.6 default)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not allow_pickle and "Weights only load failed" in str(e):
            raise ModelFileError(
                f"{path} needs full unpickling, which can run code hidden in the file; pass `--allow-pickle` "
                f"only if you trust where it came from (or convert it once to .safetensors)."
            ) from None
        raise ModelFileError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0]}).") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(f"{path} is not a readable torch checkpoint ({first}).") from None


def _parse_tag_list(value: Any, where: str) -> list[str]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ModelFileError(f"{where} must be a list of tag names (strings), found {type(value).__name__}.")
    return list(value)


def read_deepdanbooru_file(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Tensors and the embedded tag list (None when the file has none) of a ``.pt``/``.safetensors`` file.

    Torch files are read with ``weights_only=True`` (memory-mapped when zip-format) unless
    ``allow_pickle``; the state dict is not validated here (see :func:`widths_from_state_dict`).
    """
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelFileError(f"{path} is not a readable safetensors file ({e}).") from None
        tags = None
        if "tags" in meta:
            try:
                tags = _parse_tag_list(json.loads(meta["tags"]), f"{path}: metadata key 'tags'")
            except json.JSONDecodeError:
                raise ModelFileError(f"{path}: metadata key 'tags' is not a JSON list of tag names.") from None
        return sd, tags
    if suffix not in TORCH_SUFFIXES:
        raise ModelFileError(
            f"{path}: DeepDanbooru weights must be .pt, .pth, .ckpt or .safetensors, not {suffix or 'no extension'!r}."
        )
    obj = _torch_load(path, allow_pickle)
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors (a state dict) plus `tags`.")
    sd = dict(obj)
    tags = _parse_tag_list(sd.pop("tags"), f"{path}: key 'tags'") if "tags" in sd else None
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path}: key {key!r} holds a {type(value).__name__}, expected a tensor.")
    return sd, tags


def _resolve_tags(model_file: Path, embedded: list[str] | None, tags_file: Path | None) -> tuple[list[str], list[str], str]:
    """Tags, categories and where they came from: ``tags_file`` > embedded > a label file beside the model."""
    if tags_file is None and embedded is not None:
        return embedded, [category_of(t) for t in embedded], str(model_file)
    label = find_label_file(model_file, tags_file)
    if label is None:
        raise ModelFileError(
            f"{model_file} has no tag list inside it and none beside it; put tags.txt (one tag per line) "
            f"next to it or pass `--tags-file`."
        )
    if not label.is_file():
        raise ModelFileError(f"Tag list {str(label)!r} does not exist; check `tags_file`.")
    tags, cats = read_label_file(label)
    cats = ["rating" if t.startswith("rating:") else c for t, c in zip(tags, cats)]
    return tags, cats, str(label)


def save_deepdanbooru_safetensors(state_dict: Mapping[str, torch.Tensor], tags: Sequence[str], path: str | Path) -> Path:
    """Write weights and tags (JSON list in the metadata key ``"tags"``) as ``.safetensors``; validated first."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {k: v for k, v in state_dict.items() if k != "tags"}
    widths = widths_from_state_dict(sd, "state dict to save")
    tags = _parse_tag_list(list(tags), "`tags`")
    check_tags(tags, widths, "state dict to save")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    metadata = {"tags": json.dumps(tags, ensure_ascii=False), "architecture": "deepdanbooru/resnet_custom_v3", "format": "pt"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def convert_to_safetensors(
    src: str | Path, dst: str | Path | None = None, allow_pickle: bool = False, tags_file: str | Path | None = None
) -> Path:
    """Convert A1111's ``model-resnet_custom_v3.pt`` (or any DeepDanbooru file) to ``.safetensors``.

    ``dst`` defaults to ``src`` with the ``.safetensors`` suffix; the tags go into the metadata so
    the result needs no pickle and no side file. Returns the written path.
    """
    src = resolve_model_file(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise ModelFileError(f"Converting {src} would overwrite it; pass another destination.")
    from ..fileio import check_outputs

    sd, embedded = read_deepdanbooru_file(src, allow_pickle=allow_pickle)
    tags, _, _ = _resolve_tags(src, embedded, Path(tags_file) if tags_file else None)
    check_outputs([("the destination", dst)], [src] + ([tags_file] if tags_file else []) + [src.with_name("tags.txt")])
    return save_deepdanbooru_safetensors(sd, tags, dst)


# --------------------------------------------------------------------------------------------
# The tagger


def parse_input_size(value: Any) -> tuple[int, int]:
    """``512``, ``"512"``, ``"512x384"`` or ``(512, 384)`` -> ``(height, width)``; sides multiples of 128."""
    size: tuple[int, int] | None = None
    try:
        if value is None:
            size = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            size = (int(value), int(value))
        elif isinstance(value, str):
            parts = value.lower().replace("×", "x").split("x")
            if len(parts) == 1:
                size = (int(parts[0]), int(parts[0]))
            elif len(parts) == 2:
                size = (int(parts[0]), int(parts[1]))
        elif isinstance(value, Sequence) and len(value) == 2:
            size = (int(value[0]), int(value[1]))
    except (TypeError, ValueError):
        size = None
    if size is None or min(size) <= 0 or size[0] % SIZE_MULTIPLE or size[1] % SIZE_MULTIPLE:
        raise TaggerError(
            f"`input_size` for DeepDanbooru must be a positive multiple of {SIZE_MULTIPLE} (its fixed paddings "
            f"match the trained model only then), got {value!r}; use 512."
        )
    return size


_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _compute_dtype(device: str, dtype: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise TaggerError(f"`dtype` must be auto, fp32, fp16 or bf16, not {dtype!r}.")
    return getattr(torch, _DTYPES[dtype])


class DeepDanbooruTagger(Tagger):
    """DeepDanbooru v3 on torch: A1111 (or KichangKim) preprocessing, uint8 in, probabilities out."""

    family = "deepdanbooru"
    backend = "torch"

    def __init__(
        self,
        net: Any,
        tags: list[str],
        categories: list[str],
        input_size: tuple[int, int] = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE),
        device: str = "cpu",
        dtype: Any = None,
        preprocessing: Literal["a1111", "kdd"] = "a1111",
        source: str = "",
    ) -> None:
        import torch

        if preprocessing not in ("a1111", "kdd"):
            raise TaggerError(f"`dd_preprocess` must be 'a1111' or 'kdd', not {preprocessing!r}.")
        self.net = net
        self.tags = tags
        self.categories = categories
        self.input_size = parse_input_size(tuple(input_size))
        self.device = device
        self.dtype = dtype or torch.float32
        self.preprocessing = preprocessing
        self.source = source

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A decoded image -> uint8 RGB ``(H, W, 3)`` at ``input_size``, edge-filled bands."""
        from .preprocess import deepdanbooru_a1111, deepdanbooru_kdd

        height, width = self.input_size
        fn = deepdanbooru_kdd if self.preprocessing == "kdd" else deepdanbooru_a1111
        return fn(image, width=width, height=height)

    def preprocess_tensor(self, image):
        """:meth:`preprocess` on a decoded ``(3, H, W)`` uint8 tensor, on its device (A1111 preprocessing only)."""
        from .gpu_host import preprocess_torch

        if self.preprocessing != "a1111":
            raise TaggerError("the device-side preprocessing exists for `dd_preprocess` a1111 only.")
        return preprocess_torch(image, "deepdanbooru", self.input_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC ``(N, H, W, 3)`` (a numpy array, or a torch tensor on any device) -> float32 ``(N, len(tags))``."""
        import torch

        if self.net is None:
            raise TaggerError(f"DeepDanbooru tagger {self.source} was closed; load it again.")
        if isinstance(batch, torch.Tensor):  # from the device-side host path: already where it runs
            if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != torch.uint8:
                raise TaggerError(
                    f"DeepDanbooru `predict` takes a uint8 (N, H, W, 3) batch, got {batch.dtype} {tuple(batch.shape)}."
                )
            with torch.inference_mode():
                probs = self.net(batch.to(self.device, non_blocking=True).to(self.dtype).div_(255))
            return probs.to("cpu", torch.float32).numpy()
        arr = np.asarray(batch)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise TaggerError(
                f"DeepDanbooru `predict` takes a uint8 (N, H, W, 3) batch, got {arr.dtype} {arr.shape}; "
                f"stack the outputs of `preprocess`."
            )
        if arr.shape[1] % SIZE_MULTIPLE or arr.shape[2] % SIZE_MULTIPLE:
            raise TaggerError(
                f"DeepDanbooru input sides must be multiples of {SIZE_MULTIPLE}, got {arr.shape[1]}x{arr.shape[2]}."
            )
        if arr.shape[0] == 0:
            return np.zeros((0, len(self.tags)), dtype=np.float32)
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            arr = np.array(arr, order="C")  # torch.from_numpy wants a writeable, contiguous array
        x = torch.from_numpy(arr)
        if str(self.device).startswith("cuda"):
            x = x.pin_memory()  # page-locked: the copy overlaps the previous batch's work
        x = x.to(self.device, non_blocking=True)
        with torch.inference_mode():
            x = x.to(self.dtype).div_(255)
            probs = self.net(x)
        return probs.to("cpu", torch.float32).numpy()

    def close(self) -> None:
        """Drop the network and give cached GPU memory back."""
        if self.net is None:
            return
        self.net = None
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _project_input_size(model_file: Path) -> tuple[int, int] | None:
    """``image_height``/``image_width`` of a KichangKim ``project.json`` beside the model, if any."""
    project = model_file.parent / "project.json"
    if not project.is_file():
        return None
    try:
        data = json.loads(project.read_text(encoding="utf-8"))
        return parse_input_size((int(data["image_height"]), int(data["image_width"])))
    except (OSError, ValueError, KeyError, TypeError, TaggerError):
        return None


def build_net(state_dict: Mapping[str, torch.Tensor], device: str = "cpu", dtype: Any = None, source: str = "state dict") -> Any:
    """A validated :class:`DeepDanbooruNet` holding ``state_dict``, in eval mode, on ``device``/``dtype``."""
    import torch

    # Fresh (aligned) parameters on the target device, filled by copy: tensors read from a file
    # can sit at odd addresses, which makes CPU kernels round differently, and mmap-backed
    # parameters would tie the model to the file.
    net = _net_class().from_state_dict(state_dict, source, device="meta", dtype=dtype or torch.float32)
    net = net.to_empty(device=device)
    net.load_state_dict(dict(state_dict), strict=True)
    if device.startswith("cuda"):
        net = net.to(memory_format=torch.channels_last)
    net.requires_grad_(False)
    return net.eval()


@register_backend("deepdanbooru", detect=detect)
def load_deepdanbooru(path: str | Path, options: LoadOptions | None = None) -> DeepDanbooruTagger:
    """Load a DeepDanbooru v3 model file or folder (see the module docstring) as a tagger."""
    options = options or LoadOptions()
    input_size = options.extra.get("input_size")
    model_file = resolve_model_file(path)
    if not model_file.is_file():
        raise ModelFileError(f"DeepDanbooru model {str(model_file)!r} does not exist.")
    size = parse_input_size(input_size) if input_size is not None else (_project_input_size(model_file) or parse_input_size(None))
    device = resolve_device(options.device)
    if options.require_gpu and not device.startswith("cuda"):
        raise GPUUnavailableError(
            "`require_gpu` is set but DeepDanbooru would run on the CPU; set `device` to auto or cuda on a GPU machine, or drop `require_gpu`."
        )
    dtype = _compute_dtype(device, options.dtype)
    sd, embedded = read_deepdanbooru_file(model_file, allow_pickle=options.allow_pickle)
    widths = widths_from_state_dict(sd, str(model_file))
    tags, categories, tag_source = _resolve_tags(model_file, embedded, options.tags_file)
    check_tags(tags, widths, tag_source)
    net = build_net(sd, device, dtype, str(model_file))
    del sd
    return DeepDanbooruTagger(
        net, tags, categories, size, device=device, dtype=dtype, preprocessing=options.dd_preprocess, source=str(model_file)
    )
