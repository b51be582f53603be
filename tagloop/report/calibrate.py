"""The ceiling copies: the source lightly altered, so that its tagger's own noise can be measured."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

#: Copy ids and what each does (docs/report-schema.md).
AUGMENTS = {
    "flip": "horizontal flip",
    "crop": "90% centre crop, resized back",
    "jpeg": "JPEG re-encode, quality 75",
}


def augment(image: Image.Image, kind: str) -> Image.Image:
    """One altered copy of ``image`` (RGB): ``flip``, ``crop`` or ``jpeg``."""
    rgb = image.convert("RGB")
    if kind == "flip":
        return ImageOps.mirror(rgb)
    if kind == "crop":
        w, h = rgb.size
        dx, dy = round(w * 0.05), round(h * 0.05)
        return rgb.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.LANCZOS)
    if kind == "jpeg":
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=75)
        buf.seek(0)
        with Image.open(buf) as im:
            return im.convert("RGB")
    raise ValueError(f"unknown augmentation {kind!r}; known: {', '.join(AUGMENTS)}")


def ceiling_copies(image: Image.Image, kinds=tuple(AUGMENTS)) -> dict[str, Image.Image]:
    """``{"ceiling-flip": image, ...}`` for every kind."""
    return {f"ceiling-{k}": augment(image, k) for k in kinds}
