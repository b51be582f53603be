"""ControlNet (tagloop.generator.control), the structure score, the CLI, reproduce and the server, on tiny models."""

import base64
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagloop.errors import ModelFileError, ModelNotFoundError
from tagloop.generator.control import ControlUnit, units_from_infotext
from tagloop.generator.generate import Generator
from tagloop.generator.settings import SettingsError, settings_from_infotext

BASE = dict(prompt="a cat", seed=1, steps=2, width=64, height=64, sampler="Euler")


def _pattern(seed=0, size=64):
    rng = np.random.RandomState(seed)
    arr = np.zeros((size, size, 3), np.uint8)
    for _ in range(6):
        x, y = rng.randint(0, size - 16, 2)
        arr[y : y + rng.randint(6, 16), x : x + rng.randint(6, 16)] = rng.randint(60, 255, 3)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def control_models(tmp_path_factory):
    """Tiny SD1 folder, its ControlNet (folder, original-layout file, .pth), a tiny SDXL ControlNet and a control image."""
    from tagloop.testing import build_tiny_pipeline, save_tiny_controlnet, save_tiny_diffusers

    root = tmp_path_factory.mktemp("control")
    pipe = save_tiny_diffusers("sd1", root / "sd")
    nets = root / "models" / "ControlNet"
    save_tiny_controlnet(pipe.unet, folder=root / "cn_folder", file=nets / "control_tiny_canny.safetensors", seed=1)
    save_tiny_controlnet(pipe.unet, file=root / "cn.pth", seed=1)
    xl = build_tiny_pipeline("sdxl", 0, work_dir=root / "xlwork")
    save_tiny_controlnet(xl.unet, file=root / "xl_cn.safetensors", seed=2)
    _pattern().save(root / "src.png")
    return root


def _arr(im):
    return np.asarray(im.convert("RGB")).astype(int)


def _gen(root, **kw):
    return Generator(root / "sd", device="cpu", progress=False, a1111_dir=root, **kw)


def test_weight_and_window_reach_the_pipeline(control_models):
    root = control_models
    gen = _gen(root)
    plain = _arr(gen.generate(**BASE)[0].image)

    def run(**u):
        unit = ControlUnit(image=root / "src.png", model="control_tiny_canny", **u)
        return _arr(gen.generate(**BASE, control=[unit])[0].image)

    assert np.abs(run(weight=0.0) - plain).max() <= 1  # weight 0: the ControlNet adds nothing
    full = run()
    assert np.abs(full - plain).max() > 10  # weight 1 changes the image
    assert np.abs(run(guidance_end=0.0) - plain).max() == 0  # an empty window: no control
    late = run(guidance_start=0.5)
    assert np.abs(late - full).max() > 0 and np.abs(late - plain).max() > 0
    # the folder, the original-layout file and the .pth (with allow_pickle) are the same ControlNet
    folder = _arr(gen.generate(**BASE, control=[ControlUnit(image=root / "src.png", model=root / "cn_folder")])[0].image)
    assert np.abs(folder - full).max() == 0
    pickled = _gen(root, allow_pickle=True).generate(**BASE, control=[ControlUnit(image=root / "src.png", model=root / "cn.pth")])
    assert np.abs(_arr(pickled[0].image) - full).max() == 0
    # two units at once (multi-ControlNet) differ from one
    two = gen.generate(
        **BASE,
        control=[
            ControlUnit(image=root / "src.png", model="control_tiny_canny"),
            ControlUnit(module="image", image=root / "src.png", model=root / "cn_folder", weight=0.5),
        ],
    )
    assert np.abs(_arr(two[0].image) - full).max() > 0
    # img2img with control
    i2i = gen.generate(**BASE, init_image=root / "src.png", denoising_strength=0.6)[0].image
    i2i_c = gen.generate(
        **BASE,
        init_image=root / "src.png",
        denoising_strength=0.6,
        control=[ControlUnit(image=root / "src.png", model="control_tiny_canny")],
    )
    assert np.abs(_arr(i2i_c[0].image) - _arr(i2i)).max() > 0


