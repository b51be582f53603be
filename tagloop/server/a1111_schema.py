"""AUTOMATIC1111's HTTP API schema for txt2img/img2img, options, samplers and DeepBooru captions.

Pure Python: plain dicts in and out, no FastAPI. What it knows was read from A1111 v1.10.1
(``modules/api/models.py``, ``modules/api/api.py``, ``modules/processing.py``,
``modules/sd_samplers*.py``, ``modules/sd_schedulers.py``, ``modules/deepbooru.py``,
``modules/shared_options.py``) and from the webuiapi client (mix1009/sdwebuiapi ``webuiapi.py``).

A1111 builds its request models from the ``__init__`` parameters of its processing dataclasses, so
every field is optional, unknown keys are ignored, and a field's default is the *base* class's
(txt2img's ``denoising_strength`` defaults to ``None``, img2img's to 0.75). The API then resolves
``sampler_name or sampler_index`` (``sampler_index`` defaults to ``"Euler"``) with
``get_sampler_and_scheduler`` and answers ``parameters`` = the request with every default filled.

tagloop answers the same shapes but refuses what it cannot do instead of doing something else:
a feature tagloop lacks asked for with a non-neutral value (``restore_faces: true``, a variation
seed, an extension script, a refiner, ...) is an :class:`UnsupportedFieldError` (HTTP 422) naming
the field; so is an unknown sampler (A1111 silently falls back to ``DPM++ 2M``). A field at its
neutral value passes: webuiapi sends about 45 fields on every call, all at neutral values.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import InputError
from .errors import NotFound

if TYPE_CHECKING:  # pragma: no cover
    from ..generator.settings import FamilyDefaults, GeneratedImage, GenerationSettings

__all__ = [
    "TXT2IMG_DEFAULTS",
    "IMG2IMG_DEFAULTS",
    "OPTION_KEYS_TAGLOOP_USES",
    "A1111Request",
    "RequestFieldError",
    "UnsupportedFieldError",
    "parse_generation_request",
    "build_info",
    "default_options",
    "format_deepbooru_caption",
    "samplers_listing",
    "schedulers_listing",
]


# --- errors --------------------------------------------------------------------------------------


class RequestFieldError(InputError):
    """A request field with a value of the wrong type or out of range (HTTP 422); ``field`` names it."""

    http_status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnsupportedFieldError(RequestFieldError):
    """A request field asking for something A1111 does and tagloop does not (HTTP 422)."""


# --- the request models --------------------------------------------------------------------------

#: ``StableDiffusionProcessing`` ``__init__`` fields the API accepts, with their A1111 1.10 defaults
#: and kinds, in A1111's order (``API_NOT_ALLOWED`` ones left out).
_BASE_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("prompt", "str", ""),
    ("negative_prompt", "str", ""),
    ("styles", "str_list", None),
    ("seed", "int", -1),
    ("subseed", "int", -1),
    ("subseed_strength", "float", 0),
    ("seed_resize_from_h", "int", -1),
    ("seed_resize_from_w", "int", -1),
    ("sampler_name", "str", None),
    ("scheduler", "str", None),
    ("batch_size", "int", 1),
    ("n_iter", "int", 1),
    ("steps", "int", 50),
    ("cfg_scale", "float", 7.0),
    ("width", "int", 512),
    ("height", "int", 512),
    ("restore_faces", "bool", None),
    ("tiling", "bool", None),
    ("do_not_save_samples", "bool", False),
    ("do_not_save_grid", "bool", False),
    ("eta", "float", None),
    ("denoising_strength", "float", None),
    ("s_min_uncond", "float", None),
    ("s_churn", "float", None),
    ("s_tmax", "float", None),
    ("s_tmin", "float", None),
    ("s_noise", "float", None),
    ("override_settings", "dict", None),
    ("override_settings_restore_afterwards", "bool", True),
    ("refiner_checkpoint", "str", None),
    ("refiner_switch_at", "float", None),
    ("disable_extra_networks", "bool", False),
    ("firstpass_image", "str", None),
    ("comments", "dict", None),
)

_TXT2IMG_OWN: tuple[tuple[str, str, Any], ...] = (
    ("enable_hr", "bool", False),
    ("firstphase_width", "int", 0),
    ("firstphase_height", "int", 0),
    ("hr_scale", "float", 2.0),
    ("hr_upscaler", "str", None),
    ("hr_second_pass_steps", "int", 0),
    ("hr_resize_x", "int", 0),
    ("hr_resize_y", "int", 0),
    ("hr_checkpoint_name", "str", None),
    ("hr_sampler_name", "str", None),
    ("hr_scheduler", "str", None),
    ("hr_prompt", "str", ""),
    ("hr_negative_prompt", "str", ""),
    ("force_task_id", "str", None),
)

_IMG2IMG_OWN: tuple[tuple[str, str, Any], ...] = (
    ("init_images", "list", None),
    ("resize_mode", "int", 0),
    ("image_cfg_scale", "float", None),
    ("mask", "str", None),
    ("mask_blur_x", "int", 4),
    ("mask_blur_y", "int", 4),
    ("mask_blur", "int", None),  # a property over mask_blur_x/y in A1111, so its API default is None
    ("mask_round", "bool", True),
    ("inpainting_fill", "int", 0),
    ("inpaint_full_res", "bool", True),
    ("inpaint_full_res_padding", "int", 0),
    ("inpainting_mask_invert", "int", 0),
    ("initial_noise_multiplier", "float", None),
    ("latent_mask", "str", None),
    ("force_task_id", "str", None),
)

#: The API's own additions (``models.py`` ``additional_fields``).
_API_EXTRA_TXT2IMG: tuple[tuple[str, str, Any], ...] = (
    ("sampler_index", "str", "Euler"),
    ("script_name", "str", None),
    ("script_args", "list", []),
    ("send_images", "bool", True),
    ("save_images", "bool", False),
    ("alwayson_scripts", "dict", {}),
    ("force_task_id", "str", None),
    ("infotext", "str", None),
)

_API_EXTRA_IMG2IMG: tuple[tuple[str, str, Any], ...] = (
    ("sampler_index", "str", "Euler"),
    ("init_images", "list", None),
    ("denoising_strength", "float", 0.75),
    ("mask", "str", None),
    ("include_init_images", "bool", False),
    ("script_name", "str", None),
    ("script_args", "list", []),
    ("send_images", "bool", True),
    ("save_images", "bool", False),
    ("alwayson_scripts", "dict", {}),
    ("force_task_id", "str", None),
    ("infotext", "str", None),
)


def _model(*groups: tuple[tuple[str, str, Any], ...]) -> tuple[dict[str, Any], dict[str, str]]:
    # A key keeps the position of its first appearance and takes the value of its last (a dict
    # comprehension over A1111's model definitions does the same).
    defaults: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for group in groups:
        for name, kind, default in group:
            defaults[name] = default
            kinds[name] = kind
    return defaults, kinds


#: Every field A1111 1.10's ``/sdapi/v1/txt2img`` request model accepts, with the API's defaults.
TXT2IMG_DEFAULTS, _TXT2IMG_KINDS = _model(_BASE_FIELDS, _TXT2IMG_OWN, _API_EXTRA_TXT2IMG)
#: Every field A1111 1.10's ``/sdapi/v1/img2img`` request model accepts, with the API's defaults.
IMG2IMG_DEFAULTS, _IMG2IMG_KINDS = _model(_BASE_FIELDS, _IMG2IMG_OWN, _API_EXTRA_IMG2IMG)

#: Int fields where A1111's (pydantic) model also takes a JSON boolean.
_INT_TAKES_BOOL = frozenset({"inpainting_mask_invert"})


@dataclass
class A1111Request:
    """A parsed txt2img/img2img request.

    ``fields``: keyword fields for :func:`tagloop.generator.settings.make_settings` (``init_image``
    and ``mask_image`` still base64 text, decoded by the server). ``parameters``: the request echo
    A1111 answers (every default filled; img2img ``init_images``/``mask`` nulled unless
    ``include_init_images``). ``values``: the same before that nulling. ``sampler_name`` and
    ``scheduler``: the names as sent (``sampler_name or sampler_index``), before resolution.
    """

    img2img: bool
    fields: dict[str, Any]
    parameters: dict[str, Any]
    values: dict[str, Any]
    send_images: bool = True
    save_images: bool = False
    override_settings: dict[str, Any] = field(default_factory=dict)
    sampler_name: str | None = None
    scheduler: str | None = None
    force_task_id: str | None = None

    @property
    def checkpoint(self) -> str | None:
        """``override_settings.sd_model_checkpoint``: the checkpoint this one request asks for."""
        value = self.override_settings.get("sd_model_checkpoint")
        return None if value in (None, "") else str(value)


# --- value coercion (pydantic-like, but a bad value is an error naming the field) ----------------

_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")
_TRUE = frozenset({"true", "1", "yes", "on", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "off", "n", "f"})


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(name: str, value: Any, kind: str) -> Any:
    """``value`` as the field's kind; ``None`` stays ``None`` (A1111's fields are all optional)."""
    if value is None:
        return None
    if kind == "str":
        if isinstance(value, str):
            return value
        raise RequestFieldError(name, f"`{name}` must be text, not {_describe(value)}.")
    if kind == "int":
        if isinstance(value, bool):
            if name in _INT_TAKES_BOOL:
                return int(value)
        elif isinstance(value, int):
            return value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        elif isinstance(value, str) and _INT_TEXT.fullmatch(value):
            return int(value)
        raise RequestFieldError(name, f"`{name}` must be a whole number, not {_describe(value)}.")
    if kind == "float":
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        raise RequestFieldError(name, f"`{name}` must be a number, not {_describe(value)}.")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise RequestFieldError(name, f"`{name}` must be true or false, not {_describe(value)}.")
    if kind == "list":
        if isinstance(value, (list, tuple)):
            return list(value)
        raise RequestFieldError(name, f"`{name}` must be a list, not {_describe(value)}.")
    if kind == "str_list":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise RequestFieldError(name, f"`{name}` must be a list of names, not {_describe(value)}.")
    if kind == "dict":
        if isinstance(value, dict):
            return dict(value)
        raise RequestFieldError(name, f"`{name}` must be an object, not {_describe(value)}.")
    raise AssertionError(kind)  # pragma: no cover


def _unsupported(name: str, message: str) -> UnsupportedFieldError:
    return UnsupportedFieldError(name, message)


# --- samplers and schedulers as A1111 1.10 lists them --------------------------------------------

#: ``sd_samplers.all_samplers`` of A1111 1.10 in order: name -> (aliases, options).
_A1111_SAMPLERS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "DPM++ 2M": (("k_dpmpp_2m",), {"scheduler": "karras"}),
    "DPM++ SDE": (("k_dpmpp_sde",), {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    "DPM++ 2M SDE": (("k_dpmpp_2m_sde",), {"scheduler": "exponential", "brownian_noise": True}),
    "DPM++ 2M SDE Heun": (
        ("k_dpmpp_2m_sde_heun",),
        {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
    ),
    "DPM++ 2S a": (("k_dpmpp_2s_a",), {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    "DPM++ 3M SDE": (
        ("k_dpmpp_3m_sde",),
        {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
    ),
    "Euler a": (("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}),
    "Euler": (("k_euler",), {}),
    "LMS": (("k_lms",), {}),
    "Heun": (("k_heun",), {"second_order": True}),
    "DPM2": (("k_dpm_2",), {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    "DPM2 a": (
        ("k_dpm_2_a",),
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
    ),
    "DPM fast": (("k_dpm_fast",), {"uses_ensd": True}),
    "DPM adaptive": (("k_dpm_ad",), {"uses_ensd": True}),
    "Restart": (("restart",), {"scheduler": "karras", "second_order": True}),
    "DDIM": (("ddim",), {}),
    "DDIM CFG++": (("ddim_cfgpp",), {}),
    "PLMS": (("plms",), {}),
    "UniPC": (("unipc",), {}),
    "LCM": (("k_lcm",), {}),
}

#: ``sd_schedulers.schedulers`` of A1111 1.10: (name, label, aliases, default_rho, need_inner_model).
_A1111_SCHEDULERS: tuple[tuple[str, str, list[str] | None, float, bool], ...] = (
    ("automatic", "Automatic", None, -1.0, False),
    ("uniform", "Uniform", None, -1.0, True),
    ("karras", "Karras", None, 7.0, False),
    ("exponential", "Exponential", None, -1.0, False),
    ("polyexponential", "Polyexponential", None, 1.0, False),
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"], -1.0, True),
    ("kl_optimal", "KL Optimal", None, -1.0, False),
    ("align_your_steps", "Align Your Steps", None, -1.0, False),
    ("simple", "Simple", None, -1.0, True),
    ("normal", "Normal", None, -1.0, True),
    ("ddim", "DDIM", None, -1.0, True),
    ("beta", "Beta", None, -1.0, True),
)

#: Samplers whose function takes ``eta``, with the default A1111 uses when ``eta`` is null
#: (``eta_ancestral`` for k-diffusion, ``eta_ddim`` for DDIM); the others ignore ``eta``.
_ETA_DEFAULTS: dict[str, float] = {
    "Euler a": 1.0,
    "DPM2 a": 1.0,
    "DPM++ 2S a": 1.0,
    "DPM++ SDE": 1.0,
    "DPM++ 2M SDE": 1.0,
    "DPM++ 2M SDE Heun": 1.0,
    "DPM++ 3M SDE": 1.0,
    "DDIM": 0.0,
}
#: ``sampler_extra_params``: samplers given ``s_churn`` (with ``s_tmin``/``s_tmax``/``s_noise``)...
_CHURN_SAMPLERS = frozenset({"Euler", "Heun", "DPM2"})
#: ...and those given only ``s_noise``.
_S_NOISE_SAMPLERS = frozenset({"DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"})
#: A1111's "timesteps" samplers and LCM: no sigma schedule, so no ``Schedule type`` in the info.
_NO_SIGMA_SCHEDULE = frozenset({"DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"})


def samplers_listing() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers``: the samplers tagloop has, as A1111 1.10 lists them."""
    from ..a1111.samplers import SAMPLERS

    return [
        {"name": name, "aliases": list(aliases), "options": dict(options)}
        for name, (aliases, options) in _A1111_SAMPLERS.items()
        if name in SAMPLERS
    ]


