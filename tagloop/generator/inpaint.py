"""Inpainting on ordinary checkpoints as AUTOMATIC1111's img2img does it (A1111 1.10).

The steps, in A1111's order (``StableDiffusionProcessingImg2Img.init`` in ``modules/processing.py``,
``modules/masking.py``, ``modules/images.py``):

1. The mask: an RGBA image whose alpha is not all opaque gives its alpha (above 128 = masked),
   anything else its grey levels; ``inpainting_mask_invert`` inverts it; ``mask_blur`` > 0 blurs it
   with OpenCV's Gaussian blur of that sigma, first across, then down (kernel ``2*int(2.5*r+0.5)+1``).
2. *Whole picture*: the mask and the image are resized to ``width x height`` (Lanczos); the mask used
   for the final overlay is the resized mask doubled (clipped at 255). *Only masked*
   (``inpaint_full_res``): the masked region's bounding box, grown by ``inpaint_full_res_padding``
   on each side, then grown to the ``width/height`` aspect ratio, is cut out of the image and the mask
   and resized to ``width x height`` ("resize and fill"); the result is pasted back there. A blank
   mask there means plain img2img (A1111 says so and does the same).
3. ``inpainting_fill`` (Masked content): 0 *fill* (the masked pixels replaced by blurred colours of
   the rest), 1 *original*, 2 *latent noise* (the masked latent replaced by noise from the image's
   seed), 3 *latent nothing* (zeros). Fill is applied to the pixels for 0, 2 and 3, as in A1111.
4. The latent mask: the processing-size mask resized to the latent size (bicubic) and rounded to 0/1;
   outside it the initial latents are kept at every step and in the result.
5. The output is composited over the original pixels outside the (blurred) mask.

Steps 1-3 and 5 are :func:`plan_inpaint` and :func:`apply_overlay`; :func:`run_inpaint` runs step 4
through diffusers' inpainting pipeline with a 4-channel UNet (16-channel transformer for SD3), which
blends the initial latents back outside the mask after every step, noised to the next step's level.
A1111 blends the model's denoised prediction instead: for deterministic samplers (Euler, DPM++ 2M)
the two keep the unmasked area on the same path, for ancestral and SDE samplers the unmasked area
differs before the final blend, which makes it the original either way; the edge of the mask can
come out a little differently.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import SettingsError

#: ``inpainting_fill`` values and the names A1111 gives them ("Masked content").
FILL_MODES: dict[int, str] = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


def load_mask_image(source: Any, what: str = "mask_image"):
    """The mask as A1111 reads it, as a PIL ``L`` image (255 = repaint).

    ``source``: a path, a PIL image or the bytes of an image file. An RGBA image whose alpha is not
    entirely opaque gives its alpha channel, thresholded (above 128 is masked); any other image its
    grey levels (``convert("L")``), which may be soft.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(source, Image.Image):
            im = source
            im.load()
        elif isinstance(source, (bytes, bytearray, memoryview)):
            with Image.open(io.BytesIO(bytes(source))) as opened:
                opened.load()
                im = opened.copy()
        elif isinstance(source, (str, Path)):
            with Image.open(source) as opened:
                opened.load()
                im = opened.copy()
        else:
            raise SettingsError(f"`{what}` must be an image file, a PIL image or image bytes, not {type(source).__name__}.")
    except FileNotFoundError:
        raise SettingsError(f"`{what}` {source} does not exist; give the mask image's path.") from None
    except Image.DecompressionBombError as e:
        raise SettingsError(f"`{what}` is too large an image to open ({e}).") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        shown = source if isinstance(source, (str, Path)) else "(the data given)"
        raise SettingsError(f"`{what}` {shown} is not an image Pillow can read ({e}); give a PNG or JPEG mask.") from None
    if im.mode == "RGBA" and im.getchannel("A").getextrema() != (255, 255):
        return im.getchannel("A").point(lambda v: 255 if v > 128 else 0)
    return im.convert("L")


# --- A1111's image helpers (behaviour of ``modules/images.py`` and ``modules/masking.py``) -------------


