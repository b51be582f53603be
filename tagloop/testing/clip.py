"""A tiny CLIP (transformers' real architecture, random weights) in the folder layout users have."""

from __future__ import annotations

from pathlib import Path


def save_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write ``CLIPModel.save_pretrained`` + ``CLIPImageProcessor`` files of a tiny random CLIP into ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": 1000,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    folder = Path(folder)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(
        folder
    )
    return folder