def schedulers_listing() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers``: the schedule types tagloop has, as A1111 1.10 lists them."""
    from ..a1111.samplers import SCHEDULE_TYPES

    return [
        {
            "name": name,
            "label": label,
            "aliases": None if aliases is None else list(aliases),
            "default_rho": rho,
            "need_inner_model": inner,
        }
        for name, label, aliases, rho, inner in _A1111_SCHEDULERS
        if label in SCHEDULE_TYPES
    ]


def _resolve_sampler(name: str, scheduler: str | None, *, where: str, scheduler_field: str = "scheduler") -> tuple[str, str]:
    """``(sampler, schedule label)`` as ``get_sampler_and_scheduler`` resolves them, or a 422."""
    from ..a1111.samplers import SAMPLERS, UNSUPPORTED_SCHEDULE_TYPES, resolve_sampler

    try:
        resolve_sampler(name)
    except ValueError:
        raise RequestFieldError(
            where, f"`{where}` {name!r} is not a sampler tagloop has; use one of {', '.join(SAMPLERS)}."
        ) from None
    try:
        sampler, label = resolve_sampler(name, scheduler)
    except ValueError:
        raise RequestFieldError(
            scheduler_field,
            f"`{scheduler_field}` {scheduler!r} is not a schedule type tagloop has; use one of "
            f"{', '.join(s['label'] for s in schedulers_listing())}.",
        ) from None
    effective = SAMPLERS[sampler].automatic if label == "Automatic" else label
    if effective in UNSUPPORTED_SCHEDULE_TYPES:
        blame = where if _resolve_suffix(name) else scheduler_field
        raise _unsupported(
            blame,
            f"`{blame}` asks for the {effective} schedule, which tagloop cannot run; use one of "
            f"{', '.join(s['label'] for s in schedulers_listing())}.",
        )
    return sampler, label


def _resolve_suffix(name: str) -> bool:
    """Whether a sampler name carries its schedule (``DPM++ 2M Karras``): then it wins over any other."""
    from ..a1111.samplers import resolve_sampler

    return resolve_sampler(name, "Uniform")[1] == resolve_sampler(name, "Karras")[1]


# --- the request ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _settings_fields() -> frozenset[str]:
    from ..generator.settings import GenerationSettings

    return frozenset(f.name for f in dataclasses.fields(GenerationSettings))


def _family(family_defaults: FamilyDefaults | str | None) -> FamilyDefaults | None:
    if family_defaults is None or not isinstance(family_defaults, str):
        return family_defaults
    from ..generator.settings import FAMILY_DEFAULTS, SettingsError

    try:
        return FAMILY_DEFAULTS[family_defaults]
    except KeyError:
        raise SettingsError(f"unknown model family {family_defaults!r}; known: {', '.join(FAMILY_DEFAULTS)}.") from None


def _neutral_name(value: Any, *neutral: str) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", *neutral))


def parse_generation_request(
    body: Mapping[str, Any],
    *,
    img2img: bool,
    family_defaults: FamilyDefaults | str | None = None,
    options: Mapping[str, Any] | None = None,
) -> A1111Request:
    """Read a ``/sdapi/v1/txt2img`` or ``/img2img`` body as A1111 1.10 does.

    ``family_defaults`` (a :class:`~tagloop.generator.settings.FamilyDefaults` or a family name):
    fields the request does not send take the model family's defaults instead of A1111's
    (``steps`` 50, 512x512, ``Euler``); img2img without a size then takes the init image's.
    ``options``: the server's current A1111 options (``CLIP_stop_at_last_layers``, ``emphasis``),
    which ``override_settings`` overrides for this request.

    Raises:
        RequestFieldError: a field of the wrong type or out of range (HTTP 422).
        UnsupportedFieldError: a field asking for what tagloop cannot do (HTTP 422).
        tagloop.server.errors.NotFound: img2img without ``init_images`` (HTTP 404, as A1111).
    """
    if not isinstance(body, Mapping):
        raise RequestFieldError("body", "the request body must be a JSON object of txt2img/img2img fields.")
    defaults = IMG2IMG_DEFAULTS if img2img else TXT2IMG_DEFAULTS
    kinds = _IMG2IMG_KINDS if img2img else _TXT2IMG_KINDS
    values = copy.deepcopy(defaults)
    sent: set[str] = set()
    for key, raw in body.items():
        if key not in kinds:
            continue  # A1111's models ignore unknown keys (SillyTavern sends `url` and `auth`)
        value = _coerce(key, raw, kinds[key])
        if value is not None:
            values[key] = value
            sent.add(key)

    if values.get("infotext"):
        _apply_infotext(values, sent, kinds, img2img=img2img)

    family = _family(family_defaults)
    if family is not None:
        for key in ("steps", "cfg_scale", "width", "height"):
            if key not in sent:
                values[key] = None if img2img and key in ("width", "height") else getattr(family, key)
        if "sampler_name" not in sent and "sampler_index" not in sent:
            values["sampler_index"] = family.sampler

    override = values.get("override_settings") or {}
    fields = _map_fields(values, override, options or {}, img2img=img2img)
    control = control_units(values.get("alwayson_scripts") or {})
    if control:
        fields["control"] = control

    parameters = copy.deepcopy(values)
    if img2img and not values.get("include_init_images"):
        parameters["init_images"] = None
        parameters["mask"] = None
    return A1111Request(
        img2img=img2img,
        fields=fields,
        parameters=parameters,
        values=values,
        send_images=bool(values.get("send_images", True)),
        save_images=bool(values.get("save_images", False)),
        override_settings=dict(override),
        sampler_name=values.get("sampler_name") or values.get("sampler_index"),
        scheduler=values.get("scheduler"),
        force_task_id=values.get("force_task_id"),
    )


def _check_neutral(v: dict[str, Any], *, img2img: bool, sampler: str) -> None:
    """Every field tagloop has no feature for must be at its neutral value."""
    if v.get("styles"):
        raise _unsupported(
            "styles", "`styles` names saved A1111 prompt styles, which tagloop does not have; put their text in `prompt`."
        )
    if (v.get("subseed_strength") or 0) != 0:
        raise _unsupported(
            "subseed_strength", "`subseed_strength` asks for a variation seed, which tagloop does not have; send 0."
        )
    for key in ("seed_resize_from_w", "seed_resize_from_h"):
        if (v.get(key) or 0) > 0:
            raise _unsupported(key, f"`{key}` resizes the seed's noise, which tagloop does not do; send -1.")
    if v.get("restore_faces"):
        raise _unsupported("restore_faces", "`restore_faces` needs a face restorer, which tagloop does not have; send false.")
    eta = v.get("eta")
    if eta is not None and sampler in _ETA_DEFAULTS and eta != _ETA_DEFAULTS[sampler]:
        d = _ETA_DEFAULTS[sampler]
        raise _unsupported(
            "eta", f"`eta` {eta:g} is not supported: tagloop runs {sampler} with A1111's default eta; send null or {d:g}."
        )
    if (v.get("s_min_uncond") or 0) != 0:
        raise _unsupported(
            "s_min_uncond", "`s_min_uncond` (negative guidance minimum sigma) is not supported by tagloop; send 0 or null."
        )
    if sampler in _CHURN_SAMPLERS and (v.get("s_churn") or 0) != 0:
        raise _unsupported("s_churn", f"`s_churn` adds stochasticity to {sampler}, which tagloop does not do; send 0 or null.")
    s_noise = v.get("s_noise")
    if sampler in _S_NOISE_SAMPLERS and s_noise is not None and s_noise != 1.0:
        raise _unsupported("s_noise", f"`s_noise` changes {sampler}'s noise, which tagloop does not do; send 1 or null.")
    if not _neutral_name(v.get("refiner_checkpoint"), "None", "none"):
        raise _unsupported(
            "refiner_checkpoint", "`refiner_checkpoint` asks for a refiner, which tagloop does not have; leave it out."
        )
    if v.get("disable_extra_networks"):
        raise _unsupported(
            "disable_extra_networks",
            "`disable_extra_networks` is not supported: tagloop always applies <lora:...> from the prompt; send false.",
        )
    if v.get("firstpass_image"):
        raise _unsupported(
            "firstpass_image", "`firstpass_image` (a hires fix from a given image) is not supported by tagloop; leave it out."
        )
    if not _neutral_name(v.get("script_name")):
        raise _unsupported(
            "script_name", f"`script_name` {v['script_name']!r} is not a script tagloop has (it has none); leave it out."
        )
    scripts = v.get("alwayson_scripts") or {}
    for name in scripts:
        if str(name).lower() == "controlnet":
            continue  # mapped to `control` units (control_units)
        raise _unsupported(
            f"alwayson_scripts.{str(name).lower()}",
            f"`alwayson_scripts` {name!r}: tagloop has no such extension script (only controlnet); leave it out.",
        )
    if not img2img:
        for key in ("firstphase_width", "firstphase_height"):
            if (v.get(key) or 0) != 0:
                raise _unsupported(
                    key, f"`{key}` is the old hires-fix first pass size; use `width`/`height` with `hr_scale` and send 0."
                )
        return
    if (v.get("resize_mode") or 0) != 0:
        raise _unsupported("resize_mode", "`resize_mode` other than 0 (just resize) is not supported by tagloop; send 0.")
    noise = v.get("initial_noise_multiplier")
    if noise is not None and noise != 1.0:
        raise _unsupported("initial_noise_multiplier", "`initial_noise_multiplier` is not supported by tagloop; send 1 or null.")
    if v.get("latent_mask"):
        raise _unsupported("latent_mask", "`latent_mask` is not supported by tagloop; send the mask in `mask`.")


def _map_fields(v: dict[str, Any], override: dict[str, Any], options: Mapping[str, Any], *, img2img: bool) -> dict[str, Any]:
    """The request values as :class:`~tagloop.generator.settings.GenerationSettings` fields."""
    from ..generator.settings import EMPHASIS_MODES

    name = v.get("sampler_name") or v.get("sampler_index") or "Euler"
    where = "sampler_name" if v.get("sampler_name") else "sampler_index"
    sampler, schedule = _resolve_sampler(str(name), v.get("scheduler"), where=where)
    _check_neutral(v, img2img=img2img, sampler=sampler)

    clip_skip = override.get("CLIP_stop_at_last_layers", options.get("CLIP_stop_at_last_layers", 1))
    clip_skip = _coerce("override_settings.CLIP_stop_at_last_layers", clip_skip, "int")
    if clip_skip is None or not 1 <= clip_skip <= 12:
        raise RequestFieldError(
            "override_settings.CLIP_stop_at_last_layers",
            f"`override_settings.CLIP_stop_at_last_layers` (clip skip) must be 1 to 12, not {_describe(clip_skip)}.",
        )
    emphasis = override.get("emphasis", options.get("emphasis", "Original"))
    if emphasis not in EMPHASIS_MODES:
        raise RequestFieldError(
            "override_settings.emphasis",
            f"`override_settings.emphasis` must be one of {', '.join(EMPHASIS_MODES)}, not {_describe(emphasis)}.",
        )
    vae = override.get("sd_vae")
    if not _neutral_name(vae, "Automatic", "None"):
        raise _unsupported(
            "override_settings.sd_vae",
            f'`override_settings.sd_vae` {vae!r}: a VAE per request is not supported; use "Automatic".',
        )
    if v.get("n_iter") is not None and v["n_iter"] < 1:
        raise RequestFieldError("n_iter", f"`n_iter` (batch count) must be at least 1, not {v['n_iter']!r}.")

    fields: dict[str, Any] = {
        "prompt": v.get("prompt") or "",
        "negative_prompt": v.get("negative_prompt") or "",
        "sampler": sampler,
        "schedule_type": schedule,
        "steps": v.get("steps"),
        "cfg_scale": v.get("cfg_scale"),
        "seed": -1 if v.get("seed") is None else v["seed"],
        "width": v.get("width"),
        "height": v.get("height"),
        "batch_size": 1 if v.get("batch_size") is None else v["batch_size"],
        "batch_count": 1 if v.get("n_iter") is None else v["n_iter"],
        "clip_skip": clip_skip,
        "emphasis": emphasis,
    }
    _optional_field(
        fields, "tiling", bool(v.get("tiling")), False, "`tiling` (tileable images) is not supported by this tagloop; send false."
    )
    if img2img:
        _map_img2img(v, fields)
    elif v.get("enable_hr"):
        _map_hires(v, fields, sampler, schedule)
    return fields


def _optional_field(
    fields: dict[str, Any], name: str, value: Any, neutral: Any, message: str, *, blame: str | None = None
) -> None:
    """Set a field the generator may not have yet: at its neutral value it is then left out."""
    if name in _settings_fields():
        fields[name] = value
    elif value != neutral:
        raise _unsupported(blame or name, message)


def _map_img2img(v: dict[str, Any], fields: dict[str, Any]) -> None:
    images = v.get("init_images")
    if not images:
        raise NotFound("Init image not found: send the image base64-encoded in `init_images`.")
    if len(images) > 1:
        raise _unsupported("init_images", f"`init_images` has {len(images)} images; tagloop takes one init image per request.")
    if not isinstance(images[0], str):
        raise RequestFieldError("init_images", "`init_images` must be a list of base64-encoded images.")
    fields["init_image"] = images[0]
    strength = v.get("denoising_strength")
    fields["denoising_strength"] = 0.75 if strength is None else strength
    mask = v.get("mask") or None
    blur = v.get("mask_blur")
    if blur is None:
        bx, by = v.get("mask_blur_x"), v.get("mask_blur_y")
        if mask is not None and bx != by:
            raise _unsupported(
                "mask_blur_x",
                "`mask_blur_x` and `mask_blur_y` differ; tagloop blurs the mask the same both ways, so send `mask_blur`.",
            )
        blur = 4 if bx is None else bx
    if mask is not None and v.get("mask_round") is False:
        raise _unsupported("mask_round", "`mask_round` false (a soft mask) is not supported by tagloop; send true.")
    inpaint = {
        "mask_image": mask,
        "mask_blur": blur,
        "inpainting_fill": 0 if v.get("inpainting_fill") is None else v["inpainting_fill"],
        "inpainting_mask_invert": bool(v.get("inpainting_mask_invert")),
        "inpaint_full_res": True if v.get("inpaint_full_res") is None else v["inpaint_full_res"],
        "inpaint_full_res_padding": v.get("inpaint_full_res_padding") or 0,
    }
    if inpaint["inpainting_fill"] not in (0, 1, 2, 3):
        raise RequestFieldError(
            "inpainting_fill",
            f"`inpainting_fill` must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), not {inpaint['inpainting_fill']!r}.",
        )
    if mask is not None and "mask_image" not in _settings_fields():
        raise _unsupported("mask", "`mask` (inpainting) is not supported by this tagloop; leave it out.")
    for key, value in inpaint.items():
        if key in _settings_fields():
            fields[key] = value


def control_units(scripts: dict[str, Any]) -> list:
    """sd-webui-controlnet's ``alwayson_scripts.controlnet.args`` as :class:`ControlUnit` values (enabled
    units only; images still base64 text, decoded by the server). An unsupported module is a 422 naming it."""
    from ..generator.control import ANNOTATOR_WEIGHTS, ControlUnit, normal_module, resize_mode_from
    from ..generator.settings import SettingsError

    block = next((b for k, b in scripts.items() if str(k).lower() == "controlnet"), None)
    if block is None:
        return []
    args = block.get("args") if isinstance(block, dict) else block
    if not isinstance(args, list):
        raise RequestFieldError("alwayson_scripts.controlnet.args", "`alwayson_scripts.controlnet.args` must be a list of units.")
    units = []
    for i, a in enumerate(args):
        where = f"alwayson_scripts.controlnet.args[{i}]"
        if not isinstance(a, dict):
            raise RequestFieldError(where, f"`{where}` must be an object (a ControlNet unit).")
        if a.get("enabled") is False:
            continue
        module = normal_module(a.get("module") or "none")
        if module in ANNOTATOR_WEIGHTS or module not in ("canny", "none"):
            need = f" (it needs {ANNOTATOR_WEIGHTS[module]})" if module in ANNOTATOR_WEIGHTS else ""
            raise _unsupported(
                f"{where}.module", f"ControlNet module {a.get('module')!r} is not supported by tagloop{need}; use canny or none."
            )
        image = a.get("image", a.get("input_image"))
        if isinstance(image, dict):
            image = image.get("image")
        if not isinstance(image, str) or not image:
            raise RequestFieldError(f"{where}.image", f"`{where}.image` must be a base64-encoded control image.")
        mode = a.get("control_mode", 0)
        if mode not in (0, "Balanced", None):
            raise _unsupported(f"{where}.control_mode", f"control mode {mode!r} is not supported by tagloop; send Balanced (0).")
        try:
            resize = resize_mode_from(a.get("resize_mode", "Crop and Resize"))
        except SettingsError as e:
            raise RequestFieldError(f"{where}.resize_mode", str(e)) from None

        def num(key: str, default: float, low: float = 0.0) -> float:
            value = a.get(key)
            if value is None or (isinstance(value, (int, float)) and value < low):
                return default  # the extension's -1 means "the module's default"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestFieldError(f"{where}.{key}", f"`{where}.{key}` must be a number, not {value!r}.")
            return float(value)

        units.append(
            ControlUnit(
                module=module,
                image=image,
                model=str(a.get("model") or ""),
                weight=num("weight", 1.0),
                guidance_start=num("guidance_start", 0.0),
                guidance_end=num("guidance_end", 1.0),
                resize_mode=resize,
                low_threshold=num("threshold_a", 100.0),
                high_threshold=num("threshold_b", 200.0),
            )
        )
    return units


_HIRES_UPSCALERS = {"latent": "latent", "lanczos": "lanczos"}


def _map_hires(v: dict[str, Any], fields: dict[str, Any], sampler: str, schedule: str) -> None:
    upscaler = v.get("hr_upscaler")
    mapped = "latent" if upscaler is None else _HIRES_UPSCALERS.get(upscaler.strip().lower())
    if mapped is None:
        raise _unsupported(
            "hr_upscaler", f'`hr_upscaler` {upscaler!r} is not an upscaler tagloop has; use "Latent" or "Lanczos".'
        )
    width, height = fields["width"], fields["height"]
    scale = v.get("hr_scale")
    rx, ry = v.get("hr_resize_x") or 0, v.get("hr_resize_y") or 0
    if rx or ry:
        scale = _resize_to_scale(rx, ry, width, height)
    scale = 2.0 if scale is None else scale
    if not 1.0 <= scale <= 4.0:
        raise RequestFieldError("hr_scale", f"`hr_scale` must be between 1 and 4, not {scale:g}.")
    steps = v.get("hr_second_pass_steps") or 0
    if steps < 0:
        raise RequestFieldError(
            "hr_second_pass_steps", f"`hr_second_pass_steps` must be 0 (same as `steps`) or more, not {steps}."
        )
    if not _neutral_name(v.get("hr_checkpoint_name"), "Use same checkpoint"):
        raise _unsupported(
            "hr_checkpoint_name",
            "`hr_checkpoint_name` (another checkpoint for the hires pass) is not supported by tagloop; leave it out.",
        )
    hr_sampler = v.get("hr_sampler_name")
    if not _neutral_name(hr_sampler, "Use same sampler"):
        other, _ = _resolve_sampler(hr_sampler, v.get("hr_scheduler"), where="hr_sampler_name", scheduler_field="hr_scheduler")
        if other != sampler:
            raise _unsupported(
                "hr_sampler_name",
                f"`hr_sampler_name` {hr_sampler!r}: tagloop's hires pass uses the first pass's sampler; leave it out.",
            )
    hr_schedule = v.get("hr_scheduler")
    if not _neutral_name(hr_schedule, "Use same scheduler"):
        _, label = _resolve_sampler(sampler, hr_schedule, where="hr_scheduler", scheduler_field="hr_scheduler")
        if label != schedule:
            raise _unsupported(
                "hr_scheduler",
                f"`hr_scheduler` {hr_schedule!r}: tagloop's hires pass uses the first pass's schedule type; leave it out.",
            )
    for key, base in (("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
        if v.get(key) and v[key] != (v.get(base) or ""):
            raise _unsupported(key, f"`{key}`: tagloop's hires pass uses the first pass's prompts; leave it empty.")
    strength = v.get("denoising_strength")
    fields.update(
        hires_scale=scale,
        hires_steps=steps,
        hires_denoise=0.7 if strength is None else strength,  # A1111's UI default; the API has none
        hires_upscaler=mapped,
    )


def _resize_to_scale(rx: int, ry: int, width: int | None, height: int | None) -> float:
    """``hr_resize_x/y`` as the scale A1111 would reach them with, when one exists."""
    if not width or not height:
        raise _unsupported("hr_resize_x", "`hr_resize_x`/`hr_resize_y` need `width` and `height`; send `hr_scale` instead.")
    scale = rx / width if rx else ry / height
    to_x, to_y = int(width * scale), int(height * scale)
    if (rx and to_x != rx) or (ry and to_y != ry):
        raise _unsupported(
            "hr_resize_x",
            f"`hr_resize_x`/`hr_resize_y` {rx}x{ry} is not {width}x{height} scaled evenly (A1111 would crop); send `hr_scale` instead.",
        )
    return scale


#: Infotext keys the ``infotext`` field fills (A1111's paste fields with an API name).
_INFOTEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("Prompt", "prompt"),
    ("Negative prompt", "negative_prompt"),
    ("Steps", "steps"),
    ("CFG scale", "cfg_scale"),
    ("Seed", "seed"),
    ("Size-1", "width"),
    ("Size-2", "height"),
    ("Variation seed", "subseed"),
    ("Variation seed strength", "subseed_strength"),
    ("Seed resize from-1", "seed_resize_from_w"),
    ("Seed resize from-2", "seed_resize_from_h"),
    ("Hires upscale", "hr_scale"),
    ("Hires steps", "hr_second_pass_steps"),
    ("Hires upscaler", "hr_upscaler"),
    ("Hires resize-1", "hr_resize_x"),
    ("Hires resize-2", "hr_resize_y"),
)


def _apply_infotext(values: dict[str, Any], sent: set[str], kinds: dict[str, str], *, img2img: bool) -> None:
    """A1111 1.8+'s ``infotext`` field: it fills the fields the request does not send itself."""
    from ..a1111.infotext import parse_infotext
    from ..a1111.samplers import sampler_from_infotext

    params = parse_infotext(str(values["infotext"]))
    stated = params.stated()

    def fill(key: str, raw: Any) -> None:
        if key in kinds and key not in sent and raw is not None:
            values[key] = _coerce(key, raw, kinds[key])
            sent.add(key)

    for label, key in _INFOTEXT_FIELDS:
        if label in stated and (key in kinds):
            fill(key, stated[label])
    if "Sampler" in stated and "sampler_name" not in sent and "sampler_index" not in sent:
        try:
            sampler, schedule = sampler_from_infotext(params)
        except ValueError:
            raise RequestFieldError(
                "infotext", f"`infotext` names the sampler {stated['Sampler']!r}, which tagloop does not have."
            ) from None
        fill("sampler_name", sampler)
        if "scheduler" not in sent:
            fill("scheduler", schedule)
    if "Face restoration" in stated:
        fill("restore_faces", True)
    if "Denoising strength" in stated:
        if img2img:
            fill("denoising_strength", stated["Denoising strength"])
        elif "Hires upscale" in stated or "Hires resize-1" in stated:
            fill("enable_hr", True)
            fill("denoising_strength", stated["Denoising strength"])
    override = dict(values.get("override_settings") or {})
    for label, option in (("Clip skip", "CLIP_stop_at_last_layers"), ("Emphasis", "emphasis")):
        if label in stated and option not in override:
            override[option] = _coerce(option, stated[label], "int" if option == "CLIP_stop_at_last_layers" else "str")
    if override:
        values["override_settings"] = override


