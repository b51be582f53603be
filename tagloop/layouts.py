"""Where AUTOMATIC1111 and ComfyUI keep each kind of model file: one table for every stage."""

from __future__ import annotations

from pathlib import Path

#: Sub-folders of an AUTOMATIC1111 WebUI install, per kind of file.
A1111_DIRS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("models/Stable-diffusion",),
    "vae": ("models/VAE",),
    "lora": ("models/Lora", "models/LyCORIS"),
    "embedding": ("embeddings",),
    "deepdanbooru": ("models/torch_deepdanbooru",),
    "controlnet": ("models/ControlNet",),
}

#: Sub-folders of a ComfyUI install, per kind of file (WD14 models as ComfyUI-WD14-Tagger keeps them).
COMFYUI_DIRS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("models/checkpoints",),
    "vae": ("models/vae",),
    "lora": ("models/loras",),
    "embedding": ("models/embeddings",),
    "wd14": ("custom_nodes/ComfyUI-WD14-Tagger/models",),
    "controlnet": ("models/controlnet",),
}

#: A1111's DeepDanbooru file name inside its ``deepdanbooru`` folder.
A1111_DEEPDANBOORU_FILE = "model-resnet_custom_v3.pt"


def install_dirs(kind: str, a1111_dir: str | Path | None = None, comfyui_dir: str | Path | None = None) -> list[Path]:
    """The folders of ``kind`` in the given installs, A1111's first (whether or not they exist)."""
    out: list[Path] = []
    for root, table in ((a1111_dir, A1111_DIRS), (comfyui_dir, COMFYUI_DIRS)):
        if root is not None:
            out.extend(Path(root).expanduser() / rel for rel in table.get(kind, ()))
    return out
