"""Generation settings: the one source of defaults and validation (checked before any weights load),
and the readers that fill them (prompt files, ``tagloop prompt`` JSON, A1111 infotext)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class FamilyDefaults:
    """What A1111 users of a family start from (../shared SEEDS: seed 000/001/002)."""

    sampler: str
    steps: int
    cfg_scale: float
    width: int
    height: int


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "sd1": FamilyDefaults("DPM++ 2M Karras", 20, 7.0, 512, 512),
    "sd2": FamilyDefaults("DPM++ 2M Karras", 20, 7.0, 768, 768),
    "sdxl": FamilyDefaults("Euler a", 30, 7.0, 1024, 1024),
    "sd3": FamilyDefaults("Euler", 30, 7.0, 1024, 1024),
}


class SettingsError(InputError):
    """A generation setting is out of range or unknown."""


@dataclass
class GenerationSettings:
    """One generation request. ``None`` fields take the model family's defaults.

    prompt/negative_prompt: one prompt; ``prompts`` (pairs of positive, negative) replaces them when
    given. Images per prompt = ``batch_size * batch_count`` with seeds ``seed + k``; forwards hold up
    to ``max(batch_size, max_batch)`` images across prompts. ``init_image`` makes it img2img with
    ``denoising_strength``; ``hires_scale`` > 1 adds A1111's hires-fix second pass (text-to-image).
    ``version``: the A1111 version whose sampler-name rules apply to ``sampler`` (pre-1.9 names
    differ); :func:`settings_from_infotext` resolves them itself and leaves it ``None``.
    ``infotext_file``: the image or text file the settings were read from (set by
    :func:`settings_from_infotext`); like ``init_image``, no output may be written over it.
    Output names (``out_dir/00000-SEED.png``) are planned before any work, and a run whose outputs
    would overwrite one of its inputs is refused (:class:`tagloop.errors.OutputPathError`).
    ``tiling``: seamless images (A1111's Tiling: circular padding in the UNet and VAE).
    ``mask_image`` (a path, PIL image or image bytes, with ``init_image``) inpaints: ``mask_blur``
    (pixels), ``inpainting_fill`` (0 fill, 1 original, 2 latent noise, 3 latent nothing),
    ``inpainting_mask_invert`` (repaint what is *not* masked), ``inpaint_full_res`` ("only masked":
    the masked region, grown by ``inpaint_full_res_padding`` pixels, is generated at ``width x
    height`` and pasted back). Their defaults are A1111's HTTP API defaults (blur 4, fill, only
    masked, padding 0), so API requests map onto them field for field; A1111's img2img tab starts
    from original content, whole picture and padding 32 instead (see :mod:`tagloop.generator.inpaint`).
    """

    prompt: str = ""
    negative_prompt: str = ""
    prompts: list[tuple[str, str]] = field(default_factory=list)
    sampler: str | None = None
    schedule_type: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int = -1
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    batch_count: int = 1
    max_batch: int = 4
    clip_skip: int = 1
    emphasis: str = "Original"
    init_image: Any = None
    denoising_strength: float = 0.75
    hires_scale: float | None = None
    hires_steps: int = 0
    hires_denoise: float = 0.5
    hires_upscaler: Literal["latent", "lanczos"] = "latent"
    tiling: bool = False
    mask_image: Any = None
    mask_blur: int = 4
    inpainting_fill: int = 0
    inpainting_mask_invert: bool = False
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    out_dir: Path | None = None
    version: str | None = None
    infotext_file: Path | None = None
    #: ControlNet units (:class:`tagloop.generator.control.ControlUnit`); empty: no ControlNet
    control: list[Any] = field(default_factory=list)

    def pairs(self) -> list[tuple[str, str]]:
        """The (positive, negative) prompt pairs this request generates."""
        return list(self.prompts) if self.prompts else [(self.prompt, self.negative_prompt)]

    @property
    def hires(self) -> bool:
        return self.hires_scale is not None and self.hires_scale > 1.0


@dataclass
class GeneratedImage:
    """One generated image: where it was written (None without ``out_dir``), its seed and infotext."""

    path: Path | None
    seed: int
    infotext: str
    image: Any
    prompt: str = ""
    negative_prompt: str = ""
    #: the ControlNet condition images (one per control unit; saved as ``<image stem>-controlK.png``)
    conditions: list[Any] = field(default_factory=list)


def make_settings(settings: GenerationSettings | None = None, **fields: Any) -> GenerationSettings:
    """``settings`` with ``fields`` replaced (a new :class:`GenerationSettings` without ``settings``).

    An unknown field is a :class:`SettingsError` naming it; ``out_dir`` and ``init_image`` may be
    strings. Values are checked by :func:`check_settings` before any weights load.
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(GenerationSettings)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise SettingsError(f"unknown generation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    if fields.get("out_dir") is not None:
        fields["out_dir"] = Path(fields["out_dir"])
    if settings is None:
        return GenerationSettings(**fields)
    return dataclasses.replace(settings, **fields) if fields else settings


def _err(msg: str) -> SettingsError:
    return SettingsError(msg)


def check_settings(settings: GenerationSettings, family: str | None = None) -> None:
    """Validate every setting before any model is loaded (diffusers ``check_inputs`` style).

    Raises :class:`SettingsError` with one sentence naming the option and the bad value.
    """
    from ..a1111.samplers import SCHEDULE_TYPES, UNSUPPORTED_SCHEDULE_TYPES, effective_schedule

    s = settings
    if s.steps is not None and (not isinstance(s.steps, int) or s.steps < 1):
        raise _err(f"`steps` must be a whole number of at least 1, not {s.steps!r}.")
    if s.cfg_scale is not None and s.cfg_scale < 0:
        raise _err(f"`cfg_scale` must be 0 or more, not {s.cfg_scale!r}.")
    for what, v in (("width", s.width), ("height", s.height)):
        if v is not None and (not isinstance(v, int) or v < 64 or v % 8):
            raise _err(f"`{what}` must be a multiple of 8 and at least 64, not {v!r}.")
    if s.batch_size < 1:
        raise _err(f"`batch_size` must be at least 1, not {s.batch_size!r}.")
    if s.batch_count < 1:
        raise _err(f"`batch_count` must be at least 1, not {s.batch_count!r}.")
    if s.max_batch < 1:
        raise _err(f"`max_batch` must be at least 1, not {s.max_batch!r}.")
    if not 1 <= s.clip_skip <= 12:
        raise _err(f"`clip_skip` must be between 1 and 12 (A1111: 1 = last layer, 2 = penultimate), not {s.clip_skip!r}.")
    if s.emphasis not in EMPHASIS_MODES:
        raise _err(f"`emphasis` must be one of {', '.join(EMPHASIS_MODES)}, not {s.emphasis!r}.")
    if not isinstance(s.seed, int) or s.seed < -1 or s.seed > MAX_SEED:
        raise _err(f"`seed` must be -1 (random) or between 0 and {MAX_SEED}, not {s.seed!r}.")
    if s.init_image is not None and not 0.0 < s.denoising_strength <= 1.0:
        raise _err(f"`denoising_strength` must be above 0 and at most 1, not {s.denoising_strength!r}.")
    if s.hires_scale is not None:
        if s.hires_scale < 1.0 or s.hires_scale > 4.0:
            raise _err(f"`hires_scale` must be between 1 and 4, not {s.hires_scale!r}.")
        if s.hires and s.init_image is not None:
            raise _err("`hires_scale` is a text-to-image second pass; drop it with `init_image` (use a larger --size instead).")
        if not 0.0 < s.hires_denoise <= 1.0:
            raise _err(f"`hires_denoise` must be above 0 and at most 1, not {s.hires_denoise!r}.")
        if s.hires_steps < 0:
            raise _err(f"`hires_steps` must be 0 (same as `steps`) or more, not {s.hires_steps!r}.")
    if s.hires_upscaler not in ("latent", "lanczos"):
        raise _err(f"`hires_upscaler` must be latent or lanczos, not {s.hires_upscaler!r}.")
    _check_extras(s)
    if s.control:
        from .control import check_units

        if not isinstance(s.control, (list, tuple)):
            raise _err("`control` must be a list of ControlUnit values.")
        check_units(s.control, family)
        if family == "sd3" and s.init_image is not None:
            raise _err(
                "`control` with `init_image` is not supported for SD3 models (diffusers has no SD3 ControlNet "
                "image-to-image pipeline); drop the init image (text-to-image with control) or the control units."
            )
        if s.hires:
            raise _err("`control` with `hires_scale` is not supported yet; drop the hires fix (or generate at the larger size).")
        if s.mask_image is not None:
            raise _err("`control` with `mask_image` (inpainting) is not supported yet; drop the mask or the control units.")
    if s.sampler is not None or s.schedule_type is not None:
        name = s.sampler or _default_sampler(family)[0]
        try:
            schedule = effective_schedule(name, s.schedule_type, version=s.version)
        except ValueError as e:
            raise _err(str(e)) from None
        if schedule in UNSUPPORTED_SCHEDULE_TYPES:
            raise _err(f"the schedule type {schedule!r} has no diffusers equivalent; use one of {', '.join(SCHEDULE_TYPES)}.")
    if family is not None and family not in FAMILY_DEFAULTS:
        raise _err(f"unknown model family {family!r}.")
    for pos, neg in s.pairs():
        if not isinstance(pos, str) or not isinstance(neg, str):
            raise _err("prompts must be text.")


#: Largest ``mask_blur`` accepted (A1111's slider stops at 64; its API takes more).
MAX_MASK_BLUR = 256


def _is_flag(v: Any) -> bool:
    return isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))


