"""Tiny taggers in the formats users have: DeepDanbooru (A1111's key layout, small widths, seeded
random weights scaled so scores differ from image to image), WD14 ONNX graphs, WD v3 timm folders."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..tagger.deepdanbooru import (
    BLOCKS,
    HEAD_INDEX,
    DeepDanbooruWidths,
    _net_class,
    save_deepdanbooru_safetensors,
)
from ..tagger.onnx_tagger import export_onnx, write_selected_tags_csv
from ..tagger.wd_timm import CONFIG_NAME, WEIGHTS_NAME

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "RATING_TAGS",
    "TINY_TAG_NAMES",
    "make_random_state_dict",
    "save_tiny_deepdanbooru",
    "save_tiny_deepdanbooru_onnx",
    "save_tiny_wd14_onnx",
    "save_tiny_wd_v3_timm",
    "tiny_tag_names",
]


#: Real-looking names at the head of the tiny tag list (the real list ends with the three ratings).
TINY_TAG_NAMES = (
    "1girl", "solo", "long_hair", "smile", "looking_at_viewer", "blush", "short_hair", "open_mouth",
    "blue_eyes", "blonde_hair", "hatsune_miku", "thighhighs", "^_^", "simple_background", "white_background",
)  # fmt: skip
#: The three system tags the 2019-2021 releases end with.
RATING_TAGS = ("rating:safe", "rating:questionable", "rating:explicit")


def tiny_tag_names(num_tags: int) -> list[str]:
    """Plausible tag names: real-looking ones, fillers ``tag_0015``…, the three v3 ratings last."""
    if num_tags < len(RATING_TAGS) + 1:
        raise ValueError(f"`num_tags` must be at least {len(RATING_TAGS) + 1}, got {num_tags}.")
    body = num_tags - len(RATING_TAGS)
    names = list(TINY_TAG_NAMES[:body]) + [f"tag_{i:04d}" for i in range(len(TINY_TAG_NAMES), body)]
    return names + list(RATING_TAGS)


def _calibration_images(generator: torch.Generator, size: int) -> torch.Tensor:
    """Two unlike NHWC images in 0..1: uniform noise and smooth colour gradients with a block."""
    import torch

    noise = torch.rand((size, size, 3), generator=generator)
    ramp = torch.linspace(0, 1, size)
    smooth = torch.stack(
        [ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), 1 - ramp[None, :].expand(size, size)], dim=-1
    )
    smooth = smooth.clone()
    smooth[size // 4 : size // 2, size // 4 : size // 2] = torch.tensor([0.9, 0.2, 0.3])
    return torch.stack([noise, smooth])


def make_random_state_dict(
    widths: DeepDanbooruWidths | None = None,
    num_tags: int | None = None,
    seed: int = 0,
    full: bool = False,
    calibration_size: int = 128,
) -> dict[str, torch.Tensor]:
    """A seeded random fp32 state dict with the real key layout; tiny widths unless ``full`` or ``widths``.

    Scaled layer by layer on two calibration images (every conv's output centred with unit spread,
    residual branches damped to 0.5, the head spread around a negative mean as in a real model), so
    scores are neither all 0 nor all 1 and differ from image to image.
    """
    import torch

    if widths is None:
        widths = DeepDanbooruWidths.full() if full else DeepDanbooruWidths.tiny()
    if num_tags is not None:
        widths = DeepDanbooruWidths(widths.stem, widths.stages, widths.inner, num_tags)
    gen = torch.Generator().manual_seed(seed)
    net = _net_class()(widths)
    expands = {blk.expand for blk in BLOCKS}
    with torch.no_grad():
        for i in range(HEAD_INDEX + 1):
            conv = net.conv(i)
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))

    # Biases stay small and uncentred: centring every channel on two images puts many units on
    # their ReLU kink, and the net then amplifies fp32 rounding a thousandfold (parity tests need
    # a well-conditioned net).
    def calibrate(index: int):
        gain = 0.5 if index in expands else 1.0

        def hook(module: Any, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            bias = module.bias
            out = output if bias is None else output - bias[None, :, None, None]
            scale = gain / (float(out.double().std()) or 1.0)
            module.weight.mul_(scale)
            if bias is not None:
                bias.mul_(0.1 * gain)
            return module._conv_forward(inputs[0], module.weight, bias)

        return hook

    images = _calibration_images(gen, calibration_size)
    handles = [net.conv(i).register_forward_hook(calibrate(i)) for i in range(HEAD_INDEX)]
    try:
        with torch.no_grad():
            feats = net.features(images)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        # The head has no bias: spread its pooled logits to unit deviation around zero, then move
        # each tag's mean to a target drawn around -1 (most tags of a real model sit well below
        # 0.5) by a rank-1 change along the mean feature vector.
        head = net.conv(HEAD_INDEX)
        pooled = feats.double().mean(dim=(2, 3))  # (N, C)
        weight = head.weight.double()[:, :, 0, 0]
        logits = pooled @ weight.T  # (N, T)
        weight = weight / (float(logits.std()) or 1.0)
        logits = pooled @ weight.T
        target = torch.randn(widths.num_tags, generator=gen, dtype=torch.float64) - 1.0
        direction = pooled.mean(dim=0)
        weight = weight + (target - logits.mean(dim=0))[:, None] * direction[None, :] / float(direction @ direction)
        head.weight.copy_(weight[:, :, None, None])
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def save_tiny_deepdanbooru(
    path: str | Path,
    fmt: Literal["pt", "safetensors"] | None = None,
    num_tags: int = 32,
    seed: int = 0,
    widths: DeepDanbooruWidths | None = None,
) -> tuple[Path, list[str]]:
    """Write a tiny random DeepDanbooru as users have it; returns ``(path, tags)``.

    ``pt``: a dict of tensors plus ``"tags"`` (A1111's layout); ``safetensors``: tags in the
    metadata. ``fmt`` defaults to the suffix of ``path``.
    """
    import torch

    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix.lower() == ".safetensors" else "pt")
    if fmt not in ("pt", "safetensors"):
        raise ValueError(f"`fmt` must be 'pt' or 'safetensors', got {fmt!r}.")
    widths = widths or DeepDanbooruWidths.tiny(num_tags)
    widths = DeepDanbooruWidths(widths.stem, widths.stages, widths.inner, num_tags)
    sd = make_random_state_dict(widths, seed=seed)
    tags = tiny_tag_names(num_tags)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_deepdanbooru_safetensors(sd, tags, path)
    else:
        torch.save({**sd, "tags": tags}, path)
    return path, tags


# --- WD14 and DeepDanbooru ONNX graphs, exported from torch through the real export path ---

_GENERAL_NAMES = [
    "1girl",
    "solo",
    "long_hair",
    "smile",
    "blue_eyes",
    "open_mouth",
    "short_hair",
    "blush",
    "skirt",
    "simple_background",
    "white_background",
    "looking_at_viewer",
    "hat",
    "holding",
    "^_^",
    "school_uniform",
]
_CHARACTER_NAMES = ["hatsune_miku", "hakurei_reimu", "kirisame_marisa", "ganyu_(genshin_impact)", "saber_(fate)"]
DD_RATINGS = ["rating:safe", "rating:questionable", "rating:explicit"]


def _names(pool: list[str], n: int, prefix: str) -> list[str]:
    return [pool[i] if i < len(pool) else f"{prefix}_{i}" for i in range(n)]


def _tiny_conv_net(num_tags: int, scale: str, with_embedding: bool):
    import torch
    from torch import nn

    class TinyTagger(nn.Module):
        """NHWC image -> two strided convs -> mean+max pool -> linear -> sigmoid."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.head = nn.Linear(32, num_tags)
            with torch.no_grad():  # spread the random logits so probabilities are far from 0.5
                self.conv1.weight.mul_(3.0)
                self.conv2.weight.mul_(3.0)
                self.head.weight.mul_(4.0)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2)
            x = x / 127.5 - 1.0 if scale == "0..255" else x * 2.0 - 1.0
            x = torch.nn.functional.gelu(self.conv1(x))
            x = torch.nn.functional.gelu(self.conv2(x))
            emb = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
            probs = torch.sigmoid(self.head(emb))
            return (probs, emb) if with_embedding else probs

    return TinyTagger()


