"""Naming a file that is not a tagger: an SD checkpoint, a LoRA, a VAE, an image, ..."""

from __future__ import annotations

import json
import struct
from pathlib import Path

_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"RIFF": "a RIFF file (WebP image?)",
    b"PK\x03\x04": "a zip archive",
}


def safetensors_keys(path: Path, limit: int = 100_000_000) -> list[str] | None:
    """Tensor names of a safetensors file from its header only, or None if it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > limit:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    return [k for k in header if k != "__metadata__"]


_PICKLE_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"})


def torch_pickle_strings(path: Path, limit: int = 64 * 1024 * 1024) -> list[str] | None:
    """The string constants (dict keys among them) of a zip-format torch file's ``data.pkl``.

    The pickle is only disassembled with :mod:`pickletools`, never executed. None when ``path`` is
    not a zip-format torch file or its pickle cannot be read.
    """
    import pickletools
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            info = next((i for i in zf.infolist() if i.filename.endswith("data.pkl")), None)
            if info is None or info.file_size > limit:
                return None
            blob = zf.read(info)
        return [str(arg) for op, arg, _ in pickletools.genops(blob) if op.name in _PICKLE_STRING_OPS]
    except Exception:  # a broken archive or pickle: nothing to say about its keys
        return None


def classify_keys(keys: list[str]) -> str | None:
    """What a set of state-dict keys belongs to, in words, or None if unknown."""
    ks = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in ks)

    def contains(part: str) -> bool:
        return any(part in k for k in ks)

    if has("model.diffusion_model.") or has("conditioner.embedders.") or contains("joint_blocks.0.context_block"):
        return "a Stable Diffusion checkpoint (use it with `tagloop generate --model`)"
    if has("lora_unet_") or has("lora_te") or contains(".lora_down.") or contains(".lora_A."):
        return "a LoRA (use it as <lora:NAME:WEIGHT> in a prompt with `tagloop generate --lora-dir`)"
    if has("encoder.down.") or has("first_stage_model.") or (has("decoder.") and has("encoder.") and has("quant_conv")):
        return "a VAE (use it with `tagloop generate --vae`)"
    if has("down_blocks.") and has("up_blocks."):
        return "a diffusers UNet (a part of a Stable Diffusion model)"
    if has("text_model.") or has("transformer.resblocks."):
        return "a text encoder"
    if has("string_to_param") or has("emb_params") or ks == {"clip_l", "clip_g"}:
        return "a textual-inversion embedding (use it with `tagloop generate --embeddings-dir`)"
    return None


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
