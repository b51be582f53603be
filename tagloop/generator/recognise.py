"""Recognising Stable Diffusion models on disk: the family (sd1, sd2, sdxl, sd3) of a diffusers folder or
of a single checkpoint's tensor names, FP8 storage, the SD3 variant; never from the file name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from .. import errors
from ..errors import TagloopError
from ..weights import safetensors_header

Family = Literal["sd1", "sd2", "sdxl", "sd3"]
DType = Literal["auto", "fp32", "fp16", "bf16", "fp8"]
FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3")

CHECKPOINT_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")


PIPELINE_CLASSES = {
    "sd1": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sd2": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
}

#: Packaged config folder per family (``tagloop/data/configs/<name>``).
PACKAGED_CONFIGS = {"sd1": "sd15", "sdxl": "sdxl-base", "sd3-medium": "sd35-medium", "sd3-large": "sd35-large"}
CLIP_BPE_FILE = "clip_bpe_simple_vocab_16e6.txt.gz"


# The generator's errors are tagloop's one family (tagloop.errors), under the names this package uses.
GeneratorError = TagloopError
ModelFileError = errors.ModelFileError
ModelNotFoundError = errors.ModelNotFoundError


# --- reading checkpoint headers -----------------------------------------------------------------


def _pickle_keys(path: Path) -> dict[str, Any]:
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user problem
        raise ModelFileError(f"{path} could not be read as a torch checkpoint ({type(e).__name__}: {e}).") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelFileError(f"{path} holds a {type(sd).__name__}, not a state dict of tensors.")
    return {k: {"dtype": str(getattr(v, "dtype", "")), "shape": list(getattr(v, "shape", []))} for k, v in sd.items()}


def checkpoint_tensors(path: str | Path, allow_pickle: bool = False) -> dict[str, dict]:
    """Tensor name -> ``{"dtype", "shape"}`` of a checkpoint file (header only for safetensors)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return {k: v for k, v in safetensors_header(path).items() if k != "__metadata__"}
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(
            f"{path} is an ONNX model (a tagger, not a Stable Diffusion checkpoint); give a .safetensors checkpoint."
        )
    if path.suffix.lower() in PICKLE_EXTS:
        if not allow_pickle:
            raise ModelFileError(
                f"{path} is a pickle file ({path.suffix}), which can run code when loaded; "
                "convert it to .safetensors or pass --allow-pickle if you trust its source."
            )
        return _pickle_keys(path)
    raise ModelFileError(
        f"{path} has an unknown extension {path.suffix!r}; give a .safetensors checkpoint or a diffusers folder."
    )


def is_fp8(tensors: dict[str, dict]) -> bool:
    """Whether the denoiser weights are stored as fp8 (``F8_E4M3``/``F8_E5M2``)."""
    n8 = sum(1 for v in tensors.values() if str(v.get("dtype", "")).upper().startswith(("F8", "FLOAT8", "TORCH.FLOAT8")))
    return n8 > 0 and n8 * 4 >= len(tensors)


def sd3_variant(tensors: dict[str, dict]) -> str:
    """Which SD3 MMDiT a checkpoint holds, from its tensor names.

    ``large`` (SD3.5 large: 38 joint blocks), ``medium`` (SD3.5 medium: dual-attention ``x_block.attn2``
    blocks and RMS q/k norms ``attn.ln_q``) or ``medium-3.0`` (SD3 medium: neither; a different
    transformer configuration from SD3.5 medium's).
    """
    depth = 1 + max((int(m.group(1)) for k in tensors if (m := re.search(r"joint_blocks\.(\d+)\.", k))), default=-1)
    if depth >= 38:
        return "large"
    if any(".x_block.attn2." in k or ".attn.ln_q." in k for k in tensors):
        return "medium"
    return "medium-3.0"


def family_of_folder(folder: str | Path) -> str:
    """Family of a diffusers folder from ``model_index.json`` (and the text encoder width for SD2)."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelFileError(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder; "
            "give the folder that holds model_index.json, or a .safetensors checkpoint."
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{index} is not valid JSON ({e}).") from None
    return family_of_index(data, folder, str(folder))


def family_of_index(data: dict, folder: Path | None, where: str) -> str:
    cls = str(data.get("_class_name", ""))
    if cls.startswith("StableDiffusionXL"):
        return "sdxl"
    if cls.startswith("StableDiffusion3"):
        return "sd3"
    if cls in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"):
        te = folder / "text_encoder" / "config.json" if folder is not None else None
        if te is not None and te.is_file():
            try:
                if json.loads(te.read_text(encoding="utf-8")).get("hidden_size") == 1024:
                    return "sd2"
            except (OSError, ValueError):
                pass
        return "sd1"
    raise ModelFileError(
        f"{where} is a {cls or 'pipeline of unknown class'} model; tagloop generates with SD1.x/2.x, SDXL and SD3.x."
    )