def resize_a1111(mode: int, image, width: int, height: int):
    """A1111's ``resize_image``: 0 just resize, 1 crop and resize, 2 resize and fill (Lanczos).

    Modes 1 and 2 keep the aspect ratio; 1 cuts what does not fit, 2 fills the bands by stretching
    the image's outermost rows or columns. The canvas has the image's mode.
    """
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    if mode == 0:
        return image.resize((width, height), resample=lanczos)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        w = width if ratio > src_ratio else image.width * height // image.height
        h = height if ratio <= src_ratio else image.height * width // image.width
    else:
        w = width if ratio < src_ratio else image.width * height // image.height
        h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((w, h), resample=lanczos)
    out = Image.new(image.mode, (width, height))
    out.paste(resized, box=(width // 2 - w // 2, height // 2 - h // 2))
    if mode == 2:
        if ratio < src_ratio:
            band = height // 2 - h // 2
            if band > 0:
                out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, band), box=(0, resized.height, width, resized.height)), box=(0, band + h))
        elif ratio > src_ratio:
            band = width // 2 - w // 2
            if band > 0:
                out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((band, height), box=(resized.width, 0, resized.width, height)), box=(band + w, 0))
    return out


def blur_mask(mask, radius: int):
    """The mask blurred as A1111 1.10 does: OpenCV Gaussian of sigma ``radius``, across then down."""
    import cv2
    import numpy as np
    from PIL import Image

    if radius <= 0:
        return mask
    size = 2 * int(2.5 * radius + 0.5) + 1
    arr = np.array(mask)
    arr = cv2.GaussianBlur(arr, (size, 1), radius)
    arr = cv2.GaussianBlur(arr, (1, size), radius)
    return Image.fromarray(arr)


def crop_region(mask, padding: int = 0) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)``: the box around the mask's non-zero pixels grown by ``padding`` on each
    side (within the image); ``None`` for a blank mask."""
    box = mask.getbbox()
    if not box:
        return None
    if not padding:
        return box
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow(lo: int, hi: int, extra: int, limit: int) -> tuple[int, int]:
    """``[lo, hi)`` grown by ``extra`` (half before, the rest after), moved back inside ``[0, limit]``."""
    lo -= extra // 2
    hi += extra - extra // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    if hi >= limit:
        hi = limit
    return lo, hi


def expand_crop_region(
    region: tuple[int, int, int, int], width: int, height: int, image_width: int, image_height: int
) -> tuple[int, int, int, int]:
    """``region`` grown to the aspect ratio of ``width x height`` (A1111's ``expand_crop_region``)."""
    x1, y1, x2, y2 = region
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / ratio - (y2 - y1)), image_height)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * ratio - (x2 - x1)), image_width)
    return x1, y1, x2, y2


def fill_masked(image, mask):
    """The masked area filled with the blurred colours around it (A1111's "fill", ``masking.fill``).

    The unmasked pixels, premultiplied, are blurred with ever smaller radii and composited over each
    other, so each masked pixel takes the colour of the unmasked ones near it.
    """
    from PIL import Image, ImageFilter, ImageOps

    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", image.size)
    for radius, times in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            out.alpha_composite(layer)
    return out.convert("RGB")


def overlay_of(image, overlay_mask):
    """The original pixels as an RGBA layer, opaque where ``overlay_mask`` is 0 (A1111's overlay image)."""
    from PIL import Image, ImageOps

    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask.convert("L")))
    return layer.convert("RGBA")


def apply_overlay(image, paste_to: tuple[int, int, int, int] | None, overlay):
    """A generated image put back over the original: pasted at ``paste_to`` (x, y, w, h; "only
    masked"), then the original pixels composited over it outside the mask."""
    from PIL import Image

    if overlay is None:
        return image
    if paste_to is not None:
        x, y, w, h = paste_to
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_a1111(1, image, w, h), (x, y))
        image = base
    out = image.convert("RGBA")
    out.alpha_composite(overlay)
    return out.convert("RGB")


# --- the plan of one request ---------------------------------------------------------------------


