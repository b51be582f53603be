"""Tiny taggers in the formats users have: DeepDanbooru (A1111's key layout, small widths, seeded
random weights scaled so scores differ from image to image), WD14 ONNX graphs, WD v3 timm folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..tagger.deepdanbooru import (
    BLOCKS,
    HEAD_INDEX,
    DeepDanbooruWidths,
    _net_class,
    save_deepdanbooru_safetensors,
)
from ..tagger.onnx_tagger import save_tiny_deepdanbooru_onnx, save_tiny_wd14_onnx
from ..tagger.wd_timm import save_tiny_wd_v3_timm

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
