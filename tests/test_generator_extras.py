"""Tiling, inpainting and the model-free upscalers, as A1111 does them, on the tiny SD1 model (CPU)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from tagloop.errors import InputError, TagloopError
from tagloop.generator.generate import GenerationSettings, Generator, SettingsError, settings_from_infotext
from tagloop.generator.inpaint import FILL_MODES, load_mask_image, plan_inpaint
from tagloop.generator.tiling import circular_padding
from tagloop.generator.upscale import UpscaleError, list_upscalers, upscale

FAST = dict(prompt="1girl, solo", steps=2, width=64, height=64, sampler="Euler", seed=7)


@pytest.fixture(scope="module")
def gen(loop_models):
    _, sd = loop_models
    return Generator(sd, device="cpu", progress=False, notice=lambda m: None)


@pytest.fixture(scope="module")
def init_image():
    rng = np.random.default_rng(3)
    base = np.zeros((64, 64, 3), dtype=np.uint8)
    base[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(255, 0, 64, dtype=np.uint8)[:, None]
    base[..., 2] = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    return Image.fromarray(base)


def _mask(size=(64, 64), box=(16, 20, 40, 48)) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _conv_modes(pipe) -> set[str]:
    return {
        layer.padding_mode
        for part in (pipe.unet, pipe.vae, pipe.text_encoder)
        for layer in part.modules()
        if isinstance(layer, torch.nn.Conv2d)
    }


# --- tiling --------------------------------------------------------------------------------------


def test_tiling_changes_the_image_and_leaves_the_pipeline_as_it_was(gen):
    before = gen.generate(GenerationSettings(**FAST))[0]
    pipe = gen.load().pipe
    seen: list[str] = []
    hooks = [
        pipe.unet.conv_in.register_forward_pre_hook(lambda m, a: seen.append(("unet", m.padding_mode))),
        pipe.vae.decoder.conv_in.register_forward_pre_hook(lambda m, a: seen.append(("vae", m.padding_mode))),
    ]
    try:
        tiled = gen.generate(GenerationSettings(**FAST, tiling=True))[0]
    finally:
        for h in hooks:
            h.remove()
    after = gen.generate(GenerationSettings(**FAST))[0]
    assert ("unet", "circular") in seen and ("vae", "circular") in seen
    assert {mode for _, mode in seen} == {"circular"}
    assert np.array_equal(arr(before.image), arr(after.image))  # the cached pipeline is unchanged
    assert not np.array_equal(arr(before.image), arr(tiled.image))
    assert _conv_modes(pipe) == {"zeros"}
    assert "Tiling: True" in tiled.infotext and "Tiling" not in before.infotext
    # A1111 writes Tiling after RNG/Init image hash and before the extra parameters and Version
    line = tiled.infotext.splitlines()[-1]
    assert line.index("Tiling: True") > line.index("Size: 64x64") and line.index("Tiling") < line.index("Version")


def test_tiled_networks_wrap_around_at_the_edges(gen):
    """Seamless: with circular padding, shifting the latent shifts the output the same way, wrapped
    around the edge (the UNet's noise prediction and the VAE's pixels); with zero padding it does not."""
    pipe = gen.load().pipe
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, pipe.text_encoder.config.hidden_size, generator=g)
    f = pipe.vae_scale_factor

    def errors(tiling: bool) -> tuple[float, float]:
        shifted = torch.roll(z, 2, dims=3)
        with torch.no_grad(), circular_padding(pipe, tiling):
            eps = pipe.unet(z, 10, encoder_hidden_states=cond).sample
            eps_s = pipe.unet(shifted, 10, encoder_hidden_states=cond).sample
            img = pipe.vae.decode(z).sample
            img_s = pipe.vae.decode(shifted).sample
        return (
            (eps_s - torch.roll(eps, 2, dims=3)).abs().max().item(),
            (img_s - torch.roll(img, 2 * f, dims=3)).abs().max().item(),
        )

    assert max(errors(True)) < 1e-4
    assert min(errors(False)) > 1e-2
    assert _conv_modes(pipe) == {"zeros"}


def test_tiling_is_undone_after_an_error(gen, monkeypatch):
    pipe = gen.load().pipe

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipe.unet, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        gen.generate(GenerationSettings(**FAST, tiling=True))
    monkeypatch.undo()
    assert _conv_modes(pipe) == {"zeros"}


def test_tiling_covers_lora_convolutions_from_the_first_request(loop_models, tmp_path):
    """A LoRA on convolutions adds layers when it is first applied: they pad circularly too, so the
    first tiled request equals the next one."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    _, sd = loop_models
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in unet.named_modules():
        if name.startswith("down_blocks.0.resnets.0.conv"):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[key + ".lora_down.weight"] = torch.randn(2, module.weight.shape[1], 3, 3, generator=g) * 0.5
            tensors[key + ".lora_up.weight"] = torch.randn(module.weight.shape[0], 2, 1, 1, generator=g) * 0.5
            tensors[key + ".alpha"] = torch.tensor(2.0)
    save_file(tensors, tmp_path / "convstyle.safetensors")
    gen = Generator(sd, device="cpu", progress=False, notice=lambda m: None, lora_dirs=[tmp_path])
    settings = GenerationSettings(**{**FAST, "prompt": "1girl <lora:convstyle:1>"}, tiling=True)
    seen: list[str] = []
    pipe = gen.load().pipe
    hook = pipe.unet.down_blocks[0].register_forward_pre_hook(
        lambda m, a: seen.extend(
            layer.padding_mode for n, layer in m.named_modules() if "lora_A" in n and isinstance(layer, torch.nn.Conv2d)
        )
    )
    try:
        first = gen.generate(settings)[0]
        second = gen.generate(settings)[0]
    finally:
        hook.remove()
    assert seen and set(seen) == {"circular"}
    assert np.array_equal(arr(first.image), arr(second.image))
    assert _conv_modes(pipe) == {"zeros"}


