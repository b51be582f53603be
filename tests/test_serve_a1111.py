"""A1111's routes as its clients call them: the seed tutorial's `requests` code, the webuiapi package,
SillyTavern's and Open WebUI's calls; every answer through real HTTP on loopback with tiny models."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

from PIL import Image  # noqa: E402

from tagloop.a1111.infotext import parse_infotext  # noqa: E402
from tagloop.pipeline.demo import draw_source_image  # noqa: E402
from tagloop.server.run import serve_in_thread  # noqa: E402
from tagloop.server.settings import ServerSettings  # noqa: E402

SMALL = {"width": 64, "height": 64, "steps": 2}


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def source_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "input.png"
    draw_source_image(128).save(path)
    return path


@pytest.fixture(scope="module")
def srv(loop_models):
    dd, sd = loop_models
    with serve_in_thread(ServerSettings(tagger=str(dd), model=str(sd), device="cpu", taggers={"wd": str(dd)})) as handle:
        yield handle


# -- the seed tutorial's own client --------------------------------------------------------------------


def test_the_seed_tutorials_pipeline_code_runs_unchanged(srv, source_png, tmp_path):
    # the tutorial's functions, with its URL pointed at the test server
    def image_to_base64(image_path):
        with open(image_path, "rb") as f:
            return base64.b64encode(f.read()).decode("utf-8")

    def get_tags_from_image(image_b64):
        payload = {"image": image_b64, "model": "deepdanbooru", "threshold": 0.45}
        resp = requests.post(srv.url + "/sdapi/v1/interrogate", json=payload)
        return resp.json()["caption"]

    def generate_image(prompt):
        payload = {
            "prompt": prompt,
            "negative_prompt": "low quality, blurry, text",
            "width": 64,
            "height": 64,
            "steps": 2,
            "cfg_scale": 7,
            "sampler_index": "Euler a",
        }
        resp = requests.post(srv.url + "/sdapi/v1/txt2img", json=payload)
        return resp.json()["images"][0]

    img_b64 = image_to_base64(source_png)
    tags = get_tags_from_image(img_b64)
    enhanced_prompt = f"masterpiece, best quality, {tags}"
    result_b64 = generate_image(enhanced_prompt)
    out = tmp_path / "output.png"
    out.write_bytes(base64.b64decode(result_b64))
    img = Image.open(out)
    assert img.size == (64, 64)
    info = parse_infotext(img.info["parameters"])
    assert info["Prompt"] == enhanced_prompt and info["Sampler"] == "Euler a" and info["Steps"] == "2"


def test_interrogate_formats_as_a1111_and_honours_the_threshold(srv, source_png):
    import tagloop

    b64 = base64.b64encode(source_png.read_bytes()).decode()
    tagger = srv.state.taggers["default"]
    probs = tagger.tag(str(source_png), threshold=0.0, workers=1)

    def expected(threshold, sort_alpha=True):
        kept = [t for t in probs.tags if t.score >= threshold]
        kept.sort(key=(lambda t: t.name) if sort_alpha else (lambda t: -t.score))
        return ", ".join(t.name.replace("_", " ").replace("(", "\\(").replace(")", "\\)") for t in kept)

    default = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru"}).json()
    assert default["caption"] == expected(0.5)  # A1111's threshold option, alphabetical, spaces, escaped
    at = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru", "threshold": 0.3})
    assert at.json()["caption"] == expected(0.3) != default["caption"]
    by_score = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru", "sort": "score"})
    assert by_score.json()["caption"] == expected(0.5, sort_alpha=False)
    ranks = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru", "scores": True})
    assert all(part.rsplit(":", 1)[1].rstrip(")").count(".") == 1 for part in ranks.json()["caption"].split(", "))
    auto = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru", "threshold": "auto"})
    band = tagloop.tag(str(source_png), tagger, workers=1).threshold
    assert auto.json()["caption"] == expected(band)
    filtered = requests.post(
        srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru", "threshold": 0.3, "filters": ["blush"]}
    )
    assert "blush" in at.json()["caption"] and "blush" not in filtered.json()["caption"]
    # a configured name works too; anything else is A1111's 404
    assert requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "wd"}).status_code == 200
    for model in ("clip", "nope"):
        r = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": model})
        assert r.status_code == 404 and "Model not found" in r.json()["detail"]
    assert requests.post(srv.url + "/sdapi/v1/interrogate", json={"model": "deepdanbooru"}).status_code == 404


def test_caption_options_are_settable_through_options(srv, source_png):
    b64 = base64.b64encode(source_png.read_bytes()).decode()
    before = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru"}).json()["caption"]
    opts = requests.get(srv.url + "/sdapi/v1/options").json()
    try:
        requests.post(
            srv.url + "/sdapi/v1/options", json={"deepbooru_use_spaces": False, "interrogate_deepbooru_score_threshold": 0.4}
        )
        after = requests.post(srv.url + "/sdapi/v1/interrogate", json={"image": b64, "model": "deepdanbooru"}).json()["caption"]
        assert "_" in after and len(after.split(", ")) >= len(before.split(", "))
    finally:
        requests.post(
            srv.url + "/sdapi/v1/options",
            json={k: opts[k] for k in ("deepbooru_use_spaces", "interrogate_deepbooru_score_threshold")},
        )


# -- txt2img / img2img -----------------------------------------------------------------------------


def test_txt2img_answers_images_parameters_and_info_as_a1111(srv):
    body = {"prompt": "1girl, smile", "negative_prompt": "lowres", "seed": 42, "batch_size": 2, **SMALL, "sampler_name": "Euler"}
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"images", "parameters", "info"}
    assert len(out["images"]) == 2 and not out["images"][0].startswith("data:")
    info = json.loads(out["info"])  # a JSON string, as webuiapi expects
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43] and len(info["infotexts"]) == 2
    assert info["width"] == 64 and info["steps"] == 2 and info["sampler_name"] == "Euler"
    for b64, text, seed in zip(out["images"], info["infotexts"], (42, 43)):
        img = decode(b64)
        assert img.info["parameters"] == text and f"Seed: {seed}" in text
    assert out["parameters"]["prompt"] == "1girl, smile" and out["parameters"]["restore_faces"] in (False, None)
    assert "n_iter" in out["parameters"] and "cfg_scale" in out["parameters"]
    again = requests.post(srv.url + "/sdapi/v1/txt2img", json={**body, "batch_size": 1}).json()
    # the same seed, the same picture (alone or in a batch of two: float rounding apart)
    a = np.asarray(decode(again["images"][0]), dtype=np.int16)
    b = np.asarray(decode(out["images"][0]), dtype=np.int16)
    other = np.asarray(decode(out["images"][1]), dtype=np.int16)
    assert np.abs(a - b).max() <= 3 < np.abs(a - other).max()


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"restore_faces": True}, "restore_faces"),
        ({"sampler_name": "No Such Sampler"}, "sampler_name"),
        ({"steps": "many"}, "steps"),
        ({"styles": ["my style"]}, "styles"),
        ({"alwayson_scripts": {"controlnet": {"args": [{}]}}}, "alwayson_scripts"),
        ({"steps": 1000}, "max_steps"),
        ({"width": 8192}, "max_size"),
        ({"batch_size": 8, "n_iter": 8}, "max_batch"),
    ],
)
def test_unsupported_or_out_of_range_fields_are_422_naming_the_field(srv, extra, field):
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, **extra})
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_unknown_keys_are_ignored(srv):
    r = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": 1, "url": "st", "auth": "x"})
    assert r.status_code == 200


def test_img2img_and_png_info(srv):
    init = png_b64(draw_source_image(64))
    r = requests.post(
        srv.url + "/sdapi/v1/img2img",
        json={"prompt": "1girl", "init_images": [init], "denoising_strength": 0.5, "seed": 3, **SMALL},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["parameters"]["init_images"] is None  # not echoed unless include_init_images
    text = decode(out["images"][0]).info["parameters"]
    assert "Denoising strength: 0.5" in text
    info = requests.post(srv.url + "/sdapi/v1/png-info", json={"image": out["images"][0]}).json()
    assert info["info"] == text and info["parameters"]["Seed"] == "3" and info["parameters"]["Prompt"] == "1girl"
    missing = requests.post(srv.url + "/sdapi/v1/img2img", json={"prompt": "x", **SMALL})
    assert missing.status_code == 404 and "Init image not found" in missing.json()["detail"]
    bad = requests.post(srv.url + "/sdapi/v1/img2img", json={"prompt": "x", "init_images": ["%%%"], **SMALL})
    assert bad.status_code == 422 and "base64" in bad.json()["detail"]
    plain = requests.post(srv.url + "/sdapi/v1/png-info", json={"image": init}).json()
    assert plain["info"] == "" and plain["parameters"] == {}


# -- listings, options, progress, interrupt ----------------------------------------------------------


def test_every_listing_route_answers(srv):
    for path in (
        "samplers",
        "schedulers",
        "sd-models",
        "upscalers",
        "sd-vae",
        "loras",
        "hypernetworks",
        "face-restorers",
        "realesrgan-models",
        "prompt-styles",
        "cmd-flags",
        "latent-upscale-modes",
        "scripts",
    ):
        r = requests.get(srv.url + f"/sdapi/v1/{path}")
        assert r.status_code == 200, path
    emb = requests.get(srv.url + "/sdapi/v1/embeddings").json()
    assert set(emb) == {"loaded", "skipped"}
    samplers = requests.get(srv.url + "/sdapi/v1/samplers").json()
    assert {"name", "aliases", "options"} <= set(samplers[0]) and "Euler a" in [s["name"] for s in samplers]
    models = requests.get(srv.url + "/sdapi/v1/sd-models").json()
    assert models[0]["model_name"] == "sd15-tiny" and {"title", "hash", "sha256", "filename", "config"} <= set(models[0])
    ups = [u["name"] for u in requests.get(srv.url + "/sdapi/v1/upscalers").json()]
    assert {"Lanczos", "Nearest"} <= set(ups)


def test_options_round_trip_as_open_webui_uses_them(srv):
    opts = requests.get(srv.url + "/sdapi/v1/options").json()
    assert opts["sd_model_checkpoint"].startswith("sd15-tiny")
    assert opts["CLIP_stop_at_last_layers"] == 1 and "samples_format" in opts
    opts["some_extension_key"] = "kept"
    assert requests.post(srv.url + "/sdapi/v1/options", json=opts).status_code == 200  # the whole dict back
    assert requests.get(srv.url + "/sdapi/v1/options").json()["some_extension_key"] == "kept"
    r = requests.post(srv.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"})
    assert r.status_code == 404 and "sd15-tiny" in r.json()["detail"]


def test_progress_while_sampling_and_interrupt(srv):
    idle = requests.get(srv.url + "/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    seen = []
    result = {}

    def run():
        result["r"] = requests.post(
            srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 40, "seed": 9}
        )

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        p = requests.get(srv.url + "/sdapi/v1/progress").json()
        if p["state"]["sampling_step"] >= 2:
            seen.append(p)
            break
        time.sleep(0.01)
    assert seen, "no sampling progress seen"
    assert seen[0]["state"]["sampling_steps"] == 40 and 0 < seen[0]["progress"] < 1 and seen[0]["state"]["job_count"] == 1
    requests.post(srv.url + "/sdapi/v1/interrupt")
    t.join(60)
    r = result["r"]
    assert r.status_code == 200 and len(r.json()["images"]) == 1  # interrupted: the image so far, as A1111 answers
    deadline = time.time() + 10
    while requests.get(srv.url + "/sdapi/v1/progress").json()["state"]["job_count"] and time.time() < deadline:
        time.sleep(0.05)
    assert requests.get(srv.url + "/sdapi/v1/progress").json()["state"]["job_count"] == 0


# -- the WD14 tagger extension ---------------------------------------------------------------------


def test_tagger_extension_routes(srv, source_png):
    b64 = base64.b64encode(source_png.read_bytes()).decode()
    models = requests.get(srv.url + "/tagger/v1/interrogators").json()["models"]
    assert "wd" in models and "deepdanbooru" in models
    r = requests.post(srv.url + "/tagger/v1/interrogate", json={"image": b64, "model": "wd", "threshold": 0.5})
    assert r.status_code == 200
    caption = r.json()["caption"]
    tagger = srv.state.taggers["default"]
    alone = tagger.tag(str(source_png), threshold=0.5, workers=1)
    assert list(caption)[: len(alone.rating)] == list(alone.rating)  # the ratings first
    assert {k for k in caption if k not in alone.rating} == {t.name for t in alone.tags}
    assert all(v >= 0.5 for k, v in caption.items() if k not in alone.rating)
    default = requests.post(srv.url + "/tagger/v1/interrogate", json={"image": b64}).json()["caption"]
    assert len(default) > len(caption)  # the extension's default threshold is 0.35
    assert requests.post(srv.url + "/tagger/v1/interrogate", json={"image": b64, "model": "x"}).status_code == 404


# -- webuiapi, a real A1111 client -------------------------------------------------------------------


def test_webuiapi_client(srv, source_png):
    webuiapi = pytest.importorskip("webuiapi")
    host, port = srv.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    result = api.txt2img(
        prompt="1girl, smile", negative_prompt="lowres", seed=7, width=64, height=64, steps=2, sampler_name="Euler a"
    )
    assert result.image.size == (64, 64) and result.info["seed"] == 7
    assert result.parameters["prompt"] == "1girl, smile"
    i2i = api.img2img(
        images=[Image.open(source_png).convert("RGB")],
        prompt="1girl",
        denoising_strength=0.5,
        seed=7,
        width=64,
        height=64,
        steps=2,
    )
    assert i2i.image.size == (64, 64)
    caption = api.interrogate(image=Image.open(source_png), model="deepdanbooru")
    assert isinstance(caption.info, str) and caption.info
    assert "sd15-tiny" in api.util_get_current_model()
    assert "Euler a" in api.util_get_sampler_names()
    api.util_wait_for_ready(check_interval=0.1)


# -- extras upscaling, tiling and inpainting through the API ---------------------------------------


def test_extras_upscaling_as_a1111(srv):
    src = draw_source_image(64)
    r = requests.post(
        srv.url + "/sdapi/v1/extra-single-image", json={"image": png_b64(src), "upscaler_1": "Lanczos", "upscaling_resize": 2}
    )
    assert r.status_code == 200, r.text
    out = decode(r.json()["image"])
    assert out.size == (128, 128)
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(src.resize((128, 128), Image.LANCZOS)))
    assert "Postprocess upscaler: Lanczos" in out.info["postprocessing"] and "Lanczos" in r.json()["html_info"]
    batch = requests.post(
        srv.url + "/sdapi/v1/extra-batch-images",
        json={
            "imageList": [{"data": png_b64(src), "name": "a"}, {"data": png_b64(src), "name": "b"}],
            "upscaler_1": "Nearest",
            "resize_mode": 1,
            "upscaling_resize_w": 96,
            "upscaling_resize_h": 96,
        },
    )
    assert batch.status_code == 200 and [decode(b).size for b in batch.json()["images"]] == [(96, 96)] * 2
    r = requests.post(srv.url + "/sdapi/v1/extra-single-image", json={"image": png_b64(src), "upscaler_1": "R-ESRGAN 4x+"})
    assert r.status_code == 422 and "R-ESRGAN 4x+" in r.json()["detail"]
    r = requests.post(srv.url + "/sdapi/v1/extra-single-image", json={"image": png_b64(src), "codeformer_visibility": 1})
    assert r.status_code == 422 and "codeformer_visibility" in r.json()["detail"]
    r = requests.post(
        srv.url + "/sdapi/v1/extra-single-image", json={"image": png_b64(src), "upscaler_1": "Lanczos", "upscaling_resize": 100}
    )
    assert r.status_code == 422


def test_tiling_and_inpainting_through_img2img(srv):
    tiled = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": 4, "tiling": True})
    plain = requests.post(srv.url + "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "seed": 4})
    assert tiled.status_code == 200, tiled.text
    assert "Tiling: True" in json.loads(tiled.json()["info"])["infotexts"][0]
    assert decode(tiled.json()["images"][0]).tobytes() != decode(plain.json()["images"][0]).tobytes()
    init = draw_source_image(64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    r = requests.post(
        srv.url + "/sdapi/v1/img2img",
        json={
            "prompt": "x",
            "init_images": [png_b64(init)],
            "mask": png_b64(mask),
            "mask_blur": 0,
            "inpaint_full_res": False,
            "seed": 2,
            **SMALL,
        },
    )
    assert r.status_code == 200, r.text
    out = np.asarray(decode(r.json()["images"][0]).convert("RGB"), dtype=np.int16)
    src = np.asarray(init.convert("RGB"), dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], src[outside])  # A1111's overlay: unmasked pixels are the original's
    assert np.abs(out[~outside] - src[~outside]).mean() > 1


def test_controlnet_listing_routes(srv):
    assert requests.get(srv.url + "/controlnet/version").json() == {"version": 2}
    assert "canny" in requests.get(srv.url + "/controlnet/module_list").json()["module_list"]
    assert requests.get(srv.url + "/controlnet/model_list").json() == {"model_list": []}