def _check_extras(s: GenerationSettings) -> None:
    """Tiling and inpainting settings (the mask itself is read when the request is prepared)."""
    if not _is_flag(s.tiling):
        raise _err(f"`tiling` must be true or false, not {s.tiling!r}.")
    if s.mask_image is not None and s.init_image is None:
        raise _err("`mask_image` inpaints an `init_image`; give the image to inpaint as `init_image` too.")
    if isinstance(s.mask_blur, bool) or not isinstance(s.mask_blur, int) or not 0 <= s.mask_blur <= MAX_MASK_BLUR:
        raise _err(f"`mask_blur` must be a whole number of pixels from 0 to {MAX_MASK_BLUR}, not {s.mask_blur!r}.")
    if isinstance(s.inpainting_fill, bool) or s.inpainting_fill not in (0, 1, 2, 3):
        raise _err(
            "`inpainting_fill` must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), "
            f"not {s.inpainting_fill!r}."
        )
    for name in ("inpainting_mask_invert", "inpaint_full_res"):
        if not _is_flag(getattr(s, name)):
            raise _err(f"`{name}` must be true or false, not {getattr(s, name)!r}.")
    pad = s.inpaint_full_res_padding
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise _err(f"`inpaint_full_res_padding` must be a whole number of pixels, 0 or more, not {pad!r}.")