def test_condition_saved_and_infotext_round_trip(control_models, tmp_path):
    root = control_models
    gen = _gen(root)
    unit = ControlUnit(image=root / "src.png", model="control_tiny_canny", weight=0.8, guidance_end=0.9, low_threshold=50)
    first = gen.generate(**BASE, out_dir=tmp_path, control=[unit])[0]
    cond = first.path.with_name(f"{first.path.stem}-control0.png")
    assert cond.is_file()
    want = cv2.Canny(cv2.cvtColor(np.asarray(Image.open(root / "src.png").convert("RGB")), cv2.COLOR_RGB2GRAY), 50, 200)
    assert (np.asarray(Image.open(cond))[..., 0] == want).all()
    assert (
        'ControlNet 0: "Module: canny, Model: control_tiny_canny [' in first.infotext
        and "Weight: 0.8, Resize Mode: Crop and Resize, Processor Res: 64, Threshold A: 50.0, Threshold B: 200.0, "
        "Guidance Start: 0.0, Guidance End: 0.9, Pixel Perfect: True, Control Mode: Balanced"
        in first.infotext
    )
    s = settings_from_infotext(first.path)
    assert len(s.control) == 1 and s.control[0].module == "none" and s.control[0].image == cond
    assert s.control[0].weight == 0.8 and s.control[0].guidance_end == 0.9
    again = gen.generate(s, out_dir=tmp_path)[0]
    assert np.abs(_arr(again.image) - _arr(first.image)).max() == 0
    # without the saved condition the units keep their module and want the image again
    u = units_from_infotext(
        {
            "ControlNet 0": "Module: canny, Model: x [abc12345], Weight: 1.0, Resize Mode: Just Resize, Threshold A: 10, Threshold B: 20"
        }
    )
    assert u[0].module == "canny" and u[0].resize_mode == "stretch" and (u[0].low_threshold, u[0].high_threshold) == (10, 20)


def test_bad_inputs(control_models, tmp_path):
    root = control_models
    gen = _gen(root)
    with pytest.raises(SettingsError, match="no `image`"):
        gen.prepare(gen_settings(control=[ControlUnit(model="control_tiny_canny")]))
    with pytest.raises(SettingsError, match="does not exist"):
        gen.prepare(gen_settings(control=[ControlUnit(image=tmp_path / "missing.png", model="control_tiny_canny")]))
    with pytest.raises(SettingsError, match="openpose preprocessor needs"):
        gen.prepare(gen_settings(control=[ControlUnit(module="openpose", image=root / "src.png", model="x")]))
    with pytest.raises(ModelFileError, match="made for SDXL"):
        gen.prepare(gen_settings(control=[ControlUnit(image=root / "src.png", model=root / "xl_cn.safetensors")]))
    with pytest.raises(ModelFileError, match="pickle"):
        gen.prepare(gen_settings(control=[ControlUnit(image=root / "src.png", model=root / "cn.pth")]))
    with pytest.raises(ModelNotFoundError, match="controlnet_dirs"):
        gen.prepare(gen_settings(control=[ControlUnit(image=root / "src.png", model="nothing_here")]))
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelFileError):
        gen.generate(**BASE, control=[ControlUnit(image=root / "src.png", model=bad)])


def gen_settings(**kw):
    from tagloop.generator.settings import GenerationSettings

    return GenerationSettings(**{**BASE, **kw})


