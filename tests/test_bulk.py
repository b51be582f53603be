"""Bulk tagging: the manifest, resume (with real kill -9), torn-line repair, `--existing` modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagloop.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _images(folder: Path, n: int, size: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _records(path: Path) -> list[dict]:
    return [r for r in _lines(path) if r.get("type") == "image"]


def _tag(dd, folder, manifest, *extra):
    return _run(
        "tag", folder, "--model", dd, "--device", "cpu", "--sidecar", "--out", manifest, "--threshold", "0.5", "-q", *extra
    )


def test_manifest_records_and_resume(tiny_dd_path, tmp_path):
    files = _images(tmp_path / "data", 5)
    (tmp_path / "data" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    manifest = tmp_path / "m.jsonl"
    r = _tag(tiny_dd_path, tmp_path / "data", manifest)
    assert r.exit_code == 1  # the broken file
    lines = _lines(manifest)
    assert lines[0]["type"] == "run" and lines[0]["model"]["family"] == "deepdanbooru" and lines[0]["model"]["sha256"]
    records = _records(manifest)
    assert len(records) == 6
    by_path = {Path(r["path"]).name: r for r in records}
    assert "error" in by_path["bad.png"] and by_path["bad.png"]["sha256"]
    for f in files:
        rec = by_path[f.name]
        assert rec["width"] == 48 and rec["height"] == 48 and rec["bytes"] == f.stat().st_size
        assert rec["threshold"] == 0.5 and rec["settings_key"] == lines[0]["settings_key"]
        assert all(p >= 0.05 for _, _, p in rec["scores"]) and rec["scores"] == sorted(rec["scores"], key=lambda s: -s[2])
        assert {t["name"] for t in rec["tags"]} <= {s[0] for s in rec["scores"]}
        cap = f.with_suffix(".txt")
        assert rec["caption"] == str(cap) and cap.is_file()
    # the same run again: nothing is tagged again, nothing recorded twice
    r = _run(
        "tag", tmp_path / "data", "--model", tiny_dd_path, "--device", "cpu", "--sidecar", "--out", manifest, "--threshold", "0.5"
    )
    assert "skipped 6 image(s) already in" in r.output
    assert len(_records(manifest)) == 6
    # a changed file, another threshold, --overwrite
    Image.new("RGB", (40, 40), (9, 9, 9)).save(files[0])
    _tag(tiny_dd_path, tmp_path / "data", manifest)
    assert [Path(r["path"]).name for r in _records(manifest)[6:]] == ["img000.png"]
    _tag(tiny_dd_path, tmp_path / "data", manifest, "--overwrite")
    assert len(_records(manifest)) == 7 + 6
    n = len(_records(manifest))
    _run(
        "tag",
        tmp_path / "data",
        "--model",
        tiny_dd_path,
        "--device",
        "cpu",
        "--sidecar",
        "--out",
        manifest,
        "--threshold",
        "0.4",
        "-q",
    )
    assert len(_records(manifest)) == n + 6  # other settings: not "already done"


def test_a_torn_last_line_is_repaired(tiny_dd_path, tmp_path):
    _images(tmp_path / "data", 3)
    manifest = tmp_path / "m.jsonl"
    _tag(tiny_dd_path, tmp_path / "data", manifest)
    whole = manifest.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    manifest.write_bytes(whole[: len(whole) - len(last) // 2 - 1])  # a crash in the middle of the last record
    r = _run(
        "tag", tmp_path / "data", "--model", tiny_dd_path, "--device", "cpu", "--sidecar", "--out", manifest, "--threshold", "0.5"
    )
    assert "torn last line" in r.output
    records = _records(manifest)  # every line parses again
    assert sorted(Path(x["path"]).name for x in records) == ["img000.png", "img001.png", "img002.png"]


def test_kill_9_mid_run_several_times(tiny_dd_path, tmp_path):
    """Every image recorded exactly once, no torn or temporary file, captions equal a clean run's."""
    _images(tmp_path / "data", 40)
    clean = tmp_path / "clean"
    _images(clean, 40)
    assert _tag(tiny_dd_path, clean, tmp_path / "clean.jsonl", "--batch-size", "4").exit_code == 0
    manifest = tmp_path / "m.jsonl"
    args = [sys.executable, "-m", "tagloop", "tag", str(tmp_path / "data"), "--model", str(tiny_dd_path), "--device", "cpu"]
    args += ["--sidecar", "--out", str(manifest), "--threshold", "0.5", "--batch-size", "4", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    kills = 0
    for target in (6, 16, 28):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            n = manifest.read_bytes().count(b'"type": "image"') if manifest.exists() else 0
            if n >= target:
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = [Path(x["path"]).name for x in _records(manifest)]
    assert sorted(names) == sorted(f"img{i:03d}.png" for i in range(40))  # each exactly once
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.endswith(".tmp")]
    for i in range(40):
        assert (tmp_path / "data" / f"img{i:03d}.txt").read_text(encoding="utf-8") == (clean / f"img{i:03d}.txt").read_text(
            encoding="utf-8"
        )


