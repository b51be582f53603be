"""Seamless (tileable) images as AUTOMATIC1111's "Tiling" makes them: circular padding.

A1111 (``modules/sd_hijack.py``, ``apply_circular``) sets ``padding_mode = "circular"`` on every
``torch.nn.Conv2d`` of the loaded model, the UNet and the VAE alike, for the whole generation, so
each convolution sees the image wrapped around at its edges and the result tiles. Here the same is
done on the pipeline's modules for the duration of a ``with`` block, and every layer gets back the
padding mode it had: the cached pipeline is unchanged for the next request. Convolutions without
padding are left alone (circular padding of zero pixels changes nothing). The SD3 transformer has
no padded convolution (its patch embedding is unpadded), so there only the VAE wraps around and the
images do not tile seamlessly; A1111 behaves the same way.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


def _conv_layers(pipe: Any) -> list:
    """Every padded ``Conv2d`` of the pipeline's modules (UNet or transformer, VAE, text encoders)."""
    import torch

    seen: set[int] = set()
    layers = []
    components = getattr(pipe, "components", None) or {}
    for module in components.values():
        if not isinstance(module, torch.nn.Module):
            continue
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d) and id(layer) not in seen and _padded(layer):
                seen.add(id(layer))
                layers.append(layer)
    return layers


def _padded(layer) -> bool:
    padding = layer.padding
    if isinstance(padding, str):
        return padding != "valid"
    return any(int(p) > 0 for p in padding)


@contextlib.contextmanager
def circular_padding(pipe: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block the padded convolutions of ``pipe`` pad circularly (A1111's Tiling).

    Yields how many layers were switched (0 when ``enabled`` is false). Pipelines made with
    ``from_pipe`` share these modules, so they tile too. Each layer's own padding mode is restored
    on exit, also after an error.
    """
    if not enabled:
        yield 0
        return
    changed = [(layer, layer.padding_mode) for layer in _conv_layers(pipe) if layer.padding_mode != "circular"]
    try:
        for layer, _ in changed:
            layer.padding_mode = "circular"
        yield len(changed)
    finally:
        for layer, mode in changed:
            layer.padding_mode = mode
