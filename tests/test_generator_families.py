"""Generator on tiny SDXL and SD3 models, img2img and hires fix, and the packaged full-size configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagloop.generator.generate import FAMILY_DEFAULTS, GenerationSettings, Generator, with_family_defaults
from tagloop.generator.models import GeneratorError, cache_clear, packaged_config_dir, resolve_dtype, resolve_model
from tagloop.testing import diffusion as tiny

FAST = dict(steps=2, width=64, height=64)


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {}
    for fam in ("sd1", "sdxl", "sd3"):
        pipe = tiny.save_tiny_diffusers(fam, root / fam)
        out[fam] = root / fam
        if fam == "sdxl":
            tiny.write_config_folder(pipe, root / "sdxl-config")
            out["sdxl-file"] = tiny.save_tiny_single_file(pipe, "sdxl", root / "sdxl_tiny.safetensors")
    yield out
    cache_clear()


def gen(path, **kw) -> Generator:
    kw.setdefault("notice", lambda m: None)
    return Generator(path, device="cpu", progress=False, **kw)


def test_sdxl_single_file_matches_folder_and_uses_sdxl_defaults(models):
    g_dir = gen(models["sdxl"])
    g_file = gen(models["sdxl-file"], config=models["sdxl"].parent / "sdxl-config")
    assert g_dir.family == g_file.family == "sdxl"
    s = GenerationSettings(prompt="1girl, (red eyes:1.3)", negative_prompt="lowres", seed=5, **FAST)
    a, b = g_dir.generate(s)[0], g_file.generate(s)[0]
    assert np.array_equal(arr(a.image), arr(b.image))
    assert "Sampler: Euler a" in a.infotext and "Steps: 2" in a.infotext
    d = with_family_defaults(GenerationSettings(), "sdxl")
    assert (d.sampler, d.steps, d.cfg_scale, d.width, d.height) == ("Euler a", 30, 7.0, 1024, 1024)


def test_sdxl_seed_reproducible_and_prompt_matters(models):
    g = gen(models["sdxl"])
    s = GenerationSettings(prompt="cat", seed=9, **FAST)
    x, y = g.generate(s)[0], g.generate(s)[0]
    z = g.generate(GenerationSettings(prompt="a very different prompt, dog", seed=9, **FAST))[0]
    assert np.array_equal(arr(x.image), arr(y.image)) and not np.array_equal(arr(x.image), arr(z.image))


def test_sd3_runs_with_flow_euler_and_maps_other_samplers_with_a_notice(models):
    said = []
    g = gen(models["sd3"], notice=said.append)
    assert g.family == "sd3"
    d = with_family_defaults(GenerationSettings(), "sd3")
    assert (d.sampler, d.steps, d.cfg_scale, d.width) == ("Euler", 30, 7.0, 1024)
    a = g.generate(GenerationSettings(prompt="1girl, (smile:1.2)", seed=3, **FAST))[0]
    b = g.generate(GenerationSettings(prompt="1girl, (smile:1.2)", seed=3, **FAST))[0]
    assert np.array_equal(arr(a.image), arr(b.image)) and arr(a.image).std() > 0
    assert said == ["SD3 runs without its T5 text encoder (the folder has none); prompts use CLIP-L/CLIP-G only."]
    g.generate(GenerationSettings(prompt="cat", seed=3, sampler="Euler a", **FAST))
    assert len(said) == 2 and "Euler a" in said[1]


def test_img2img_keeps_size_and_records_denoise(models, tmp_path):
    from PIL import Image

    src = Image.fromarray((np.random.default_rng(0).random((80, 72, 3)) * 255).astype("uint8"))
    g = gen(models["sd1"])
    s = GenerationSettings(prompt="cat", seed=2, steps=4, init_image=src, denoising_strength=0.5, sampler="Euler")
    im = g.generate(s)[0]
    assert im.image.size == (72, 80)  # init image size when --size is not given
    assert "Denoising strength: 0.5" in im.infotext
    weak = g.generate(
        GenerationSettings(prompt="cat", seed=2, steps=4, init_image=src, denoising_strength=0.25, sampler="Euler")
    )[0]
    strong = g.generate(
        GenerationSettings(prompt="cat", seed=2, steps=4, init_image=src, denoising_strength=1.0, sampler="Euler")
    )[0]
    diff = lambda x: np.abs(arr(x.image) - arr(src)).mean()  # noqa: E731
    assert diff(weak) < diff(strong)


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_fix_second_pass(models, upscaler):
    g = gen(models["sd1"])
    s = GenerationSettings(
        prompt="cat", seed=4, hires_scale=1.25, hires_steps=2, hires_denoise=0.5, hires_upscaler=upscaler, sampler="Euler", **FAST
    )
    im = g.generate(s)[0]
    assert im.image.size == (80, 80)
    for words in (
        "Size: 64x64",
        "Denoising strength: 0.5",
        "Hires upscale: 1.25",
        "Hires steps: 2",
        f"Hires upscaler: {'Latent' if upscaler == 'latent' else 'Lanczos'}",
    ):
        assert words in im.infotext
    assert np.array_equal(arr(im.image), arr(g.generate(s)[0].image))


def test_sdxl_hires_latent(models):
    im = gen(models["sdxl"]).generate(GenerationSettings(prompt="cat", seed=1, hires_scale=1.5, hires_steps=1, **FAST))[0]
    assert im.image.size == (96, 96)


def test_dtype_rules_on_cpu(models):
    src = resolve_model(models["sd1"])
    assert resolve_dtype("auto", "cpu", src) == ("fp32", None)
    assert resolve_dtype("auto", "cuda", src) == ("fp16", None)
    assert resolve_dtype("auto", "cuda", resolve_model(models["sd3"])) == ("bf16", None)
    for bad in ("fp8", "fp16"):
        with pytest.raises(GeneratorError, match="CUDA"):
            resolve_dtype(bad, "cpu", src)


def test_packaged_configs_are_the_published_architectures():
    """Full-size configs instantiate (meta device) with the published parameter counts; CLIP vocab from the BPE list."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    sd1 = packaged_config_dir("sd1")
    tok = CLIPTokenizer.from_pretrained(sd1 / "tokenizer")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    sdxl = packaged_config_dir("sdxl")
    assert CLIPTokenizer.from_pretrained(sdxl / "tokenizer_2").pad_token_id == 0  # "!" as in SDXL's tokenizer_2
    with init_empty_weights():
        assert count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd1 / "unet"))) == 859_520_964
        assert count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sdxl / "unet"))) == 2_567_463_684
        assert count(AutoencoderKL.from_config(AutoencoderKL.load_config(sd1 / "vae"))) == 83_653_863
        assert count(CLIPTextModel(CLIPTextConfig.from_pretrained(sd1 / "text_encoder"))) == 123_060_480
        assert count(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(sdxl / "text_encoder_2"))) == 694_659_840
        for variant, n in (("medium", 2_243_171_520), ("large", 8_056_627_520)):
            d = packaged_config_dir("sd3", variant)
            assert count(SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(d / "transformer"))) == n


