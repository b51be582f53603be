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
  only when the side differs, RGB -> BGR. The square is never built at full resolution (a
  40000 x 100 strip would need a 40000 x 40000 one): the resize is done in Pillow's two passes on
  the content and on the rows or columns whose filter reaches it, and everything else is the
  resampled white (see :func:`wd14`), so memory follows the image and the model size.

Every function returns uint8 ``(H, W, 3)``; the model scales it.
"""

from __future__ import annotations

import io
import math
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


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, fit: int | None = None) -> Image.Image:
    """Decode ``source`` to an 8-bit ``RGB`` or ``RGBA`` image, or raise :class:`ImageDecodeError`.

    ``fit`` (fast decode): a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still
    leaves its long side at least ``fit`` pixels, the side a model resizes it to; other formats as
    they are. Faster for large JPEGs; the pixels (and the edge density) differ a little.
    """
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
            f"image has more pixels than the cap of {max_pixels:,} (a decompression bomb?); raise `max_pixels` to allow it"
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
            f"image is {w}x{h} = {w * h:,} pixels, over the cap of {max_pixels:,} (raise `max_pixels` to allow it)"
        )
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)
        if fit and img.format == "JPEG" and max(w, h) > 2 * fit:
            scale = fit / max(w, h)
            img.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright image (the usual case)
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
    im = img if img.mode == "RGB" else img.convert("RGB")  # A1111 drops alpha without compositing
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
    arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)  # no extra copy of RGB input
    h, w = arr.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, int(round(w * scale)))), max(1, min(height, int(round(h * scale))))
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        arr = cv2.resize(arr, (nw, nh), interpolation=interp)
    top, left = (height - nh) // 2, (width - nw) // 2
    return np.pad(arr, ((top, height - nh - top), (left, width - nw - left), (0, 0)), mode="edge")


def wd14(img: Image.Image, size: int = 448) -> np.ndarray:
    """SmilingWolf's WD14 input: alpha on white, white square pad, bicubic to ``size``, BGR uint8.

    Equivalent to pasting the image centred on a white ``max(w, h)`` square and resizing that with
    Pillow's bicubic filter, without allocating the square; see :func:`_wd14_square_resize`.
    """
    if has_alpha(img):
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        canvas.alpha_composite(img if img.mode == "RGBA" else img.convert("RGBA"))
        rgb = canvas.convert("RGB")
        del canvas
    else:  # compositing an opaque image on white changes nothing: skip the work
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    arr = _wd14_square_resize(rgb, size)
    return np.ascontiguousarray(arr[:, :, ::-1])


_BICUBIC = Image.Resampling.BICUBIC
_WHITE = (255, 255, 255)
#: Rows of a padded strip handed to Pillow at once (times its width: about 1M pixels, 4 MB).
_CHUNK_PIXELS = 1 << 20
#: Squares up to this many pixels (4096**2, 48 MB) are built and resized whole: faster than the pieces.
_SQUARE_PIXELS_MAX = 1 << 24
#: Filter taps (outputs x support x rows) past which a tall strip's band is not worth it (~0.5 s).
_BAND_TAPS_MAX = 1 << 27


def _wd14_square_resize(rgb: Image.Image, size: int) -> np.ndarray:
    """``rgb`` centred on a white square of side ``max(w, h)``, bicubic to ``size``: RGB uint8.

    Pillow resizes in two passes, horizontal then vertical, rounding to 8 bits in between, with
    filter weights that depend only on the source length, the output length and the output index.
    Both passes are run here, by Pillow, on pieces of the square; the square itself is never built.
    A white row (or column) of the square gives the same first-pass line whatever it is next to,
    so that line is computed once from a ``side x 1`` image; along the padded axis only the outputs
    whose filter support reaches the image need the image.

    * Exact path (the whole padded axis is resampled, from a buffer of ``side x size`` pixels):
      bit-identical to resizing the square, since Pillow gets the same lengths and the same rows.
      Used when that buffer is small next to the image or the model input (every ordinary aspect
      ratio: wide images at least ``size / 2`` tall, tall ones up to 4:1 and ``size / 2`` wide,
      anything up to ``8 * size`` on its long side).
    * Band path (long strips): only the outputs whose support reaches the image are resampled,
      from the source span those supports cover, passed to Pillow as a window (``box``) whose
      offset and scale equal the square's up to floating-point rounding; the other outputs are
      Pillow's resampling of constant lines. The rounding can move a filter weight by one unit in
      2**22, and so a handful of output values by 1 level.
      A tall strip so long and narrow that the band's work grows past ``_BAND_TAPS_MAX`` is
      resampled transposed instead (see :func:`_wd14_tall`): within 2 levels, on more outputs.
    """
    w, h = rgb.size
    side = max(w, h)
    if side <= size or side * side <= _SQUARE_PIXELS_MAX:  # a square this small costs less than the pieces
        # (bit-identical either way: the pieces path resizes exactly what Pillow resizes on the square)
        padded = Image.new("RGB", (side, side), _WHITE)
        padded.paste(rgb, ((side - w) // 2, (side - h) // 2))
        if side != size:
            padded = padded.resize((size, size), resample=_BICUBIC)
        return np.asarray(padded, dtype=np.uint8)
    if w == h:  # nothing to pad
        return np.asarray(rgb.resize((size, size), resample=_BICUBIC), dtype=np.uint8)
    # A white line of the full side, resampled: the first pass of every all-white row (or column).
    white = np.asarray(Image.new("L", (side, 1), 255).resize((size, 1), resample=_BICUBIC), dtype=np.uint8)[0]
    short = min(w, h)
    exact = side <= 8 * size or (2 * short >= size and (w > h or side <= 4 * w))
    if w > h:
        return _wd14_wide(rgb, size, side, white, exact)
    return _wd14_tall(rgb, size, side, white, exact)


def _wd14_wide(rgb: Image.Image, size: int, side: int, white: np.ndarray, exact: bool) -> np.ndarray:
    """Wider than tall: the first (horizontal) pass has no padding; the second has white rows."""
    w, h = rgb.size
    top = (side - h) // 2
    rows = rgb.resize((size, h), resample=_BICUBIC)  # pass 1 on the image's rows, as on the square
    o0, o1, b0, b1 = (0, size, 0, side) if exact else _band(side, size, top, top + h)
    line = Image.fromarray(np.repeat(white[None, :, None], 3, axis=2), "RGB")
    band = line.resize((size, b1 - b0), resample=Image.Resampling.NEAREST)  # pass-1 rows b0..b1 of the square
    band.paste(rows, (0, top - b0))
    del rows
    lo, hi = _box(side, size, o0, o1, b0)
    part = np.asarray(band.resize((size, o1 - o0), resample=_BICUBIC, box=(0, lo, size, hi)), dtype=np.uint8)
    del band
    if exact:
        return part
    out = _constant_lines(white, side, size)
    out[o0:o1] = part
    return out


def _wd14_tall(rgb: Image.Image, size: int, side: int, white: np.ndarray, exact: bool) -> np.ndarray:
    """Taller than wide: the first (horizontal) pass has white columns; the second has no padding."""
    w, h = rgb.size
    left = (side - w) // 2
    o0, o1, b0, b1 = (0, size, 0, side) if exact else _band(side, size, left, left + w)
    taps = (o1 - o0) * (2 * math.ceil(2.0 * side / size) + 1) * h
    if not exact and taps > _BAND_TAPS_MAX:
        # A very long, narrow strip: every band output sums its whole support (mostly white) on
        # every row, which grows as side**2. Resample the transposed strip instead (its padded
        # pass comes second and costs ~nothing): the passes swap order, so the 8-bit rounding
        # between them differs, by 1 (at most 2) levels on some outputs.
        flipped = rgb.transpose(Image.Transpose.TRANSPOSE)
        return np.ascontiguousarray(_wd14_wide(flipped, size, side, white, False).transpose(1, 0, 2))
    lo, hi = _box(side, size, o0, o1, b0)
    cols = Image.new("RGB", (o1 - o0, h))  # pass 1 of output columns o0..o1, every row
    step = max(1, _CHUNK_PIXELS // (b1 - b0))
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        strip = Image.new("RGB", (b1 - b0, r1 - r0), _WHITE)  # rows r0..r1 of the square, columns b0..b1
        strip.paste(rgb.crop((0, r0, w, r1)), (left - b0, 0))
        cols.paste(strip.resize((o1 - o0, r1 - r0), resample=_BICUBIC, box=(lo, 0, hi, r1 - r0)), (0, r0))
        del strip
    part = np.asarray(cols.resize((o1 - o0, size), resample=_BICUBIC), dtype=np.uint8)  # pass 2, as on the square
    del cols
    if exact:
        return part
    out = _constant_lines(white, side, size)
    out[:, o0:o1] = part
    return out


def _band(side: int, size: int, c0: int, c1: int) -> tuple[int, int, int, int]:
    """Outputs ``[o0, o1)`` whose bicubic support (as Pillow computes it) meets source ``[c0, c1)``,
    and the source span ``[b0, b1)`` those supports cover, with a 2-pixel margin for rounding."""
    scale = side / size
    support = 2.0 * max(scale, 1.0)
    centre = (np.arange(size, dtype=np.float64) + 0.5) * scale
    lo = np.clip(np.trunc(centre - support + 0.5), 0, side).astype(np.int64)
    hi = np.clip(np.trunc(centre + support + 0.5), 0, side).astype(np.int64)
    hits = np.flatnonzero((hi > c0) & (lo < c1))
    o0, o1 = int(hits[0]), int(hits[-1]) + 1
    b0, b1 = max(0, int(lo[o0]) - 2), min(side, int(hi[o1 - 1]) + 2)
    return o0, o1, b0, b1


def _box(side: int, size: int, o0: int, o1: int, b0: int) -> tuple[float, float]:
    """Source coordinates of outputs ``[o0, o1)`` on the square, shifted to a span starting at ``b0``
    (exact rationals rounded once; ``(0, side)`` for the whole side, as Pillow uses for the square)."""
    return (o0 * side - b0 * size) / size, (o1 * side - b0 * size) / size


def _constant_lines(white: np.ndarray, side: int, size: int) -> np.ndarray:
    """``(size, size, 3)``: row ``o`` column ``i`` = Pillow's resampling, from ``side`` to ``size``, of a
    line that is ``white[i]`` throughout, at output ``o`` (the second pass over all-white supports)."""
    values, index = np.unique(white, return_inverse=True)
    lines = Image.fromarray(np.ascontiguousarray(np.broadcast_to(values, (side, values.size))), "L")
    resampled = np.asarray(lines.resize((values.size, size), resample=_BICUBIC), dtype=np.uint8)
    return np.repeat(resampled[:, index.reshape(-1)][:, :, None], 3, axis=2)