def save_tiny_wd14_onnx(
    folder: str | Path,
    num_general: int = 12,
    num_character: int = 4,
    size: int = 64,
    dynamic_batch: bool = True,
    seed: int = 0,
    with_embedding: bool = False,
) -> Path:
    """Write a tiny WD14-layout tagger: ``model.onnx`` + ``selected_tags.csv``; returns the folder.

    The graph behaves like SmilingWolf's: input NHWC **BGR float 0..255** ``(N, size, size, 3)``,
    output sigmoid probabilities ``(N, 4 + num_general + num_character)``. ``dynamic_batch=False``
    fixes the batch at 1 and uses the v2.0 names (``input_1:0`` -> ``predictions_sigmoid``), like
    the old exports. ``with_embedding`` adds a second output (an embedding, as imgutils' re-exports do).
    The same ``seed`` gives the same weights.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    general = _names(_GENERAL_NAMES, num_general, "general")
    character = _names(_CHARACTER_NAMES, num_character, "character")
    write_selected_tags_csv(folder / "selected_tags.csv", general, character)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _tiny_conv_net(4 + num_general + num_character, "0..255", with_embedding)
    input_name, output_name = ("input", "output") if dynamic_batch else ("input_1:0", "predictions_sigmoid")
    outputs = [output_name, "embedding"] if with_embedding else [output_name]
    example = torch.full((1, size, size, 3), 128.0)
    export_onnx(net, example, folder / "model.onnx", input_name, outputs, dynamic_batch)
    return folder


def save_tiny_deepdanbooru_onnx(
    folder: str | Path,
    num_tags: int = 12,
    size: int = 64,
    dynamic_batch: bool = True,
    seed: int = 0,
    filename: str = "deepdanbooru.onnx",
) -> Path:
    """Write a tiny DeepDanbooru-layout tagger: ``<filename>`` + ``tags.txt``; returns the folder.

    Input NHWC **RGB float 0..1**, output probabilities; ``tags.txt`` holds ``num_tags`` general
    tags then ``rating:safe``, ``rating:questionable``, ``rating:explicit`` (the 2019-2021 layout).
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tags = _names(_GENERAL_NAMES, num_tags, "tag") + DD_RATINGS
    (folder / "tags.txt").write_text("\n".join(tags) + "\n", encoding="utf-8")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _tiny_conv_net(len(tags), "0..1", False)
    export_onnx(net, torch.full((1, size, size, 3), 0.5), folder / filename, "input_1", ["output"], dynamic_batch)
    return folder


