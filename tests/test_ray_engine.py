"""``--engine ray``: the Ray Data pipeline writes what ``run_bulk`` writes; resume by shard; a killed run's shards."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if importlib.util.find_spec("ray") is None and os.environ.get("TAGLOOP_REQUIRE_RAY") == "1":
    raise RuntimeError('TAGLOOP_REQUIRE_RAY=1 but ray is not installed: pip install -e ".[test,ray]"')
ray = pytest.importorskip("ray", reason='the Ray engine is an optional extra: pip install "tagloop[ray]"')
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray Data's own settings, not ours

from tagloop.api import load_tagger  # noqa: E402
from tagloop.errors import InputError, ModelNotFoundError  # noqa: E402
from tagloop.tagger import ray_engine  # noqa: E402
from tagloop.tagger.bulk import BulkOptions, BulkStats, run_bulk  # noqa: E402
from tagloop.tagger.manifest import shard_dir  # noqa: E402
from tagloop.tagger.run import make_tag_options  # noqa: E402

N_IMAGES = 24


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out = []
    for i in range(N_IMAGES):
        w, h = 24 + 7 * (i % 5), 20 + 9 * (i % 4)
        if i % 3 == 0:  # flat blocks: few edges (the "simple" band)
            arr = np.kron(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8), np.ones((h // 2 + 1, w // 2 + 1, 1), np.uint8))[:h, :w]
        else:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(np.ascontiguousarray(arr)).save(p)
        out.append(p)
    bad = folder / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return sorted(out + [bad])


def _records(manifest: Path) -> list[dict]:
    lines = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    return [r for r in lines if r.get("type") == "image"]


def _by_path(manifest: Path) -> dict[str, dict]:
    return {r["path"]: {k: v for k, v in r.items() if k != "run"} for r in _records(manifest)}


def _captions(files: list[Path], remove: bool = False) -> dict[str, str]:
    out = {}
    for f in files:
        c = f.with_suffix(".txt")
        if c.exists():
            out[f.name] = c.read_text(encoding="utf-8")
            if remove:
                c.unlink()
    return out


def _compare_engines(model: Path, tmp_path: Path, bulk_kw: dict, **tag_kw) -> tuple[list[Path], BulkOptions, dict]:
    files = _images(tmp_path / "data")
    options = make_tag_options(batch_size=4, workers=1, **tag_kw)
    tagger = load_tagger(model, device="cpu")
    plain = BulkOptions(manifest=tmp_path / "bulk.jsonl", **bulk_kw)
    for _ in run_bulk(tagger, files, options, plain):
        pass
    expected = _by_path(plain.manifest)
    expected_captions = _captions(files, remove=True)

    bulk = BulkOptions(manifest=tmp_path / "ray.jsonl", **bulk_kw)
    stats = ray_engine.run_ray(files, model=str(model), load_kwargs={"device": "cpu"}, options=options, bulk=bulk, shard_size=8)
    got = _by_path(bulk.manifest)
    assert stats.tagged == N_IMAGES and stats.failed == 1
    assert set(got) == {str(f) for f in files}
    from tagloop.testing.compare import same_results

    # tags, scores, thresholds, edge density, sha256, sizes, caption hashes, errors (scores to the last digit's rounding)
    assert not same_results(got, expected)
    assert sum(bool(r.get("tags")) for r in got.values()) >= N_IMAGES // 2
    assert "error" in got[str(tmp_path / "data" / "bad.png")]
    if bulk.sidecar:
        assert _captions(files) == expected_captions and len(expected_captions) == N_IMAGES
    assert not shard_dir(bulk.manifest).exists()
    return files, bulk, options


def test_deepdanbooru_same_as_run_bulk_and_resume(tiny_dd_path, tmp_path):
    bulk_kw = {"sidecar": True, "include_rating": True}
    files, bulk, options = _compare_engines(tiny_dd_path, tmp_path, bulk_kw)
    before = _records(bulk.manifest)
    again = ray_engine.run_ray(files, model=str(tiny_dd_path), load_kwargs={"device": "cpu"}, options=options, bulk=bulk)
    assert again.skipped_done == N_IMAGES + 1 and again.tagged == again.failed == 0
    assert _records(bulk.manifest) == before  # nothing computed again


def test_wd14_same_as_run_bulk(tiny_wd, tmp_path):
    filters = tmp_path / "filter.txt"
    filters.write_text("solo\n", encoding="utf-8")  # the blocklist runs in the model stage, as in run_bulk
    files, bulk, _ = _compare_engines(
        tiny_wd, tmp_path, {"sidecar": True, "filter_files": (str(filters),), "max_tags": 5}, threshold=0.3
    )
    records = [r for r in _records(bulk.manifest) if "error" not in r]
    assert all("solo" not in [t["name"] for t in r["tags"]] and len(r["tags"]) <= 5 for r in records)
    assert any(s[0] == "solo" and s[2] >= 0.3 for r in records for s in r["scores"])  # it would have passed


def test_stages_without_a_weightless_copy_decode_in_the_model_stage(tiny_wd, tmp_path):
    """The fallback (a tagger that cannot be copied without its weights), run in-process: same records."""
    files = _images(tmp_path / "data")
    (tmp_path / "data" / "empty.png").write_bytes(b"")
    files.append(tmp_path / "data" / "empty.png")
    options = make_tag_options(batch_size=4, workers=1, prob_floor=0.05)
    tagger = load_tagger(tiny_wd, device="cpu")
    plain = BulkOptions(manifest=tmp_path / "bulk.jsonl")
    for _ in run_bulk(tagger, files, options, plain):
        pass
    header = next(json.loads(line) for line in plain.manifest.read_text(encoding="utf-8").splitlines())
    stage = ray_engine.TagStage(str(tiny_wd), {"device": "cpu"}, options, None, None, header)
    batch = {"path": np.array([str(f) for f in files], dtype=object), "shard": np.zeros(len(files), dtype=np.int64)}
    for light in (None, ray_engine.light_copy(tagger)):
        out = stage(ray_engine._decode_batch(batch, light=light, options=options))
        got = {r["path"]: r for r in map(json.loads, out["record"])}
        assert got == {r["path"]: r for r in _records(plain.manifest)}  # the same run id too: the header is run_bulk's


def test_missing_ray_and_model_errors(tiny_wd, tmp_path, monkeypatch):
    kw = {"load_kwargs": {"device": "cpu"}, "options": make_tag_options(), "bulk": BulkOptions(manifest=tmp_path / "m.jsonl")}
    with pytest.raises(ModelNotFoundError):  # raised in a Ray task, said as tagloop's own error
        ray_engine.run_ray([tmp_path / "a.png"], model=str(tmp_path / "missing.pt"), **kw)
    # an error in the model actors (here: the model is not there) reaches the caller as itself too
    options = make_tag_options(batch_size=4, workers=1)
    shards = tmp_path / "shards"
    shards.mkdir()
    stage = {"load_kwargs": {"device": "cpu"}, "run_options": options, "blocklist": None, "max_tags": None, "light": None}
    with pytest.raises(ModelNotFoundError, match="missing"):
        ray_engine._compute(
            ray, ["a.png"], shards, model=str(tmp_path / "missing.pt"), header={}, shard_size=8, num_actors=1, gpus=0, **stage
        )
    assert not list(shards.glob("shard-*.jsonl"))
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(InputError, match=r'pip install "tagloop\[ray\]"'):
        ray_engine.run_ray([tmp_path / "a.png"], model=str(tiny_wd), **kw)


def test_killed_run_leaves_shards_the_next_run_merges(tiny_wd, tmp_path, monkeypatch):
    files = _images(tmp_path / "data")
    options = make_tag_options(batch_size=4, workers=1)
    bulk = BulkOptions(manifest=tmp_path / "m.jsonl", sidecar=True)
    shards = shard_dir(bulk.manifest)
    finish = ray_engine.ShardWriter.finish
    calls = []

    def stop_after_first(self):
        if calls:
            raise KeyboardInterrupt  # the run is killed while the second shard finishes
        calls.append(finish(self))
        return calls[-1]

    monkeypatch.setattr(ray_engine.ShardWriter, "finish", stop_after_first)
    monkeypatch.setattr(ray_engine, "ROWS_PER_BLOCK", 4)  # several decode tasks: shards may complete in any order
    kw = {"model": str(tiny_wd), "load_kwargs": {"device": "cpu"}, "options": options, "bulk": bulk, "shard_size": 8}
    with pytest.raises(KeyboardInterrupt):
        ray_engine.run_ray(files, **kw)
    monkeypatch.undo()
    left = sorted(shards.glob("shard-*.jsonl"))
    assert len(left) == 1 and not bulk.manifest.exists()
    first_run = json.loads(left[0].read_text(encoding="utf-8").splitlines()[1])
    assert first_run["type"] == "run"
    left_paths = {json.loads(line)["path"] for line in left[0].read_text(encoding="utf-8").splitlines()[2:]}
    assert len(left_paths) == 8

    stats = BulkStats()
    monkeypatch.setattr(ray_engine, "ROWS_PER_BLOCK", 4)
    ray_engine.run_ray(files, **kw, stats=stats)
    records = _records(bulk.manifest)
    assert sorted(r["path"] for r in records) == sorted(str(f) for f in files)  # each exactly once
    assert {r["path"] for r in records if r["run"] == first_run["id"]} == left_paths  # merged, not computed again
    assert stats.tagged + stats.failed == N_IMAGES + 1
    assert len(_captions(files)) == N_IMAGES
    assert not shards.exists()
    runs = [json.loads(line) for line in bulk.manifest.read_text(encoding="utf-8").splitlines()]
    assert [r["type"] for r in runs].count("run") == 2 and runs[0]["id"] == first_run["id"]
