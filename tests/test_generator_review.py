"""Regression tests for generator bugs found in review (A1111 parity of infotext, samplers, hires, clip skip)."""

from __future__ import annotations

import pytest

from tagloop.a1111.samplers import effective_schedule, make_scheduler
from tagloop.generator.generate import GenerationSettings, settings_from_infotext

SD1_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


@pytest.mark.parametrize(
    "sampler_field, version, schedule",
    [
        ("DPM++ 2M Karras", "v1.8.0", "Karras"),  # pre-1.9 name with the schedule in it
        ("DPM++ 2M", "v1.8.0", "Uniform"),  # pre-1.9 plain DPM++ 2M was not Karras
        ("Euler a", "v1.6.0", "Uniform"),
        ("DPM++ SDE Karras", "v1.7.0", "Karras"),
    ],
)
def test_infotext_from_old_a1111_keeps_its_schedule(sampler_field, version, schedule):
    text = f"1girl\nSteps: 20, Sampler: {sampler_field}, CFG scale: 7, Seed: 1, Size: 512x512, Version: {version}"
    s = settings_from_infotext(text)
    # what the generator builds and writes from these settings
    assert effective_schedule(s.sampler, s.schedule_type, version=s.version) == schedule
    scheduler, _ = make_scheduler(s.sampler, s.schedule_type, SD1_CONFIG, "sd1", version=s.version)
    assert bool(scheduler.config.get("use_karras_sigmas")) == (schedule == "Karras")


def test_schedule_type_without_sampler_is_validated_and_applied():
    from tagloop.generator.generate import SettingsError, check_settings, with_family_defaults

    with pytest.raises(SettingsError, match="Foo"):
        check_settings(GenerationSettings(schedule_type="Foo"), "sd1")
    # A1111 schedule types diffusers cannot reproduce are refused before any model loads
    with pytest.raises(SettingsError, match="KL Optimal"):
        check_settings(GenerationSettings(sampler="Euler", schedule_type="KL Optimal"), "sd1")
    with pytest.raises(SettingsError, match="Align Your Steps"):
        check_settings(
            settings_from_infotext(
                "a\nSteps: 20, Sampler: Euler, Schedule type: Align Your Steps, CFG scale: 7, Seed: 1, Size: 512x512, Version: v1.10.1"
            ),
            "sd1",
        )
    # --schedule-type with the family's default sampler (SD1.5: DPM++ 2M) is honoured, not overridden
    s = with_family_defaults(GenerationSettings(schedule_type="Exponential"), "sd1")
    assert effective_schedule(s.sampler, s.schedule_type) == "Exponential"
    s = with_family_defaults(GenerationSettings(), "sd1")
    assert effective_schedule(s.sampler, s.schedule_type) == "Karras"