@dataclass
class InpaintPlan:
    """What one inpainting request does to its init image (the same for every image of the request).

    ``active`` is false when "only masked" found a blank mask: the request is then plain img2img
    (``params`` still holds what A1111 writes for it). ``image`` is what is encoded (``width x
    height``, filled for ``fill`` 0, 2 and 3), ``latent_mask`` the processing-size mask (255 =
    repaint), ``overlay`` the original pixels to put back (at the output size), ``paste_to`` where
    the generated crop goes ("only masked"), ``crop`` the region of the init image it came from.
    """

    active: bool
    params: dict[str, Any] = field(default_factory=dict)
    fill: int = 1
    image: Any = None
    latent_mask: Any = None
    overlay: Any = None
    paste_to: tuple[int, int, int, int] | None = None
    crop: tuple[int, int, int, int] | None = None
    notice: str | None = None

    def latent_mask_array(self, latent_width: int, latent_height: int):
        """The latent mask, ``(latent_height, latent_width)`` float32 of 0 and 1 (1 = repaint):
        the processing mask resized with bicubic and rounded, as A1111's ``latmask``."""
        import numpy as np
        from PIL import Image

        small = self.latent_mask.convert("L").resize((latent_width, latent_height), resample=Image.Resampling.BICUBIC)
        return np.around(np.asarray(small, dtype=np.float32) / 255.0)


