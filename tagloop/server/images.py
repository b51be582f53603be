"""Images over HTTP: base64 (raw or a ``data:`` URL) in, PNG base64 with the infotext out.

Decoding is capped by the server's pixel limit before Pillow allocates anything, and every failure
is one sentence with a 4xx status (A1111 answers a bad base64 image with a 500).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from PIL import Image

from .errors import ApiError, PayloadTooLarge

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


def image_bytes(value: Any, what: str = "image") -> bytes:
    """The bytes of a base64 image (raw, or a ``data:image/...;base64,`` URL), or a 422 naming ``what``."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"`{what}` must be a base64-encoded image (raw or a data: URL), not {type(value).__name__}.", 422)
    text = value.strip()
    if text.startswith(("http://", "https://")):
        raise ApiError(f"`{what}` is a URL; tagloop does not fetch images from the network: send it as base64.", 422)
    m = _DATA_URL.match(text)
    if m:
        text = text[m.end() :]
    elif text.startswith("data:"):
        raise ApiError(f"`{what}` is a data: URL without base64 data; send it base64-encoded.", 422)
    text = re.sub(r"\s+", "", text)
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            data = base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            raise ApiError(f"`{what}` is not valid base64; send the image file base64-encoded.", 422) from None
    if not data:
        raise ApiError(f"`{what}` is empty; send the image file base64-encoded.", 422)
    return data


def decode_image(value: Any, max_pixels: int, what: str = "image", mode: str | None = None) -> Image.Image:
    """A base64 image decoded as tagloop's loader decodes files (first frame, upright, 8-bit RGB or
    RGBA: the tagger handles alpha as it does for ``tagloop tag``), converted to ``mode`` if given.

    Over ``max_pixels`` is a 413; not an image, or a broken one, is a 422.
    """
    return open_image(image_bytes(value, what), max_pixels, what, mode)


def open_image(data: bytes, max_pixels: int, what: str = "image", mode: str | None = None) -> Image.Image:
    """Image bytes decoded under the pixel cap (see :func:`decode_image`)."""
    from ..tagger.preprocess import ImageDecodeError, load_image

    try:
        img = load_image(data, max_pixels)
    except ImageDecodeError as e:
        msg = str(e).replace("raise `max_pixels` to allow it", "the server's `max_pixels` limit caps it")
        if "pixels" in msg and "cap" in msg:
            raise PayloadTooLarge(f"`{what}`: {msg}.") from None
        raise ApiError(f"`{what}` cannot be used: {msg}.", 422) from None
    return img.convert(mode) if mode and img.mode != mode else img


def png_base64(image: Image.Image, infotext: str | None) -> str:
    """A PNG carrying the A1111 ``parameters`` text chunk, base64-encoded without a ``data:`` prefix."""
    from ..a1111.infotext import png_bytes

    return base64.b64encode(png_bytes(image, infotext)).decode("ascii")
