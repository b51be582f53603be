"""The public Python API: each entry point on tiny models, equal to the CLI's output; cheap imports."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tagloop
from tagloop.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i in range(3):
        rng = np.random.default_rng(i)
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (64 + 8 * i, 96, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def cli_json(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_tag_many_equals_the_cli_json(tiny_wd, images):
    tagger = tagloop.load_tagger(tiny_wd, device="cpu")
    api = [r.to_json() for r in tagger.tag_many(images, batch_size=2, general_threshold=0.3)]
    cli = cli_json(
        "tag",
        *images,
        "--model",
        tiny_wd,
        "--device",
        "cpu",
        "--format",
        "json",
        "--batch-size",
        "2",
        "--general-threshold",
        "0.3",
    )
    assert api == cli


def test_one_call_tag_and_image_kinds(tiny_dd_path, images):
    by_path = tagloop.tag(images[0], model=tiny_dd_path, device="cpu", threshold=0.2)
    data = images[0].read_bytes()
    by_bytes = tagloop.tag(data, model=tiny_dd_path, device="cpu", threshold=0.2)
    by_file = tagloop.tag(io.BytesIO(data), model=tiny_dd_path, device="cpu", threshold=0.2)
    by_pil = tagloop.tag(Image.open(images[0]), model=tiny_dd_path, device="cpu", threshold=0.2)
    names = [t.name for t in by_path.tags]
    assert names and all([t.name for t in r.tags] == names for r in (by_bytes, by_file, by_pil))
    assert by_path.threshold == 0.2 and by_path.threshold_mode == "fixed"
    cli = cli_json("tag", images[0], "--model", tiny_dd_path, "--device", "cpu", "--threshold", "0.2", "--format", "json")
    assert by_path.to_json() == cli


def test_the_same_model_is_loaded_once_and_clear_cache_releases_it(tiny_dd_path):
    a = tagloop.load_tagger(tiny_dd_path, device="cpu")
    assert tagloop.load_tagger(tiny_dd_path, device="cpu") is a
    tagloop.clear_cache()
    assert tagloop.load_tagger(tiny_dd_path, device="cpu") is not a


def test_bad_image_is_a_result_with_error(tiny_wd, tmp_path, images):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    results = list(tagloop.load_tagger(tiny_wd, device="cpu").tag_many([images[0], bad, images[1]]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error and results[1].path == str(bad)


def test_errors_are_one_family_and_name_settings(tiny_wd, tmp_path, images):
    with pytest.raises(tagloop.ModelNotFoundError) as e:
        tagloop.load_tagger(tmp_path / "missing.onnx")
    assert isinstance(e.value, tagloop.TagloopError)
    with pytest.raises(tagloop.InputError, match="general_threshold"):
        tagloop.tag(images[0], model=tiny_wd, device="cpu", general_threshold=1.5)
    with pytest.raises(tagloop.InputError, match="unknown tag option"):
        tagloop.tag(images[0], model=tiny_wd, device="cpu", treshold=0.3)
    with pytest.raises(tagloop.InputError, match="device"):
        tagloop.load_tagger(tiny_wd, device="gpu")
    with pytest.raises(tagloop.InputError, match="budget"):
        tagloop.compose_prompt("1girl", budget=-1)
    for e in (tagloop.ConfigError, tagloop.InputError, tagloop.ModelFileError, tagloop.GPUUnavailableError, tagloop.HubError):
        assert issubclass(e, tagloop.TagloopError)


def test_compose_prompt_equals_the_cli(tiny_wd, images, tmp_path):
    result = tagloop.load_tagger(tiny_wd, device="cpu").tag(images[0], threshold=0.2)
    composed = tagloop.compose_prompt(result, preset="sd15-anime", negative_preset="anime")
    src = tmp_path / "r.json"
    src.write_text(json.dumps(result.to_json()), encoding="utf-8")
    cli = cli_json("prompt", "--from-json", src, "--preset", "sd15-anime", "--negative-preset", "anime", "--format", "json")
    assert composed.to_json() == cli
    assert composed.positive and composed.negative
    from_text = tagloop.compose_prompt("1girl, solo, long_hair, very_long_hair, rating:safe", preset="plain")
    parts = [t.strip() for t in from_text.positive.split(",")]
    assert "very long hair" in parts and "long hair" not in parts and "rating:safe" not in parts


def _modules_after(code: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


HEAVY = {"torch", "diffusers", "transformers", "timm"}


def test_import_tagloop_and_help_load_no_torch():
    assert not HEAVY & _modules_after("import tagloop")
    assert not HEAVY & _modules_after(
        "import sys\nsys.argv=['tagloop','--help']\nfrom tagloop.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    )


def test_tagging_with_an_onnx_tagger_never_imports_torch(tiny_wd, images):
    mods = _modules_after(
        "import sys\n"
        f"sys.argv=['tagloop','tag',{str(images[0])!r},'--model',{str(tiny_wd)!r},'-q']\n"
        "from tagloop.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    assert "onnxruntime" in mods and not HEAVY & mods
    mods = _modules_after(f"import tagloop\nr = tagloop.tag({str(images[0])!r}, model={str(tiny_wd)!r})\nassert r.ok")
    assert not HEAVY & mods


def test_only_the_cli_imports_click():
    offenders = []
    for path in (ROOT / "tagloop").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "tagloop").parts[:1]:
            continue
        text = path.read_text(encoding="utf-8")
        if any(line.strip().startswith(("import click", "from click")) for line in text.splitlines()):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    from tagloop.testing import diffusion as tiny

    root = tmp_path_factory.mktemp("sd1api")
    pipe = tiny.save_tiny_diffusers("sd1", root / "diffusers")
    from tagloop.testing.diffusion import write_config_folder

    write_config_folder(pipe, root / "config")
    ckpt = tiny.save_tiny_single_file(pipe, "sd1", root / "tinyanime_v1.safetensors")
    return {"ckpt": ckpt, "config": root / "config"}


def test_generator_api_equals_the_cli_and_reads_back(sd1, tmp_path):
    gen = tagloop.load_generator(sd1["ckpt"], device="cpu", config=sd1["config"], progress=False)
    assert tagloop.load_generator(sd1["ckpt"], device="cpu", config=sd1["config"], progress=False) is gen
    fields = dict(prompt="1girl, (silver hair:1.2)", negative_prompt="lowres", seed=5, steps=2, width=64, height=64)
    images = gen.generate(out_dir=tmp_path / "api", **fields)
    same = gen.generate(tagloop.GenerationSettings(**fields), out_dir=str(tmp_path / "api2"))
    assert len(images) == 1 and images[0].seed == 5 and images[0].path.is_file()
    assert np.array_equal(np.asarray(images[0].image), np.asarray(same[0].image))
    r = CliRunner().invoke(
        main,
        [
            "generate",
            "--model",
            str(sd1["ckpt"]),
            "--config-dir",
            str(sd1["config"]),
            "--prompt",
            fields["prompt"],
            "--negative",
            "lowres",
            "--seed",
            "5",
            "--steps",
            "2",
            "--size",
            "64x64",
            "--device",
            "cpu",
            "-q",
            "--out",
            str(tmp_path / "cli"),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    cli_png = next((tmp_path / "cli").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(cli_png).convert("RGB")), np.asarray(Image.open(images[0].path).convert("RGB")))
    info = tagloop.read_infotext(images[0].path)
    cli_info = json.loads(CliRunner().invoke(main, ["info", str(images[0].path)], catch_exceptions=False).stdout)
    assert info == cli_info
    assert info["infotext"] == images[0].infotext
    with pytest.raises(tagloop.InputError, match="unknown generation setting"):
        gen.generate(prompt="x", stpes=3)


def test_tagger_and_generator_read_checkpoints_the_same_way(tmp_path, sd1):
    from tagloop.generator.models import classify_keys as generator_kind
    from tagloop.tagger.sniff import classify_keys as tagger_words
    from tagloop.weights import classify_keys, safetensors_keys

    keys = safetensors_keys(sd1["ckpt"])
    assert classify_keys(keys) == generator_kind({k: {} for k in keys}) == "sd1"
    assert "Stable Diffusion checkpoint" in tagger_words(keys)
    r = CliRunner().invoke(main, ["tag", str(sd1["ckpt"]), "--model", str(sd1["ckpt"])], catch_exceptions=False)
    assert r.exit_code == 2 and "a Stable Diffusion checkpoint" in r.stderr
