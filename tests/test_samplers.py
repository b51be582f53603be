"""A1111 sampler names -> diffusers schedulers: every name builds and steps, flags, old names, Automatic."""

from __future__ import annotations

import inspect

import pytest
import torch

from tagloop.a1111.infotext import parse_infotext
from tagloop.a1111.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    effective_schedule,
    list_samplers,
    make_scheduler,
    resolve_sampler,
    sampler_from_infotext,
)

#: stable-diffusion-v1-5's scheduler/scheduler_config.json
SD1_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
#: stable-diffusion-xl-base-1.0's scheduler config ("leading" spacing)
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SD3_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}

#: k-diffusion's SD1 sigma range (sigma_max, sigma_min) from the scaled-linear betas
SD1_SIGMA_MAX = 14.6146
SD1_SIGMA_MIN = 0.0292


def run_steps(scheduler, steps: int = 4) -> torch.Tensor:
    """Every step of a short schedule (the last step, to sigma 0, is where some flags break)."""
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(steps)
    sample = torch.randn(1, 4, 8, 8, generator=generator) * getattr(scheduler, "init_noise_sigma", 1.0)
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep) if hasattr(scheduler, "scale_model_input") else sample
        noise_pred = 0.1 * model_input + torch.randn(model_input.shape, generator=generator)
        extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        sample = scheduler.step(noise_pred, timestep, sample, **extra).prev_sample
    return sample


@pytest.mark.parametrize("name", list_samplers())
def test_every_sampler_builds_and_steps_sd1(name: str) -> None:
    scheduler, _ = make_scheduler(name, None, SD1_CONFIG, "sd1")
    assert type(scheduler).__name__ == SAMPLERS[name].scheduler_class
    # the model's own betas are kept
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == 0.012
    out = run_steps(scheduler)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_samplers())
def test_every_sampler_builds_and_steps_sd3(name: str) -> None:
    scheduler, notice = make_scheduler(name, None, SD3_CONFIG, "sd3")
    out = run_steps(scheduler)
    assert torch.isfinite(out).all()
    flow_native = {"Euler", "Heun", "DPM++ 2M", "UniPC"}
    if name in flow_native:
        assert notice is None
    else:
        assert notice is not None and name in notice and "\n" not in notice
        assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_sd3_mapping_keeps_flow_matching() -> None:
    euler, notice = make_scheduler("Euler", None, SD3_CONFIG, "sd3")
    assert type(euler).__name__ == "FlowMatchEulerDiscreteScheduler" and notice is None
    assert euler.config.shift == 3.0
    dpm, notice = make_scheduler("DPM++ 2M", None, SD3_CONFIG, "sd3")
    assert dpm.config.use_flow_sigmas and dpm.config.prediction_type == "flow_prediction"
    assert dpm.config.flow_shift == 3.0 and notice is None
    ancestral, notice = make_scheduler("Euler a", None, SD3_CONFIG, "sd3")
    assert type(ancestral).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert notice.startswith("SD3 is a flow-matching model") and "'Euler a'" in notice
    karras, _ = make_scheduler("Euler", "Karras", SD3_CONFIG, "sd3")
    assert karras.config.use_karras_sigmas


def test_old_names_carry_their_schedule() -> None:
    assert resolve_sampler("DPM++ 2M Karras") == ("DPM++ 2M", "Automatic")
    assert resolve_sampler("DPM++ SDE Karras") == ("DPM++ SDE", "Automatic")
    assert resolve_sampler("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Automatic")
    assert resolve_sampler("DPM++ 2M SDE Karras") == ("DPM++ 2M SDE", "Karras")
    assert resolve_sampler("LMS Karras") == ("LMS", "Karras")
    assert resolve_sampler("Euler a") == ("Euler a", "Automatic")
    # the old name wins over an explicit schedule type, as in A1111
    assert resolve_sampler("DPM2 a Karras", "Exponential") == ("DPM2 a", "Automatic")


