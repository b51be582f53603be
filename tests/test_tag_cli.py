"""`tagloop tag` end to end with tiny real models: JSON contract, sidecars, bad files, exit codes, hub."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from hubserver import HubServer, files_from_folder
from PIL import Image

from tagloop.cli import main

ROOT = Path(__file__).resolve().parents[1]


def picture(path: Path, seed: int = 0, size=(96, 64), mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)


def test_json_contract_and_threshold_zero(tmp_path, tiny_dd):
    model, tags = tiny_dd
    img = picture(tmp_path / "a.png")
    r = run("tag", img, "--model", model, "--format", "json", "--threshold", "0")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) >= {"path", "threshold", "edge_density", "complexity", "tags", "rating"}
    assert data["threshold"] == 0.0 and 0.0 <= data["edge_density"] <= 1.0
    assert data["complexity"] in ("simple", "medium", "complex")
    names = [t["name"] for t in data["tags"]]
    assert len(names) == len([t for t in tags if not t.startswith("rating:")])
    scores = [t["score"] for t in data["tags"]]
    assert scores == sorted(scores, reverse=True)
    assert set(data["rating"]) == {t.removeprefix("rating:") for t in tags if t.startswith("rating:")}


def test_auto_threshold_is_the_band_threshold(tmp_path, tiny_dd):
    model, _ = tiny_dd
    img = picture(tmp_path / "noise.png")  # random noise: many edges -> complex
    r = run("tag", img, "--model", model, "--format", "json")
    data = json.loads(r.stdout)
    assert data["complexity"] == "complex" and data["threshold"] == 0.38
    assert all(t["score"] >= 0.38 for t in data["tags"])
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (200, 180, 190)).save(flat)
    data = json.loads(run("tag", flat, "--model", model, "--format", "json").stdout)
    assert data["complexity"] == "simple" and data["threshold"] == 0.55 and data["edge_density"] == 0.0


def test_text_output_a1111_style(tmp_path, tiny_dd):
    model, _ = tiny_dd
    img = picture(tmp_path / "a.png")
    r = run("tag", img, "--model", model, "--threshold", "0", "--scores")
    line = r.stdout.strip()
    assert line.startswith("(") and ":" in line and "_" not in line.split(":")[0]
    r = run("tag", img, "--model", model, "--threshold", "0", "--underscores")
    assert "long_hair" in r.stdout


def test_bad_files_are_named_and_the_rest_tagged(tmp_path, tiny_dd):
    model, _ = tiny_dd
    folder = tmp_path / "imgs"
    folder.mkdir()
    picture(folder / "good.JPG")  # upper-case extension counts
    picture(folder / "cmyk.jpg", mode="CMYK")
    picture(folder / "one.png", size=(1, 1))
    picture(folder / "wide.png", size=(2000, 3))
    picture(folder / "日本語.png", seed=3)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("hello", encoding="utf-8")
    data = (folder / "good.JPG").read_bytes()
    (folder / "trunc.jpg").write_bytes(data[: len(data) // 3])
    r = run("tag", folder, "--model", model, "--format", "jsonl", "-q", "--failures", tmp_path / "failed.jsonl")
    assert r.exit_code == 1
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert {Path(d["path"]).name for d in lines} == {"good.JPG", "cmyk.jpg", "one.png", "wide.png", "日本語.png"}
    for bad in ("empty.png", "text.png", "trunc.jpg"):
        assert bad in r.stderr
    recorded = [json.loads(x) for x in (tmp_path / "failed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(Path(d["path"]).name for d in recorded) == ["empty.png", "text.png", "trunc.jpg"]
    assert all(d["error"] for d in recorded)


def test_sidecar_utf8_and_skip_existing(tmp_path, tiny_dd):
    model, _ = tiny_dd
    img = picture(tmp_path / "キャラ.png")
    r = run("tag", img, "--model", model, "--sidecar", "--threshold", "0.0")
    assert r.exit_code == 0
    cap = (tmp_path / "キャラ.txt").read_text(encoding="utf-8")
    assert cap.endswith("\n") and ", " in cap and "rating" not in cap
    (tmp_path / "キャラ.txt").write_text("kept", encoding="utf-8")
    r = run("tag", img, "--model", model, "--sidecar", "--skip-existing")
    assert (tmp_path / "キャラ.txt").read_text(encoding="utf-8") == "kept"
    assert not list(tmp_path.glob(".*.tmp"))


def test_wrong_model_files_exit_2(tmp_path):
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(ckpt))
    img = picture(tmp_path / "a.png")
    r = run("tag", img, "--model", ckpt)
    assert r.exit_code == 2 and "Stable Diffusion checkpoint" in r.output
    r = run("tag", img, "--model", img)
    assert r.exit_code == 2 and "PNG image" in r.output


def test_deepdanbooru_from_a1111_dir(tmp_path, tiny_dd):
    model, _ = tiny_dd
    a1111 = tmp_path / "webui"
    target = a1111 / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(Path(model).read_bytes())
    img = picture(tmp_path / "a.png")
    r = run("tag", img, "--model", "deepdanbooru", "--a1111-dir", a1111)
    assert r.exit_code == 0, r.output
    r = run("tag", img, "--model", "deepdanbooru", "--a1111-dir", tmp_path / "nowhere")
    assert r.exit_code == 2 and "model-resnet_custom_v3.pt" in r.output
    cfg = tmp_path / "tagloop.toml"
    cfg.write_text(f'a1111_dir = "{a1111.as_posix()}"\n[tag]\nmodel = "deepdanbooru"\nthreshold = 0.0\n', encoding="utf-8")
    r = run("--config", cfg, "tag", img, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["threshold"] == 0.0


def test_hub_id_offline_is_one_sentence(tmp_path):
    img = picture(tmp_path / "a.png")
    r = run("tag", img, "--model", "SmilingWolf/wd-swinv2-tagger-v3", "--device", "cpu")
    assert r.exit_code == 2
    assert "model.onnx" in r.output and "wd-swinv2-tagger-v3" in r.output


def test_hub_download_from_loopback_server(tmp_path):
    """The real download path (huggingface_hub, its cache) against a hub stand-in on 127.0.0.1."""
    from tagloop.testing import save_tiny_wd14_onnx

    src = tmp_path / "src"
    save_tiny_wd14_onnx(src, size=64)
    repo = "someone/tiny-wd-tagger"
    img = picture(tmp_path / "a.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    with HubServer(files_from_folder(repo, src)) as hub:
        env["HF_ENDPOINT"] = hub.url
        cmd = [sys.executable, "-m", "tagloop.cli", "tag", str(img), "--model", repo, "--device", "cpu", "--format", "json"]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["tags"] is not None
        assert hub.gets.get("model.onnx") == 1
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert hub.gets.get("model.onnx") == 1  # served from the cache the second time
    assert list((tmp_path / "hf").rglob("model.onnx"))


def test_sidecar_same_stem_is_named_not_overwritten(tmp_path, tiny_dd):
    """a.png and a.jpg would both write a.txt: the first in path order (a.jpg) is captioned, a.png named."""
    model, _ = tiny_dd
    folder = tmp_path / "set with space"
    folder.mkdir()
    picture(folder / "a.png", seed=1)
    picture(folder / "a.jpg", seed=2)
    picture(folder / "b.png", seed=3)
    r = run("tag", folder, "--model", model, "--sidecar", "-q", "--threshold", "0")
    assert r.exit_code == 1
    assert "a.jpg" in r.stderr and "a.txt" in r.stderr and "a.png" in r.stderr
    assert sorted(p.name for p in folder.glob("*.txt")) == ["a.txt", "b.txt"]
    one = run("tag", folder / "a.jpg", "--model", model, "--threshold", "0").stdout.strip()
    assert (folder / "a.txt").read_text(encoding="utf-8").strip() == one


def test_caption_extension_without_dot_and_unwritable_outputs(tmp_path, tiny_dd):
    model, _ = tiny_dd
    img = picture(tmp_path / "a.png")
    r = run("tag", img, "--model", model, "--sidecar", "--caption-extension", "caption")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.caption").is_file()
    r = run("tag", img, "--model", model, "--sidecar", "--caption-extension", "a/b")
    assert r.exit_code == 2 and "--caption-extension" in r.output
    # a folder where the caption file should go: that image fails, in one sentence, no traceback
    (tmp_path / "b.txt").mkdir()
    picture(tmp_path / "b.png")
    r = run("tag", tmp_path / "b.png", img, "--model", model, "--sidecar")
    assert r.exit_code == 1 and "b.txt" in r.stderr and "Traceback" not in r.output
    assert (tmp_path / "a.txt").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("tag", img, "--model", model, "-o", blocker / "out.json")
    assert r.exit_code == 2 and "out.json" in r.output and "Traceback" not in r.output
    r = run("tag", img, "--model", model, "--failures", blocker / "f.jsonl")
    assert r.exit_code == 2 and "f.jsonl" in r.output


def test_folder_without_images_is_named(tmp_path, tiny_dd):
    model, _ = tiny_dd
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    picture(empty / "sub" / "deep.png")
    (empty / "notes.txt").write_text("x")
    r = run("tag", empty, "--model", model)
    assert r.exit_code == 1 and "no images" in r.stderr and "--recursive" in r.stderr
    r = run("tag", empty, "--model", model, "-r", "-q")
    assert r.exit_code == 0, r.output


def test_json_output_streams_and_matches_a_list(tmp_path, tiny_dd):
    model, _ = tiny_dd
    paths = [picture(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    r = run("tag", *paths, "--model", model, "--format", "json", "-q")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [Path(d["path"]).name for d in data] == ["0.png", "1.png", "2.png"]
    assert r.stdout == json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    out = tmp_path / "o" / "tags.json"
    r = run("tag", *paths, "--model", model, "--format", "json", "-q", "-o", out)
    assert json.loads(out.read_text(encoding="utf-8")) == data
    r = run("tag", tmp_path / "nothing-here", "--model", model, "--format", "json", "-q")
    assert r.exit_code == 1 and json.loads(r.stdout) == []
    out = tmp_path / "o" / "tags.jsonl"
    run("tag", *paths, "--model", model, "--format", "jsonl", "-q", "-o", out)
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == data


def test_model_error_mid_run_leaves_no_output(tmp_path, tiny_dd, monkeypatch):
    from tagloop.tagger.base import ModelFileError
    from tagloop.tagger.deepdanbooru import DeepDanbooruTagger

    model, _ = tiny_dd
    paths = [picture(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    real = DeepDanbooruTagger.predict
    calls = []

    def predict(self, batch):
        calls.append(len(batch))
        if len(calls) > 1:
            raise ModelFileError("the model broke.")
        return real(self, batch)

    monkeypatch.setattr(DeepDanbooruTagger, "predict", predict)
    out = tmp_path / "out" / "tags.jsonl"
    r = run(
        "tag",
        *paths,
        "--model",
        model,
        "--format",
        "jsonl",
        "-q",
        "-b",
        "2",
        "-o",
        out,
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--input-size",
        "128",
    )
    assert r.exit_code == 2 and "the model broke" in r.output
    assert not out.exists() and not list(out.parent.glob("*"))


def test_max_tags_counts_the_tags_left_after_filters(tmp_path, tiny_dd):
    model, _ = tiny_dd
    img = picture(tmp_path / "a.png")
    every = json.loads(run("tag", img, "--model", model, "--threshold", "0", "--format", "json").stdout)["tags"]
    blocked = every[0]["name"]
    blocklist = tmp_path / "filter.txt"
    blocklist.write_text(blocked + "\n", encoding="utf-8")
    r = run("tag", img, "--model", model, "--threshold", "0", "--format", "json", "--filters", blocklist, "--max-tags", "3")
    assert r.exit_code == 0, r.output
    names = [t["name"] for t in json.loads(r.stdout)["tags"]]
    assert names == [t["name"] for t in every[1:4]]


def test_pickled_checkpoints_are_named_by_their_keys(tmp_path):
    """An SD .ckpt (a pickle) passed as a tagger is named as one, read without unpickling it."""
    import torch

    img = picture(tmp_path / "a.png")
    ckpt = tmp_path / "v1-5-pruned-emaonly.ckpt"
    torch.save({"global_step": 1, "state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}}, ckpt)
    r = run("tag", img, "--model", ckpt)
    assert r.exit_code == 2 and "Stable Diffusion checkpoint" in r.output
    lora = tmp_path / "style.pt"
    torch.save({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(2)}, lora)
    r = run("tag", img, "--model", lora)
    assert r.exit_code == 2 and "LoRA" in r.output


def test_tensorrt_that_cannot_apply_is_said(tmp_path, tiny_dd):
    model, _ = tiny_dd
    img = picture(tmp_path / "a.png")
    r = run("tag", img, "--model", model, "--tensorrt", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "--tensorrt" in r.stderr and "ignored" in r.stderr
    assert r.stdout.strip()  # the tags still come
