"""The model-free upscalers of AUTOMATIC1111's Extras tab: ``None``, ``Lanczos`` and ``Nearest``.

:func:`upscale` resizes one image as A1111 1.10's "Upscale" postprocessing step does
(``scripts/postprocessing_upscale.py`` with ``modules/upscaler.py``):

* *Scale by* (``scale``) or *scale to* (``width`` and ``height``): to a size, the factor is the
  larger of ``width / w`` and ``height / h``, and with ``crop`` the result is centred on a black
  ``width x height`` canvas (cut where it is larger, black bands where it is smaller).
* The upscaler resizes to ``int(w * factor) x int(h * factor)`` with its filter; A1111 then floors
  both sides to a multiple of 8 and, when that changed the size, resizes once more with Lanczos.
  The factor is used as the float it is, so a factor computed from a target size can land a pixel
  (then 8) below it, as in A1111 (``616 * (640 / 616)`` is ``639.99...``).
* Upscaler 1 ``None`` leaves the image as it is (A1111 skips the step); a second upscaler with a
  ``upscaler_2_visibility`` above 0 is blended over the first (``Image.blend``).

The result carries in ``image.info`` what A1111 attaches: the source's ``parameters`` text and a
``postprocessing`` line of the keys :func:`postprocess_parameters` gives (``Postprocess upscale by:
2, Postprocess upscaler: Lanczos``). :func:`save_extras_png` writes it as A1111's Extras saves it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from ..errors import InputError

#: A1111's built-in model-free upscalers, in the order ``/sdapi/v1/upscalers`` lists them.
UPSCALERS: tuple[str, ...] = ("None", "Lanczos", "Nearest")
#: Largest output :func:`upscale` makes unless told otherwise (8192 x 8192, A1111's largest "scale to").
DEFAULT_MAX_PIXELS = 8192 * 8192


class UpscaleError(InputError):
    """An upscaling request that cannot be carried out (unknown upscaler, bad size, too large)."""


def list_upscalers() -> list[dict[str, Any]]:
    """The upscalers as A1111's ``GET /sdapi/v1/upscalers`` lists them (``name``, ``model_name``,
    ``model_path``, ``model_url``, ``scale``); the built-ins have no model and A1111's default scale 4."""
    return [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in UPSCALERS]


def resolve_upscaler(name: str | None, what: str = "upscaler") -> str:
    """The canonical name of upscaler ``name`` (``None`` counts as ``"None"``; case is ignored).

    A name tagloop does not have (ESRGAN, SwinIR, ... need models) is an :class:`UpscaleError` naming
    it and the ones there are.
    """
    if name is None:
        return "None"
    for known in UPSCALERS:
        if str(name).strip().lower() == known.lower():
            return known
    raise UpscaleError(
        f"`{what}` {name!r} is not an upscaler tagloop has: it has {', '.join(UPSCALERS)} (model upscalers such as "
        f"ESRGAN or SwinIR are not supported); choose one of those."
    )


def _filter(name: str):
    from PIL import Image

    return Image.Resampling.LANCZOS if name == "Lanczos" else Image.Resampling.NEAREST


