"""What a new user of `tagloop generate` meets first: a mistyped --infotext file, outputs that could land
on inputs, a LoRA without a folder, a checkpoint and config that do not fit, a GPU torch cannot use,
and -q that must mean quiet."""

from __future__ import annotations

import logging

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tagloop.cli.generate import generate_command
from tagloop.errors import GPUUnavailableError, ModelFileError, OutputPathError
from tagloop.generator.generate import GenerationSettings, Generator, SettingsError, settings_from_infotext
from tagloop.generator.models import cache_clear
from tagloop.testing import diffusion as tiny

FAST = ["--steps", "2", "--size", "64x64", "--device", "cpu"]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """A tiny SD1 checkpoint (A1111 single file) with the config folder it fits, and an SDXL config folder."""
    root = tmp_path_factory.mktemp("newuser")
    pipe = tiny.build_tiny_pipeline("sd1")
    tiny.write_config_folder(pipe, root / "config")
    ckpt = tiny.save_tiny_single_file(pipe, "sd1", root / "tinyanime_v1.safetensors")
    tiny.write_config_folder(tiny.build_tiny_pipeline("sdxl"), root / "sdxl-config")
    yield {"ckpt": ckpt, "config": root / "config", "sdxl_config": root / "sdxl-config"}
    cache_clear()


def _run(args):
    return CliRunner().invoke(generate_command, [str(a) for a in args])


def _base(sd1, out):
    return ["--model", sd1["ckpt"], "--config-dir", sd1["config"], "--out", out, "-q", *FAST]


def _empty(folder) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# --- 1. --infotext with a file name that is not there --------------------------------------------


@pytest.mark.parametrize("value", ["nothere.png", "shots/00012-2607380765.jpg", "prompt.txt", "outputs/00012"])
def test_a_missing_infotext_file_is_an_error_not_a_prompt(sd1, tmp_path, value):
    res = _run(_base(sd1, tmp_path / "out") + ["--infotext", value])
    assert res.exit_code == 2, res.output
    assert value in res.output and "no such file" in res.output and "--infotext" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert _empty(tmp_path / "out")
    with pytest.raises(SettingsError, match="no such file"):
        settings_from_infotext(value)


def test_literal_infotext_is_still_accepted(tmp_path):
    s = settings_from_infotext("1girl, smile\nNegative prompt: lowres\nSteps: 2, Sampler: Euler, Seed: 3, Size: 64x64")
    assert (s.prompt, s.negative_prompt, s.steps, s.seed, s.infotext_file) == ("1girl, smile", "lowres", 2, 3, None)
    assert settings_from_infotext("Steps: 2, Sampler: Euler, Seed: 4, Size: 64x64").seed == 4  # a parameter line alone
    assert settings_from_infotext("1girl, black/white hair").prompt == "1girl, black/white hair"  # a prompt, not a path
    assert settings_from_infotext("masterpiece, 1girl").prompt == "masterpiece, 1girl"
    with pytest.raises(SettingsError, match="is a folder"):
        settings_from_infotext(str(tmp_path))
    f = tmp_path / "params.txt"
    f.write_text("cat\nSteps: 2, Sampler: Euler, Seed: 5, Size: 64x64\n", encoding="utf-8")
    s = settings_from_infotext(str(f))
    assert s.seed == 5 and s.infotext_file == f


# --- 2. outputs are planned before any work and never written over an input --------------------


