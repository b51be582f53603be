"""A1111's txt2img/img2img schema, info, options, sampler listings and DeepBooru captions.

No model and no server: requests are plain dicts, some of them exactly what the webuiapi client
(mix1009/sdwebuiapi) would send, captured by replacing its HTTP session.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import pytest

from tagloop.generator.settings import GeneratedImage, GenerationSettings, check_settings, make_settings
from tagloop.server.a1111_schema import (
    IMG2IMG_DEFAULTS,
    OPTION_KEYS_TAGLOOP_USES,
    TXT2IMG_DEFAULTS,
    RequestFieldError,
    UnsupportedFieldError,
    build_info,
    default_options,
    format_deepbooru_caption,
    parse_generation_request,
    samplers_listing,
    schedulers_listing,
)
from tagloop.server.errors import NotFound

INIT = "iVBORw0KGgo="  # the text is kept as sent; the server decodes it


def txt2img(**body):
    return parse_generation_request(body, img2img=False)


def img2img(**body):
    body.setdefault("init_images", [INIT])
    return parse_generation_request(body, img2img=True)


# --- the request models --------------------------------------------------------------------------


def test_defaults_are_a1111s_api_defaults():
    t, i = TXT2IMG_DEFAULTS, IMG2IMG_DEFAULTS
    assert (t["steps"], t["cfg_scale"], t["width"], t["height"], t["seed"], t["n_iter"]) == (50, 7.0, 512, 512, -1, 1)
    assert t["sampler_name"] is None and t["sampler_index"] == "Euler" and t["scheduler"] is None
    # the API model takes the base class's default: txt2img None, img2img 0.75 (an API extra field)
    assert t["denoising_strength"] is None and i["denoising_strength"] == 0.75
    assert t["send_images"] is True and t["save_images"] is False and t["alwayson_scripts"] == {}
    assert t["styles"] is None and t["override_settings"] is None and t["override_settings_restore_afterwards"] is True
    assert (t["enable_hr"], t["hr_scale"], t["hr_upscaler"], t["hr_second_pass_steps"]) == (False, 2.0, None, 0)
    assert "enable_hr" not in i and "init_images" not in t and "include_init_images" not in t
    assert i["mask_blur"] is None and (i["mask_blur_x"], i["mask_blur_y"]) == (4, 4)  # a property in A1111
    assert (i["inpainting_fill"], i["inpaint_full_res"], i["inpaint_full_res_padding"], i["inpainting_mask_invert"]) == (
        0,
        True,
        0,
        0,
    )
    assert i["resize_mode"] == 0 and i["include_init_images"] is False and i["init_images"] is None
    for removed in (
        "sd_model",
        "outpath_samples",
        "extra_generation_params",
        "overlay_images",
        "ddim_discretize",
        "prompt_for_display",
    ):
        assert removed not in t and removed not in i
    assert len(t) == 55 and len(i) == 57
    assert list(t)[:3] == ["prompt", "negative_prompt", "styles"] and list(t)[-1] == "infotext"


def test_an_empty_request_is_a1111s_default_generation():
    r = txt2img()
    assert r.fields["sampler"] == "Euler" and r.fields["schedule_type"] == "Automatic"
    assert (r.fields["steps"], r.fields["width"], r.fields["height"], r.fields["cfg_scale"]) == (50, 512, 512, 7.0)
    assert r.fields["seed"] == -1 and r.fields["batch_count"] == 1 and r.fields["clip_skip"] == 1
    assert r.send_images is True and r.save_images is False and r.sampler_name == "Euler"
    assert "hires_scale" not in r.fields and "init_image" not in r.fields


def test_unknown_keys_are_ignored():
    r = txt2img(prompt="a cat", url="http://example.invalid/", auth={"user": "x"}, made_up_knob=3)
    assert r.fields["prompt"] == "a cat"
    assert "url" not in r.parameters and "made_up_knob" not in r.parameters


def test_parameters_echo_every_default():
    r = txt2img(prompt="a", steps="20", cfg_scale=6)
    assert set(r.parameters) == set(TXT2IMG_DEFAULTS)
    assert list(r.parameters) == list(TXT2IMG_DEFAULTS)
    assert r.parameters["steps"] == 20 and r.parameters["cfg_scale"] == 6.0 and isinstance(r.parameters["cfg_scale"], float)
    assert r.parameters["sampler_index"] == "Euler" and r.parameters["sampler_name"] is None
    assert r.parameters["denoising_strength"] is None and r.parameters["script_args"] == []
    r.parameters["script_args"].append(1)
    assert TXT2IMG_DEFAULTS["script_args"] == []  # a copy, not the defaults themselves


def _settings_have(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(GenerationSettings)}


def test_img2img_echo_drops_images_unless_asked():
    r = img2img(prompt="a")
    assert set(r.parameters) == set(IMG2IMG_DEFAULTS)
    assert r.parameters["init_images"] is None and r.parameters["mask"] is None
    assert r.values["init_images"] == [INIT]
    kept = img2img(prompt="a", include_init_images=True)
    assert kept.parameters["init_images"] == [INIT] and kept.parameters["include_init_images"] is True


def test_img2img_fields():
    r = img2img(prompt="a", denoising_strength=0.4)
    assert r.fields["init_image"] == INIT and r.fields["denoising_strength"] == 0.4
    assert img2img().fields["denoising_strength"] == 0.75


def test_img2img_mask_fields():
    body = dict(
        mask=INIT, mask_blur=8, inpainting_fill=1, inpainting_mask_invert=1, inpaint_full_res=False, inpaint_full_res_padding=32
    )
    if not _settings_have("mask_image"):
        with pytest.raises(UnsupportedFieldError) as e:
            img2img(**body)
        assert e.value.field == "mask"
        assert "mask_image" not in img2img().fields  # no mask: nothing to refuse
        return
    r = img2img(**body)
    assert r.parameters["mask"] is None and r.values["mask"] == INIT
    f = r.fields
    assert (f["mask_image"], f["mask_blur"], f["inpainting_fill"]) == (INIT, 8, 1)
    assert (f["inpainting_mask_invert"], f["inpaint_full_res"], f["inpaint_full_res_padding"]) == (True, False, 32)
    assert img2img(mask=INIT, mask_blur_x=6, mask_blur_y=6).fields["mask_blur"] == 6
    with pytest.raises(UnsupportedFieldError) as e:
        img2img(mask=INIT, mask_blur_x=2, mask_blur_y=6)
    assert e.value.field == "mask_blur_x"
    with pytest.raises(UnsupportedFieldError) as e:
        img2img(mask=INIT, mask_round=False)
    assert e.value.field == "mask_round"
    with pytest.raises(RequestFieldError) as e:
        img2img(mask=INIT, inpainting_fill=7)
    assert e.value.field == "inpainting_fill"


def test_tiling_field():
    if _settings_have("tiling"):
        assert txt2img(tiling=True).fields["tiling"] is True
        assert txt2img().fields["tiling"] is False
    else:
        assert "tiling" not in txt2img(tiling=False).fields
        with pytest.raises(UnsupportedFieldError) as e:
            txt2img(tiling=True)
        assert e.value.field == "tiling"


def test_img2img_without_init_images_is_404():
    for body in ({}, {"init_images": None}, {"init_images": []}):
        with pytest.raises(NotFound) as e:
            parse_generation_request(body, img2img=True)
        assert e.value.http_status == 404 and "Init image not found" in str(e.value)


def test_more_than_one_init_image_is_refused():
    with pytest.raises(UnsupportedFieldError) as e:
        img2img(init_images=[INIT, INIT])
    assert e.value.field == "init_images"


# --- samplers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"sampler_name": "DPM++ 2M Karras"}, ("DPM++ 2M", "Automatic")),
        ({"sampler_name": "DPM++ 2M", "scheduler": "Karras"}, ("DPM++ 2M", "Automatic")),
        ({"sampler_name": "DPM++ 2M", "scheduler": "Exponential"}, ("DPM++ 2M", "Exponential")),
        ({"sampler_name": "DPM++ 2M", "scheduler": "automatic"}, ("DPM++ 2M", "Automatic")),
        ({"sampler_name": "Euler a", "scheduler": "Automatic"}, ("Euler a", "Automatic")),
        ({"sampler_name": "Euler", "scheduler": "karras"}, ("Euler", "Karras")),
        ({"sampler_name": "DPM++ 2M SDE Karras", "scheduler": "Exponential"}, ("DPM++ 2M SDE", "Karras")),  # the name wins
        ({"sampler_index": "UniPC"}, ("UniPC", "Automatic")),
        ({"sampler_name": "", "sampler_index": "Heun"}, ("Heun", "Automatic")),  # sampler_name or sampler_index
        ({"sampler_name": "LMS", "sampler_index": "Heun"}, ("LMS", "Automatic")),
        ({"sampler_name": "k_dpmpp_2m"}, ("DPM++ 2M", "Automatic")),
    ],
)
def test_sampler_resolution(body, expected):
    r = txt2img(**body)
    assert (r.fields["sampler"], r.fields["schedule_type"]) == expected


def test_raw_sampler_names_are_kept():
    r = txt2img(sampler_name="DPM++ 2M Karras", scheduler="automatic")
    assert r.sampler_name == "DPM++ 2M Karras" and r.scheduler == "automatic"


def test_unknown_sampler_is_422_naming_it():
    with pytest.raises(RequestFieldError) as e:
        txt2img(sampler_name="DPM adaptive")
    assert e.value.field == "sampler_name" and e.value.http_status == 422 and "'DPM adaptive'" in str(e.value)
    with pytest.raises(RequestFieldError) as e:
        txt2img(sampler_index="Nope")
    assert e.value.field == "sampler_index"


def test_unknown_or_unsupported_scheduler_is_422():
    with pytest.raises(RequestFieldError) as e:
        txt2img(sampler_name="Euler", scheduler="Wobbly")
    assert e.value.field == "scheduler"
    with pytest.raises(UnsupportedFieldError) as e:
        txt2img(sampler_name="Euler", scheduler="Align Your Steps")
    assert e.value.field == "scheduler"


def test_samplers_listing_is_a1111_shaped():
    from tagloop.a1111.samplers import SAMPLERS

    listing = samplers_listing()
    assert {s["name"] for s in listing} == set(SAMPLERS)
    assert [s["name"] for s in listing][:3] == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE"]  # A1111's order
    for item in listing:
        assert set(item) == {"name", "aliases", "options"} and isinstance(item["aliases"], list)
        # tagloop's "Automatic" is A1111's default scheduler for every sampler
        default = item["options"].get("scheduler", "uniform")
        assert SAMPLERS[item["name"]].automatic.lower().replace(" ", "_") == default
    euler_a = next(s for s in listing if s["name"] == "Euler a")
    assert euler_a == {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {"uses_ensd": True}}


def test_schedulers_listing_is_a1111_shaped():
    from tagloop.a1111.samplers import SCHEDULE_TYPES

    listing = schedulers_listing()
    assert {s["label"] for s in listing} == set(SCHEDULE_TYPES)
    assert listing[0] == {
        "name": "automatic",
        "label": "Automatic",
        "aliases": None,
        "default_rho": -1.0,
        "need_inner_model": False,
    }
    karras = next(s for s in listing if s["name"] == "karras")
    assert karras["default_rho"] == 7.0 and karras["need_inner_model"] is False
    sgm = next(s for s in listing if s["name"] == "sgm_uniform")
    assert sgm["aliases"] == ["SGMUniform"] and sgm["need_inner_model"] is True
    assert not {"polyexponential", "kl_optimal", "align_your_steps"} & {s["name"] for s in listing}


# --- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": "abc"}, "steps"),
        ({"steps": 20.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"cfg_scale": "high"}, "cfg_scale"),
        ({"cfg_scale": "nan"}, "cfg_scale"),
        ({"enable_hr": True, "hr_scheduler": "Wobbly"}, "hr_scheduler"),
        ({"width": [512]}, "width"),
        ({"prompt": 5}, "prompt"),
        ({"enable_hr": "maybe"}, "enable_hr"),
        ({"override_settings": "clip skip 2"}, "override_settings"),
        ({"styles": "anime"}, "styles"),
        ({"n_iter": 0}, "n_iter"),
        ({"override_settings": {"CLIP_stop_at_last_layers": "two"}}, "override_settings.CLIP_stop_at_last_layers"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 13}}, "override_settings.CLIP_stop_at_last_layers"),
        ({"override_settings": {"emphasis": "Loud"}}, "override_settings.emphasis"),
    ],
)
def test_bad_types_are_422_naming_the_field(body, field):
    with pytest.raises(RequestFieldError) as e:
        txt2img(**body)
    assert e.value.field == field and e.value.http_status == 422
    assert f"`{field}`" in str(e.value)


def test_lax_values_as_pydantic_reads_them():
    r = txt2img(steps="20", cfg_scale="6.5", seed=12.0, enable_hr="false", tiling=0, steps_unknown="x")
    assert (r.fields["steps"], r.fields["cfg_scale"], r.fields["seed"]) == (20, 6.5, 12)
    assert "hires_scale" not in r.fields
    assert txt2img(steps=None).fields["steps"] == 50  # null means the default
    assert img2img(inpainting_mask_invert=True).values["inpainting_mask_invert"] == 1


# --- what tagloop refuses and what it lets through -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"restore_faces": True}, "restore_faces"),
        ({"subseed": 5, "subseed_strength": 0.3}, "subseed_strength"),
        ({"seed_resize_from_w": 256, "seed_resize_from_h": 256}, "seed_resize_from_w"),
        ({"styles": ["my style"]}, "styles"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"alwayson_scripts": {"ADetailer": {"args": []}}}, "alwayson_scripts.adetailer"),
        ({"alwayson_scripts": {"ADetailer": {"args": [False]}}}, "alwayson_scripts.adetailer"),
        ({"refiner_checkpoint": "sd_xl_refiner_1.0", "refiner_switch_at": 0.8}, "refiner_checkpoint"),
        ({"sampler_name": "Euler", "s_churn": 1.0}, "s_churn"),
        ({"sampler_name": "DPM++ SDE", "s_noise": 0.9}, "s_noise"),
        ({"sampler_name": "Euler a", "eta": 0.5}, "eta"),
        ({"sampler_name": "DDIM", "eta": 1.0}, "eta"),
        ({"s_min_uncond": 1.5}, "s_min_uncond"),
        ({"disable_extra_networks": True}, "disable_extra_networks"),
        ({"firstphase_width": 256, "firstphase_height": 256}, "firstphase_width"),
        ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
        ({"enable_hr": True, "hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name"),
        ({"enable_hr": True, "sampler_name": "Euler a", "hr_sampler_name": "DPM++ 2M"}, "hr_sampler_name"),
        ({"enable_hr": True, "sampler_name": "Euler a", "hr_scheduler": "Karras"}, "hr_scheduler"),
        ({"enable_hr": True, "hr_prompt": "another prompt"}, "hr_prompt"),
        ({"enable_hr": True, "hr_resize_x": 1000, "hr_resize_y": 700}, "hr_resize_x"),
        ({"override_settings": {"sd_vae": "other.vae.pt"}}, "override_settings.sd_vae"),
    ],
)
def test_features_tagloop_lacks_are_422_naming_the_field(body, field):
    with pytest.raises(UnsupportedFieldError) as e:
        txt2img(**body)
    assert e.value.field == field and e.value.http_status == 422
    assert field.split(".")[0] in str(e.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"resize_mode": 1}, "resize_mode"),
        ({"initial_noise_multiplier": 0.9}, "initial_noise_multiplier"),
        ({"latent_mask": INIT}, "latent_mask"),
    ],
)
def test_img2img_features_tagloop_lacks(body, field):
    with pytest.raises(UnsupportedFieldError) as e:
        img2img(**body)
    assert e.value.field == field


@pytest.mark.parametrize(
    "body",
    [
        {"restore_faces": False, "tiling": False, "styles": [], "script_name": "", "alwayson_scripts": {}},
        {"subseed": 1234, "subseed_strength": 0},  # no variation strength: the subseed does nothing
        {"seed_resize_from_w": 0, "seed_resize_from_h": 0},  # webuiapi sends 0 (<= 0 is off in A1111)
        {"seed_resize_from_w": -1, "seed_resize_from_h": -1},
        {"sampler_name": "Euler a", "eta": 1.0, "s_noise": 0.5},  # Euler a is given no s_noise by A1111
        {"sampler_name": "DPM++ 2M", "eta": 0.3, "s_churn": 5.0},  # neither is used by DPM++ 2M
        {"sampler_name": "Euler", "s_churn": 0, "s_tmin": 0, "s_tmax": 0, "s_noise": 1},
        {"refiner_checkpoint": "None", "refiner_switch_at": 0.8},
        {"enable_hr": True, "sampler_name": "Euler a", "hr_sampler_name": "Euler a", "hr_scheduler": "Automatic"},
        {"enable_hr": True, "hr_sampler_name": "Use same sampler", "hr_checkpoint_name": "Use same checkpoint"},
        {"enable_hr": False, "hr_upscaler": "R-ESRGAN 4x+", "hr_checkpoint_name": "x"},  # hires off: not looked at
        {"override_settings": {"sd_model_checkpoint": "other", "samples_format": "jpg", "sd_vae": "Automatic"}},
    ],
)
def test_neutral_values_pass(body):
    txt2img(**body)


def test_image_cfg_scale_is_ignored():
    # only instruct-pix2pix models use it; webuiapi always sends 1.5
    img2img(image_cfg_scale=1.5)


# --- mapping -------------------------------------------------------------------------------------


def test_hires_fields():
    r = txt2img(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=10, denoising_strength=0.4, hr_upscaler="Latent")
    assert (r.fields["hires_scale"], r.fields["hires_steps"], r.fields["hires_denoise"], r.fields["hires_upscaler"]) == (
        1.5,
        10,
        0.4,
        "latent",
    )
    assert txt2img(enable_hr=True, hr_upscaler="Lanczos").fields["hires_upscaler"] == "lanczos"
    assert txt2img(enable_hr=True).fields["hires_upscaler"] == "latent"  # None: A1111's default latent mode
    assert txt2img(enable_hr=True).fields["hires_denoise"] == 0.7
    assert txt2img(enable_hr=True, width=512, height=768, hr_resize_x=1024).fields["hires_scale"] == 2.0
    with pytest.raises(RequestFieldError) as e:
        txt2img(enable_hr=True, hr_scale=8)
    assert e.value.field == "hr_scale"


def test_clip_skip_and_emphasis():
    r = txt2img(override_settings={"CLIP_stop_at_last_layers": 2, "emphasis": "No norm"})
    assert r.fields["clip_skip"] == 2 and r.fields["emphasis"] == "No norm"
    r = parse_generation_request({}, img2img=False, options={"CLIP_stop_at_last_layers": 2})
    assert r.fields["clip_skip"] == 2  # the server's option, when the request does not override it
    r = parse_generation_request(
        {"override_settings": {"CLIP_stop_at_last_layers": 1}}, img2img=False, options={"CLIP_stop_at_last_layers": 2}
    )
    assert r.fields["clip_skip"] == 1
    assert r.override_settings == {"CLIP_stop_at_last_layers": 1}
    assert txt2img(override_settings={"sd_model_checkpoint": "anything-v5"}).checkpoint == "anything-v5"


def test_family_defaults_fill_what_is_not_sent():
    r = parse_generation_request({"prompt": "a"}, img2img=False, family_defaults="sdxl")
    assert (r.fields["steps"], r.fields["width"], r.fields["height"], r.fields["sampler"]) == (30, 1024, 1024, "Euler a")
    assert r.parameters["steps"] == 30 and r.parameters["sampler_index"] == "Euler a"
    r = parse_generation_request({"steps": 12, "width": 768, "sampler_name": "Euler"}, img2img=False, family_defaults="sdxl")
    assert (r.fields["steps"], r.fields["width"], r.fields["height"], r.fields["sampler"]) == (12, 768, 1024, "Euler")
    r = parse_generation_request({"init_images": [INIT]}, img2img=True, family_defaults="sd1")
    assert r.fields["width"] is None and r.fields["height"] is None  # the init image's size, as tagloop does


def test_infotext_fills_fields_not_sent():
    text = "a cat, (smile:1.2)\nNegative prompt: lowres\nSteps: 24, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 42, Size: 640x768, Clip skip: 2, Version: v1.10.1"
    r = txt2img(infotext=text, steps=8)
    f = r.fields
    assert (f["prompt"], f["negative_prompt"], f["steps"], f["cfg_scale"], f["seed"]) == (
        "a cat, (smile:1.2)",
        "lowres",
        8,
        5.0,
        42,
    )
    assert (f["width"], f["height"], f["sampler"], f["schedule_type"], f["clip_skip"]) == (640, 768, "DPM++ 2M", "Automatic", 2)
    assert r.parameters["steps"] == 8 and r.parameters["width"] == 640
    with pytest.raises(UnsupportedFieldError) as e:
        txt2img(infotext="a\nSteps: 20, Sampler: Euler, Seed: 1, Face restoration: CodeFormer")
    assert e.value.field == "restore_faces"


def test_fields_are_generation_settings():
    known = {f.name for f in dataclasses.fields(GenerationSettings)}
    for r in (txt2img(enable_hr=True, tiling=False), img2img(mask_blur=8), txt2img(sampler_name="DPM++ 2M Karras")):
        assert set(r.fields) <= known
        fields = dict(r.fields)
        fields.pop("init_image", None)
        check_settings(make_settings(**fields))


# --- the webuiapi client's real payloads ---------------------------------------------------------


class _Capture:
    """Stands in for ``requests.Session``: keeps what webuiapi posts and answers like A1111."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.answer: dict = {"images": [], "parameters": {}, "info": "{}"}

    def post(self, url, json=None, **kw):
        self.posts.append((url, json))
        answer = self.answer

        class Response:
            status_code = 200

            def json(self):
                return answer

        return Response()


