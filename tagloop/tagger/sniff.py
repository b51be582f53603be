"""Naming a file that is not a tagger: an SD checkpoint, a LoRA, a VAE, an image, ..."""

from __future__ import annotations

from pathlib import Path

from ..weights import SD_FAMILIES, safetensors_keys, torch_pickle_strings
from ..weights import classify_keys as weights_classify

_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"RIFF": "a RIFF file (WebP image?)",
    b"PK\x03\x04": "a zip archive",
}


#: What each kind of :func:`tagloop.weights.classify_keys` is, said to someone who gave it as a tagger.
_AS_TAGGER = {
    **{family: "a Stable Diffusion checkpoint (use it with `tagloop generate --model`)" for family in SD_FAMILIES},
    "lora": "a LoRA (use it as <lora:NAME:WEIGHT> in a prompt with `tagloop generate --lora-dir`)",
    "vae": "a VAE (use it with `tagloop generate --vae`)",
    "unet": "a diffusers UNet (a part of a Stable Diffusion model)",
    "text_encoder": "a text encoder",
    "embedding": "a textual-inversion embedding (use it with `tagloop generate --embeddings-dir`)",
    "controlnet": "a ControlNet (a part of a Stable Diffusion setup)",
}


def classify_keys(keys: list[str]) -> str | None:
    """What a set of state-dict keys belongs to, in words, or None if it is nothing tagloop knows."""
    return _AS_TAGGER.get(weights_classify(keys))


def describe_foreign_file(path: Path) -> str:
    """One sentence: what ``path`` is, and that it is not a tagger tagloop can load."""
    known = (
        "tagloop loads DeepDanbooru (.pt/.safetensors with n_Conv_* keys), WD14 ONNX (model.onnx + "
        "selected_tags.csv) and WD v3 timm folders (config.json + model.safetensors + selected_tags.csv)"
    )
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return f"{path} is a diffusers Stable Diffusion folder, not a tagger; {known}."
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            from .base import TaggerError
            from .wd_timm import read_timm_config

            try:
                read_timm_config(path)
            except TaggerError as e:  # say what is wrong with the config instead of "nothing here"
                return f"{path} holds config.json and model.safetensors but is not a WD v3 timm folder: {e}"
        return f"{path} holds no tagger model tagloop recognises; {known}."
    what = None
    keys = safetensors_keys(path)
    if keys is not None:
        what = classify_keys(keys) or "a safetensors file of unknown tensors"
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            return f"{path} cannot be read ({e})."
        for magic, name in _MAGIC.items():
            if head.startswith(magic):
                what = name
                break
        if head.startswith(b"PK\x03\x04") and path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin"):
            strings = torch_pickle_strings(path)
            what = (classify_keys(strings) if strings else None) or "a PyTorch checkpoint without DeepDanbooru's n_Conv_* keys"
    if what is None:
        return f"{path} is not a model file tagloop recognises; {known}."
    return f"{path} is {what}, not a tagger; {known}."
