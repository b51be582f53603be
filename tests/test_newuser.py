"""What a new user hits first: outputs never destroy inputs, honest thresholds, clear model errors, exit codes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagloop.cli import main

ROOT = Path(__file__).resolve().parents[1]


def picture(path: Path, seed: int = 0, size=(96, 64)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path, format="PNG")
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


# --- never destroy a user's file ----------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jpg", ".png", ".WEBP"])
def test_sidecar_with_an_image_extension_is_refused_and_images_survive(tmp_path, tiny_dd_path, ext):
    folder = tmp_path / "loss"
    folder.mkdir()
    a = picture(folder / "a.jpg", 1)
    b = picture(folder / "b.png", 2)
    before = {p: p.read_bytes() for p in (a, b)}
    r = run("tag", folder, "--model", tiny_dd_path, "--sidecar", "--caption-extension", ext)
    assert r.exit_code == 2
    assert "image extension" in r.stderr and "Usage:" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (a, b)} == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "b.png"]


@pytest.mark.parametrize("option", ["-o", "--output", "--failures"])
def test_output_that_is_an_input_is_refused_before_any_work(tmp_path, tiny_dd_path, option):
    a = picture(tmp_path / "a.png", 1)
    before = a.read_bytes()
    r = run("tag", a, "--model", tiny_dd_path, option, a)
    assert r.exit_code == 2 and "input" in r.stderr and "Usage:" not in r.stderr
    assert a.read_bytes() == before


def test_output_given_by_another_name_of_the_input_is_refused(tmp_path, tiny_dd_path):
    a = picture(tmp_path / "a.png", 1)
    link = tmp_path / "link.png"
    os.link(a, link)  # a hard link is the same file under another name
    before = a.read_bytes()
    r = run("tag", tmp_path, "--model", tiny_dd_path, "-o", str(tmp_path / "." / "link.png"))
    assert r.exit_code == 2
    assert a.read_bytes() == before


def test_caption_landing_on_an_explicit_input_is_refused(tmp_path, tiny_dd_path):
    a = picture(tmp_path / "shot.txt", 1)  # an image with an odd name, given explicitly
    before = a.read_bytes()
    r = run("tag", a, "--model", tiny_dd_path, "--sidecar")
    assert r.exit_code == 2 and "caption" in r.stderr
    assert a.read_bytes() == before


def test_outputs_get_the_mode_a_plain_open_gives(tmp_path, tiny_dd_path):
    a = picture(tmp_path / "a.png", 1)
    old = os.umask(0o022)
    try:
        r = run("tag", a, "--model", tiny_dd_path, "--sidecar", "-o", tmp_path / "out.txt", "--failures", tmp_path / "f.jsonl")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    for name in ("a.txt", "out.txt", "f.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    # an existing file keeps its own mode when it is replaced
    (tmp_path / "a.txt").chmod(0o640)
    assert run("tag", a, "--model", tiny_dd_path, "--sidecar").exit_code == 0
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def test_atomic_write_mode_follows_the_umask(tmp_path):
    from tagloop.fileio import atomic_write_text

    old = os.umask(0o027)
    try:
        import tagloop.fileio as fileio

        fileio._UMASK = None  # read afresh under this umask
        atomic_write_text(tmp_path / "x.txt", "hi")
    finally:
        os.umask(old)
        fileio._UMASK = None
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o640


def test_convert_deepdanbooru_does_not_write_over_its_tags_file(tmp_path, tiny_dd_path):
    tags = tmp_path / "tags.txt"
    tags.write_text("\n".join(f"t{i}" for i in range(24)), encoding="utf-8")
    before = tags.read_bytes()
    r = run("convert-deepdanbooru", tiny_dd_path, tags, "--tags-file", tags)
    assert r.exit_code == 2 and "input" in r.stderr
    assert tags.read_bytes() == before


# --- no silent wrong results ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["models/wd14", "missing/model.onnx", "./nothere", "a/b/c"])
def test_a_missing_local_model_is_no_such_file(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    picture(tmp_path / "a.png")
    r = run("tag", "a.png", "--model", spec)
    assert r.exit_code == 2
    assert "no such file or folder" in r.stderr and "hub" not in r.stderr and "Usage:" not in r.stderr


def test_a_folder_with_two_models_names_them_and_refuses(tmp_path, tiny_dd_path, tiny_wd):
    both = tmp_path / "both"
    shutil.copytree(tiny_wd, both)
    shutil.copy(tiny_dd_path, both / tiny_dd_path.name)
    picture(tmp_path / "a.png")
    r = run("tag", tmp_path / "a.png", "--model", both)
    assert r.exit_code == 2
    assert "several tagger models" in r.stderr and "model.onnx" in r.stderr and tiny_dd_path.name in r.stderr


def test_a_folder_with_several_onnx_files_says_which_it_took(tmp_path, tiny_wd):
    folder = tmp_path / "wd"
    shutil.copytree(tiny_wd, folder)
    shutil.copy(folder / "model.onnx", folder / "model_fp16.onnx")
    picture(tmp_path / "a.png")
    r = run("tag", tmp_path / "a.png", "--model", folder)
    assert r.exit_code == 0, r.output
    assert "using model.onnx" in r.stderr and "model_fp16.onnx" in r.stderr


def test_mcut_json_states_the_thresholds_really_applied(tmp_path, tiny_wd):
    a = picture(tmp_path / "a.png", 4)
    data = json.loads(run("tag", a, "--model", tiny_wd, "--mcut", "--format", "json").stdout)
    assert data["threshold_mode"] == "mcut"
    general = data["thresholds"]["general"]
    assert data["threshold"] == general
    every = json.loads(run("tag", a, "--model", tiny_wd, "--threshold", "0", "--format", "json").stdout)
    scores = sorted((t["score"] for t in every["tags"] if t["category"] == "general"), reverse=True)
    # MCut: the threshold sits in the largest gap of the sorted scores (independent recomputation)
    gaps = [scores[i] - scores[i + 1] for i in range(len(scores) - 1)]
    k = int(np.argmax(gaps))
    assert scores[k + 1] - 1e-6 <= general <= scores[k] + 1e-6
    kept = [t for t in data["tags"] if t["category"] == "general"]
    assert all(t["score"] >= general - 1e-6 for t in kept) and len(kept) == k + 1
    if "character" in data["thresholds"]:
        assert data["thresholds"]["character"] >= 0.15


def test_adaptive_json_keeps_the_band_value(tmp_path, tiny_wd):
    a = picture(tmp_path / "a.png", 4)
    data = json.loads(run("tag", a, "--model", tiny_wd, "--general-threshold", "0.2", "--format", "json").stdout)
    assert data["threshold"] == 0.2 and data["thresholds"]["general"] == 0.2
    assert data["threshold_mode"] == "adaptive" and data["band_threshold"] in (0.55, 0.45, 0.38)


def test_skip_existing_without_sidecar_says_it_is_ignored(tmp_path, tiny_dd_path):
    a = picture(tmp_path / "a.png")
    r = run("tag", a, "--model", tiny_dd_path, "--skip-existing")
    assert r.exit_code == 0 and "--skip-existing" in r.stderr and "ignored" in r.stderr


# --- offline, errors, exit codes -----------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_fast_with_one_sentence(tmp_path):
    a = picture(tmp_path / "a.png")
    env = _env()
    env.pop("HF_HUB_OFFLINE")
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    env["HF_HOME"] = str(tmp_path / "hf")
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "tagloop", "tag", str(a), "--model", "someone/some-tagger", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 2
    assert "cannot be reached" in r.stderr and "Retrying" not in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert elapsed < 20  # huggingface_hub's own retries take half a minute; the probe a few seconds at most


def test_model_errors_are_one_sentence_without_usage_block(tmp_path):
    a = picture(tmp_path / "a.png")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64))
    r = run("tag", a, "--model", junk)
    assert r.exit_code == 2 and "Usage:" not in r.stderr
    assert r.stderr.strip() == r.stderr.strip().splitlines()[0]
    assert "is not a model file tagloop recognises;" in r.stderr and "not a tagger" not in r.stderr
    bad_filter = tmp_path / "filter.txt"
    bad_filter.write_text("re:(unclosed\n", encoding="utf-8")
    r = run("tag", a, "--model", junk, "--filters", bad_filter)
    assert r.exit_code == 2 and "Usage:" not in r.stderr and "filter.txt" in r.stderr


def test_no_gpu_message_says_what_torch_shows():
    import torch

    from tagloop.tagger.base import GPUUnavailableError, resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(GPUUnavailableError) as e:
        resolve_device("cuda")
    msg = str(e.value)
    if torch.version.cuda is None:
        assert "CPU-only build" in msg and torch.__version__ in msg
    else:
        assert f"CUDA {torch.version.cuda} build" in msg and "0 GPU" in msg


def test_summary_line_and_no_bar_when_stderr_is_not_a_terminal(tmp_path, tiny_dd_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        picture(folder / f"{i}.png", i)
    (folder / "bad.png").write_bytes(b"not a png")
    r = subprocess.run(
        [sys.executable, "-m", "tagloop", "tag", str(folder), "--model", str(tiny_dd_path), "--device", "cpu"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("tagloop: 3 tagged")]
    assert lines and "0 skipped" in lines[0] and "1 failed" in lines[0] and " s" in lines[0]
    assert "\r" not in r.stderr  # no progress bar redraws in a log


def test_ctrl_c_exits_130_and_keeps_what_was_complete(tmp_path, tiny_wd):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        picture(folder / f"{i:05d}.png", i, size=(32, 32))
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "tagloop",
        "tag",
        str(folder),
        "--model",
        str(tiny_wd),
        "--device",
        "cpu",
        "--format",
        "jsonl",
        "-o",
        str(out),
        "--batch-size",
        "1",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        temps = list(tmp_path.glob(".out.jsonl.*.tmp"))
        if temps and temps[0].stat().st_size > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert 0 < len(lines) < 1500
    for line in lines:
        assert json.loads(line)["tags"] is not None
    assert not list(tmp_path.glob(".out.jsonl.*.tmp"))
