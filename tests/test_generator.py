"""Generator on a tiny SD1 model: loaders users hit, seeds, samplers, LoRA, TI, infotext, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tagloop.cli.generate import generate_command
from tagloop.generator.generate import GenerationSettings, Generator
from tagloop.generator.models import ModelFileError, cache_clear, classify_keys, resolve_model
from tagloop.testing import diffusion as tiny

FAST = dict(steps=2, width=64, height=64, sampler="Euler")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """A tiny SD1 model as a diffusers folder, an A1111 single file + its config folder, a LoRA, a VAE, an embedding."""
    root = tmp_path_factory.mktemp("sd1")
    pipe = tiny.save_tiny_diffusers("sd1", root / "diffusers")
    tiny.write_config_folder(pipe, root / "config")
    a1111 = root / "webui"
    ckpt = tiny.save_tiny_single_file(pipe, "sd1", a1111 / "models" / "Stable-diffusion" / "tinyanime_v1.safetensors")
    tiny.save_tiny_lora(pipe, a1111 / "models" / "Lora" / "tinystyle.safetensors")
    (a1111 / "models" / "VAE").mkdir(parents=True)
    vae = tiny.save_tiny_vae_file(pipe, a1111 / "models" / "VAE" / "tiny-vae.safetensors")
    (a1111 / "embeddings").mkdir()
    tiny.save_tiny_embedding(pipe, a1111 / "embeddings" / "tinyneg.safetensors", vectors=2)
    yield {
        "root": root,
        "pipe": pipe,
        "diffusers": root / "diffusers",
        "config": root / "config",
        "ckpt": ckpt,
        "a1111": a1111,
        "vae": vae,
        "lora_dir": a1111 / "models" / "Lora",
    }
    cache_clear()


def gen(sd1, model=None, **kw) -> Generator:
    kw.setdefault("config", sd1["config"])
    return Generator(model or sd1["ckpt"], device="cpu", progress=False, notice=lambda m: None, **kw)


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_single_file_loads_to_the_same_weights_and_image_as_the_folder(sd1):
    g_file, g_dir = gen(sd1), gen(sd1, model=sd1["diffusers"], config=None)
    a, b = g_file.load().pipe, g_dir.load().pipe
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    s = GenerationSettings(prompt="1girl, (silver hair:1.2)", seed=3, **FAST)
    assert np.array_equal(arr(g_file.generate(s)[0].image), arr(g_dir.generate(s)[0].image))
    assert g_file.family == "sd1" and g_file.source.kind == "single_file"


def test_family_comes_from_keys_not_the_file_name(sd1, tmp_path):
    misleading = tmp_path / "sdxl_base_1.0_lora.safetensors"
    misleading.write_bytes(sd1["ckpt"].read_bytes())
    assert resolve_model(misleading).family == "sd1"


def test_same_seed_same_image_and_batch_seeds_advance(sd1):
    g = gen(sd1)
    s = GenerationSettings(prompt="1girl, smile", negative_prompt="lowres", seed=11, batch_size=2, **FAST)
    first, again = g.generate(s), g.generate(s)
    assert [im.seed for im in first] == [11, 12]
    assert all(np.array_equal(arr(x.image), arr(y.image)) for x, y in zip(first, again))
    assert not np.array_equal(arr(first[0].image), arr(first[1].image))
    alone = g.generate(GenerationSettings(prompt="1girl, smile", negative_prompt="lowres", seed=12, **FAST))[0]
    assert np.abs(arr(alone.image) - arr(first[1].image)).max() <= 1  # image k does not depend on its batch


def test_random_seed_is_recorded(sd1):
    from tagloop.a1111.infotext import parse_infotext

    im = gen(sd1).generate(GenerationSettings(prompt="cat", seed=-1, **FAST))[0]
    assert 0 <= im.seed < 2**32
    assert int(parse_infotext(im.infotext)["Seed"]) == im.seed


def _sampler_params():
    from tagloop.a1111.samplers import list_samplers

    return list_samplers()


def test_sampler_list_has_the_a1111_names():
    from tagloop.a1111.samplers import list_samplers

    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "LMS", "Heun", "DPM++ SDE"} <= set(list_samplers())


@pytest.mark.parametrize("name", _sampler_params())
def test_every_sampler_constructs_and_runs(sd1, name):
    im = gen(sd1).generate(GenerationSettings(prompt="cat", seed=1, steps=2, width=64, height=64, sampler=name))[0]
    a = arr(im.image)
    assert a.shape == (64, 64, 3) and a.std() > 0, name
    assert f"Sampler: {name}" in im.infotext


def test_lora_changes_the_image_and_weight_zero_does_not(sd1):
    g = gen(sd1, lora_dirs=[sd1["lora_dir"]])
    base = arr(g.generate(GenerationSettings(prompt="1girl", seed=5, **FAST))[0].image)
    full = g.generate(GenerationSettings(prompt="1girl <lora:tinystyle:1>", seed=5, **FAST))[0]
    zero = arr(g.generate(GenerationSettings(prompt="1girl <lora:tinystyle:0>", seed=5, **FAST))[0].image)
    half = arr(g.generate(GenerationSettings(prompt="1girl <lora:tinystyle:0.5>", seed=5, **FAST))[0].image)
    after = arr(g.generate(GenerationSettings(prompt="1girl", seed=5, **FAST))[0].image)
    assert np.abs(arr(full.image) - base).max() > 2
    assert np.array_equal(zero, base)
    assert np.abs(half - base).max() > 0 and not np.array_equal(half, arr(full.image))
    assert np.array_equal(after, base)  # LoRA is switched off again when the prompt drops it
    assert 'Lora hashes: "tinystyle: ' in full.infotext or "Lora hashes: tinystyle: " in full.infotext
    assert "<lora:tinystyle:1>" in full.infotext.splitlines()[0]  # the prompt is recorded as written


def test_textual_inversion_by_file_name(sd1):
    g = gen(sd1, embeddings_dirs=[sd1["a1111"] / "embeddings"])
    plain = gen(sd1)
    s = GenerationSettings(prompt="cat", negative_prompt="tinyneg, lowres", seed=2, **FAST)
    with_ti = g.generate(s)[0]
    # a fresh cache: the other generator shares the cached pipeline, which now knows the token
    assert "TI hashes" in with_ti.infotext
    cache_clear()
    without = plain.generate(s)[0]
    assert not np.array_equal(arr(with_ti.image), arr(without.image))
    cache_clear()


def test_clip_skip_changes_the_conditioning(sd1):
    g = gen(sd1)
    a = g.generate(GenerationSettings(prompt="1girl, smile", seed=4, clip_skip=1, **FAST))[0]
    b = g.generate(GenerationSettings(prompt="1girl, smile", seed=4, clip_skip=2, **FAST))[0]
    assert not np.array_equal(arr(a.image), arr(b.image))
    assert "Clip skip: 2" in b.infotext and "Clip skip" not in a.infotext


def test_clip_skip_beyond_the_text_encoder_is_one_sentence(sd1, tmp_path):
    from tagloop.generator.generate import SettingsError

    g = gen(sd1)
    layers = g.load().pipe.text_encoder.config.num_hidden_layers
    with pytest.raises(SettingsError, match="skips more layers"):
        g.generate(GenerationSettings(prompt="cat", seed=1, clip_skip=layers + 1, out_dir=tmp_path / "o", **FAST))
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_vae_file_is_applied_and_recorded(sd1):
    g = gen(sd1, vae=sd1["vae"])
    base = gen(sd1)
    s = GenerationSettings(prompt="cat", seed=9, **FAST)
    im = g.generate(s)[0]
    assert "VAE: tiny-vae.safetensors" in im.infotext and "VAE hash: " in im.infotext
    assert np.array_equal(arr(im.image), arr(base.generate(s)[0].image))  # same weights as the baked VAE


def test_infotext_round_trip_and_reproduction(sd1, tmp_path):
    from tagloop.a1111.infotext import read_image_metadata

    out = tmp_path / "out"
    g = gen(sd1)
    s = GenerationSettings(
        prompt="1girl, (long hair:1.1), smile",
        negative_prompt="lowres, bad anatomy",
        seed=77,
        steps=2,
        width=64,
        height=72,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=6.5,
        clip_skip=2,
        out_dir=out,
    )
    im = g.generate(s)[0]
    assert im.path == out / "00000-77.png"
    meta = read_image_metadata(im.path)
    assert meta.infotext == im.infotext
    p = meta.parameters
    assert p["Prompt"] == s.prompt and p["Negative prompt"] == s.negative_prompt
    assert (p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"]) == ("2", "DPM++ 2M", "6.5", "77") or (
        int(p["Steps"]),
        p["Sampler"],
        float(p["CFG scale"]),
        int(p["Seed"]),
    ) == (2, "DPM++ 2M", 6.5, 77)
    assert (int(p["Size-1"]), int(p["Size-2"]), int(p["Clip skip"])) == (64, 72, 2)
    assert p["Model"] == "tinyanime_v1" and len(str(p["Model hash"])) == 10
    _check_with_independent_parser(im.infotext, s)

    # --infotext PNG re-creates the same image
    res = CliRunner().invoke(
        generate_command,
        [
            "--model",
            str(sd1["ckpt"]),
            "--config-dir",
            str(sd1["config"]),
            "--infotext",
            str(im.path),
            "--out",
            str(tmp_path / "again"),
            "--device",
            "cpu",
            "-q",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout.strip().splitlines()[-1])
    assert again["seed"] == 77
    from PIL import Image

    assert np.array_equal(arr(Image.open(again["path"]).convert("RGB")), arr(im.image))


def _check_with_independent_parser(text: str, s: GenerationSettings) -> None:
    """A parser written from the DESIGN/FORMATS description, independent of tagloop's own."""
    lines = text.strip().split("\n")
    params = lines[-1]
    neg = [ln for ln in lines if ln.startswith("Negative prompt: ")]
    assert lines[0] == s.prompt and neg[0][len("Negative prompt: ") :] == s.negative_prompt
    pairs = {}
    for part in params.split(", "):
        if ": " in part:
            k, v = part.split(": ", 1)
            pairs[k] = v
    assert pairs["Steps"] == "2" and pairs["Sampler"] == "DPM++ 2M" and pairs["Seed"] == "77"
    assert pairs["Size"] == "64x72" and pairs["CFG scale"] == "6.5"
    assert list(pairs).index("Steps") < list(pairs).index("Seed") < list(pairs).index("Model")