def test_output_paths_are_planned_before_any_work_and_written_as_planned(sd1, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00003-1.png").write_bytes(b"someone else's image")
    g = Generator(sd1["ckpt"], config=sd1["config"], device="cpu", progress=False, notice=lambda m: None)
    s = GenerationSettings(prompt="cat", seed=7, batch_size=2, steps=2, width=64, height=64, out_dir=out)
    planned = [job.path for job in g.prepare(s)[1]]
    assert planned == [out / "00004-7.png", out / "00005-8.png"]
    assert g._loaded is None  # planned without loading the model
    assert [im.path for im in g.generate(s)] == planned
    assert (out / "00003-1.png").read_bytes() == b"someone else's image"


@pytest.mark.parametrize("option", ["--init-image", "--infotext"])
def test_an_output_that_would_overwrite_an_input_is_refused_before_any_work(sd1, tmp_path, monkeypatch, option):
    """The namer skips taken names; should an output path ever be an input all the same (here a namer
    made to return the input), the run is refused before any model loads and the input is untouched."""
    import tagloop.a1111.infotext as infotext
    import tagloop.generator.generate as generate

    out = tmp_path / "out"
    out.mkdir()
    source = out / "00000-5.png"
    infotext.save_png(Image.new("RGB", (64, 64), "gray"), source, "cat\nSteps: 2, Sampler: Euler, Seed: 5, Size: 64x64")
    before = source.read_bytes()
    monkeypatch.setattr(infotext, "next_image_path", lambda out_dir, seed, ext="png", **kw: source)

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded although an output is an input")

    monkeypatch.setattr(generate, "load_model", no_load)
    args = _base(sd1, out) + ["--seed", "5", option, source] + (["--prompt", "cat"] if option == "--init-image" else [])
    res = _run(args)
    assert res.exit_code == 2, res.output
    assert "is an input of this run" in res.output and "00000-5.png" in res.output and "--out" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert source.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["00000-5.png"]

    # the same from Python: the library raises OutputPathError naming the setting
    g = Generator(sd1["ckpt"], config=sd1["config"], device="cpu", progress=False, notice=lambda m: None)
    s = settings_from_infotext(source) if option == "--infotext" else GenerationSettings(prompt="cat", init_image=source)
    with pytest.raises(OutputPathError, match="`out_dir`"):
        g.generate(s, seed=5, steps=2, width=64, height=64, out_dir=out)


def test_an_output_folder_that_is_a_file_is_refused(sd1, tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"x")
    g = Generator(sd1["ckpt"], config=sd1["config"], device="cpu", progress=False, notice=lambda m: None)
    with pytest.raises(OutputPathError, match="is a file"):
        g.prepare(GenerationSettings(prompt="cat", out_dir=target))


# --- 3. messages in plain words -----------------------------------------------------------------


def test_a_lora_without_a_lora_folder_says_so(sd1, tmp_path):
    res = _run(_base(sd1, tmp_path / "out") + ["--prompt", "1girl <lora:myStyle:0.8>"])
    assert res.exit_code == 2, res.output
    assert "no LoRA folder is set" in res.output and "--lora-dir" in res.output and "--a1111-dir" in res.output
    assert "myStyle" in res.output and "is not in no" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_checkpoint_that_does_not_fit_its_config_is_named_with_family_and_config(sd1, tmp_path):
    # the tiny SD1 file against tagloop's packaged (full-size) SD1.5 config: every shape differs
    res = _run(["--model", sd1["ckpt"], "--prompt", "cat", "--out", tmp_path / "out", "-q", *FAST])
    assert res.exit_code == 2, res.output
    text = res.output
    assert "does not fit" in text and "SD1.x" in text and "sd15" in text and "tinyanime_v1.safetensors" in text
    assert "ignore_mismatched_sizes" not in text and "low_cpu_mem_usage" not in text
    assert len(text.strip().splitlines()) == 1
    # a config folder of another family is refused before any weights load
    res = _run(
        ["--model", sd1["ckpt"], "--config-dir", sd1["sdxl_config"], "--prompt", "cat", "--out", tmp_path / "o2", "-q", *FAST]
    )
    assert res.exit_code == 2, res.output
    assert "SDXL" in res.output and "SD1.x" in res.output and "--config-dir" in res.output
    with pytest.raises(ModelFileError, match="SDXL pipeline"):
        Generator(sd1["ckpt"], config=sd1["sdxl_config"], device="cpu")


def test_load_errors_are_translated_whatever_diffusers_says():
    from pathlib import Path

    from tagloop.generator.models import LoadOptions, ModelSource, _load_error

    src = ModelSource("single_file", "sdxl", "m", path=Path("m.safetensors"))
    mismatch = ValueError(
        "Cannot load  because conv_in.weight expected shape torch.Size([320, 4, 3, 3]), but got torch.Size([32, 4, 3, 3]). "
        "If you want to instead overwrite randomly initialized weights, please make sure to pass both "
        "`low_cpu_mem_usage=False` and `ignore_mismatched_sizes=True`."
    )
    msg = str(_load_error(src, LoadOptions(config=Path("cfg")), Path("cfg"), mismatch))
    assert "an SDXL checkpoint" in msg and "the config folder cfg" in msg and "[32, 4, 3, 3]" in msg
    assert "ignore_mismatched_sizes" not in msg
    msg = str(_load_error(src, LoadOptions(), None, KeyError("label_emb.0.0.weight")))
    assert "packaged sdxl-base config" in msg and "label_emb.0.0.weight" in msg


def test_no_gpu_says_what_torch_shows(monkeypatch):
    from tagloop.generator.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(GPUUnavailableError) as info:
        resolve_device("cuda")
    assert "CUDA 12.4 build" in str(info.value) and "0 GPU" in str(info.value)
    assert "install a CUDA build" not in str(info.value)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(GPUUnavailableError, match="CPU-only build"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


# --- 4. -q is quiet; without it a repeated library warning is said once ---------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_records():
    logger = logging.getLogger("diffusers")
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_quiet_silences_diffusers_for_the_call_and_restores_it(sd1, tmp_path, capfd, diffusers_records):
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    before = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    cache_clear()  # the load is where diffusers talks
    res = _run(_base(sd1, tmp_path / "out") + ["--prompt", "cat", "--hires-scale", "1.25", "--hires-steps", "1"])
    assert res.exit_code == 0, res.output
    err = capfd.readouterr().err + res.stderr
    assert not [m for m in diffusers_records if "float32" in m], diffusers_records
    assert "kept in float32" not in err and "Loading pipeline components" not in err and "it/s" not in err, err
    assert (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()) == before


def test_without_quiet_a_repeated_library_warning_is_said_once(sd1, diffusers_records):
    s = GenerationSettings(prompt="cat", seed=1, steps=1, width=64, height=64)
    for _ in range(2):  # two loads, each of which casts the UNet and the VAE
        cache_clear()
        Generator(sd1["ckpt"], config=sd1["config"], device="cpu", progress=False, quiet=False, notice=lambda m: None).generate(s)
    said = [m for m in diffusers_records if "should be kept in float32" in m]
    assert len(said) <= 1, said
    cache_clear()