def _own_edge_f1(a, b, tol=2):
    """An independent edge F1: distance transforms instead of dilation."""
    ea = cv2.Canny(cv2.cvtColor(np.asarray(a.convert("RGB")), cv2.COLOR_RGB2GRAY), 100, 200) > 0
    eb = cv2.Canny(cv2.cvtColor(np.asarray(b.convert("RGB")), cv2.COLOR_RGB2GRAY), 100, 200) > 0
    if not ea.any() and not eb.any():
        return 1.0
    if not ea.any() or not eb.any():
        return 0.0
    da = cv2.distanceTransform((~ea).astype(np.uint8), cv2.DIST_C, 3)
    db = cv2.distanceTransform((~eb).astype(np.uint8), cv2.DIST_C, 3)
    p = (da[eb] <= tol).mean()
    r = (db[ea] <= tol).mean()
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_structure_score_matches_an_independent_f1():
    from tagloop.report.structure import structure_score

    a, b = _pattern(0), _pattern(5)
    shifted = Image.fromarray(np.roll(np.asarray(a), 1, axis=1))
    assert structure_score(a, a) == 1.0
    for other in (b, shifted):
        assert structure_score(a, other) == pytest.approx(_own_edge_f1(a, other), abs=1e-9)
    assert structure_score(a, shifted) > structure_score(a, b)
    assert structure_score(a, Image.new("RGB", (64, 64))) == 0.0


def test_reproduce_with_control_cli(loop_models, control_models, tmp_path):
    from diffusers import UNet2DConditionModel

    from tagloop.cli import main
    from tagloop.testing import save_tiny_controlnet

    dd, sd = loop_models
    unet = UNet2DConditionModel.from_pretrained(str(Path(sd) / "unet"))
    save_tiny_controlnet(unet, file=tmp_path / "cn.safetensors", seed=3)
    src = tmp_path / "in.png"
    _pattern(3, 96).save(src)
    r = CliRunner().invoke(
        main,
        ["reproduce", str(src), "--tagger", str(dd), "--model", str(sd), "--out", str(tmp_path / "out"), "--variants", "2",
         "--steps", "2", "--size", "64x64", "--device", "cpu", "--threshold", "0.3", "--quiet",
         "--control", "canny", "--control-model", str(tmp_path / "cn.safetensors"), "--img2img", "--denoise", "0.6"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "in" / "report.json").read_text())
    assert "structure" in report["scorers"]
    assert report["settings"]["generate"]["control"][0]["image"] == "source"
    for v in report["variants"]:
        assert 0.0 <= v["scores"]["structure"]["f1"] <= 1.0
        png = tmp_path / "out" / "in" / v["file"]
        assert 'ControlNet 0: "Module: canny' in Image.open(png).info["parameters"]
    assert report["calibration"]["structure"]["ceiling"]["mean"]["f1"] is not None
    assert "edge F1" in (tmp_path / "out" / "in" / "report.html").read_text()


def _b64(im):
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_server_alwayson_controlnet(control_models):
    import requests

    from tagloop.server.run import serve_in_thread
    from tagloop.server.settings import ServerSettings

    root = control_models
    body = dict(prompt="a cat", seed=1, steps=2, width=64, height=64, sampler_name="Euler")
    unit = {"image": _b64(_pattern()), "module": "canny", "model": "control_tiny_canny [e3b0c442]", "weight": 1.0,
            "guidance_start": 0.0, "guidance_end": 1.0, "resize_mode": "Crop and Resize", "threshold_a": 100,
            "threshold_b": 200, "enabled": True}  # fmt: skip
    settings = ServerSettings(model=str(root / "sd"), device="cpu", a1111_dir=str(root))
    with serve_in_thread(settings) as handle:
        url = handle.url
        plain = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
        assert plain.status_code == 200, plain.text
        ctl = requests.post(
            f"{url}/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}}, timeout=120
        )
        assert ctl.status_code == 200, ctl.text
        a = np.asarray(Image.open(io.BytesIO(base64.b64decode(plain.json()["images"][0])))).astype(int)
        b = np.asarray(Image.open(io.BytesIO(base64.b64decode(ctl.json()["images"][0])))).astype(int)
        assert np.abs(a - b).max() > 10
        assert "ControlNet 0" in json.loads(ctl.json()["info"])["infotexts"][0]
        off = requests.post(
            f"{url}/sdapi/v1/txt2img",
            json={**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "enabled": False}]}}},
            timeout=120,
        )
        assert np.abs(np.asarray(Image.open(io.BytesIO(base64.b64decode(off.json()["images"][0])))).astype(int) - a).max() == 0
        bad = requests.post(
            f"{url}/sdapi/v1/txt2img",
            json={**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "module": "depth_midas"}]}}},
            timeout=120,
        )
        assert bad.status_code == 422 and "depth_midas" in bad.text
        i2i = requests.post(
            f"{url}/sdapi/v1/img2img",
            json={
                **body,
                "init_images": [_b64(_pattern(2))],
                "denoising_strength": 0.6,
                "alwayson_scripts": {"controlnet": {"args": [unit]}},
            },
            timeout=120,
        )
        assert i2i.status_code == 200, i2i.text