def plan_inpaint(
    init,
    mask,
    *,
    width: int,
    height: int,
    mask_blur: int = 4,
    inpainting_fill: int = 0,
    invert: bool = False,
    full_res: bool = True,
    padding: int = 0,
) -> InpaintPlan:
    """Steps 1-3 of the module docstring for ``init`` (RGB) and ``mask`` (from :func:`load_mask_image`).

    A mask of another size than the init image is stretched over it, as A1111 does for "whole
    picture"; for "only masked" (where A1111 leaves it undefined) it is resized to the init image
    first, so the region it marks is the same part of the picture.
    """
    from PIL import Image, ImageOps

    init = init.convert("RGB")
    params: dict[str, Any] = {}
    m = mask.convert("L")
    if full_res and m.size != init.size:
        m = m.resize(init.size, resample=Image.Resampling.LANCZOS)
    if invert:
        m = ImageOps.invert(m)
        params["Mask mode"] = "Inpaint not masked"
    if mask_blur > 0:
        m = blur_mask(m, mask_blur)
        params["Mask blur"] = mask_blur
    crop = paste_to = None
    if full_res:
        region = crop_region(m, padding)
        if region is None:
            return InpaintPlan(
                active=False,
                params=params,
                notice='the mask is blank, so "only masked" inpainting cannot run; the image is made as plain img2img (as A1111 does).',
            )
        crop = expand_crop_region(region, width, height, m.width, m.height)
        x1, y1, x2, y2 = crop
        latent_mask = resize_a1111(2, m.crop(crop), width, height)
        paste_to = (x1, y1, x2 - x1, y2 - y1)
        overlay_mask = m
        params["Inpaint area"] = "Only masked"
        params["Masked area padding"] = padding
        base = init
        image = resize_a1111(2, init.crop(crop), width, height)
    else:
        import numpy as np

        latent_mask = resize_a1111(0, m, width, height)
        doubled = np.clip(np.asarray(latent_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
        overlay_mask = Image.fromarray(doubled)
        base = resize_a1111(0, init, width, height)
        image = base
    overlay = overlay_of(base, overlay_mask)
    if inpainting_fill != 1:
        image = fill_masked(image, latent_mask)
        params["Masked content"] = FILL_MODES[inpainting_fill]
    return InpaintPlan(
        active=True,
        params=params,
        fill=inpainting_fill,
        image=image,
        latent_mask=latent_mask,
        overlay=overlay,
        paste_to=paste_to,
        crop=crop,
    )


def settings_params(s: Any) -> dict[str, Any]:
    """The infotext keys of an inpainting request from its settings alone (as :func:`plan_inpaint`
    writes them for a mask that is not blank): ``Mask mode``, ``Mask blur``, ``Inpaint area``,
    ``Masked area padding``, ``Masked content``, each only where A1111 writes it."""
    params: dict[str, Any] = {}
    if s.inpainting_mask_invert:
        params["Mask mode"] = "Inpaint not masked"
    if s.mask_blur > 0:
        params["Mask blur"] = s.mask_blur
    if s.inpaint_full_res:
        params["Inpaint area"] = "Only masked"
        params["Masked area padding"] = s.inpaint_full_res_padding
    if s.inpainting_fill != 1:
        params["Masked content"] = FILL_MODES[s.inpainting_fill]
    return params


# --- sampling ------------------------------------------------------------------------------------


def run_inpaint(
    pipe: Any,
    plan: InpaintPlan,
    *,
    seeds: list[int],
    generators: list,
    width: int,
    height: int,
    strength: float,
    steps: int,
    dtype: Any,
    call_kwargs: dict,
) -> list:
    """Sample one batch with a diffusers inpainting pipeline (made with ``from_pipe``) and finish it.

    The init latents are encoded here with the pipeline's own encoder and the same per-image
    generators it would use (so the random streams match its img2img), changed for ``latent noise``
    / ``latent nothing``, and given to the pipeline as latents with A1111's rounded latent mask.
    ``call_kwargs`` are the pipeline arguments the caller builds (prompt embeddings, CFG,
    ``generator``, callbacks). Returns the images composited over the original (step 5).
    """
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    _check_channels(pipe)
    n = len(seeds)
    device = getattr(pipe, "_execution_device", None) or torch.device("cpu")
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    pixels = _image_tensor(plan.image).repeat(n, 1, 1, 1).to(device=device, dtype=dtype)
    mask = torch.from_numpy(plan.latent_mask_array(width // factor, height // factor))[None, None]
    with torch.no_grad():
        latents = pipe._encode_vae_image(pixels, generator=generators)
        mask = mask.to(device=latents.device, dtype=latents.dtype)
        if plan.fill == 2:
            fresh = [torch.Generator(device=g.device).manual_seed(int(s)) for g, s in zip(generators, seeds)]
            noise = randn_tensor(tuple(latents.shape), generator=fresh, device=latents.device, dtype=latents.dtype)
            latents = latents * (1 - mask) + noise * mask
        elif plan.fill == 3:
            latents = latents * (1 - mask)
    with _noised_start(pipe):
        out = pipe(
            image=latents,
            mask_image=mask.expand(n, 1, -1, -1),
            masked_image_latents=latents,
            width=width,
            height=height,
            strength=strength,
            num_inference_steps=steps,
            **call_kwargs,
        )
    return [apply_overlay(im, plan.paste_to, plan.overlay) for im in out.images]


def _check_channels(pipe: Any) -> None:
    """Inpainting here needs an ordinary denoiser: 4 latent channels in (SD1/SD2/SDXL), 16 for SD3."""
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    wanted = 16 if getattr(pipe, "transformer", None) is not None else 4
    have = int(getattr(getattr(denoiser, "config", None), "in_channels", wanted))
    latent = int(getattr(pipe.vae.config, "latent_channels", wanted))
    if have != wanted or latent != wanted:
        kind = "an inpainting model (its UNet also takes the mask)" if have == 9 else f"a {have}-channel denoiser"
        raise SettingsError(
            f"`mask_image`: tagloop inpaints with ordinary checkpoints ({wanted} latent channels) as A1111 does with "
            f"them; this model is {kind}. Use an ordinary checkpoint of the family."
        )


@contextlib.contextmanager
def _noised_start(pipe: Any):
    """Within the block ``pipe`` starts from the init latents noised to the first step even when all
    steps run (strength 1), as A1111 and diffusers' img2img do; diffusers' inpainting would start from
    pure noise there, and the masked content (fill, original, latent noise/nothing) would not matter."""
    original = pipe.prepare_latents

    def prepare_latents(*args: Any, **kwargs: Any):
        if kwargs.get("is_strength_max") and kwargs.get("image") is not None and kwargs.get("timestep") is not None:
            kwargs["is_strength_max"] = False
        return original(*args, **kwargs)

    pipe.prepare_latents = prepare_latents
    try:
        yield
    finally:
        del pipe.prepare_latents


def _image_tensor(image):
    """An RGB PIL image as diffusers takes pixels: ``(1, 3, H, W)`` float32 in -1..1."""
    import numpy as np
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2.0 - 1.0
