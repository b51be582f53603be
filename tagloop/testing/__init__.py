"""Tiny random-weight models in the formats users have on disk, for the tests, benchmarks and ``tagloop demo``.

Every builder writes real files (A1111's DeepDanbooru ``.pt``/``.safetensors``, WD14 ``model.onnx`` +
``selected_tags.csv``, WD v3 timm folders, Stable Diffusion single files and diffusers folders, LoRA,
VAE, embeddings) that load through the same loaders a user's files do. Imported lazily: naming a
builder imports its backend, and torch only when it is called.
"""

from __future__ import annotations

_BUILDERS = {
    "save_tiny_deepdanbooru": "tagloop.testing.taggers",
    "make_random_state_dict": "tagloop.testing.taggers",
    "tiny_tag_names": "tagloop.testing.taggers",
    "save_tiny_wd14_onnx": "tagloop.testing.taggers",
    "save_tiny_deepdanbooru_onnx": "tagloop.testing.taggers",
    "save_tiny_wd_v3_timm": "tagloop.testing.taggers",
    "TINY_TAG_NAMES": "tagloop.testing.taggers",
    "RATING_TAGS": "tagloop.testing.taggers",
    "tiny_clip_tokenizer": "tagloop.testing.diffusion",
    "build_tiny_pipeline": "tagloop.testing.diffusion",
    "save_tiny_diffusers": "tagloop.testing.diffusion",
    "save_tiny_single_file": "tagloop.testing.diffusion",
    "save_tiny_vae_file": "tagloop.testing.diffusion",
    "save_tiny_lora": "tagloop.testing.diffusion",
    "save_tiny_embedding": "tagloop.testing.diffusion",
    "write_config_folder": "tagloop.testing.diffusion",
    "save_tiny_clip": "tagloop.testing.clip",
    "save_tiny_controlnet": "tagloop.testing.control",
    "build_tiny_controlnet": "tagloop.testing.control",
    "save_tiny_sd3_controlnet": "tagloop.testing.control",
    "build_tiny_sd3_controlnet": "tagloop.testing.control",
}

__all__ = list(_BUILDERS)


def __getattr__(name: str):
    module = _BUILDERS.get(name)
    if module is None:
        raise AttributeError(f"module 'tagloop.testing' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