def test_names_are_case_insensitive_and_aliases_work() -> None:
    assert resolve_sampler("euler A") == ("Euler a", "Automatic")
    assert resolve_sampler("k_euler_a") == ("Euler a", "Automatic")
    assert resolve_sampler("euler_a") == ("Euler a", "Automatic")
    assert resolve_sampler("dpmpp_2m") == ("DPM++ 2M", "Automatic")
    assert resolve_sampler("dpm++ 2m karras") == ("DPM++ 2M", "Automatic")
    assert resolve_sampler("ddim") == ("DDIM", "Automatic")
    assert resolve_sampler("Euler", "sgm_uniform") == ("Euler", "SGM Uniform")
    assert resolve_sampler("Euler", "karras") == ("Euler", "Karras")


def test_automatic_resolution_1_9_and_pre_1_9() -> None:
    # 1.9+: Automatic = the sampler's default schedule
    assert effective_schedule("DPM++ 2M") == "Karras"
    assert effective_schedule("DPM++ 2M SDE") == "Exponential"
    assert effective_schedule("DPM2 a") == "Karras"
    assert effective_schedule("Euler a") == "Uniform"
    assert effective_schedule("LMS") == "Uniform"
    # an explicit schedule equal to the default is reported as Automatic
    assert resolve_sampler("DPM++ 2M", "Karras") == ("DPM++ 2M", "Automatic")
    assert resolve_sampler("DPM++ 2M", "Exponential") == ("DPM++ 2M", "Exponential")
    # before 1.9, a plain DPM++ 2M was not Karras
    assert resolve_sampler("DPM++ 2M", version="v1.8.0") == ("DPM++ 2M", "Uniform")
    assert resolve_sampler("DPM++ 2M Karras", version="v1.8.0") == ("DPM++ 2M", "Automatic")
    assert resolve_sampler("Euler a", version="v1.7.0") == ("Euler a", "Automatic")
    assert resolve_sampler("DPM++ 2M", version="v1.10.1") == ("DPM++ 2M", "Automatic")
    # Forge writes its own version first
    assert resolve_sampler("DPM++ 2M", version="f2.0.1v1.10.1-previous-635-gf5330788") == ("DPM++ 2M", "Automatic")


def test_sampler_from_infotext_applies_the_version_rule() -> None:
    old = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 512x512")
    assert old["Schedule type"] == "Automatic"  # A1111's parse default is still there
    assert sampler_from_infotext(old) == ("DPM++ 2M", "Uniform")
    new = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert sampler_from_infotext(new) == ("DPM++ 2M", "Automatic")
    versioned = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 512x512, Version: v1.10.1")
    assert sampler_from_infotext(versioned) == ("DPM++ 2M", "Automatic")
    old_versioned = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Version: v1.6.0")
    assert sampler_from_infotext(old_versioned) == ("DPM++ 2M", "Uniform")
    old_karras = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1")
    assert effective_schedule(*sampler_from_infotext(old_karras)) == "Karras"


def test_karras_exponential_beta_flags() -> None:
    karras, _ = make_scheduler("DPM++ 2M Karras", None, SD1_CONFIG, "sd1")
    assert karras.config.use_karras_sigmas and not karras.config.use_exponential_sigmas
    assert karras.config.algorithm_type == "dpmsolver++" and karras.config.solver_order == 2
    plain, _ = make_scheduler("DPM++ 2M", None, SD1_CONFIG, "sd1", version="v1.8.0")
    assert not plain.config.use_karras_sigmas
    exponential, _ = make_scheduler("DPM++ 2M SDE", None, SD1_CONFIG, "sd1")
    assert exponential.config.use_exponential_sigmas and exponential.config.algorithm_type == "sde-dpmsolver++"
    assert exponential.config.timestep_spacing == "linspace"
    beta, _ = make_scheduler("Euler", "Beta", SD1_CONFIG, "sd1")
    assert beta.config.use_beta_sigmas and not beta.config.use_karras_sigmas
    # a model config that already asks for Karras does not clash with another schedule
    exp_over_karras, _ = make_scheduler("Euler", "Exponential", {**SDXL_CONFIG, "use_karras_sigmas": True}, "sdxl")
    assert exp_over_karras.config.use_exponential_sigmas and not exp_over_karras.config.use_karras_sigmas