def test_several_prompts_are_batched_into_one_forward(sd1, monkeypatch):
    from diffusers import StableDiffusionPipeline

    calls = []
    orig = StableDiffusionPipeline.__call__

    def counting(self, *a, **kw):
        calls.append(kw["prompt_embeds"].shape[0])
        return orig(self, *a, **kw)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counting)
    images = gen(sd1).generate(
        GenerationSettings(prompts=[("cat", "lowres"), ("dog", ""), ("1girl, smile", "bad")], seed=3, **FAST)
    )
    assert calls == [3]  # one forward for the three prompts
    assert [im.prompt for im in images] == ["cat", "dog", "1girl, smile"]
    assert [im.seed for im in images] == [3, 3, 3]  # each prompt restarts at the seed, as A1111's prompt files do


def test_a_batched_image_does_not_depend_on_longer_prompts_beside_it(sd1, monkeypatch):
    from diffusers import StableDiffusionPipeline

    calls = []
    orig = StableDiffusionPipeline.__call__

    def counting(self, *a, **kw):
        calls.append(tuple(kw["prompt_embeds"].shape[:2]))
        return orig(self, *a, **kw)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counting)
    g = gen(sd1)
    long = "1girl, " * 40  # more than one 75-token chunk
    batched = g.generate(GenerationSettings(prompts=[("cat", "lowres"), (long, "bad"), ("dog", "")], seed=3, **FAST))
    assert len(calls) == 2 and (2, 77) in calls  # prompts of one chunk together, the long one apart
    alone = g.generate(GenerationSettings(prompt="cat", negative_prompt="lowres", seed=3, **FAST))[0]
    assert np.abs(arr(alone.image) - arr(batched[0].image)).max() <= 1  # so its infotext re-creates it
    assert [im.prompt for im in batched] == ["cat", long, "dog"]