@pytest.fixture
def webui(monkeypatch):
    webuiapi = pytest.importorskip("webuiapi")
    monkeypatch.setattr(webuiapi.WebUIApi, "check_extensions", lambda self: None)  # no network at construction
    api = webuiapi.WebUIApi()
    api.session = _Capture()
    return api


def _png(color=(200, 30, 30), size=(64, 64), info: str | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    im = Image.new("RGB", size, color)
    meta = None
    if info:
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", info)
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def test_webuiapi_txt2img_payload(webui):
    webui.txt2img(prompt="1girl, smile", negative_prompt="lowres", seed=7, cfg_scale=6)
    ((url, payload),) = webui.session.posts
    assert url.endswith("/sdapi/v1/txt2img")
    assert len(payload) >= 40 and payload["scheduler"] == "automatic" and payload["sampler_index"] == "Euler a"
    assert not set(payload) - set(TXT2IMG_DEFAULTS)  # nothing webuiapi sends is outside A1111's model
    r = parse_generation_request(payload, img2img=False)
    f = r.fields
    assert (f["prompt"], f["negative_prompt"], f["seed"], f["cfg_scale"]) == ("1girl, smile", "lowres", 7, 6.0)
    assert (f["sampler"], f["schedule_type"], f["steps"], f["width"], f["height"]) == ("Euler a", "Automatic", 20, 512, 512)
    assert (f["batch_size"], f["batch_count"], f["clip_skip"]) == (1, 1, 1)
    assert "hires_scale" not in f
    assert r.parameters["eta"] == 1.0 and r.parameters["seed_resize_from_w"] == 0 and r.parameters["denoising_strength"] == 0.7


def test_webuiapi_txt2img_hires_payload(webui):
    webui.txt2img(prompt="a", enable_hr=True, hr_scale=1.5, denoising_strength=0.45, sampler_name="DPM++ 2M", steps=12)
    r = parse_generation_request(webui.session.posts[0][1], img2img=False)
    assert (r.fields["hires_scale"], r.fields["hires_denoise"], r.fields["hires_upscaler"]) == (1.5, 0.45, "latent")
    assert (r.fields["sampler"], r.fields["steps"]) == ("DPM++ 2M", 12)


def test_webuiapi_img2img_payload(webui):
    from PIL import Image

    init = Image.open(io.BytesIO(_png()))
    webui.img2img(images=[init], prompt="a cat", denoising_strength=0.5, steps=15, seed=3)
    ((url, payload),) = webui.session.posts
    assert url.endswith("/sdapi/v1/img2img")
    assert not set(payload) - set(IMG2IMG_DEFAULTS)
    r = parse_generation_request(payload, img2img=True)
    f = r.fields
    assert f["init_image"].startswith("data:image/png;base64,")
    assert (f["prompt"], f["denoising_strength"], f["steps"], f["seed"], f["sampler"]) == ("a cat", 0.5, 15, 3, "Euler a")
    assert r.parameters["init_images"] is None and r.parameters["image_cfg_scale"] == 1.5
    assert r.values["mask_blur"] == 4 and r.values["inpaint_full_res"] is True


def test_webuiapi_reads_our_answer(webui):
    """images as raw base64 PNG and ``info`` as a JSON string: what webuiapi decodes."""
    infotext = (
        "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 3, Size: 64x64, Version: tagloop"
    )
    webui.txt2img(prompt="a cat", seed=3)
    req = parse_generation_request(webui.session.posts[0][1], img2img=False)
    settings = GenerationSettings(
        prompt="a cat", sampler="Euler a", schedule_type="Automatic", steps=20, cfg_scale=7.0, seed=3, width=64, height=64
    )
    image = GeneratedImage(path=None, seed=3, infotext=infotext, image=None, prompt="a cat", negative_prompt="")
    info = build_info(req, [image], settings=settings, model_name="tiny", model_hash="0123456789", job_timestamp="20240101000000")
    webui.session.answer = {
        "images": [base64.b64encode(_png(info=infotext)).decode()],
        "parameters": req.parameters,
        "info": info,
    }
    result = webui.txt2img(prompt="a cat", seed=3)
    assert result.image.size == (64, 64) and result.image.info["parameters"] == infotext
    assert result.info["all_seeds"] == [3] and result.info["infotexts"] == [infotext]
    assert result.parameters["prompt"] == "a cat"


# --- info ----------------------------------------------------------------------------------------

INFO_TYPES = {
    "prompt": str,
    "all_prompts": list,
    "negative_prompt": str,
    "all_negative_prompts": list,
    "seed": int,
    "all_seeds": list,
    "subseed": int,
    "all_subseeds": list,
    "subseed_strength": float,
    "width": int,
    "height": int,
    "sampler_name": str,
    "cfg_scale": float,
    "steps": int,
    "batch_size": int,
    "restore_faces": bool,
    "face_restoration_model": type(None),
    "sd_model_name": str,
    "sd_model_hash": str,
    "sd_vae_name": type(None),
    "sd_vae_hash": type(None),
    "seed_resize_from_w": int,
    "seed_resize_from_h": int,
    "denoising_strength": (float, type(None)),
    "extra_generation_params": dict,
    "index_of_first_image": int,
    "infotexts": list,
    "styles": list,
    "job_timestamp": str,
    "clip_skip": int,
    "is_using_inpainting_conditioning": bool,
    "version": str,
}


def _info(req, n=2, **settings_kw):
    base = dict(
        prompt="a",
        sampler="DPM++ 2M",
        schedule_type="Automatic",
        steps=20,
        cfg_scale=7.0,
        seed=10,
        width=512,
        height=512,
        batch_size=n,
    )
    base.update(settings_kw)
    settings = GenerationSettings(**base)
    images = [
        GeneratedImage(None, 10 + k, f"a\nSteps: 20, Seed: {10 + k}", None, prompt="a", negative_prompt="bad") for k in range(n)
    ]
    return json.loads(
        build_info(req, images, settings=settings, model_name="model", model_hash="abcdef1234", job_timestamp="20240101120000")
    )


def test_info_keys_and_types():
    info = _info(txt2img(prompt="a", negative_prompt="bad", sampler_name="DPM++ 2M"))
    assert list(info) == list(INFO_TYPES)
    for key, kind in INFO_TYPES.items():
        assert isinstance(info[key], kind), key
    assert info["all_seeds"] == [10, 11] and info["seed"] == 10 and info["all_prompts"] == ["a", "a"]
    assert info["negative_prompt"] == "bad" and info["infotexts"] == ["a\nSteps: 20, Seed: 10", "a\nSteps: 20, Seed: 11"]
    assert info["subseed"] == -1 and info["all_subseeds"] == [-1, -1] and info["subseed_strength"] == 0.0
    assert info["sampler_name"] == "DPM++ 2M" and info["sd_model_name"] == "model" and info["clip_skip"] == 1
    assert info["extra_generation_params"] == {"Schedule type": "Karras"}  # DPM++ 2M's automatic schedule
    assert info["denoising_strength"] is None and info["styles"] == [] and info["index_of_first_image"] == 0


def test_info_extra_generation_params():
    hires = _info(
        txt2img(
            enable_hr=True,
            hr_scale=2,
            hr_second_pass_steps=5,
            denoising_strength=0.5,
            hr_upscaler="Latent",
            sampler_name="Euler a",
        ),
        sampler="Euler a",
        hires_scale=2.0,
    )
    assert hires["extra_generation_params"] == {
        "Denoising strength": 0.5,
        "Hires prompt": None,
        "Hires negative prompt": None,
        "Hires schedule type": None,
        "Hires upscale": 2.0,
        "Hires steps": 5,
        "Hires upscaler": "Latent",
    }
    assert hires["width"] == 512  # the first pass's size, as A1111 reports it
    i2i = _info(
        img2img(denoising_strength=0.6, sampler_name="Euler"), sampler="Euler", schedule_type="Karras", emphasis="No norm"
    )
    assert i2i["extra_generation_params"] == {"Denoising strength": 0.6, "Emphasis": "No norm", "Schedule type": "Karras"}
    assert i2i["denoising_strength"] == 0.6
    ddim = _info(txt2img(sampler_name="DDIM"), sampler="DDIM")
    assert ddim["extra_generation_params"] == {}


# --- options -------------------------------------------------------------------------------------


def test_default_options():
    opts = default_options()
    assert len(opts) > 300 and "_source" not in opts
    assert set(OPTION_KEYS_TAGLOOP_USES) <= set(opts)
    assert opts["sd_model_checkpoint"] is None and opts["CLIP_stop_at_last_layers"] == 1 and opts["emphasis"] == "Original"
    assert opts["interrogate_deepbooru_score_threshold"] == 0.5 and opts["deepbooru_sort_alpha"] is True
    assert opts["deepbooru_use_spaces"] is True and opts["deepbooru_escape"] is True and opts["deepbooru_filter_tags"] == ""
    assert opts["interrogate_return_ranks"] is False and opts["samples_format"] == "png" and opts["eta_ancestral"] == 1.0
    assert opts["quicksettings_list"] == ["sd_model_checkpoint"]
    opts["quicksettings_list"].append("x")
    assert default_options()["quicksettings_list"] == ["sd_model_checkpoint"]  # a fresh copy each call


def test_options_data_names_its_source():
    from importlib.resources import files

    data = json.loads(files("tagloop").joinpath("data/a1111_options.json").read_text(encoding="utf-8"))
    assert "v1.10.1" in data["_source"]["program"]


# --- DeepBooru captions (A1111 deepbooru.py tag_multi) -------------------------------------------

TAGS = [
    ("1girl", 0.99),
    ("solo", 0.95),
    ("rating:safe", 0.9),
    ("smile_(happy)", 0.6),
    ("hat", 0.5),
    ("blue_hair", 0.7),
    ("cat", 0.49),
]


def test_deepbooru_defaults():
    # p >= 0.5 kept (hat at exactly 0.5), rating dropped, sorted by the raw names, spaces, escapes
    assert format_deepbooru_caption(TAGS, {}) == r"1girl, blue hair, hat, smile \(happy\), solo"
    assert format_deepbooru_caption(TAGS, default_options()) == r"1girl, blue hair, hat, smile \(happy\), solo"


def test_deepbooru_score_sort():
    assert format_deepbooru_caption(TAGS, {"deepbooru_sort_alpha": False}) == r"1girl, solo, blue hair, smile \(happy\), hat"
    ties = [("b", 0.8), ("a", 0.8), ("c", 0.9)]
    assert format_deepbooru_caption(ties, {"deepbooru_sort_alpha": False}) == "c, b, a"  # ties keep the model's order


def test_deepbooru_no_spaces_no_escape():
    opts = {"deepbooru_use_spaces": False, "deepbooru_escape": False}
    assert format_deepbooru_caption(TAGS, opts) == "1girl, blue_hair, hat, smile_(happy), solo"


def test_deepbooru_ranks():
    opts = {"interrogate_return_ranks": True}
    assert (
        format_deepbooru_caption(TAGS, opts)
        == r"(1girl:0.990), (blue hair:0.700), (hat:0.500), (smile \(happy\):0.600), (solo:0.950)"
    )
    assert format_deepbooru_caption([("a", 0.12345)], opts, threshold=0.1) == "(a:0.123)"


def test_deepbooru_filter_matches_raw_names():
    assert format_deepbooru_caption(TAGS, {"deepbooru_filter_tags": "blue hair, solo ,nothing"}) == r"1girl, hat, smile \(happy\)"
    assert format_deepbooru_caption(TAGS, {}, filter_tags=["hat"]) == r"1girl, blue hair, smile \(happy\), solo"


def test_deepbooru_edge_cases():
    # the sort is on raw names in code point order: "a_b" < "ab" < "b" ("_" sorts before letters), uppercase first
    assert format_deepbooru_caption([("b", 0.9), ("ab", 0.9), ("a_b", 0.9), ("Z", 0.9)], {}) == "Z, a b, ab, b"
    assert format_deepbooru_caption([("^_^", 0.9)], {}) == "^ ^"  # no kaomoji exception
    assert format_deepbooru_caption([("back\\slash", 0.9)], {}) == "back\\\\slash"
    assert format_deepbooru_caption([("rating:explicit", 1.0)], {}) == ""
    assert format_deepbooru_caption(TAGS, {}, threshold=0.9) == "1girl, solo"
    assert format_deepbooru_caption(TAGS, {"interrogate_deepbooru_score_threshold": 0.0}).startswith("1girl, blue hair, cat, hat")