def _plan(
    size: tuple[int, int],
    scale: float | None,
    width: int | None,
    height: int | None,
) -> tuple[float, tuple[int, int] | None]:
    """``(factor, target)``: the factor A1111 upscales by and, for "scale to", the requested size."""
    w, h = size
    if (width is None) != (height is None):
        raise UpscaleError("give both `width` and `height` to upscale to a size, or `scale` alone.")
    if width is not None:
        if scale is not None:
            raise UpscaleError("give either `scale` or `width` and `height`, not both.")
        for key, v in (("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UpscaleError(f"`{key}` must be a whole number of pixels, at least 1, not {v!r}.")
        return max(width / w, height / h), (width, height)
    factor = 2.0 if scale is None else scale
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise UpscaleError(f"`scale` must be a number above 0, not {scale!r}.")
    return float(factor), None


def _output_size(size: tuple[int, int], factor: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(filtered, final)``: the size the upscaler's filter makes, and that size floored to multiples of 8."""
    w, h = size
    final = (int(w * factor // 8 * 8), int(h * factor // 8 * 8))
    return (int(w * factor), int(h * factor)), final


def _run_upscaler(image, name: str, factor: float):
    """One upscaler over ``image`` as A1111's ``Upscaler.upscale`` does (filter, then floor to 8)."""
    from PIL import Image

    filtered, final = _output_size(image.size, factor)
    # A1111 filters unless the image already covers the target (factors below 1, never for factor 1)
    covers = image.width >= final[0] and image.height >= final[1]
    out = image
    if not (covers and factor != 1):
        out = image.resize(filtered, resample=_filter(name))
    if out.size != final:
        out = out.resize(final, resample=Image.Resampling.LANCZOS)
    return out


def postprocess_parameters(
    *,
    scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    upscaler: str | None = "Lanczos",
    crop: bool = False,
    upscaler_2: str | None = None,
    upscaler_2_visibility: float = 0.0,
) -> dict[str, Any]:
    """The keys A1111's Extras writes for this upscale, in its order (empty for upscaler ``None``).

    ``Postprocess upscale by`` (scale) or ``Postprocess upscale to`` (``WxH``), ``Postprocess crop to``
    (to a size with ``crop``), ``Postprocess upscaler``, and ``Postprocess upscaler 2`` when a second
    upscaler is blended in. Factors are written as tagloop writes numbers (``2`` for 2.0).
    """
    first = resolve_upscaler(upscaler)
    second = resolve_upscaler(upscaler_2, "upscaler_2")
    if first == "None":
        return {}
    out: dict[str, Any] = {}
    if width is not None and height is not None:
        out["Postprocess upscale to"] = f"{width}x{height}"
        if crop:
            out["Postprocess crop to"] = f"{width}x{height}"
    else:
        factor = 2.0 if scale is None else float(scale)
        out["Postprocess upscale by"] = int(factor) if factor.is_integer() else factor
    out["Postprocess upscaler"] = first
    if second != "None" and upscaler_2_visibility > 0:
        out["Postprocess upscaler 2"] = second
    return out


def postprocess_line(params: dict[str, Any]) -> str:
    """``Key: value, Key: value`` as A1111 joins the postprocessing keys (values quoted as in infotext)."""
    from ..a1111.infotext import quote

    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)


def upscale(
    image,
    *,
    scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    upscaler: str | None = "Lanczos",
    crop: bool = False,
    upscaler_2: str | None = None,
    upscaler_2_visibility: float = 0.0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
):
    """``image`` (a PIL image) upscaled as A1111's Extras "Upscale" step does; a new PIL image.

    ``scale`` (default 2) or ``width`` and ``height``; ``upscaler`` and ``upscaler_2`` are ``None``,
    ``Lanczos`` or ``Nearest`` (:data:`UPSCALERS`). The output may hold at most ``max_pixels``
    pixels (``None``: no cap), checked before any resizing. RGB and RGBA images keep their mode,
    others become RGB. The result's ``info`` holds ``parameters`` (the source's infotext, if any) and
    ``postprocessing`` (the keys of :func:`postprocess_parameters`).
    """
    from PIL import Image

    first = resolve_upscaler(upscaler)
    second = resolve_upscaler(upscaler_2, "upscaler_2")
    try:
        visibility = float(upscaler_2_visibility)
    except (TypeError, ValueError):
        raise UpscaleError(f"`upscaler_2_visibility` must be a number between 0 and 1, not {upscaler_2_visibility!r}.") from None
    if not 0.0 <= visibility <= 1.0:
        raise UpscaleError(f"`upscaler_2_visibility` must be between 0 and 1, not {upscaler_2_visibility!r}.")
    if not isinstance(image, Image.Image):
        raise UpscaleError(f"`image` must be a PIL image, not {type(image).__name__}.")
    texts = source_text_chunks(image)
    src = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    factor, target = _plan(src.size, scale, width, height)
    params = postprocess_parameters(
        scale=factor if target is None else None,
        width=None if target is None else target[0],
        height=None if target is None else target[1],
        upscaler=first,
        crop=crop,
        upscaler_2=second,
        upscaler_2_visibility=visibility,
    )
    if first == "None":
        out = src.copy()
    else:
        filtered, final = _output_size(src.size, factor)
        shown = target if (target is not None and crop) else final
        if min(final) < 1:
            raise UpscaleError(
                f"upscaling a {src.width}x{src.height} image by {factor:g} gives {final[0]}x{final[1]} pixels "
                "(A1111 rounds the sides down to multiples of 8); use a larger `scale` or size."
            )
        biggest = max(filtered, shown, key=lambda wh: wh[0] * wh[1])
        if max_pixels is not None and biggest[0] * biggest[1] > max_pixels:
            raise UpscaleError(
                f"upscaling a {src.width}x{src.height} image by {factor:g} makes {biggest[0]}x{biggest[1]} "
                f"({biggest[0] * biggest[1]:,} pixels), over `max_pixels` {max_pixels:,}; use a smaller `scale` or size."
            )
        out = _run_upscaler(src, first, factor)
        if second != "None" and visibility > 0:
            other = _run_upscaler(src, second, factor)
            if other.mode != out.mode:
                other = other.convert(out.mode)
            out = Image.blend(out, other, visibility)
        if target is not None and crop:
            canvas = Image.new("RGB", target)
            canvas.paste(out, box=(target[0] // 2 - out.width // 2, target[1] // 2 - out.height // 2))
            out = canvas
    texts["postprocessing"] = postprocess_line(params)
    out.info = texts
    return out


def _source_infotext(image) -> str | None:
    """The A1111 generation text a source image carries (PNG ``parameters``, JPEG/WebP EXIF comment)."""
    from ..a1111.infotext import read_image_metadata

    try:
        return read_image_metadata(image).infotext
    except (OSError, ValueError):
        return None


def extras_png_bytes(image) -> bytes:
    """An :func:`upscale` result as the PNG A1111's Extras saves: the text chunks in ``image.info``
    (the source's ``parameters`` and other text, then ``postprocessing``), then ``extras``, which
    repeats the postprocess line."""
    from PIL import PngImagePlugin

    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    texts["extras"] = texts.get("postprocessing", "")
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, str(value))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_extras_png(image, path: str | Path) -> Path:
    """Write :func:`extras_png_bytes` to ``path`` atomically (complete or not at all)."""
    from ..fileio import atomic_write_bytes

    return atomic_write_bytes(Path(path), extras_png_bytes(image))


def source_text_chunks(image) -> dict[str, str]:
    """The text a source image carries that A1111's Extras copies to its output: the generation
    ``parameters`` (also from a JPEG's EXIF) and the other text chunks of a PNG."""
    from ..a1111.infotext import _NOT_TEXT

    texts = {
        k: v for k, v in getattr(image, "info", {}).items() if isinstance(k, str) and isinstance(v, str) and k not in _NOT_TEXT
    }
    params = _source_infotext(image)
    if params:
        texts["parameters"] = params
    return texts