# --- WD v3 timm folders ---


def save_tiny_wd_v3_timm(
    folder: str | Path,
    architecture: str = "vit_tiny_patch16_224",
    model_args: dict[str, Any] | None = None,
    num_general: int = 12,
    num_character: int = 4,
    img_size: int = 64,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    seed: int = 0,
    key_prefix: str = "",
) -> Path:
    """Write a tiny WD v3 timm release: ``config.json`` (timm hub format), ``model.safetensors``, ``selected_tags.csv``.

    The default is a one-block ViT shaped like wd-vit-tagger-v3 (no class token, average pool,
    tanh GELU) at ``img_size``; random weights with a spread-out head so probabilities are not all
    0.5. ``key_prefix`` prepends a wrapper prefix (e.g. ``module.``) to every weight name.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model_args is None:
        model_args = dict(
            img_size=img_size,
            embed_dim=32,
            depth=1,
            num_heads=2,
            class_token=False,
            global_pool="avg",
            fc_norm=False,
            act_layer="gelu_tanh",
        )
    num_classes = 4 + num_general + num_character
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **model_args)
        head = model.get_classifier()
        with torch.no_grad():
            head.weight.normal_(0.0, 2.0 / math.sqrt(head.in_features))
            head.bias.normal_(0.0, 0.5)
    config = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": int(model.num_features),
        "global_pool": model_args.get("global_pool", "avg"),
        "model_args": model_args,
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": [3, img_size, img_size],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(mean),
            "std": list(std),
            "num_classes": num_classes,
            "pool_size": None,
            "first_conv": None,
            "classifier": None,
        },
    }
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = {key_prefix + k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    write_selected_tags_csv(
        folder / "selected_tags.csv",
        _names(_GENERAL_NAMES, num_general, "general"),
        _names(_CHARACTER_NAMES, num_character, "character"),
    )
    return folder