def test_karras_sigmas_span_the_models_range() -> None:
    for config in (SD1_CONFIG, SDXL_CONFIG):
        for name, schedule in (("DPM++ 2M Karras", None), ("Euler", "Karras"), ("Euler a", None)):
            scheduler, _ = make_scheduler(name, schedule, config, "sdxl")
            scheduler.set_timesteps(20)
            assert float(scheduler.sigmas[0]) == pytest.approx(SD1_SIGMA_MAX, abs=1e-3)
            assert float(scheduler.sigmas[-1]) == 0.0
    karras, _ = make_scheduler("DPM++ 2M Karras", None, SDXL_CONFIG, "sdxl")
    karras.set_timesteps(20)
    assert float(karras.sigmas[-2]) == pytest.approx(SD1_SIGMA_MIN, abs=1e-3)


def test_uniform_schedule_is_k_diffusion_linspace() -> None:
    """A1111's default schedule for Euler: timesteps 999 -> 0 in equal steps, whatever the config says."""
    euler, _ = make_scheduler("Euler", None, SDXL_CONFIG, "sdxl")
    euler.set_timesteps(4)
    assert [round(float(t)) for t in euler.timesteps] == [999, 666, 333, 0]


def test_ddim_and_unipc_settings() -> None:
    for steps in (1, 2, 20):
        for family, config in (("sd1", SD1_CONFIG), ("sd3", SD3_CONFIG)):
            assert torch.isfinite(run_steps(make_scheduler("UniPC", None, config, family)[0], steps)).all()
    ddim, _ = make_scheduler("DDIM", None, SD1_CONFIG, "sd1")
    assert ddim.config.timestep_spacing == "leading" and ddim.config.steps_offset == 1
    assert not ddim.config.clip_sample and not ddim.config.set_alpha_to_one
    ddim.set_timesteps(20)
    assert [int(t) for t in ddim.timesteps[-3:]] == [101, 51, 1]  # range(0, 1000, 50) + 1
    unipc, _ = make_scheduler("UniPC", None, SD1_CONFIG, "sd1")
    assert unipc.config.solver_type == "bh1" and unipc.config.solver_order == 3
    _, notice = make_scheduler("DDIM", "Karras", SD1_CONFIG, "sd1")
    assert notice is not None and "ignores the schedule type" in notice


def test_euler_a_has_no_karras_and_says_so() -> None:
    scheduler, notice = make_scheduler("Euler a", "Karras", SD1_CONFIG, "sd1")
    assert type(scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert notice is not None and "Karras" in notice


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        resolve_sampler("Euler b")
    message = str(error.value)
    assert "Euler b" in message
    for name in ("Euler a", "DPM++ 2M", "DDIM", "UniPC", "LMS", "Heun"):
        assert name in message
    with pytest.raises(ValueError, match="Unknown schedule type"):
        resolve_sampler("Euler", "Sideways")
    with pytest.raises(ValueError, match="no diffusers equivalent"):
        make_scheduler("Euler", "Align Your Steps", SD1_CONFIG, "sd1")
    with pytest.raises(ValueError, match="model family"):
        make_scheduler("Euler", None, SD1_CONFIG, "flux")


def test_lms_without_scipy_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match="pip install scipy"):
        make_scheduler("LMS", None, SD1_CONFIG, "sd1")


def test_lists() -> None:
    names = list_samplers()
    for required in (
        "Euler a",
        "Euler",
        "LMS",
        "Heun",
        "DPM2",
        "DPM2 a",
        "DPM++ 2S a",
        "DPM++ 2M",
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DDIM",
        "UniPC",
        "PLMS",
        "LCM",
    ):
        assert required in names
    assert names[0] == "Euler a"
    for label in ("Automatic", "Uniform", "Karras", "Exponential", "Beta", "SGM Uniform", "Simple"):
        assert label in SCHEDULE_TYPES


def test_foreign_version_strings_are_not_read_as_old_a1111():
    from tagloop.a1111.samplers import is_pre_schedule_type_version, sampler_from_infotext

    assert not is_pre_schedule_type_version("tagloop 0.1.0")
    assert is_pre_schedule_type_version("v1.8.0")
    assert is_pre_schedule_type_version("f0.0.17v1.8.0rc-latest-276-g29be1da7")
    params = {"Sampler": "DPM++ 2M", "Schedule type": "Automatic", "Version": "tagloop 0.1.0"}
    assert sampler_from_infotext(params) == ("DPM++ 2M", "Automatic")