# --- the response's info -------------------------------------------------------------------------


def _extra_generation_params(request: A1111Request, settings: GenerationSettings, first_infotext: str) -> dict[str, Any]:
    """``p.extra_generation_params`` as A1111 1.10 fills it for what tagloop runs."""
    from ..a1111.samplers import SAMPLERS

    v = request.values
    extra: dict[str, Any] = {}
    if request.img2img:
        extra["Denoising strength"] = v.get("denoising_strength")
        if request.fields.get("mask_image") is not None:
            if v.get("inpainting_mask_invert"):
                extra["Mask mode"] = "Inpaint not masked"
            blur = request.fields.get("mask_blur", 4)
            if blur:
                extra["Mask blur"] = blur
            if v.get("inpaint_full_res", True):
                extra["Inpaint area"] = "Only masked"
                extra["Masked area padding"] = v.get("inpaint_full_res_padding") or 0
            content = {0: "fill", 2: "latent noise", 3: "latent nothing"}.get(v.get("inpainting_fill") or 0)
            if content:
                extra["Masked content"] = content
    elif settings.hires:
        extra["Denoising strength"] = v.get("denoising_strength")
        extra["Hires prompt"] = None  # callables in A1111, which its JSON encoder writes as null
        extra["Hires negative prompt"] = None
        extra["Hires schedule type"] = None
        if v.get("hr_resize_x") or v.get("hr_resize_y"):
            extra["Hires resize"] = f"{v.get('hr_resize_x') or 0}x{v.get('hr_resize_y') or 0}"
        else:
            extra["Hires upscale"] = v.get("hr_scale")
        if v.get("hr_second_pass_steps"):
            extra["Hires steps"] = v["hr_second_pass_steps"]
        if v.get("hr_upscaler") is not None:
            extra["Hires upscaler"] = v["hr_upscaler"]
    if settings.emphasis != "Original":
        extra["Emphasis"] = settings.emphasis
    sampler = settings.sampler or ""
    if sampler in SAMPLERS and sampler not in _NO_SIGMA_SCHEDULE:
        label = settings.schedule_type or "Automatic"
        effective = SAMPLERS[sampler].automatic if label == "Automatic" else label
        if label != "Automatic" or "scheduler" in _A1111_SAMPLERS.get(sampler, ((), {}))[1]:
            extra["Schedule type"] = effective
    if first_infotext:
        from ..a1111.infotext import parse_infotext

        stated = parse_infotext(first_infotext).stated()
        for key in ("Lora hashes", "TI hashes"):
            if key in stated:
                extra[key] = stated[key]
    return extra


