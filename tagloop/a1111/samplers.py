"""A1111 sampler names and schedule types -> diffusers schedulers with the matching flags.

A1111 1.9 split the old sampler names (``DPM++ 2M Karras``) into a sampler (``DPM++ 2M``) and a
``Schedule type`` (``Karras``). ``Automatic`` means the sampler's own default schedule: Karras for
DPM++ 2M / DPM++ SDE / DPM++ 2S a / DPM2 / DPM2 a, Exponential for the DPM++ SDE multistep family,
and the model's uniform discrete sigmas for Euler, Euler a, LMS and Heun. Before 1.9 a plain
``DPM++ 2M`` meant the uniform schedule; :func:`resolve_sampler` takes ``version=`` to tell them
apart and :func:`sampler_from_infotext` applies the rule to a parsed infotext.

k-diffusion's uniform schedule (``get_sigmas``: timesteps 999 -> 0, linearly) is diffusers'
``timestep_spacing="linspace"``; it is set explicitly because SD1 and SDXL scheduler configs often
say ``"leading"``. Results are close to A1111, not bit-identical (noise source, sigma interpolation).

SD3 is a flow-matching model: every name maps to a flow-matching scheduler (Euler, Heun, DPM++ 2M,
UniPC have one in diffusers), the others to flow-matching Euler with a one-line notice.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import SchedulerMixin

FAMILIES = ("sd1", "sd2", "sdxl", "sd3")


@dataclass(frozen=True)
class ScheduleType:
    """An A1111 1.9+ ``Schedule type`` and the diffusers settings that reproduce it."""

    label: str
    name: str
    aliases: tuple[str, ...] = ()
    #: Keyword arguments for schedulers that take them (``use_*_sigmas``, ``timestep_spacing``).
    flags: Mapping[str, Any] = field(default_factory=dict)


SCHEDULE_TYPES: dict[str, ScheduleType] = {
    s.label: s
    for s in (
        ScheduleType("Automatic", "automatic"),
        ScheduleType("Uniform", "uniform", flags={"timestep_spacing": "linspace"}),
        ScheduleType("Karras", "karras", flags={"timestep_spacing": "linspace", "use_karras_sigmas": True}),
        ScheduleType("Exponential", "exponential", flags={"timestep_spacing": "linspace", "use_exponential_sigmas": True}),
        ScheduleType("SGM Uniform", "sgm_uniform", ("SGMUniform",), flags={"timestep_spacing": "trailing"}),
        ScheduleType("Simple", "simple", flags={"timestep_spacing": "trailing"}),
        ScheduleType("Normal", "normal", flags={"timestep_spacing": "linspace"}),
        ScheduleType("DDIM", "ddim", flags={"timestep_spacing": "leading", "steps_offset": 1}),
        ScheduleType("Beta", "beta", flags={"timestep_spacing": "linspace", "use_beta_sigmas": True}),
    )
}

#: A1111 schedule types that diffusers has no setting for; named in errors rather than guessed.
UNSUPPORTED_SCHEDULE_TYPES: dict[str, str] = {
    "Polyexponential": "polyexponential",
    "KL Optimal": "kl_optimal",
    "Align Your Steps": "align_your_steps",
    "Karras Exponential": "karras_exponential",
}

_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler and the diffusers scheduler that stands for it."""

    name: str
    scheduler_class: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    #: The schedule ``Automatic`` means for this sampler in A1111 1.9+.
    automatic: str = "Uniform"
    #: A1111 "timesteps" samplers (DDIM, PLMS, UniPC) and LCM ignore the schedule type.
    ignores_schedule: bool = False
    #: Flow-matching stand-in for SD3: class, kwargs; ``None`` -> flow-matching Euler with a notice.
    flow_class: str | None = None
    flow_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: Printed when the mapping is known to be approximate.
    notice: str | None = None


