"""Reading model files without loading them: safetensors headers, torch pickles' keys, and what a
set of tensor names is (a Stable Diffusion family, a LoRA, a VAE, a tagger, ...).

One classification for every stage: the tagger's "this is a Stable Diffusion checkpoint, not a
tagger" and the generator's family detection read the same table.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ModelFileError

#: Kinds of full Stable Diffusion checkpoints :func:`classify_keys` returns.
SD_FAMILIES = ("sd1", "sd2", "sdxl", "sd3")


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (tensor names -> dtype/shape), without reading tensors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > 200_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path} is not a readable .safetensors file ({e}); re-download it.") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a readable .safetensors file (bad header); re-download it.")
    return header


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


def classify_keys(tensors: Mapping[str, dict] | Iterable[str]) -> str:
    """What a state dict is, from its tensor names: a family, or the kind of file it is instead.

    Returns one of ``sd1``, ``sd2``, ``sdxl``, ``sd3`` (full checkpoints) or ``lora``, ``vae``,
    ``embedding``, ``deepdanbooru``, ``tagger``, ``controlnet``, ``unet``, ``text_encoder``, ``unknown``.
    """
    if not isinstance(tensors, Mapping):
        tensors = {k: {} for k in tensors}
    keys = tensors.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    def contains(part: str) -> bool:
        return any(part in k for k in keys)

    if (
        contains("lora_down")
        or contains("lora_up")
        or contains(".lora_A.")
        or contains(".lora_B.")
        or has("lora_unet_")
        or has("lora_te")
    ):
        return "lora"
    if "n_Conv_0.weight" in keys or "n_Conv_178.weight" in keys:
        return "deepdanbooru"
    if has("control_model.") or contains("input_hint_block") or contains("controlnet_cond_embedding"):
        return "controlnet"
    if contains("joint_blocks.0.context_block") or contains("joint_blocks.0.x_block"):
        return "sd3"
    if has("model.diffusion_model."):
        if has("conditioner.embedders.1.") or has("model.diffusion_model.label_emb."):
            return "sdxl"
        if has("cond_stage_model.model.") or any(
            k.endswith("attn2.to_k.weight") and (tensors[k].get("shape") or [0])[-1] == 1024 for k in keys
        ):
            return "sd2"
        return "sd1"
    if ("encoder.conv_in.weight" in keys and "decoder.conv_in.weight" in keys) or (
        has("first_stage_model.") and not has("model.diffusion_model.")
    ):
        return "vae"
    if "emb_params" in keys or has("string_to_param") or {"clip_l", "clip_g"} & set(keys):
        return "embedding"
    if has("down_blocks.") and "conv_in.weight" in keys and contains("time_embedding"):
        return "unet"
    if has("text_model.") or has("encoder.layers.0.self_attn"):
        return "text_encoder"
    if has("head.") or has("stem.") or has("patch_embed.") or has("classifier."):
        return "tagger"
    return "unknown"


_KIND_WORDS = {
    "lora": "a LoRA (put it in a LoRA folder and use <lora:NAME:WEIGHT> in the prompt)",
    "vae": "a VAE (give it as the generator's `vae`)",
    "embedding": "a textual-inversion embedding (put it in an embeddings folder and write its name in the prompt)",
    "deepdanbooru": "a DeepDanbooru tagger (use it with `tagloop tag --model`)",
    "tagger": "an image classifier or tagger (use it with `tagloop tag --model`)",
    "controlnet": "a ControlNet, which needs a base checkpoint",
    "unet": "a bare diffusers UNet without VAE and text encoder",
    "text_encoder": "a bare text encoder",
    "unknown": "not a Stable Diffusion checkpoint tagloop recognises",
}


def describe_kind(kind: str) -> str:
    """Words for a non-checkpoint kind from :func:`classify_keys`."""
    return _KIND_WORDS.get(kind, kind)