def test_oom_retries_with_half_the_batch(sd1, monkeypatch):
    from diffusers import StableDiffusionPipeline

    sizes = []
    orig = StableDiffusionPipeline.__call__

    def flaky(self, *a, **kw):
        n = kw["prompt_embeds"].shape[0]
        sizes.append(n)
        if n > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return orig(self, *a, **kw)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", flaky)
    said = []
    g = Generator(sd1["ckpt"], config=sd1["config"], device="cpu", progress=False, notice=said.append)
    images = g.generate(GenerationSettings(prompt="cat", seed=1, batch_size=4, **FAST))
    assert sizes == [4, 2, 2] and [im.seed for im in images] == [1, 2, 3, 4]
    assert any("out of memory" in m and "batches of 2" in m for m in said)


def test_wrong_files_are_named(sd1, tmp_path):
    from safetensors.torch import save_file

    dd = tmp_path / "model-resnet_custom_v3.safetensors"
    save_file({"n_Conv_0.weight": torch.zeros(4, 3, 7, 7), "n_Conv_0.bias": torch.zeros(4)}, str(dd))
    for path, words in ((dd, "DeepDanbooru"), (sd1["vae"], "a VAE"), (sd1["lora_dir"] / "tinystyle.safetensors", "a LoRA")):
        with pytest.raises(ModelFileError, match=words):
            resolve_model(path)
    onnx = tmp_path / "wd-tagger.onnx"
    onnx.write_bytes(b"\x08\x07")
    with pytest.raises(ModelFileError, match="ONNX"):
        resolve_model(onnx)
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(1)}}, str(ckpt))
    with pytest.raises(ModelFileError, match="--allow-pickle"):
        resolve_model(ckpt)
    assert resolve_model(ckpt, allow_pickle=True).family == "sd1"
    assert classify_keys({"emb_params": {}}) == "embedding"