def build_info(
    request: A1111Request,
    images: Sequence[GeneratedImage],
    *,
    settings: GenerationSettings,
    model_name: str,
    model_hash: str | None,
    job_timestamp: str,
    is_using_inpainting_conditioning: bool = False,
) -> str:
    """The response's ``info``: a JSON string with the keys and types of A1111's ``Processed.js()``.

    ``settings``: the resolved settings (sampler, steps, size filled); ``images``: what was made,
    in order (their prompts, seeds and infotexts fill the ``all_*`` lists and ``infotexts``).
    """
    from .. import __version__

    v = request.values
    prompts = [im.prompt for im in images] or [v.get("prompt") or ""]
    negatives = [im.negative_prompt for im in images] or [v.get("negative_prompt") or ""]
    seeds = [int(im.seed) for im in images] or [int(settings.seed)]
    subseed = int(v.get("subseed") if v.get("subseed") is not None else -1)
    subseeds = [subseed if subseed == -1 else subseed + i for i in range(len(seeds))]
    infotexts = [im.infotext for im in images]
    obj = {
        "prompt": prompts[0],
        "all_prompts": prompts,
        "negative_prompt": negatives[0],
        "all_negative_prompts": negatives,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseed,
        "all_subseeds": subseeds,
        "subseed_strength": float(v.get("subseed_strength") or 0),
        "width": settings.width,
        "height": settings.height,
        "sampler_name": settings.sampler,
        "cfg_scale": settings.cfg_scale,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "restore_faces": bool(v.get("restore_faces")),
        "face_restoration_model": None,
        "sd_model_name": model_name,
        "sd_model_hash": model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": v.get("seed_resize_from_w", -1),
        "seed_resize_from_h": v.get("seed_resize_from_h", -1),
        "denoising_strength": v.get("denoising_strength"),
        "extra_generation_params": _extra_generation_params(request, settings, infotexts[0] if infotexts else ""),
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": list(v.get("styles") or []),
        "job_timestamp": job_timestamp,
        "clip_skip": settings.clip_skip,
        "is_using_inpainting_conditioning": is_using_inpainting_conditioning,
        "version": f"tagloop {__version__}",
    }
    return json.dumps(obj, default=lambda o: None)