def test_existing_captions(tiny_dd_path, tmp_path):
    files = _images(tmp_path / "data", 4)
    mine = {f: f"my own words {i}, blue sky" for i, f in enumerate(files)}
    for f, text in mine.items():
        f.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    manifest = tmp_path / "m.jsonl"
    # skip: the image is not tagged and its caption untouched
    r = _tag(tiny_dd_path, tmp_path / "data", manifest, "--existing", "skip")
    assert r.exit_code == 0 and _records(manifest) == []
    assert all(f.with_suffix(".txt").read_text(encoding="utf-8") == t + "\n" for f, t in mine.items())
    # append: the user's text first, then the tags; a re-run with --overwrite merges with the user's text again
    _tag(tiny_dd_path, tmp_path / "data", manifest, "--existing", "append")
    first = {f: f.with_suffix(".txt").read_text(encoding="utf-8") for f in files}
    for f, text in mine.items():
        assert first[f].startswith(text)
    rec = _records(manifest)[0]
    assert rec["original_caption"] == mine[Path(rec["path"])]
    _tag(tiny_dd_path, tmp_path / "data", manifest, "--existing", "append", "--overwrite")
    assert {f: f.with_suffix(".txt").read_text(encoding="utf-8") for f in files} == first  # not appended twice
    # prepend: the tags first
    _tag(tiny_dd_path, tmp_path / "data", manifest, "--existing", "prepend", "--overwrite")
    for f, text in mine.items():
        got = f.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert got.endswith(text) and got != text
    # overwrite: the tags alone
    _tag(tiny_dd_path, tmp_path / "data", manifest, "--existing", "overwrite", "--overwrite")
    assert all("my own words" not in f.with_suffix(".txt").read_text(encoding="utf-8") for f in files)


def test_the_manifest_may_not_be_an_input(tiny_dd_path, tmp_path):
    files = _images(tmp_path / "data", 1)
    r = _run("tag", files[0], "--model", tiny_dd_path, "--out", files[0])
    assert r.exit_code == 2
    assert Image.open(files[0]).size == (48, 48)


@pytest.mark.parametrize("mode", ["append", "prepend"])
def test_merge_caption(mode):
    from tagloop.tagger.bulk import merge_caption

    got = merge_caption("1girl, smile, blue sky", "blue_sky, my words", mode)
    assert got == ("blue_sky, my words, 1girl, smile" if mode == "append" else "1girl, smile, blue sky, my words")


def test_retag_equals_a_fresh_run_at_the_new_threshold(tiny_dd_path, tmp_path):
    import shutil

    files = _images(tmp_path / "data", 6)
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "data", fresh)
    manifest = tmp_path / "m.jsonl"
    assert _tag(tiny_dd_path, tmp_path / "data", manifest).exit_code == 0
    before = {f: f.with_suffix(".txt").read_text(encoding="utf-8") for f in files}
    r = _run("retag", manifest, "--threshold", "0.3")
    assert r.exit_code == 0, r.output
    assert _tag(tiny_dd_path, fresh, tmp_path / "fresh.jsonl", "--threshold", "0.3").exit_code == 0
    for f in files:
        assert f.with_suffix(".txt").read_text(encoding="utf-8") == (fresh / f.name).with_suffix(".txt").read_text(
            encoding="utf-8"
        )
    assert any(before[f] != f.with_suffix(".txt").read_text(encoding="utf-8") for f in files)  # they were stale
    from tagloop.tagger.manifest import latest_records

    got, want = latest_records(manifest), latest_records(tmp_path / "fresh.jsonl")
    for f in files:
        a, b = got[str(f)], want[str(fresh / f.name)]
        assert [t["name"] for t in a["tags"]] == [t["name"] for t in b["tags"]] and a["threshold"] == b["threshold"] == 0.3
    # a run with those settings now finds everything done
    r = _run(
        "tag", tmp_path / "data", "--model", tiny_dd_path, "--device", "cpu", "--sidecar", "--out", manifest, "--threshold", "0.3"
    )
    assert "skipped 6 image(s) already in" in r.output