def test_family_defaults_follow_the_seeds():
    assert FAMILY_DEFAULTS["sd1"].sampler == "DPM++ 2M Karras" and FAMILY_DEFAULTS["sd1"].steps == 20
    assert (FAMILY_DEFAULTS["sd1"].width, FAMILY_DEFAULTS["sdxl"].width, FAMILY_DEFAULTS["sd3"].width) == (512, 1024, 1024)
    assert torch.cuda.OutOfMemoryError is not None


def _denoiser_calls(g: Generator, s: GenerationSettings) -> int:
    loaded = g.load()
    calls = []
    handle = loaded.denoiser.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        g.generate(s)
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("family", ["sd1", "sd3"])
@pytest.mark.parametrize(
    "steps, hires_steps, denoise, second_pass",
    [
        (2, 0, 0.5, 2),  # A1111: Hires steps 0 = as many steps as the first pass, on a stretched schedule
        (2, 3, 0.7, 3),  # exactly Hires steps (int(3/0.7)=4 steps scheduled, int(4*0.7) would run 2)
        (3, 2, 0.35, 2),
    ],
)
def test_hires_second_pass_runs_a1111_step_count(models, family, steps, hires_steps, denoise, second_pass):
    g = gen(models[family])
    s = GenerationSettings(
        prompt="cat",
        seed=1,
        steps=steps,
        width=64,
        height=64,
        sampler="Euler",
        hires_scale=1.25,
        hires_steps=hires_steps,
        hires_denoise=denoise,
    )
    assert _denoiser_calls(g, s) == steps + second_pass


@pytest.mark.parametrize("family", ["sd1", "sd3"])
@pytest.mark.parametrize("steps, denoise, runs", [(4, 0.5, 3), (4, 1.0, 4), (5, 0.3, 2), (10, 0.75, 8)])
def test_img2img_runs_a1111_step_count(models, family, steps, denoise, runs):
    from PIL import Image

    # A1111 (img2img_fix_steps off): int(min(denoise, 0.999) * steps) + 1 steps of a `steps` schedule
    g = gen(models[family])
    s = GenerationSettings(
        prompt="cat",
        seed=1,
        steps=steps,
        width=64,
        height=64,
        sampler="Euler",
        init_image=Image.new("RGB", (64, 64), "gray"),
        denoising_strength=denoise,
    )
    assert _denoiser_calls(g, s) == runs


def test_sdxl_clip_skip_is_ignored_as_a1111_does(models):
    # A1111 encodes SDXL with both encoders' penultimate layer whatever "Clip skip" says (Pony and
    # Illustrious infotexts often carry "Clip skip: 2"), so such an infotext must give the same image.
    said: list[str] = []
    g = gen(models["sdxl"], notice=said.append)
    one = g.generate(GenerationSettings(prompt="1girl, smile", seed=3, clip_skip=1, **FAST))[0]
    two = g.generate(GenerationSettings(prompt="1girl, smile", seed=3, clip_skip=2, **FAST))[0]
    assert np.array_equal(arr(one.image), arr(two.image))
    assert "Clip skip: 2" in two.infotext
    assert any("Clip skip" in m and "SDXL" in m for m in said)


def test_quiet_means_no_progress_bars_from_the_second_pass(models, capfd):
    from tagloop.generator.models import cache_clear as clear

    clear()  # the load itself must be quiet too
    g = gen(models["sd1"])
    g.generate(GenerationSettings(prompt="cat", seed=1, hires_scale=1.25, hires_steps=1, sampler="Euler", **FAST))
    err = capfd.readouterr().err
    assert "it/s" not in err and "s/it" not in err, err
