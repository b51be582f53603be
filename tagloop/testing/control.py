"""Tiny random ControlNets in the layouts users have: a diffusers folder and lllyasviel's single file.

:func:`save_tiny_controlnet` copies a tiny UNet's encoder into a ControlNet (``ControlNetModel.from_unet``)
and gives every weight, the zero-initialised output convs included, seeded random values, so the
control really changes the image. :func:`save_tiny_sd3_controlnet` does the same for an SD3
transformer (``SD3ControlNetModel``: its first blocks copied, the condition patch embedding and the
zero-initialised output projections seeded random).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_tiny_controlnet(unet, seed: int = 0, embedding_widths: tuple[int, ...] | None = None, scale: float = 0.3):
    """A ControlNet of ``unet``'s shape with seeded random weights (zero convs not zero).

    ``embedding_widths``: the condition embedding's widths; their number sets its downsampling
    (``2 ** (len - 1)``), which must be the VAE's; default: as many as the unet's pipeline needs is
    the caller's choice, ``(8, 16)`` (a factor 2, the tiny VAEs').
    """
    import torch
    from diffusers import ControlNetModel

    widths = embedding_widths or (8, 16)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths, load_weights_from_unet=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return cn.eval()


def controlnet_to_original(state_dict: dict, config: dict, prefix: str = "control_model.") -> dict:
    """Diffusers ``ControlNetModel`` weights -> lllyasviel's ``cldm`` names (``control_model.input_blocks...``)."""
    from .diffusion import _RESNET_UNET, _rename, _unet_prefix_map

    n = len(config["block_out_channels"])
    pm = _unet_prefix_map({**config, "up_block_types": config.get("up_block_types") or ("UpBlock2D",) * n})
    blocks = 1 + max((int(k.split(".")[2]) for k in state_dict if k.startswith("controlnet_cond_embedding.blocks.")), default=-1)
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        if k.startswith("controlnet_down_blocks."):
            i, tail = k.split(".")[1], k.split(".", 2)[2]
            name = f"zero_convs.{i}.0.{tail}"
        elif k.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + k.split(".", 1)[1]
        elif k.startswith("controlnet_cond_embedding.conv_in."):
            name = "input_hint_block.0." + k.rsplit(".", 1)[1]
        elif k.startswith("controlnet_cond_embedding.blocks."):
            j = int(k.split(".")[2])
            name = f"input_hint_block.{2 * (j + 1)}." + k.rsplit(".", 1)[1]
        elif k.startswith("controlnet_cond_embedding.conv_out."):
            name = f"input_hint_block.{2 * (blocks + 1)}." + k.rsplit(".", 1)[1]
        else:
            name = _rename(k, pm, _RESNET_UNET)
        out[prefix + name] = v.contiguous()
    return out


def save_tiny_controlnet(
    unet,
    folder: str | Path | None = None,
    file: str | Path | None = None,
    seed: int = 0,
    embedding_widths: tuple[int, ...] | None = None,
):
    """Write a tiny ControlNet of ``unet`` as a diffusers ``folder`` and/or an original-layout ``file``
    (``.safetensors``; ``.pth`` as a torch state dict). Returns the model."""
    import torch
    from safetensors.torch import save_file

    cn = build_tiny_controlnet(unet, seed=seed, embedding_widths=embedding_widths)
    if folder is not None:
        cn.save_pretrained(Path(folder), safe_serialization=True)
    if file is not None:
        path = Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = controlnet_to_original(cn.state_dict(), dict(cn.config))
        if path.suffix.lower() == ".safetensors":
            save_file(sd, str(path))
        else:
            torch.save(sd, str(path))
    return cn


def build_tiny_sd3_controlnet(transformer, seed: int = 0, num_layers: int | None = None, scale: float = 0.3):
    """An ``SD3ControlNetModel`` of ``transformer``'s shape (its first ``num_layers`` blocks, default all),
    the condition embedding (``pos_embed_input``) and output projections (``controlnet_blocks``) seeded random.

    Built from the transformer's config as ``SD3ControlNetModel.from_transformer`` does, without its
    inpainting channel (``extra_conditioning_channels=0``: the condition is the VAE latent alone).
    diffusers adds no control to the transformer's last block (it outputs no context), so for the
    control to have an effect the transformer needs two blocks or more
    (``save_tiny_diffusers("sd3", folder, sd3_transformer={"num_layers": 2})``).
    """
    import torch
    from diffusers import SD3ControlNetModel

    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    config.update(num_layers=num_layers or config["num_layers"], extra_conditioning_channels=0)
    cn = SD3ControlNetModel.from_config(config)
    cn.pos_embed.load_state_dict(transformer.pos_embed.state_dict())
    cn.time_text_embed.load_state_dict(transformer.time_text_embed.state_dict())
    cn.context_embedder.load_state_dict(transformer.context_embedder.state_dict())
    # the transformer's last block outputs no context (context_pre_only), the ControlNet's blocks do:
    # copy what has the same shape
    own = cn.transformer_blocks.state_dict()
    base = transformer.transformer_blocks.state_dict()
    cn.transformer_blocks.load_state_dict({k: v for k, v in base.items() if k in own and own[k].shape == v.shape}, strict=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if name.startswith(("controlnet_blocks", "pos_embed_input")):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return cn.eval()


def save_tiny_sd3_controlnet(transformer, folder: str | Path, seed: int = 0, num_layers: int | None = None):
    """Write a tiny SD3 ControlNet of ``transformer`` as a diffusers ``folder``; returns the model."""
    cn = build_tiny_sd3_controlnet(transformer, seed=seed, num_layers=num_layers)
    cn.save_pretrained(Path(folder), safe_serialization=True)
    return cn
