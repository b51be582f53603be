"""Tiny Stable Diffusion pipelines (SD1, SD2, SDXL, SD3) and the files users keep beside them."""

from ..generator.tiny import (
    build_tiny_pipeline,
    save_tiny_diffusers,
    save_tiny_embedding,
    save_tiny_lora,
    save_tiny_single_file,
    save_tiny_vae_file,
    tiny_clip_tokenizer,
)

__all__ = [
    "build_tiny_pipeline",
    "save_tiny_diffusers",
    "save_tiny_embedding",
    "save_tiny_lora",
    "save_tiny_single_file",
    "save_tiny_vae_file",
    "tiny_clip_tokenizer",
]