def _default_sampler(family: str | None) -> tuple[str, str]:
    """The family's default sampler as A1111 1.9+ names it: ``(sampler, schedule type)``."""
    from ..a1111.samplers import resolve_sampler

    return resolve_sampler(FAMILY_DEFAULTS[family].sampler if family in FAMILY_DEFAULTS else "Euler a")


def with_family_defaults(
    settings: GenerationSettings, family: str, init_size: tuple[int, int] | None = None
) -> GenerationSettings:
    """``settings`` with every ``None`` filled from the family defaults (img2img: the init image's size)."""
    d = FAMILY_DEFAULTS[family]
    width, height = settings.width, settings.height
    if width is None and height is None and init_size is not None:
        width, height = (max(64, init_size[0] // 8 * 8), max(64, init_size[1] // 8 * 8))
    sampler, schedule_type = settings.sampler, settings.schedule_type
    if sampler is None:
        # the default's 1.9+ form (`DPM++ 2M` + Automatic = Karras), so that --schedule-type applies to it
        sampler, default_schedule = _default_sampler(family)
        schedule_type = schedule_type or default_schedule
    return replace(
        settings,
        sampler=sampler,
        schedule_type=schedule_type,
        steps=settings.steps or d.steps,
        cfg_scale=d.cfg_scale if settings.cfg_scale is None else settings.cfg_scale,
        width=width or d.width,
        height=height or d.height,
    )


# --- prompt files --------------------------------------------------------------------------------


def read_prompt_file(path: str | Path, negative: str = "") -> list[tuple[str, str]]:
    """One prompt per non-empty line (``#`` lines skipped); every line gets ``negative``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SettingsError(f"`prompt_file` {path} cannot be read ({e.strerror or e}).") from None
    out = [(ln.strip(), negative) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise SettingsError(f"`prompt_file` {path} holds no prompt (one prompt a line).")
    return out


def read_prompt_json(path: str | Path, negative: str = "") -> list[tuple[str, str]]:
    """Prompts from ``tagloop prompt --format json`` output: an object, a list, or JSON lines.

    Each object gives ``positive``/``negative`` (tagloop) or ``prompt``/``negative_prompt`` (A1111 API);
    ``negative`` is used where an object has none.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"`from_json` {path} cannot be read ({e.strerror or e}).") from None
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            items = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError as e:
            raise SettingsError(f"`from_json` {path} is neither JSON nor JSON lines ({e.msg}, line {e.lineno}).") from None
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("prompts"), list):
            out += [
                (p.get("positive", p.get("prompt", "")), p.get("negative", p.get("negative_prompt", negative)))
                for p in item["prompts"]
            ]
            continue
        if not isinstance(item, dict) or not ({"positive", "prompt"} & item.keys()):
            raise SettingsError(f'`from_json` {path}: item {i} has no "positive" or "prompt" field.')
        pos = item.get("positive", item.get("prompt"))
        neg = item.get("negative", item.get("negative_prompt"))
        out.append((str(pos), negative if neg is None else str(neg)))
    if not out:
        raise SettingsError(f"`from_json` {path} holds no prompt.")
    return out