# --- options -------------------------------------------------------------------------------------

#: The A1111 options tagloop acts on (the rest are stored and served back unchanged).
OPTION_KEYS_TAGLOOP_USES: tuple[str, ...] = (
    "sd_model_checkpoint",
    "CLIP_stop_at_last_layers",
    "emphasis",
    "interrogate_deepbooru_score_threshold",
    "deepbooru_sort_alpha",
    "deepbooru_use_spaces",
    "deepbooru_escape",
    "deepbooru_filter_tags",
    "interrogate_return_ranks",
)


@lru_cache(maxsize=1)
def _options_data() -> dict[str, Any]:
    from importlib.resources import files

    text = files("tagloop").joinpath("data/a1111_options.json").read_text(encoding="utf-8")
    data = json.loads(text)
    data.pop("_source", None)
    return data


def default_options() -> dict[str, Any]:
    """``GET /sdapi/v1/options`` of a fresh A1111 1.10.1 install: every key and default (a new copy)."""
    return copy.deepcopy(_options_data())


# --- DeepBooru captions --------------------------------------------------------------------------

_DEEPBOORU_SPECIAL = re.compile(r"([\\()])")


def format_deepbooru_caption(
    tags: Sequence[tuple[str, float]],
    options: Mapping[str, Any] | None = None,
    *,
    threshold: float | None = None,
    sort_alpha: bool | None = None,
    use_spaces: bool | None = None,
    escape: bool | None = None,
    filter_tags: str | Sequence[str] | None = None,
    include_ranks: bool | None = None,
) -> str:
    """A caption as A1111's ``DeepDanbooru.tag_multi`` writes it.

    ``tags``: ``(raw underscore name, probability)`` in the model's order. The steps: keep
    ``p >= threshold``; drop ``rating:*``; sort by name (code point order, on the raw names) or by
    probability, highest first (ties keep the model's order); drop ``deepbooru_filter_tags`` (a
    comma list matched against raw names, its spaces read as ``_``); ``_`` -> space; escape
    ``\\ ( )`` with a backslash; ``(tag:0.873)`` with ranks. Settings come from ``options``
    (A1111's option keys, A1111's defaults for missing ones); the keywords override them.

    >>> format_deepbooru_caption([("1girl", 0.99), ("rating:safe", 0.9), ("smile_(happy)", 0.6), ("hat", 0.3)], {})
    '1girl, smile \\\\(happy\\\\)'
    """
    opts = options or {}

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else opts.get(key, default)

    threshold = float(pick(threshold, "interrogate_deepbooru_score_threshold", 0.5))
    sort_alpha = bool(pick(sort_alpha, "deepbooru_sort_alpha", True))
    use_spaces = bool(pick(use_spaces, "deepbooru_use_spaces", True))
    escape = bool(pick(escape, "deepbooru_escape", True))
    include_ranks = bool(pick(include_ranks, "interrogate_return_ranks", False))
    filters = pick(filter_tags, "deepbooru_filter_tags", "") or ""
    items = filters.split(",") if isinstance(filters, str) else list(filters)
    filtered = {str(x).strip().replace(" ", "_") for x in items}

    probability: dict[str, float] = {}
    for tag, p in tags:
        if p < threshold or tag.startswith("rating:"):
            continue
        probability[tag] = float(p)
    if sort_alpha:
        order = sorted(probability)
    else:
        order = [t for t, _ in sorted(probability.items(), key=lambda item: -item[1])]
    out = []
    for tag in order:
        if tag in filtered:
            continue
        text = tag.replace("_", " ") if use_spaces else tag
        if escape:
            text = _DEEPBOORU_SPECIAL.sub(r"\\\1", text)
        if include_ranks:
            text = f"({text}:{probability[tag]:.3f})"
        out.append(text)
    return ", ".join(out)