def test_tiling_round_trips_through_the_infotext(gen):
    image = gen.generate(GenerationSettings(**FAST, tiling=True))[0]
    assert settings_from_infotext(image.infotext).tiling is True
    assert settings_from_infotext(image.infotext.replace(", Tiling: True", "")).tiling is False


# --- inpainting ----------------------------------------------------------------------------------


def test_inpaint_keeps_every_pixel_outside_the_mask_and_repaints_inside(gen, init_image):
    mask = _mask()
    inside = np.asarray(mask) > 0
    out = gen.generate(
        GenerationSettings(**FAST, init_image=init_image, mask_image=mask, mask_blur=0, inpaint_full_res=False, inpainting_fill=1)
    )[0]
    a, orig = arr(out.image), arr(init_image)
    assert out.image.size == (64, 64)
    assert np.array_equal(a[~inside], orig[~inside])
    assert (a[inside] != orig[inside]).any(axis=-1).mean() > 0.5
    # blur 0, original content, whole picture: A1111 writes none of its inpainting keys
    for key in ("Mask blur", "Mask mode", "Inpaint area", "Masked content", "Masked area padding"):
        assert key not in out.infotext
    assert "Denoising strength: 0.75" in out.infotext

    inverted = gen.generate(
        GenerationSettings(
            **FAST, init_image=init_image, mask_image=mask, mask_blur=0, inpaint_full_res=False, inpainting_fill=1,
            inpainting_mask_invert=True,
        )
    )[0]  # fmt: skip
    b = arr(inverted.image)
    assert np.array_equal(b[inside], orig[inside])
    assert (b[~inside] != orig[~inside]).any(axis=-1).mean() > 0.5
    assert "Mask mode: Inpaint not masked" in inverted.infotext


