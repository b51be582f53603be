"""Decoding and per-family preprocessing, as the reference projects do it.

* :func:`load_image` opens anything Pillow can (first frame of animations), applies the EXIF
  orientation, caps the pixel count and converts palette, CMYK, 16-bit, float and greyscale images
  to 8-bit ``RGB`` (or ``RGBA`` when the image has transparency).
* :func:`deepdanbooru_a1111` is AUTOMATIC1111's ``resize_image(2, img.convert("RGB"), 512, 512)``:
  fit inside with Lanczos, centre, fill the bands by stretching the outermost row/column with
  Pillow's default (bicubic) resampler over a zero-extent box.
* :func:`deepdanbooru_kdd` follows KichangKim's evaluator: area resize keeping the aspect ratio,
  edge-replicated padding (integer centring; the original centres with a sub-pixel affine).
* :func:`wd14` is SmilingWolf's reference app: alpha on white, white square pad, bicubic resize
  only when the side differs, RGB -> BGR.

Every function returns uint8 ``(H, W, 3)``; the model scales it.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

#: Default cap on decoded pixels (width x height): 64 megapixels, about 8000 x 8000.
DEFAULT_MAX_PIXELS = 64_000_000

#: Extensions tried when a folder is walked (matched case-insensitively).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".tga"}
)

ImageSource = Union[str, Path, bytes, BinaryIO]


class ImageDecodeError(Exception):
    """A file that cannot be used as an image; the message says why in one sentence."""


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``source`` to an 8-bit ``RGB`` or ``RGBA`` image, or raise :class:`ImageDecodeError`."""
    name = str(source) if isinstance(source, (str, Path)) else "image"
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError("empty image data")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).stat().st_size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        img = _open(source, max_pixels)
    except Image.DecompressionBombError:
        raise ImageDecodeError(
            f"image has more pixels than the cap of {max_pixels:,} (a decompression bomb?); raise it with --max-pixels"
        ) from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a folder, not an image") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read (unknown or corrupt format)") from None
    except OSError as e:
        raise ImageDecodeError(f"cannot open image: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"image has no pixels ({w}x{h})")
    if max_pixels and w * h > max_pixels:
        raise ImageDecodeError(
            f"image is {w}x{h} = {w * h:,} pixels, over the cap of {max_pixels:,} (raise it with --max-pixels)"
        )
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_8bit(img)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            msg = f"file is truncated ({msg})"
        raise ImageDecodeError(f"cannot decode {Path(name).name}: {msg}") from None


_PIL_LIMIT = threading.Lock()


def _open(source, max_pixels: int | None) -> Image.Image:
    """``Image.open`` with tagloop's pixel cap instead of Pillow's own bomb limit.

    Pillow refuses images over twice ``Image.MAX_IMAGE_PIXELS`` (about 179 MP) while opening them,
    before our cap is checked. When the cap allows more, the open is retried with Pillow's limit
    raised to the cap for that call (under a lock; the cap is still enforced on the size read).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.DecompressionBombError:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is None or (max_pixels is not None and max_pixels <= 2 * limit):
                raise
            if hasattr(source, "seek"):
                source.seek(0)
            with _PIL_LIMIT:
                Image.MAX_IMAGE_PIXELS = max_pixels
                try:
                    return Image.open(source)
                finally:
                    Image.MAX_IMAGE_PIXELS = limit


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)


def to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> ``RGB`` or ``RGBA`` with 8 bits per channel."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
            arr = arr * (255.0 / top)
        else:  # float images: 0..1 if they fit, else min-max
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
            arr = arr * 255.0 if lo >= 0 and hi <= 1 else (arr - lo) * (255.0 / max(hi - lo, 1e-12))
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "CMYK":
        return img.convert("RGB")
    if has_alpha(img):
        return img.convert("RGBA")
    return img.convert("RGB")


def _lanczos(img: Image.Image, w: int, h: int) -> Image.Image:
    return img.resize((w, h), resample=Image.Resampling.LANCZOS)


def deepdanbooru_a1111(img: Image.Image, width: int = 512, height: int = 512) -> np.ndarray:
    """AUTOMATIC1111's DeepBooru input: resize-and-fill (mode 2), uint8 RGB ``(height, width, 3)``."""
    im = img.convert("RGB")  # A1111 drops alpha without compositing
    ratio = width / height
    src_ratio = im.width / im.height
    src_w = width if ratio < src_ratio else im.width * height // im.height
    src_h = height if ratio >= src_ratio else im.height * width // im.width
    src_w, src_h = max(src_w, 1), max(src_h, 1)
    resized = _lanczos(im, src_w, src_h)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            res.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            res.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return np.asarray(res, dtype=np.uint8)


def deepdanbooru_kdd(img: Image.Image, width: int = 512, height: int = 512) -> np.ndarray:
    """KichangKim's evaluator input: area resize into the box keeping aspect, edge padding, RGB uint8."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, int(round(w * scale)))), max(1, min(height, int(round(h * scale))))
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        arr = cv2.resize(arr, (nw, nh), interpolation=interp)
    top, left = (height - nh) // 2, (width - nw) // 2
    return np.pad(arr, ((top, height - nh - top), (left, width - nw - left), (0, 0)), mode="edge")


def wd14(img: Image.Image, size: int = 448) -> np.ndarray:
    """SmilingWolf's WD14 input: alpha on white, white square pad, bicubic to ``size``, BGR uint8."""
    if has_alpha(img):
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        canvas.alpha_composite(img.convert("RGBA"))
        rgb = canvas.convert("RGB")
    else:  # compositing an opaque image on white changes nothing: skip the work
        rgb = img.convert("RGB")
    side = max(rgb.size)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        padded = padded.resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(padded, dtype=np.uint8)[:, :, ::-1])