def test_retag_leaves_hand_edits_alone_and_checks_the_floor(tiny_dd_path, tmp_path):
    files = _images(tmp_path / "data", 3)
    manifest = tmp_path / "m.jsonl"
    _tag(tiny_dd_path, tmp_path / "data", manifest)
    files[0].with_suffix(".txt").write_text("my edit\n", encoding="utf-8")
    r = _run("retag", manifest, "--threshold", "0.2")
    assert "1 edited by hand left alone" in r.output and files[0].with_suffix(".txt").read_text(encoding="utf-8") == "my edit\n"
    r = _run("retag", manifest, "--threshold", "0.2", "--force")
    assert files[0].with_suffix(".txt").read_text(encoding="utf-8") != "my edit\n"
    r = _run("retag", manifest, "--threshold", "0.01")
    assert r.exit_code == 2 and "score floor" in r.output and len(r.output.strip().splitlines()) == 1
    r = _run("retag", tmp_path / "nope.jsonl")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_stats(tiny_dd_path, tmp_path):
    _images(tmp_path / "data", 5)
    (tmp_path / "data" / "bad.png").write_bytes(b"junk")
    manifest = tmp_path / "m.jsonl"
    _tag(tiny_dd_path, tmp_path / "data", manifest)
    r = _run("stats", manifest, "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    records = [x for x in _records(manifest)]
    ok = [x for x in records if "error" not in x]
    assert data["images"] == 6 and data["tagged"] == 5 and data["failed"] == 1
    counts = {}
    for x in ok:
        for t in {t["name"] for t in x["tags"]}:
            counts[t] = counts.get(t, 0) + 1
    assert {t["tag"]: t["images"] for t in data["tags"]} == counts
    assert sum(data["bands"].values()) == 5
    r = _run("stats", manifest, "--top", "3")
    assert r.exit_code == 0 and "6 images: 5 tagged, 1 failed" in r.output and "bad.png" in r.output


def test_out_of_memory_splits_the_batch(tiny_dd_path, tmp_path):
    """A simulated CUDA OOM above 2 images a forward: the batch is split and the results are those of a plain run."""
    import torch

    from tagloop.notices import set_sink
    from tagloop.tagger.base import LoadOptions
    from tagloop.tagger.resolve import get_tagger
    from tagloop.tagger.run import TagOptions, tag_sources

    files = [str(f) for f in _images(tmp_path / "data", 7)]
    tagger = get_tagger(str(tiny_dd_path), LoadOptions(device="cpu"))
    plain = [r.to_json() for r in tag_sources(tagger, files, TagOptions(batch_size=8, workers=1))]
    sizes = []

    class Small:
        """The real tagger, on an accelerator with room for 2 images a forward."""

        def __getattr__(self, name):
            return getattr(tagger, name)

        def predict(self, batch):
            sizes.append(len(batch))
            if len(batch) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return tagger.predict(batch)

    said = []
    set_sink(said.append)
    try:
        split = [r.to_json() for r in tag_sources(Small(), files, TagOptions(batch_size=8, workers=1))]
    finally:
        set_sink(None)
    from tagloop.testing.compare import same_results

    assert not same_results(split, plain)  # a batch of 1 may round the last digit differently
    assert sizes == [7, 3, 1, 2, 4, 2, 2]  # halves of halves until a forward fits
    assert any("ran out of memory" in m for m in said)


def test_several_devices_one_manifest(tiny_dd_path, tmp_path):
    """Two processes (two CPU devices here; cuda:0,cuda:1 on a GPU machine) give the records of one."""
    import shutil

    from tagloop.tagger.manifest import latest_records, shard_dir

    files = _images(tmp_path / "data", 9)
    one = tmp_path / "one"
    shutil.copytree(tmp_path / "data", one)
    assert _tag(tiny_dd_path, one, tmp_path / "one.jsonl").exit_code == 0
    manifest = tmp_path / "m.jsonl"
    r = _tag(tiny_dd_path, tmp_path / "data", manifest, "--devices", "cpu,cpu")
    assert r.exit_code == 0, r.output
    got, want = latest_records(manifest), latest_records(tmp_path / "one.jsonl")
    assert len(_records(manifest)) == 9 and not shard_dir(manifest).exists()
    for f in files:
        a, b = got[str(f)], want[str(one / f.name)]
        assert a["tags"] == b["tags"] and a["scores"] == b["scores"] and a["sha256"] == b["sha256"]
        assert f.with_suffix(".txt").read_text(encoding="utf-8") == (one / f.name).with_suffix(".txt").read_text(encoding="utf-8")
    assert len({x["run"] for x in _records(manifest)}) == 2  # one run header per device process
    # a shard a killed run left is merged first, and nothing is tagged twice
    new = _images(tmp_path / "more", 2)
    for f in new:
        shutil.copy(f, tmp_path / "data" / f"extra-{f.name}")
    left = shard_dir(manifest)
    left.mkdir()
    lines = manifest.read_text(encoding="utf-8").splitlines(keepends=True)
    (left / "dev-0.jsonl").write_text(lines[0] + lines[1], encoding="utf-8")  # a header and a record already merged
    r = _tag(tiny_dd_path, tmp_path / "data", manifest, "--devices", "cpu,cpu")
    assert r.exit_code == 0, r.output
    names = sorted(Path(x["path"]).name for x in _records(manifest))
    assert names == sorted([f.name for f in files] + [f"extra-{f.name}" for f in new])
    r = _run("tag", tmp_path / "data", "--model", tiny_dd_path, "--devices", "cpu,cpu")
    assert r.exit_code == 2 and "manifest" in r.output


def test_fast_decode_decodes_large_jpegs_smaller(tmp_path):
    import io

    from tagloop.tagger.preprocess import load_image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((2048, 1536), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    full, fast = load_image(buf.getvalue()), load_image(buf.getvalue(), fit=448)
    assert full.size == (2048, 1536) and fast.size == (512, 384)  # 1/4 scale: the long side still >= 448
    assert load_image(buf.getvalue(), fit=1500).size == (2048, 1536)  # no DCT scale leaves 1500: full size
    png = io.BytesIO()
    img.save(png, "PNG")
    assert load_image(png.getvalue(), fit=448).size == (2048, 1536)  # only JPEGs have DCT scaling


def test_folders_are_read_lazily_in_the_same_order(tmp_path):
    from tagloop.tagger.run import expand_paths, iter_image_files

    root = tmp_path / "d"
    for rel in ["x-1.png", "x/a.png", "x/b.jpg", "a.png", "a.JPG", "b/c/d.webp", "notes.txt", "z.png"]:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    for recursive in (False, True):
        want, want_problems = expand_paths([root, tmp_path / "empty", tmp_path / "nope"], recursive)
        said = []
        got = list(iter_image_files([root, tmp_path / "empty", tmp_path / "nope"], recursive, lambda p, w: said.append((p, w))))
        assert got == want and said == want_problems
    from tagloop.tagger.captions import sidecar_collisions

    said = []
    got = list(iter_image_files([root], False, lambda p, w: said.append((p, w)), caption_ext=".txt"))
    assert [f.name for f in got] == ["a.JPG", "x-1.png", "z.png"]  # a.png's caption is a.JPG's, first in order
    kept, clashes = sidecar_collisions(expand_paths([root])[0], ".txt")
    assert got == kept and said == clashes


def test_a_lazy_run_refuses_an_image_named_output_inside_its_folder(tiny_dd_path, tmp_path):
    _images(tmp_path / "data", 2)
    r = _run(
        "tag", tmp_path / "data", "--model", tiny_dd_path, "--out", tmp_path / "m.jsonl", "--output", tmp_path / "data" / "x.png"
    )
    assert r.exit_code == 2 and "would be read as an input" in r.output


def test_retag_stopped_between_captions_and_records_is_not_a_hand_edit(tiny_dd_path, tmp_path):
    """A retag killed after writing captions but before appending their records: the re-run sees
    tagloop's own captions, not hand edits."""
    _images(tmp_path / "data", 4)
    manifest = tmp_path / "m.jsonl"
    _tag(tiny_dd_path, tmp_path / "data", manifest)
    before = manifest.read_bytes()
    assert _run("retag", manifest, "--threshold", "0.3").exit_code == 0
    manifest.write_bytes(before)  # the records never reached the manifest
    r = _run("retag", manifest, "--threshold", "0.3")
    assert r.exit_code == 0 and "0 edited by hand" in r.output and "4 unchanged" in r.output
    r = _run(
        "tag", tmp_path / "data", "--model", tiny_dd_path, "--device", "cpu", "--sidecar", "--out", manifest, "--threshold", "0.3"
    )
    assert "skipped 4 image(s) already in" in r.output