def test_a_transparent_png_mask_is_its_alpha(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    rgba.putpixel((2, 3), (0, 0, 0, 200))
    rgba.putpixel((4, 4), (0, 0, 0, 100))
    path = tmp_path / "mask.png"
    rgba.save(path)
    m = np.asarray(load_mask_image(path))
    assert m[3, 2] == 255 and m[4, 4] == 0 and m.sum() == 255  # alpha above 128 counts
    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    assert np.asarray(load_mask_image(grey)).max() == 128  # a grey mask stays soft, as in A1111
    buf = io.BytesIO()
    _mask((8, 8), (0, 0, 4, 4)).save(buf, format="PNG")
    assert np.asarray(load_mask_image(buf.getvalue())).sum() == 16 * 255


def _independent_crop(mask: np.ndarray, pad: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The "only masked" region worked out here from the description (bounding box, padding, aspect)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    x1, y1, x2, y2 = max(xs.min() - pad, 0), max(ys.min() - pad, 0), min(xs.max() + 1 + pad, w), min(ys.max() + 1 + pad, h)
    target = width / height
    if (x2 - x1) / (y2 - y1) > target:
        grow = int((x2 - x1) / target - (y2 - y1))
        lo, hi, limit = y1 - grow // 2, y2 + grow - grow // 2, h
    else:
        grow = int((y2 - y1) * target - (x2 - x1))
        lo, hi, limit = x1 - grow // 2, x2 + grow - grow // 2, w
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    hi = min(hi, limit)
    return (x1, lo, x2, hi) if (x2 - x1) / (y2 - y1) > target else (lo, y1, hi, y2)


@pytest.mark.parametrize("box, pad", [((30, 10, 50, 20), 4), ((0, 0, 10, 40), 8), ((60, 50, 80, 64), 0)])
def test_only_masked_crop_region(box, pad):
    init = Image.new("RGB", (80, 64), (10, 20, 30))
    mask = _mask((80, 64), box)
    plan = plan_inpaint(init, mask, width=64, height=64, mask_blur=0, inpainting_fill=1, full_res=True, padding=pad)
    expected = _independent_crop(np.asarray(mask), pad, 64, 64)
    assert plan.crop == expected
    x1, y1, x2, y2 = expected
    assert plan.paste_to == (x1, y1, x2 - x1, y2 - y1)
    assert plan.image.size == (64, 64) and plan.overlay.size == (80, 64)
    assert plan.params == {"Inpaint area": "Only masked", "Masked area padding": pad}


def test_only_masked_generates_the_crop_and_pastes_it_back(gen):
    rng = np.random.default_rng(5)
    init = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    mask = _mask((80, 48), (50, 10, 66, 30))
    inside = np.asarray(mask) > 0
    out = gen.generate(
        GenerationSettings(
            **{**FAST, "width": 64, "height": 64}, init_image=init, mask_image=mask, mask_blur=0, inpaint_full_res=True,
            inpaint_full_res_padding=6, inpainting_fill=1,
        )
    )[0]  # fmt: skip
    a, orig = arr(out.image), arr(init)
    assert out.image.size == (80, 48)  # the init image's size; the crop was made at 64x64
    assert np.array_equal(a[~inside], orig[~inside])
    assert (a[inside] != orig[inside]).any(axis=-1).mean() > 0.5
    line = out.infotext.splitlines()[-1]
    assert "Size: 64x64" in line and "Inpaint area: Only masked, Masked area padding: 6" in line


def test_a_blank_mask_with_only_masked_is_plain_img2img(gen, init_image):
    said: list[str] = []
    g = Generator(gen.source.path, device="cpu", progress=False, notice=said.append)
    blank = Image.new("L", (64, 64), 0)
    out = g.generate(GenerationSettings(**FAST, init_image=init_image, mask_image=blank, mask_blur=0, inpaint_full_res=True))[0]
    plain = g.generate(GenerationSettings(**FAST, init_image=init_image))[0]
    assert np.array_equal(arr(out.image), arr(plain.image))
    assert any("blank" in m for m in said)
    assert "Inpaint area" not in out.infotext


def test_every_masked_content_mode_runs_and_fill_differs_from_original(gen, init_image):
    mask = _mask()
    inside = np.asarray(mask) > 0
    outs = {}
    for fill in FILL_MODES:
        outs[fill] = gen.generate(
            GenerationSettings(
                **FAST, init_image=init_image, mask_image=mask, mask_blur=2, inpaint_full_res=False, inpainting_fill=fill
            )
        )[0]
        assert outs[fill].image.size == (64, 64)
    assert not np.array_equal(arr(outs[0].image)[inside], arr(outs[1].image)[inside])
    assert not np.array_equal(arr(outs[2].image)[inside], arr(outs[3].image)[inside])
    line = outs[0].infotext.splitlines()[-1]
    assert "Mask blur: 2, Masked content: fill" in line
    assert "Masked content: latent noise" in outs[2].infotext and "Masked content: latent nothing" in outs[3].infotext
    assert "Masked content" not in outs[1].infotext
    # A1111's order: Denoising strength (a known key), then the inpainting keys, then Version
    assert line.index("Denoising strength") < line.index("Mask blur") < line.index("Version")
    # far from the blurred mask the original pixels are kept exactly
    far = np.ones((64, 64), dtype=bool)
    far[8:56, 4:52] = False
    assert np.array_equal(arr(outs[0].image)[far], arr(init_image)[far])


def test_inpainting_settings_round_trip_through_the_infotext(gen, init_image):
    s = GenerationSettings(
        **FAST, init_image=init_image, mask_image=_mask(), mask_blur=3, inpainting_fill=2, inpainting_mask_invert=True,
        inpaint_full_res=True, inpaint_full_res_padding=12,
    )  # fmt: skip
    out = gen.generate(s)[0]
    back = settings_from_infotext(out.infotext)
    assert (back.mask_blur, back.inpainting_fill, back.inpainting_mask_invert) == (3, 2, True)
    assert (back.inpaint_full_res, back.inpaint_full_res_padding) == (True, 12)
    # an infotext that states one inpainting key: the others are A1111's img2img defaults
    whole = settings_from_infotext("a\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, Mask blur: 4")
    assert (whole.inpaint_full_res, whole.inpaint_full_res_padding, whole.inpainting_fill) == (False, 32, 1)
    # one that states none leaves the settings as they were
    plain = settings_from_infotext("a\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64")
    assert (plain.mask_blur, plain.inpainting_fill, plain.inpaint_full_res) == (4, 0, True)


def test_a_mask_of_another_size_is_stretched_over_the_image(gen, init_image):
    small = _mask((32, 32), (8, 10, 20, 24))
    out = gen.generate(
        GenerationSettings(
            **FAST, init_image=init_image, mask_image=small, mask_blur=0, inpaint_full_res=False, inpainting_fill=1
        )
    )[0]
    stretched = np.asarray(small.resize((64, 64), Image.Resampling.LANCZOS))
    keep = stretched == 0
    assert np.array_equal(arr(out.image)[keep], arr(init_image)[keep])
    assert (arr(out.image)[stretched > 200] != arr(init_image)[stretched > 200]).any()


def test_bad_inpainting_input_is_one_clear_error(gen, init_image, tmp_path):
    not_image = tmp_path / "mask.png"
    not_image.write_text("not an image")
    with pytest.raises(SettingsError, match="`mask_image`.*not an image"):
        gen.prepare(GenerationSettings(**FAST, init_image=init_image, mask_image=not_image))
    with pytest.raises(SettingsError, match="`mask_image`.*does not exist"):
        gen.prepare(GenerationSettings(**FAST, init_image=init_image, mask_image=tmp_path / "missing.png"))
    with pytest.raises(SettingsError, match="`mask_image` inpaints an `init_image`"):
        gen.prepare(GenerationSettings(**FAST, mask_image=_mask()))
    for field, value, words in (
        ("inpainting_fill", 4, "`inpainting_fill` must be 0"),
        ("mask_blur", -1, "`mask_blur` must be"),
        ("inpaint_full_res_padding", -3, "`inpaint_full_res_padding` must be"),
        ("tiling", "yes", "`tiling` must be"),
    ):
        with pytest.raises(SettingsError, match=words):
            gen.prepare(GenerationSettings(**FAST, init_image=init_image, mask_image=_mask(), **{field: value}))
    with pytest.raises(SettingsError, match="`mask_image` must be"):
        gen.prepare(GenerationSettings(**FAST, init_image=init_image, mask_image=12))


def test_the_mask_file_is_an_input_no_output_may_replace(gen, init_image, tmp_path):
    mask_path = tmp_path / "mask.png"
    _mask().save(mask_path)
    s = GenerationSettings(**FAST, init_image=init_image, mask_image=mask_path)
    assert mask_path in gen._input_files(s, [])


@pytest.fixture(scope="module")
def sd3_16(tmp_path_factory):
    """A tiny SD3 with 16 latent channels, as real SD3 models have (the shared tiny one has 4)."""
    from tagloop.testing import diffusion as tiny

    root = tmp_path_factory.mktemp("sd3_16")
    pipe = tiny.build_tiny_pipeline("sd3", 0, work_dir=root / "work", sd3_transformer=dict(in_channels=16, out_channels=16))
    torch.manual_seed(5)
    pipe.register_modules(vae=tiny._tiny_vae(latent_channels=16, sd3=True))
    pipe.save_pretrained(root / "model")
    return root / "model"


def test_sd3_inpaints_too(sd3_16, init_image):
    g = Generator(sd3_16, device="cpu", progress=False, notice=lambda m: None)
    mask = _mask()
    inside = np.asarray(mask) > 0
    for full_res in (False, True):
        out = g.generate(
            GenerationSettings(
                prompt="1girl", steps=2, width=64, height=64, seed=1, init_image=init_image, mask_image=mask, mask_blur=0,
                inpaint_full_res=full_res, inpainting_fill=2,
            )
        )[0]  # fmt: skip
        a, orig = arr(out.image), arr(init_image)
        assert np.array_equal(a[~inside], orig[~inside])
        assert (a[inside] != orig[inside]).any(axis=-1).mean() > 0.5


def test_an_inpainting_checkpoint_is_refused_clearly():
    from types import SimpleNamespace as NS

    from tagloop.generator.inpaint import _check_channels

    nine = NS(unet=NS(config=NS(in_channels=9)), vae=NS(config=NS(latent_channels=4)))
    with pytest.raises(SettingsError, match="an inpainting model"):
        _check_channels(nine)
    _check_channels(NS(unet=NS(config=NS(in_channels=4)), vae=NS(config=NS(latent_channels=4))))


# --- upscalers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(11)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def test_upscaler_pixels_are_pillows_resize(picture):
    lanczos, nearest = Image.Resampling.LANCZOS, Image.Resampling.NEAREST
    out = upscale(picture, scale=2, upscaler="Lanczos")
    assert out.size == (128, 96) and np.array_equal(np.asarray(out), np.asarray(picture.resize((128, 96), lanczos)))
    out = upscale(picture, scale=3, upscaler="Nearest")
    assert out.size == (192, 144) and np.array_equal(np.asarray(out), np.asarray(picture.resize((192, 144), nearest)))
    # sides that are not multiples of 8: the filter's size, then Lanczos down to the multiple of 8
    out = upscale(picture, scale=1.5, upscaler="Nearest")
    ref = picture.resize((96, 72), nearest).resize((96, 72 // 8 * 8), lanczos)
    assert out.size == (96, 72) and np.array_equal(np.asarray(out), np.asarray(ref))
    odd = picture.crop((0, 0, 50, 37))
    out = upscale(odd, scale=2, upscaler="Nearest")
    ref = odd.resize((100, 74), nearest).resize((96, 72), lanczos)
    assert out.size == (96, 72) and np.array_equal(np.asarray(out), np.asarray(ref))
    assert out.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"


def test_upscale_to_a_size_with_and_without_crop(picture):
    lanczos = Image.Resampling.LANCZOS
    out = upscale(picture, width=160, height=160, crop=True)
    factor = max(160 / 64, 160 / 48)  # A1111 scales by the larger ratio, then centres on the canvas
    big = picture.resize((int(64 * factor), int(48 * factor)), lanczos).resize((int(64 * factor) // 8 * 8, 160), lanczos)
    canvas = Image.new("RGB", (160, 160))
    canvas.paste(big, (80 - big.width // 2, 80 - big.height // 2))
    assert out.size == (160, 160) and np.array_equal(np.asarray(out), np.asarray(canvas))
    assert out.info["postprocessing"] == (
        "Postprocess upscale to: 160x160, Postprocess crop to: 160x160, Postprocess upscaler: Lanczos"
    )
    free = upscale(picture, width=160, height=160, crop=False)
    assert free.size == big.size
    assert "crop" not in free.info["postprocessing"]


def test_second_upscaler_is_blended(picture):
    first = upscale(picture, scale=2, upscaler="Lanczos")
    second = upscale(picture, scale=2, upscaler="Nearest")
    both = upscale(picture, scale=2, upscaler="Lanczos", upscaler_2="Nearest", upscaler_2_visibility=0.25)
    assert np.array_equal(np.asarray(both), np.asarray(Image.blend(first, second, 0.25)))
    assert both.info["postprocessing"].endswith("Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest")
    assert "upscaler 2" not in upscale(picture, scale=2, upscaler_2="Nearest", upscaler_2_visibility=0).info["postprocessing"]


def test_upscaler_none_leaves_the_image_and_the_text_is_kept(picture):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "1girl\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x48")
    buf = io.BytesIO()
    picture.save(buf, format="PNG", pnginfo=info)
    src = Image.open(io.BytesIO(buf.getvalue()))
    same = upscale(src, scale=2, upscaler="None")
    assert same.size == picture.size and np.array_equal(np.asarray(same), np.asarray(picture))
    assert same.info["postprocessing"] == ""
    up = upscale(src, scale=2)
    assert up.info["parameters"].startswith("1girl")


def test_list_upscalers_is_shaped_as_a1111s():
    listing = list_upscalers()
    assert [u["name"] for u in listing] == ["None", "Lanczos", "Nearest"]
    assert all(set(u) == {"name", "model_name", "model_path", "model_url", "scale"} for u in listing)
    assert listing[1] == {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4}


def test_bad_upscale_requests_are_clear_errors(picture):
    with pytest.raises(InputError, match="'R-ESRGAN 4x\\+'.*None, Lanczos, Nearest"):
        upscale(picture, upscaler="R-ESRGAN 4x+")
    with pytest.raises(UpscaleError, match="`upscaler_2` 'SwinIR_4x'"):
        upscale(picture, upscaler_2="SwinIR_4x", upscaler_2_visibility=0.5)
    with pytest.raises(UpscaleError, match="over `max_pixels`"):
        upscale(picture, scale=400)
    with pytest.raises(UpscaleError, match="over `max_pixels` 1,000"):
        upscale(picture, scale=2, max_pixels=1000)
    with pytest.raises(UpscaleError, match="`scale` must be a number above 0"):
        upscale(picture, scale=0)
    with pytest.raises(UpscaleError, match="both `width` and `height`"):
        upscale(picture, width=128)
    with pytest.raises(UpscaleError, match="`upscaler_2_visibility` must be between 0 and 1"):
        upscale(picture, upscaler_2="Nearest", upscaler_2_visibility=2)
    with pytest.raises(UpscaleError, match="gives 0x0"):
        upscale(picture.crop((0, 0, 3, 3)), scale=2)
    assert issubclass(UpscaleError, TagloopError)


# --- the command line ----------------------------------------------------------------------------


def test_generate_command_inpaints_and_tiles(loop_models, init_image, tmp_path):
    from tagloop.cli import main

    _, sd = loop_models
    init_path, mask_path, out = tmp_path / "init.png", tmp_path / "mask.png", tmp_path / "out"
    init_image.save(init_path)
    _mask().save(mask_path)
    args = ["generate", "--model", str(sd), "--prompt", "1girl", "--steps", "2", "--size", "64x64", "--sampler", "Euler"]
    args += ["--seed", "3", "--device", "cpu", "-q", "--out", str(out), "--format", "json"]
    r = CliRunner().invoke(
        main,
        args + ["--init-image", str(init_path), "--mask", str(mask_path), "--mask-blur", "0", "--inpainting-fill", "latent-noise"]
        + ["--inpaint-area", "masked", "--inpaint-padding", "8", "--tiling"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout.strip().splitlines()[-1])
    text = record["infotext"]
    assert "Tiling: True" in text and "Masked content: latent noise" in text
    assert "Inpaint area: Only masked, Masked area padding: 8" in text and "Mask blur" not in text
    written = Image.open(record["path"])
    inside = np.asarray(_mask()) > 0
    assert np.array_equal(arr(written.convert("RGB"))[~inside], arr(init_image)[~inside])

    # the defaults are A1111's img2img tab's: whole picture, original content, blur 4
    r = CliRunner().invoke(main, args + ["--init-image", str(init_path), "--mask", str(mask_path)])
    assert r.exit_code == 0, r.output
    text = json.loads(r.stdout.strip().splitlines()[-1])["infotext"]
    assert "Mask blur: 4" in text and "Inpaint area" not in text and "Masked content" not in text

    r = CliRunner().invoke(main, args + ["--mask", str(mask_path)])
    assert r.exit_code == 2 and "(--mask)" in r.output and "(--init-image)" in r.output
    r = CliRunner().invoke(main, args + ["--init-image", str(init_path), "--mask", str(tmp_path / "nope.png")])
    assert r.exit_code == 2 and "`mask_image` (--mask)" in r.output and "does not exist" in r.output


def test_upscale_command(tmp_path, picture):
    from tagloop.cli import main

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "1girl\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x48")
    src = tmp_path / "a.png"
    picture.save(src, pnginfo=info)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "big"
    r = CliRunner().invoke(main, ["upscale", str(src), str(tmp_path / "broken.png"), "--scale", "2", "--out", str(out)])
    assert r.exit_code == 1, r.output  # the broken input is named, the other one is written
    assert "broken.png" in r.stderr
    written = Image.open(out / "a.png")
    assert written.size == (128, 96)
    assert written.info["parameters"].startswith("1girl")
    assert written.info["postprocessing"] == written.info["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert np.array_equal(np.asarray(written), np.asarray(picture.resize((128, 96), Image.Resampling.LANCZOS)))

    r = CliRunner().invoke(main, ["upscale", str(src), "--size", "96x96", "--upscaler", "nearest", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out / "a.png").info["postprocessing"].startswith("Postprocess upscale to: 96x96, Postprocess crop to")

    r = CliRunner().invoke(main, ["upscale", str(src), "--out", str(tmp_path)])  # tmp_path/a.png is the input
    assert r.exit_code == 2 and "is an input" in r.output
    assert Image.open(src).size == (64, 48)
    r = CliRunner().invoke(main, ["upscale", str(src), "--upscaler", "R-ESRGAN 4x+", "--out", str(out)])
    assert r.exit_code == 2 and "`upscaler` (--upscaler) 'R-ESRGAN 4x+'" in r.output
    r = CliRunner().invoke(main, ["upscale", str(src), "--scale", "2", "--size", "64x64"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["upscale", "--list-upscalers"])
    assert r.exit_code == 0 and [json.loads(x)["name"] for x in r.stdout.splitlines()] == ["None", "Lanczos", "Nearest"]
