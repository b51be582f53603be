"""`tagloop reproduce`, `tagloop report` and `tagloop.reproduce`/`tagloop.compare` on tiny models.

The report's numbers are recomputed here from the tagger outputs the report keeps, by a small
function of this file (plain Python sets and sums, its own name normalisation), not by tagloop's.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import tagloop
from tagloop.a1111.infotext import read_image_metadata
from tagloop.cli import main
from tagloop.pipeline.demo import draw_source_image

FAST = ["--steps", "3", "--size", "64x64", "--sampler", "Euler a", "--tokenizer", "estimate", "--device", "cpu", "-q"]


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _sources(folder: Path, seeds=(7, 11)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in seeds:
        p = folder / f"pic{s}.png"
        draw_source_image(seed=s).save(p)
        paths.append(p)
    return paths


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --- an independent recomputation of the scores ------------------------------------------------


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _tagset(raw: dict, threshold: float, excluded: set[str]) -> dict[str, float]:
    return {_key(n): p for n, c, p in raw["scores"] if p >= threshold and c != "rating" and _key(n) not in excluded}


def _vector(raw: dict, excluded: set[str]) -> dict[str, float]:
    return {_key(n): p for n, c, p in raw["scores"] if c != "rating" and _key(n) not in excluded}


def _expected(report: dict, variant_id: str, threshold: float, scorer: str = "tagger") -> dict[str, float | None]:
    excluded = set(report["excluded"])
    src_raw = report["images"]["source"]["outputs"][scorer]
    var_raw = report["images"][variant_id]["outputs"][scorer]
    s, v = _tagset(src_raw, threshold, excluded), _tagset(var_raw, threshold, excluded)
    p, q = _vector(src_raw, excluded), _vector(var_raw, excluded)
    common = len(set(s) & set(v))
    keys = set(p) | set(q)
    dot = sum(p.get(k, 0) * q.get(k, 0) for k in keys)
    return {
        "recall": common / len(s) if s else None,
        "precision": common / len(v) if v else None,
        "f1": 2 * common / (len(s) + len(v)) if s or v else None,
        "jaccard": common / len(set(s) | set(v)) if s or v else None,
        "soft_recall": dot / sum(x * x for x in p.values()),
        "weighted_jaccard": sum(min(p.get(k, 0), q.get(k, 0)) for k in keys) / sum(max(p.get(k, 0), q.get(k, 0)) for k in keys),
        "cosine": dot / math.sqrt(sum(x * x for x in p.values()) * sum(x * x for x in q.values())),
        "missing": sorted(set(s) - set(v)),
        "spurious": sorted(set(v) - set(s)),
    }


def _check_numbers(report: dict, threshold: float, scorer: str = "tagger") -> int:
    checked = 0
    for variant in report["variants"]:
        if variant.get("error"):
            continue
        want = _expected(report, variant["id"], threshold, scorer)
        got = variant["scores"][scorer]
        for metric in ("recall", "precision", "f1", "jaccard", "soft_recall", "weighted_jaccard", "cosine"):
            if want[metric] is None:
                assert got[metric] is None, (variant["id"], metric)
            else:
                assert got[metric] == pytest.approx(want[metric], abs=2e-6), (variant["id"], metric)
        assert sorted(m["tag"] for m in got["missing"]) == want["missing"]
        assert sorted(m["tag"] for m in got["spurious"]) == want["spurious"]
        checked += 1
    return checked


# --- the run ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(loop_models, tmp_path_factory):
    """Two sources from a folder, 2 variants, 1 refinement round, a fixed threshold (the independent
    check thresholds by hand) and no overlap rule (the check has no implication table)."""
    dd, sd = loop_models
    base = tmp_path_factory.mktemp("reproduce")
    _sources(base / "in")
    out = base / "out"
    r = _run(
        "reproduce", str(base / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(out),
        "--variants", "2", "--refine", "1", "--seed", "5", "--threshold", "0.5", "--no-overlap", *FAST,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return out, r.output


def test_layout_index_and_variants(run):
    out, output = run
    index = _json(out / "index.json")
    assert [e["stem"] for e in index["sources"]] == ["pic11", "pic7"]
    assert (out / "index.html").is_file()
    for entry in index["sources"]:
        folder = out / entry["stem"]
        for name in ("source.png", "prompt.json", "report.json", "report.html"):
            assert (folder / name).is_file(), name
        report = _json(folder / "report.json")
        assert report["schema_version"] == 1 and report["kind"] == "tagloop-reproduce-report"
        assert entry["best_f1"] == pytest.approx(report["best"]["f1"], abs=1e-6)
        assert entry["status"] == "ok"
        first = [v for v in report["variants"] if v["round"] == 0]
        assert [v["seed"] for v in first] == [5, 6]  # image i gets seed + i
        for v in report["variants"]:
            params = read_image_metadata(folder / v["file"]).parameters
            assert str(params["Seed"]) == str(v["seed"])
            rnd = report["rounds"][v["round"]]
            assert params["Prompt"] == rnd["positive"] and params.get("Negative prompt", "") == rnd["negative"]
        rounds = report["rounds"]
        assert all(sorted(report["variants"][i]["seed"] for i in range(len(r["variants"]))) == [5, 6] for r in rounds)
        # the prompt file is what `tagloop generate --from-json` reads
        from tagloop.generator.settings import read_prompt_json

        assert read_prompt_json(folder / "prompt.json") == [(report["prompt"]["positive"], report["prompt"]["negative"])]
        assert set(report["timings"]) >= {"tag", "compose", "generate", "retag", "calibrate", "total"}
        assert report["models"]["tagger"]["sha256"] and report["models"]["generator"]["family"] == "sd1"
        assert f"{report['source']['path']}: best F1" in output


def test_numbers_match_an_independent_recomputation(run):
    out, _ = run
    checked = 0
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        report = _json(folder / "report.json")
        assert report["source_tags"]["tagger"]["threshold"] == 0.5
        checked += _check_numbers(report, 0.5)
        # the injected quality tags are left out, the rating too
        assert set(report["excluded"]) >= {"masterpiece", "best_quality"}
        assert not any(k.startswith("rating") for k in report["source_tags"]["tagger"]["set"])
        # the ceiling is the source against its altered copies, with the same rule
        for cid, metrics in report["calibration"]["tagger"]["ceiling"]["copies"].items():
            assert metrics["f1"] == pytest.approx(_expected(report, cid, 0.5)["f1"], abs=2e-6)
        # position = (score - floor) / (ceiling - floor), floor 0 without a floor folder
        ceiling = report["calibration"]["tagger"]["ceiling"]["mean"]["f1"]
        for v in report["variants"]:
            assert v["scores"]["tagger"]["position"]["f1"] == pytest.approx(v["scores"]["tagger"]["f1"] / ceiling, abs=1e-5)
    assert checked >= 4


def test_refinement_changes_the_prompt_as_specified(run):
    out, _ = run
    report = _json(out / "pic7" / "report.json")
    rounds = report["rounds"]
    by_id = {v["id"]: v for v in report["variants"]}
    r0 = [by_id[i]["scores"]["tagger"] for i in rounds[0]["variants"]]
    n = len(r0)
    missed = {t: sum(t in {m["tag"] for m in s["missing"]} for s in r0) for s in r0 for t in (m["tag"] for m in s["missing"])}
    spurious = {t: sum(t in {m["tag"] for m in s["spurious"]} for s in r0) for s in r0 for t in (m["tag"] for m in s["spurious"])}
    in_prompt = {p["tag"] for p in report["prompt"]["parts"] if p["kind"] == "tag"}
    want_weight = {t for t, c in missed.items() if c >= math.ceil(n / 2) and t in in_prompt}
    want_negative = {t for t, c in spurious.items() if c > n / 2}
    if not (want_weight or want_negative):
        assert len(rounds) == 1 and "no tag was missed" in report["stopped"]
        return
    changes = rounds[1]["changes"]
    assert {c["tag"] for c in changes if c["change"] == "weight"} == want_weight
    assert {c["tag"] for c in changes if c["change"] == "negative"} == want_negative
    for c in changes:
        text = c["tag"].replace("_", " ")
        if c["change"] == "weight":
            assert c["to"] == pytest.approx(min(1.4, c["from"] + 0.1))
            assert f"({text}:{c['to']:g})" in rounds[1]["positive"]
        else:
            assert text in rounds[1]["negative"].split(", ")
            assert text not in rounds[0]["negative"].split(", ")
    # the best variant is never worse than the first round's best on the score the loop optimises
    best0 = max(s["f1"] for s in r0)
    assert report["best"]["f1"] >= best0


def test_rerun_skips_finished_sources(run, loop_models):
    out, _ = run
    dd, sd = loop_models
    before = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "index.json" and p.name != "index.html"
    }
    r = _run("reproduce", str(out.parent / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(out), "--variants", "2", "--refine", "1", "--seed", "5", "--threshold", "0.5", "--no-overlap", *FAST)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.count("already finished: skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_rescore_with_a_new_threshold_needs_no_model(run, tmp_path):
    import shutil

    out, _ = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    r = _run("report", str(copy), "--threshold", "0.3")
    assert r.exit_code == 0, r.output
    report = _json(copy / "pic7" / "report.json")
    assert report["settings"]["tag"]["threshold"] == 0.3 and report["rescored"]
    assert report["source_tags"]["tagger"]["threshold"] == 0.3
    assert _check_numbers(report, 0.3) >= 2
    old = _json(out / "pic7" / "report.json")
    assert [v["scores"]["tagger"]["f1"] for v in report["variants"]] != [v["scores"]["tagger"]["f1"] for v in old["variants"]]
    index = _json(copy / "index.json")
    assert {e["stem"]: e["best_f1"] for e in index["sources"]}["pic7"] == pytest.approx(report["best"]["f1"], abs=1e-6)
    # the filters can change too: blocking a source tag takes it out of every set
    tag = report["source_tags"]["tagger"]["set"][0]
    r = _run("report", str(copy / "pic7"), "--block", tag)
    assert r.exit_code == 0, r.output
    blocked = _json(copy / "pic7" / "report.json")
    assert tag not in blocked["source_tags"]["tagger"]["set"]
    assert blocked["settings"]["tag"]["threshold"] == 0.3  # the earlier re-score's threshold is kept


def test_compare_any_images(run, loop_models, tmp_path):
    out, _ = run
    dd, _ = loop_models
    report = _json(out / "pic7" / "report.json")
    files = [str(out / "pic7" / v["file"]) for v in report["variants"] if v["round"] == 0]
    r = _run("report", "--compare", str(out / "pic7" / "source.png"), *files, "--tagger", str(dd), "--device", "cpu", "--threshold", "0.5", "--no-overlap", "--format", "json", "--out", str(tmp_path / "cmp"))  # fmt: skip
    assert r.exit_code == 0, r.output
    cmp = json.loads(r.output)
    assert cmp["kind"] == "tagloop-compare-report" and len(cmp["variants"]) == 2
    assert (tmp_path / "cmp" / "report.html").is_file()
    # the same pictures score as in the run (nothing in them is an injected quality tag of this tagger)
    for got, want in zip(cmp["variants"], [v for v in report["variants"] if v["round"] == 0]):
        assert got["scores"]["tagger"]["f1"] == pytest.approx(want["scores"]["tagger"]["f1"], abs=1e-6)


# --- the Python API ------------------------------------------------------------------------------


def test_python_api_reproduce_and_compare(loop_models):
    dd, sd = loop_models
    tagger = tagloop.load_tagger(dd, device="cpu")
    gen = tagloop.load_generator(sd, device="cpu", progress=False)
    result = tagloop.reproduce(
        draw_source_image(seed=3),
        tagger=tagger,
        generator=gen,
        variants=2,
        seed=9,
        steps=3,
        width=64,
        height=64,
        tokenizer="estimate",
    )
    assert isinstance(result, tagloop.ReproduceResult) and result.status == "ok"
    assert [v.seed for v in result.variants] == [9, 10] and all(v.image is not None and v.path is None for v in result.variants)
    assert result.best["id"] in {v.id for v in result.variants}
    assert result.to_json()["schema_version"] == 1
    json.dumps(result.to_json())  # plain JSON
    cmp = tagloop.compare(draw_source_image(seed=3), [v.image for v in result.variants], tagger=tagger)
    assert isinstance(cmp, tagloop.Comparison)
    assert [v.f1 for v in cmp.variants] == pytest.approx([v.f1 for v in result.variants], abs=1e-9)
    with pytest.raises(tagloop.InputError, match="unknown setting 'stepz'"):
        tagloop.reproduce(draw_source_image(), tagger=tagger, generator=gen, stepz=3)


def test_python_api_writes_the_same_files(loop_models, tmp_path):
    dd, sd = loop_models
    src = _sources(tmp_path / "in", seeds=(5,))[0]
    result = tagloop.reproduce(src, tagger=str(dd), generator=str(sd), device="cpu", variants=1, seed=2, out_dir=tmp_path / "out", steps=3, width=64, height=64, tokenizer="estimate")  # fmt: skip
    assert result.out_dir == tmp_path / "out" / "pic5"
    assert _json(result.out_dir / "report.json")["best"] == result.best
    again = tagloop.reproduce(src, tagger=str(dd), generator=str(sd), device="cpu", variants=1, seed=2, out_dir=tmp_path / "out", steps=3, width=64, height=64, tokenizer="estimate")  # fmt: skip
    assert again.skipped and again.best == result.best


# --- resume ----------------------------------------------------------------------------------------


def test_a_half_done_source_is_finished_from_its_files(loop_models, tmp_path):
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    args = ["reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(tmp_path / "out"), "--variants", "3", "--seed", "40", *FAST]  # fmt: skip
    assert _run(*args).exit_code == 0
    folder = tmp_path / "out" / "pic7"
    full = _json(folder / "report.json")
    pixels = {p.name: Image.open(p).tobytes() for p in (folder / "variants").glob("*.png")}
    # what a run killed after its first variants leaves: no report, one variant missing
    (folder / "report.json").unlink()
    (folder / "report.html").unlink()
    (folder / "variants" / "r0-00001-41.png").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (folder / "variants").glob("*.png")}
    assert _run(*args).exit_code == 0
    assert {p: (folder / "variants" / p).stat().st_mtime_ns for p in kept} == kept  # read back, not generated again
    assert {
        p.name: Image.open(p).tobytes() for p in (folder / "variants").glob("*.png")
    } == pixels  # the same seed, the same picture
    again = _json(folder / "report.json")
    assert [v["scores"] for v in again["variants"]] == [v["scores"] for v in full["variants"]]


def test_kill_9_then_resume(loop_models, tmp_path):
    """A real kill -9 in the middle of a run: nothing torn, the re-run finishes every source."""
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(1, 2, 3))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "tagloop", "reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(out), "--variants", "3", "--refine", "1", "--seed", "8", *FAST]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "pic1" / "report.json").is_file() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for p in out.rglob("*"):  # every output there is whole
        if p.suffix == ".png" and not p.name.startswith("."):
            Image.open(p).load()
        elif p.suffix == ".json" and not p.name.startswith("."):
            json.loads(p.read_text(encoding="utf-8"))
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    index = _json(out / "index.json")
    assert [e["status"] for e in index["sources"]] == ["ok", "ok", "ok"]
    assert "already finished: skipped" in r.stdout  # pic1 was done before the kill


# --- bad input -----------------------------------------------------------------------------------


def test_bad_source_is_one_line_and_the_others_go_on(loop_models, tmp_path):
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = _run("reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(tmp_path / "out"), "--variants", "1", *FAST)  # fmt: skip
    assert r.exit_code == 1
    assert any("broken.png" in line for line in r.output.splitlines())
    index = {e["stem"]: e for e in _json(tmp_path / "out" / "index.json")["sources"]}
    assert index["broken"]["status"] == "failed" and index["pic7"]["status"] == "ok"


def test_a_source_with_no_tags_is_recorded(loop_models, tmp_path):
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    r = _run("reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(tmp_path / "out"), "--threshold", "1.0", *FAST)  # fmt: skip
    assert r.exit_code == 1
    report = _json(tmp_path / "out" / "pic7" / "report.json")
    assert report["status"] == "no_tags" and "no tags" in report["message"] and report["variants"] == []
    assert "no_tags" in r.output
    assert "no tags" in (tmp_path / "out" / "pic7" / "report.html").read_text(encoding="utf-8")


def test_a_missing_model_is_one_sentence_before_any_work(loop_models, tmp_path):
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    for args in (
        ["--tagger", str(dd), "--model", str(tmp_path / "nope.safetensors")],
        ["--tagger", str(tmp_path / "nope.onnx"), "--model", str(sd)],
    ):
        r = _run("reproduce", str(tmp_path / "in"), *args, "--out", str(tmp_path / "out"), *FAST)
        assert r.exit_code == 2, r.output
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "nope" in lines[0], r.output
        assert not (tmp_path / "out").exists()


def test_an_output_may_not_be_an_input(loop_models, tmp_path):
    """OUT/source/source.png given as a source: its own folder is OUT/source/, so its output would be itself."""
    dd, sd = loop_models
    out = tmp_path / "out"
    (out / "source").mkdir(parents=True)
    src = out / "source" / "source.png"
    draw_source_image().save(src)
    before = src.read_bytes()
    r = _run("reproduce", str(src), "--tagger", str(dd), "--model", str(sd), "--out", str(out), *FAST)
    assert r.exit_code == 2, r.output
    assert "source.png" in r.output and len([line for line in r.output.splitlines() if line.strip()]) == 1
    assert src.read_bytes() == before
    assert sorted(p.name for p in out.rglob("*")) == ["source", "source.png"]


def test_one_failed_variant_is_recorded_and_the_others_go_on(loop_models, tmp_path):
    from tagloop.generator.generate import Generator
    from tagloop.pipeline.reproduce import Reproducer, ReproduceSettings
    from tagloop.prompt import PromptSettings
    from tagloop.tagger.base import LoadOptions
    from tagloop.tagger.resolve import get_tagger

    dd, sd = loop_models

    class OneSeedFails(Generator):
        """The real generator; the picture of seed 21 fails as an out-of-disk or driver error would."""

        def generate(self, settings=None, **fields):
            s = settings
            if s is not None and s.prompt != "x" and s.seed <= 21 < s.seed + s.batch_size:
                raise RuntimeError("simulated failure for seed 21")
            return super().generate(settings, **fields)

    gen = OneSeedFails(str(sd), device="cpu", progress=False, notice=lambda m: None)
    from tagloop.generator.settings import GenerationSettings

    rep = Reproducer(
        get_tagger(str(dd), LoadOptions(device="cpu")),
        gen,
        prompt_settings=PromptSettings(tokenizer="estimate"),
        generation=GenerationSettings(steps=3, width=64, height=64),
        settings=ReproduceSettings(variants=3, seed=20),
    )
    result = rep.run(draw_source_image(), tmp_path / "one")
    errors = {v.seed: v.error for v in result.variants}
    assert errors[20] is None and errors[22] is None and "seed 21" in errors[21]
    report = _json(tmp_path / "one" / "report.json")
    assert [bool(v.get("error")) for v in report["variants"]] == [False, True, False]
    assert "tagger" in report["variants"][0]["scores"] and report["variants"][1]["scores"] == {}
    assert "seed 21" in (tmp_path / "one" / "report.html").read_text(encoding="utf-8")


# --- img2img, judge, CLIP, groups --------------------------------------------------------------------


def test_img2img_judge_and_clip(loop_models, tiny_wd, tiny_clip, tmp_path):
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    floor = tmp_path / "floor"
    floor.mkdir()
    for i, colour in enumerate([(200, 30, 30), (20, 160, 40)]):
        Image.new("RGB", (96, 96), colour).save(floor / f"f{i}.png")
    r = _run(
        "reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(tmp_path / "out"),
        "--variants", "2", "--img2img", "--denoise", "0.5", "--judge-tagger", str(tiny_wd), "--clip-model", str(tiny_clip),
        "--floor", str(floor), *FAST,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = _json(tmp_path / "out" / "pic7" / "report.json")
    assert report["scorers"] == ["tagger", "judge", "clip", "structure"]
    assert report["models"]["judge"]["family"] == "wd14" and report["models"]["tagger"]["family"] == "deepdanbooru"
    for v in report["variants"]:
        params = read_image_metadata(tmp_path / "out" / "pic7" / v["file"]).parameters
        assert float(params["Denoising strength"]) == 0.5
        assert set(v["scores"]) == {"tagger", "judge", "clip", "structure"}
        assert -1.0 <= v["scores"]["clip"]["cosine"] <= 1.0
    cal = report["calibration"]
    assert cal["tagger"]["floor"] is not None and set(cal["tagger"]["floor"]["copies"]) == {"floor-0", "floor-1"}
    assert cal["clip"]["ceiling"]["mean"]["cosine"] > cal["clip"]["floor"]["mean"]["cosine"]
    v = report["variants"][0]["scores"]["tagger"]
    c, f = cal["tagger"]["ceiling"]["mean"]["f1"], cal["tagger"]["floor"]["mean"]["f1"]
    if abs(c - f) > 1e-9:
        assert v["position"]["f1"] == pytest.approx((v["f1"] - f) / (c - f), abs=1e-5)
    html = (tmp_path / "out" / "pic7" / "report.html").read_text(encoding="utf-8")
    assert 'data-scorer="judge"' in html and 'data-scorer="clip"' in html


def test_group_scores():
    from tagloop.report.compare import ScoredTags, group_scores
    from tagloop.report.groups import load_groups

    groups = load_groups()
    src = ScoredTags(
        {"blue_hair": 0.9, "long_hair": 0.8, "smile": 0.7, "skirt": 0.6, "hatsune_miku": 0.9},
        {"blue_hair": 0.9, "black_hair": 0.2, "long_hair": 0.8, "smile": 0.7, "skirt": 0.6, "hatsune_miku": 0.9, "red_eyes": 0.3},
        {"hatsune_miku": "character"},
    )
    var = ScoredTags(
        {"black_hair": 0.7, "long_hair": 0.9, "skirt": 0.5, "hatsune_miku": 0.8},
        {"black_hair": 0.7, "blue_hair": 0.4, "long_hair": 0.9, "skirt": 0.5, "hatsune_miku": 0.8},
        {"hatsune_miku": "character"},
    )
    g = group_scores(src, var, groups)
    assert g["hair_color"] == {
        "kind": "exclusive",
        "label": "hair colour",
        "source": "blue_hair",
        "variant": "black_hair",
        "agree": 0.0,
    }
    assert g["hair_length"]["agree"] == 1.0
    assert "eye_color" not in g  # red_eyes is below the source's threshold: the group does not apply
    assert g["expression"]["recall"] == 0.0 and g["clothing"]["recall"] == 1.0
    assert g["character"]["source"] == ["hatsune_miku"] and g["character"]["recall"] == 1.0


def test_groups_file_errors_and_replacement(loop_models, tmp_path):
    from tagloop.report.groups import load_groups

    bad = tmp_path / "bad.toml"
    bad.write_text('[hair]\nkind = "sometimes"\ntags = ["a"]\n', encoding="utf-8")
    with pytest.raises(tagloop.InputError, match="kind must be one of"):
        load_groups(bad)
    with pytest.raises(tagloop.InputError, match="does not exist"):
        load_groups(tmp_path / "nope.toml")
    mine = tmp_path / "mine.toml"
    mine.write_text('[mood]\nlabel = "mood"\nkind = "open"\ntags = ["blush", "smile"]\n', encoding="utf-8")
    assert [g.name for g in load_groups(mine)] == ["mood"]
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    r = _run("reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(tmp_path / "out"), "--variants", "1", "--groups", str(bad), *FAST)  # fmt: skip
    assert r.exit_code == 2 and "kind must be one of" in r.output


def test_config_file_fills_the_loop_options(loop_models, tmp_path):
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    config = tmp_path / "tagloop.toml"
    config.write_text(
        f'device = "cpu"\n[reproduce]\ntagger = "{dd}"\nmodel = "{sd}"\nvariants = 1\nseed = 77\nsteps = 2\n'
        'size = "64x64"\ntokenizer = "estimate"\nthreshold = 0.5\n',
        encoding="utf-8",
    )
    r = _run("--config", str(config), "reproduce", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-q")
    assert r.exit_code == 0, r.output
    report = _json(tmp_path / "out" / "pic7" / "report.json")
    assert [v["seed"] for v in report["variants"]] == [77] and report["settings"]["tag"]["threshold"] == 0.5
    assert report["settings"]["generate"]["steps"] == 2 and report["settings"]["generate"]["width"] == 64