def test_names_resolve_in_the_a1111_folders(sd1, tmp_path):
    res = CliRunner().invoke(
        generate_command,
        [
            "--model",
            "tinyanime_v1",
            "--a1111-dir",
            str(sd1["a1111"]),
            "--config-dir",
            str(sd1["config"]),
            "--vae",
            "tiny-vae",
            "--prompt",
            "1girl <lora:tinystyle:0.7>",
            "--negative",
            "tinyneg",
            "--steps",
            "2",
            "--size",
            "64x64",
            "--seed",
            "8",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "-q",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["path"].endswith("00000-8.png")
    for words in ("Model: tinyanime_v1", "VAE: tiny-vae.safetensors", "Lora hashes", "TI hashes"):
        assert words in info["infotext"]
    cache_clear()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sampler", "Euler z"], "Euler a"),
        (["--size", "65x64"], "multiple of 8"),
        (["--steps", "0"], "--steps"),
        (["--cfg", "-1"], "--cfg"),
        (["--prompt", "cat <lora:nosuchlora:0.8>"], "nosuchlora"),
        (["--denoise", "1.5", "--init-image", "__IMG__"], "--denoise"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(sd1, tmp_path, args, words):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "white").save(img)
    args = [str(img) if a == "__IMG__" else a for a in args]
    base = [
        "--model",
        str(sd1["ckpt"]),
        "--config-dir",
        str(sd1["config"]),
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "-q",
        "--lora-dir",
        str(sd1["lora_dir"]),
        "--steps",
        "2",
        "--size",
        "64x64",
    ]
    if "--prompt" not in args:
        base += ["--prompt", "cat"]
    res = CliRunner().invoke(generate_command, base + args)
    assert res.exit_code == 2, res.output
    assert words in res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_model_and_list_samplers(tmp_path):
    res = CliRunner().invoke(generate_command, ["--model", str(tmp_path / "nope.safetensors"), "--prompt", "cat"])
    assert res.exit_code == 2 and "nope.safetensors" in res.output
    res = CliRunner().invoke(generate_command, ["--list-samplers"])
    assert res.exit_code == 0 and "DPM++ 2M" in res.output.splitlines()


def test_prompt_json_accepts_both_field_names(tmp_path):
    from tagloop.generator.generate import read_prompt_json

    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"positive": "a", "negative": "b"}, {"prompt": "c", "negative_prompt": "d"}, {"prompt": "e"}]))
    assert read_prompt_json(f, negative="n") == [("a", "b"), ("c", "d"), ("e", "n")]
    f.write_text('{"positive": "x", "negative": "y"}\n')
    assert read_prompt_json(f) == [("x", "y")]


def test_infotext_with_explicit_options_and_img2img_denoise(sd1, tmp_path):
    from PIL import Image

    from tagloop.a1111.infotext import read_image_metadata

    src = tmp_path / "src.png"
    Image.new("RGB", (64, 64), "gray").save(src)
    info = tmp_path / "info.txt"
    info.write_text(
        "cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Denoising strength: 0.3, Version: v1.10.1\n"
    )
    base = ["--model", str(sd1["ckpt"]), "--config-dir", str(sd1["config"]), "--device", "cpu", "-q", "--infotext", str(info)]
    # an A1111 img2img infotext keeps its Denoising strength (not --denoise's default)
    res = CliRunner().invoke(generate_command, base + ["--init-image", str(src), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "Denoising strength: 0.3," in read_image_metadata(tmp_path / "a" / "00000-5.png").infotext
    # options given on the command line win over the infotext, hires ones included
    res = CliRunner().invoke(
        generate_command, base + ["--hires-scale", "1.25", "--hires-denoise", "0.6", "--out", str(tmp_path / "b")]
    )
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "b" / "00000-5.png") as im:
        assert im.size == (80, 80)
        assert "Denoising strength: 0.6, Hires upscale: 1.25" in im.info["parameters"]