def settings_from_infotext(
    source: str | Path, base: GenerationSettings | None = None, saved_conditions: bool = True
) -> GenerationSettings:
    """Settings that re-create an A1111 image: from a PNG/JPEG/WebP with infotext, a text file, or the text.

    ``ControlNet N`` entries become control units (the model by name); their control image is not in
    the infotext: with ``saved_conditions``, an image's saved condition images (``<stem>-controlN.png``
    beside it) are used as they are (module ``none``), else the units' images are left for the caller.
    """
    from ..a1111.infotext import parse_infotext, read_image_metadata
    from ..a1111.samplers import resolve_sampler, sampler_from_infotext

    text: str | None = None
    p = _infotext_path(source)
    if p is not None and p.is_file():
        if p.suffix.lower() in INFOTEXT_IMAGE_EXTS:
            try:
                meta = read_image_metadata(p)
            except (OSError, ValueError) as e:
                raise SettingsError(f"`infotext` {p} is not an image that can be read ({e}).") from None
            text = meta.infotext
            if not text:
                raise SettingsError(f"{p.name} carries no A1111 generation parameters (no `parameters` text).")
        else:
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise SettingsError(f"`infotext` {p} cannot be read as UTF-8 text ({e}).") from None
    elif p is not None and p.is_dir():
        raise SettingsError(f"`infotext` {p} is a folder; give one image or text file, or the infotext itself.")
    else:
        text = str(source)
        if _looks_like_a_path(text):
            raise SettingsError(
                f"`infotext` {text!r} looks like a file name, but there is no such file; give an image or text "
                "file that exists, or the infotext text itself."
            )
        p = None
    params = parse_infotext(text)
    s = base or GenerationSettings()

    def num(key: str, kind):
        v = params.get(key)
        if v is None or v == "":
            return None
        try:
            return kind(float(v)) if kind is int else kind(v)
        except (TypeError, ValueError):
            raise SettingsError(f"infotext value {key}: {v!r} is not a number.") from None

    version = None if params.get("Version") is None else str(params.get("Version"))
    if version and version.lower().startswith("tagloop"):
        version = None  # tagloop writes 1.9+ semantics (an explicit Schedule type), not an A1111 version
    try:
        if version is None and params.get("Version") is not None:
            sampler, schedule = resolve_sampler(str(params.get("Sampler") or "Euler a"), _opt_str(params.get("Schedule type")))
        else:
            sampler, schedule = sampler_from_infotext(params)
    except ValueError as e:
        raise SettingsError(str(e)) from None
    hires = num("Hires upscale", float)
    upscaler = str(params.get("Hires upscaler") or "Latent").lower()
    inpaint = _inpaint_from_infotext(params)
    from .control import units_from_infotext, with_saved_conditions

    control = units_from_infotext(params)
    if control and saved_conditions and p is not None and p.suffix.lower() in INFOTEXT_IMAGE_EXTS:
        control = with_saved_conditions(control, p)  # the condition images saved beside the image
    return replace(
        s,
        control=control or list(s.control),
        **inpaint,
        tiling=str(params.get("Tiling", "")).strip().lower() == "true",
        prompt=str(params.get("Prompt", "")),
        negative_prompt=str(params.get("Negative prompt", "")),
        prompts=[],
        sampler=sampler,
        schedule_type=schedule,
        steps=num("Steps", int) or s.steps,
        cfg_scale=num("CFG scale", float) if params.get("CFG scale") is not None else s.cfg_scale,
        seed=num("Seed", int) if params.get("Seed") is not None else s.seed,
        width=num("Size-1", int) or s.width,
        height=num("Size-2", int) or s.height,
        clip_skip=num("Clip skip", int) or 1,
        hires_scale=hires,
        hires_steps=num("Hires steps", int) or 0,
        hires_denoise=num("Denoising strength", float) or 0.5 if hires else s.hires_denoise,
        denoising_strength=s.denoising_strength if hires else (num("Denoising strength", float) or s.denoising_strength),
        hires_upscaler="lanczos" if upscaler.startswith("lanczos") else "latent",
        emphasis=str(params.get("Emphasis") or "Original"),
        # (sampler, schedule) above are already in 1.9+ terms; keeping the old version would apply
        # the pre-1.9 rule a second time and turn `DPM++ 2M Karras` (1.8) into the uniform schedule.
        version=None,
        infotext_file=p,
    )