_DPM_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec(
            "Euler a",
            "EulerAncestralDiscreteScheduler",
            aliases=("k_euler_a", "k_euler_ancestral", "euler_a", "euler_ancestral", "eulera"),
        ),
        SamplerSpec(
            "Euler",
            "EulerDiscreteScheduler",
            aliases=("k_euler", "euler"),
            flow_class="FlowMatchEulerDiscreteScheduler",
        ),
        SamplerSpec("LMS", "LMSDiscreteScheduler", aliases=("k_lms", "lms")),
        SamplerSpec(
            "Heun",
            "HeunDiscreteScheduler",
            aliases=("k_heun", "heun"),
            flow_class="FlowMatchHeunDiscreteScheduler",
        ),
        SamplerSpec("DPM2", "KDPM2DiscreteScheduler", aliases=("k_dpm_2", "dpm_2", "dpm2"), automatic="Karras"),
        SamplerSpec(
            "DPM2 a",
            "KDPM2AncestralDiscreteScheduler",
            aliases=("k_dpm_2_a", "dpm_2_a", "dpm2_a", "dpm_2_ancestral"),
            automatic="Karras",
        ),
        SamplerSpec(
            "DPM++ 2S a",
            "DPMSolverSinglestepScheduler",
            {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": True},
            aliases=("k_dpmpp_2s_a", "dpmpp_2s_a", "dpmpp_2s_ancestral"),
            automatic="Karras",
            notice="DPM++ 2S a has no diffusers scheduler; using DPMSolverSinglestepScheduler (order 2, no ancestral noise).",
        ),
        SamplerSpec(
            "DPM++ 2M",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
            aliases=("k_dpmpp_2m", "dpmpp_2m"),
            automatic="Karras",
            flow_class="DPMSolverMultistepScheduler",
            flow_kwargs={"algorithm_type": "dpmsolver++", "solver_order": 2, **_DPM_FLOW},
        ),
        SamplerSpec(
            "DPM++ SDE",
            "DPMSolverSinglestepScheduler",
            {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": True},
            aliases=("k_dpmpp_sde", "dpmpp_sde"),
            automatic="Karras",
        ),
        SamplerSpec(
            "DPM++ 2M SDE",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
            aliases=("k_dpmpp_2m_sde", "dpmpp_2m_sde"),
            automatic="Exponential",
        ),
        SamplerSpec(
            "DPM++ 2M SDE Heun",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
            aliases=("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"),
            automatic="Exponential",
        ),
        SamplerSpec(
            "DPM++ 3M SDE",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
            aliases=("k_dpmpp_3m_sde", "dpmpp_3m_sde"),
            automatic="Exponential",
        ),
        SamplerSpec(
            "DDIM",
            "DDIMScheduler",
            {"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False},
            aliases=("ddim",),
            ignores_schedule=True,
        ),
        SamplerSpec(
            "PLMS",
            "PNDMScheduler",
            {"skip_prk_steps": True, "timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False},
            aliases=("plms", "pndm"),
            ignores_schedule=True,
        ),
        SamplerSpec(
            "UniPC",
            "UniPCMultistepScheduler",
            # A1111's UniPC: bh1, order 3, time-uniform steps ending at sigma_min (t = 1/N), not at 0;
            # diffusers' bh1 step to sigma 0 divides by an infinite log-SNR step and gives NaN.
            {
                "solver_type": "bh1",
                "solver_order": 3,
                "lower_order_final": True,
                "predict_x0": True,
                "timestep_spacing": "linspace",
                "final_sigmas_type": "sigma_min",
            },
            aliases=("unipc", "uni_pc"),
            ignores_schedule=True,
            flow_class="UniPCMultistepScheduler",
            flow_kwargs={"solver_type": "bh2", "solver_order": 2, **_DPM_FLOW},
        ),
        SamplerSpec("LCM", "LCMScheduler", aliases=("k_lcm", "lcm"), ignores_schedule=True),
    )
}


def list_samplers() -> list[str]:
    """A1111 sampler names, in A1111's menu order (for ``--list-samplers``)."""
    return list(SAMPLERS)


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).lower()


_SAMPLER_LOOKUP: dict[str, str] = {}
for _spec in SAMPLERS.values():
    for _alias in (_spec.name, *_spec.aliases):
        _SAMPLER_LOOKUP[_key(_alias)] = _spec.name

_SCHEDULE_LOOKUP: dict[str, str] = {}
for _sched in SCHEDULE_TYPES.values():
    for _alias in (_sched.label, _sched.name, *_sched.aliases):
        _SCHEDULE_LOOKUP[_key(_alias)] = _sched.label
for _label, _name in UNSUPPORTED_SCHEDULE_TYPES.items():
    _SCHEDULE_LOOKUP[_key(_label)] = _label
    _SCHEDULE_LOOKUP[_key(_name)] = _label


def _unknown_sampler(name: str) -> ValueError:
    return ValueError(
        f"Unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)} "
        f"(old names with a schedule suffix such as 'DPM++ 2M Karras' work too)."
    )


def _schedule_label(text: str) -> str:
    label = _SCHEDULE_LOOKUP.get(_key(text))
    if label is None:
        raise ValueError(f"Unknown schedule type {text!r}; valid types: {', '.join(SCHEDULE_TYPES)}.")
    return label


def _parse_version(version: str) -> tuple[int, int] | None:
    """``"v1.10.1"``, ``"1.8.0-RC"``, Forge's ``"f2.0.1v1.10.1-previous-..."`` -> ``(1, 10)``."""
    if not re.match(r"\s*[vf]?\d", version):
        return None  # another program's version (``tagloop 0.1.0``): not an A1111 release
    matches = re.findall(r"v?(\d+)\.(\d+)", version)
    if not matches:
        return None
    # Forge writes its own version first, then A1111's after a "v".
    a1111 = re.search(r"v(\d+)\.(\d+)", version)
    major, minor = a1111.groups() if a1111 else matches[0]
    return int(major), int(minor)


def is_pre_schedule_type_version(version: str | None) -> bool:
    """Whether an infotext ``Version`` predates A1111 1.9 (no ``Schedule type`` yet)."""
    if not version:
        return False
    parsed = _parse_version(version)
    return parsed is not None and parsed < (1, 9)


def resolve_sampler(name: str, schedule_type: str | None = None, *, version: str | None = None) -> tuple[str, str]:
    """Canonical ``(sampler, schedule type)`` for an A1111 sampler name.

    Accepts A1111 names in any case, k-diffusion/ComfyUI-style aliases (``k_euler_a``,
    ``dpmpp_2m``) and pre-1.9 names carrying a schedule (``DPM++ 2M Karras``,
    ``DPM++ 2M SDE Exponential``). With 1.9+ semantics (``version`` None or >= 1.9) the schedule
    comes from the name's suffix, else ``schedule_type``, else ``Automatic``; a schedule equal to
    the sampler's default is reported as ``Automatic``, as A1111 does. With ``version`` < 1.9 a
    name without suffix means the uniform schedule (``DPM++ 2M`` was not Karras then).

    >>> resolve_sampler("DPM++ 2M Karras")
    ('DPM++ 2M', 'Automatic')
    >>> resolve_sampler("dpm++ 2m", version="v1.8.0")
    ('DPM++ 2M', 'Uniform')

    Raises:
        ValueError: unknown sampler (the message lists the valid names) or schedule type.
    """
    return _resolve(name, schedule_type, version, convert_automatic=True)


def _resolve(name: str, schedule_type: str | None, version: str | None, *, convert_automatic: bool) -> tuple[str, str]:
    if not isinstance(name, str) or not name.strip():
        raise _unknown_sampler(str(name))
    key = _key(name)
    suffix: str | None = None
    sampler = _SAMPLER_LOOKUP.get(key)
    if sampler is None:
        for alias in sorted(_SCHEDULE_LOOKUP, key=len, reverse=True):
            if key.endswith(" " + alias):
                base = _SAMPLER_LOOKUP.get(key[: -len(alias) - 1].strip())
                if base is not None:
                    sampler, suffix = base, _SCHEDULE_LOOKUP[alias]
                    break
    if sampler is None:
        raise _unknown_sampler(name)
    spec = SAMPLERS[sampler]
    legacy = is_pre_schedule_type_version(version)

    if suffix is not None:
        label = suffix
    elif schedule_type is not None and _key(schedule_type) not in ("", "automatic"):
        label = _schedule_label(schedule_type)
    elif legacy and not spec.ignores_schedule:
        label = "Uniform"
    else:
        label = "Automatic"
    if convert_automatic and label == spec.automatic:
        label = "Automatic"
    return sampler, label


def sampler_from_infotext(params: Mapping[str, object]) -> tuple[str, str]:
    """``(sampler, schedule type)`` for a parsed infotext, with the pre-1.9 rule.

    An infotext with neither a ``Schedule type`` nor a ``Version`` was written before A1111 1.9,
    so ``Sampler: DPM++ 2M`` there means the uniform schedule, not Karras.
    """
    sampler = str(params.get("Sampler") or "Euler a")
    defaulted = getattr(params, "defaulted", frozenset())
    schedule = params.get("Schedule type")
    if "Schedule type" in defaulted:
        schedule = None
    version = params.get("Version")
    if schedule is None and not version:
        version = "1.8.0"
    return resolve_sampler(
        sampler, None if schedule is None else str(schedule), version=None if version is None else str(version)
    )


def effective_schedule(name: str, schedule_type: str | None = None, *, version: str | None = None) -> str:
    """The schedule actually used (``Automatic`` replaced by the sampler's default)."""
    sampler, label = resolve_sampler(name, schedule_type, version=version)
    return SAMPLERS[sampler].automatic if label == "Automatic" else label


def _accepted(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def _scipy_or_error(what: str) -> None:
    try:
        import scipy  # noqa: F401
    except ImportError as error:
        raise ImportError(f"The {what} needs scipy, which is not installed; run `pip install scipy`.") from error


def make_scheduler(
    name: str,
    schedule_type: str | None,
    scheduler_config: Mapping[str, Any],
    family: str,
    *,
    version: str | None = None,
) -> tuple[SchedulerMixin, str | None]:
    """Build the diffusers scheduler for an A1111 sampler from the model's own scheduler config.

    ``scheduler_config`` is the pipeline's ``scheduler.config`` (betas, prediction type, SD3 shift);
    only the keys the chosen class accepts are used, then the sampler's and schedule's flags are
    applied over them. ``family`` is one of ``sd1``, ``sd2``, ``sdxl``, ``sd3``.

    Returns:
        ``(scheduler, notice)``: ``notice`` is one line when the request could not be followed
        exactly (an SD3 sampler without a flow-matching equivalent, a schedule type the scheduler
        lacks, an approximate mapping); ``None`` otherwise.

    Raises:
        ValueError: unknown sampler, schedule type or family; a schedule diffusers cannot reproduce.
        ImportError: LMS or the Beta schedule without scipy.
    """
    import diffusers

    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; expected one of {', '.join(FAMILIES)}.")
    sampler, label = resolve_sampler(name, schedule_type, version=version)
    spec = SAMPLERS[sampler]
    schedule = spec.automatic if label == "Automatic" else label
    if schedule in UNSUPPORTED_SCHEDULE_TYPES:
        raise ValueError(f"The schedule type {schedule!r} has no diffusers equivalent; use one of {', '.join(SCHEDULE_TYPES)}.")
    notices: list[str] = []

    if family == "sd3":
        # On a flow model "Automatic" is the model's own shifted schedule, whatever the sampler.
        if spec.flow_class is not None:
            class_name, kwargs = spec.flow_class, dict(spec.flow_kwargs)
            if "use_flow_sigmas" in kwargs:
                kwargs["flow_shift"] = float(scheduler_config.get("shift", 1.0) or 1.0)
        else:
            class_name, kwargs = "FlowMatchEulerDiscreteScheduler", {}
            notices.append(
                f"SD3 is a flow-matching model and {sampler!r} has no flow-matching version; using Euler (flow matching)."
            )
        explicit = _resolve(name, schedule_type, version, convert_automatic=False)[1]
        requested = "Uniform" if explicit == "Automatic" else explicit
        sigma_flags = {k: v for k, v in SCHEDULE_TYPES[requested].flags.items() if k in _SIGMA_FLAGS}
        if spec.ignores_schedule:
            sigma_flags = {}
        if sigma_flags and class_name != "FlowMatchEulerDiscreteScheduler":
            notices.append(f"The {requested} schedule is not available with {class_name} on SD3; using the model's own schedule.")
            sigma_flags = {}
        schedule_flags = sigma_flags
        schedule = requested
    else:
        class_name, kwargs = spec.scheduler_class, dict(spec.kwargs)
        if spec.notice:
            notices.append(spec.notice)
        schedule_flags = {} if spec.ignores_schedule else dict(SCHEDULE_TYPES[schedule].flags)

    if spec.ignores_schedule and label not in ("Automatic", "Uniform"):
        notices.append(f"{sampler} ignores the schedule type (as in A1111); {label!r} has no effect.")

    cls = getattr(diffusers, class_name)
    accepted = _accepted(cls)
    if class_name == "LMSDiscreteScheduler":
        _scipy_or_error("LMS sampler")
    if schedule_flags.get("use_beta_sigmas"):
        _scipy_or_error("Beta schedule type")

    wanted_sigma = next((flag for flag in _SIGMA_FLAGS if schedule_flags.get(flag)), None)
    if wanted_sigma is not None and wanted_sigma not in accepted:
        notices.append(f"diffusers' {class_name} has no {schedule} sigmas; {sampler} runs with its uniform schedule.")
        schedule_flags = {k: v for k, v in schedule_flags.items() if k not in _SIGMA_FLAGS}

    config = {k: v for k, v in dict(scheduler_config).items() if k in accepted}
    overrides = {**kwargs, **schedule_flags}
    for flag in _SIGMA_FLAGS:  # exactly one sigma flag at most, whatever the model config says
        if flag in accepted:
            overrides.setdefault(flag, False)
    config.update({k: v for k, v in overrides.items() if k in accepted})
    scheduler = cls.from_config(config)
    return scheduler, (" ".join(notices) if notices else None)