@pytest.fixture(scope="module")
def sd3_control(tmp_path_factory):
    """A tiny SD3 folder (two blocks: diffusers adds no control to the last one) and its SD3 ControlNet."""
    from tagloop.testing import save_tiny_diffusers, save_tiny_sd3_controlnet

    root = tmp_path_factory.mktemp("control_sd3")
    pipe = save_tiny_diffusers("sd3", root / "sd3", sd3_transformer={"num_layers": 2})
    cn = save_tiny_sd3_controlnet(pipe.transformer, root / "cn3", seed=1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(root / "cn3.safetensors"))
    _pattern().save(root / "src.png")
    return root


def test_sd3_controlnet_txt2img(sd3_control):
    root = sd3_control
    gen = Generator(root / "sd3", device="cpu", progress=False)
    steps = []
    gen.step_hook = lambda done, total: steps.append((done, total)) and False
    plain = _arr(gen.generate(**BASE)[0].image)

    def run(**u):
        return gen.generate(**BASE, control=[ControlUnit(image=root / "src.png", model=root / "cn3", **u)])[0]

    steps.clear()
    full = run()
    assert steps == [(1, 2), (2, 2)]  # the per-step hook sees the ControlNet pipeline's steps
    assert np.abs(_arr(run(weight=0.0).image) - plain).max() <= 1
    assert np.abs(_arr(full.image) - plain).max() > 10
    assert np.abs(_arr(run().image) - _arr(full.image)).max() == 0  # the same seed gives the same image
    assert np.abs(_arr(run(guidance_end=0.0).image) - plain).max() == 0
    assert (
        'ControlNet 0: "Module: canny, Model: cn3, Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 64, '
        "Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0" in full.infotext
    )
    two = gen.generate(
        **BASE,
        control=[
            ControlUnit(image=root / "src.png", model=root / "cn3"),
            ControlUnit(module="image", image=root / "src.png", model=root / "cn3", weight=0.5),
        ],
    )
    assert np.abs(_arr(two[0].image) - _arr(full.image)).max() > 0


def test_sd3_controlnet_refusals(sd3_control, control_models):
    sd3, sd1 = sd3_control, control_models
    g3 = Generator(sd3 / "sd3", device="cpu", progress=False, a1111_dir=sd1)
    with pytest.raises(ModelFileError, match="made for SD1"):
        g3.prepare(gen_settings(control=[ControlUnit(image=sd3 / "src.png", model=sd1 / "cn_folder")]))
    with pytest.raises(ModelFileError, match="made for SD"):
        g3.prepare(gen_settings(control=[ControlUnit(image=sd3 / "src.png", model="control_tiny_canny")]))
    with pytest.raises(ModelFileError, match="single file"):
        g3.prepare(gen_settings(control=[ControlUnit(image=sd3 / "src.png", model=sd3 / "cn3.safetensors")]))
    with pytest.raises(SettingsError, match="image-to-image"):
        g3.prepare(gen_settings(init_image=sd3 / "src.png", control=[ControlUnit(image=sd3 / "src.png", model=sd3 / "cn3")]))
    g1 = _gen(sd1)
    with pytest.raises(ModelFileError, match="is an SD3 ControlNet"):
        g1.prepare(gen_settings(control=[ControlUnit(image=sd3 / "src.png", model=sd3 / "cn3")]))
    with pytest.raises(ModelFileError, match="SD3 ControlNet"):
        g1.prepare(gen_settings(control=[ControlUnit(image=sd3 / "src.png", model=sd3 / "cn3.safetensors")]))