#: A1111's "Masked content" names -> ``inpainting_fill``.
_FILL_NAMES = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
#: Keys A1111 writes for an inpainting request (only those that differ from its defaults).
_INPAINT_KEYS = ("Mask blur", "Mask mode", "Inpaint area", "Masked area padding", "Masked content")


def _inpaint_from_infotext(params) -> dict[str, Any]:
    """The inpainting settings an infotext states (none when it states no inpainting key).

    A1111 writes a key only when it differs from its img2img defaults, so once any is there the
    absent ones mean those defaults: no blur, inpaint masked, whole picture, padding 32, original.
    The mask itself is not in the infotext; these apply when a ``mask_image`` is given.
    """
    stated = params.stated() if hasattr(params, "stated") else dict(params)
    if not any(k in stated for k in _INPAINT_KEYS):
        return {}
    fill = str(stated.get("Masked content", "original")).strip().lower()
    if fill not in _FILL_NAMES:
        raise SettingsError(f"infotext value Masked content: {fill!r} is not one of {', '.join(_FILL_NAMES)}.")
    try:
        blur = int(float(stated.get("Mask blur", 0)))
        padding = int(float(stated.get("Masked area padding", 32)))
    except (TypeError, ValueError):
        raise SettingsError("infotext values Mask blur and Masked area padding must be numbers.") from None
    return dict(
        mask_blur=blur,
        inpainting_mask_invert=str(stated.get("Mask mode", "")).strip() == "Inpaint not masked",
        inpaint_full_res=str(stated.get("Inpaint area", "")).strip() == "Only masked",
        inpaint_full_res_padding=padding,
        inpainting_fill=_FILL_NAMES[fill],
    )


#: Files ``infotext`` reads the A1111 text of (anything else that exists is read as a text file).
INFOTEXT_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".avif", ".gif")
#: Names that make a value that is not infotext a file name (a typo'd or moved file, not a prompt).
_PATH_LIKE_EXTS = INFOTEXT_IMAGE_EXTS + (".txt",)


def _infotext_path(source: str | Path) -> Path | None:
    if isinstance(source, Path):
        return source.expanduser()
    text = str(source)
    if len(text) >= 4096 or "\n" in text or "\0" in text:
        return None
    try:
        path = Path(text).expanduser()
        path.stat()  # a name too long for the file system, or one that cannot be a name, is text
    except FileNotFoundError:
        return path
    except (OSError, RuntimeError, ValueError):
        return None
    return path


def _looks_like_a_path(text: str) -> bool:
    """Whether a value that names no file was meant as a file name rather than as infotext.

    Infotext stays infotext: anything with a parameter line (``Steps: 20, Sampler: ..., Seed: ...``)
    or several lines. A single line is a file name when it ends in an image or ``.txt`` extension,
    or holds a path separator and no ``", "`` (tag lists such as ``1girl, black/white`` are prompts).
    """
    from ..a1111.infotext import PARAM_PAIR

    text = text.strip()
    if not text or "\n" in text or len(PARAM_PAIR.findall(text)) >= 3:
        return False
    if Path(text).suffix.lower() in _PATH_LIKE_EXTS:
        return True
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in text for sep in seps) and ", " not in text


def _opt_str(v) -> str | None:
    return None if v is None or v == "" else str(v)


# --- the generator -------------------------------------------------------------------------------
