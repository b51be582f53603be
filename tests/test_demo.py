"""`tagloop demo`: the whole loop offline on tiny models."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tagloop.a1111.infotext import read_image_metadata
from tagloop.cli import main
from tagloop.pipeline.demo import MARKER, build_models, draw_source_image


def _demo(out: Path, *args: str):
    return CliRunner().invoke(main, ["demo", "--out", str(out), *args], catch_exceptions=False)


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One demo run (2 variants), shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("demo") / "out"
    r = _demo(out, "--variants", "2")
    assert r.exit_code == 0, r.output
    return out, r.output


def test_demo_runs_the_loop(demo_run):
    out, _ = demo_run
    report = _report(out)
    assert report["schema_version"] == 1 and report["status"] == "ok"
    assert report["source_tags"]["tagger"]["complexity"] in ("simple", "medium", "complex")
    assert report["prompt"]["positive"].startswith("masterpiece")
    first = [v for v in report["variants"] if v["round"] == 0]
    assert [v["seed"] for v in first] == [1234, 1235]
    assert 2 <= len(report["variants"]) <= 4  # a refinement round with the same seeds, unless nothing changed
    for v in report["variants"]:
        meta = read_image_metadata(out / v["file"])
        assert meta.parameters["Seed"] in ("1234", "1235", 1234, 1235)
        assert "Negative prompt" in meta.parameters
        assert 0.0 <= v["scores"]["tagger"]["jaccard"] <= 1.0
    assert (out / MARKER).is_file() and (out / "report.html").is_file()
    assert "not" in report["note"] and "random-weight" in report["note"]


def test_demo_prints_the_adaptive_band_threshold(demo_run):
    out, output = demo_run
    source = _report(out)["source_tags"]["tagger"]
    assert source["threshold_mode"] == "adaptive"
    m = re.search(r"edge density [0-9.]+ -> (\w+) band, threshold ([0-9.]+): (\d+) tags", output)
    assert m, output
    assert m.group(1) == source["complexity"]
    assert float(m.group(2)) == pytest.approx(source["band_threshold"], abs=0.005)
    assert source["threshold"] == pytest.approx(source["band_threshold"])
    assert int(m.group(3)) == len(source["tags"])
    assert all(t["score"] >= source["band_threshold"] for t in source["tags"])


def test_demo_overlap_numbers_move(demo_run):
    """Before: a random tagger that gave every picture the same tags, so recall/precision/Jaccard were
    1.00/1.00/1.00 on pure-noise variants."""
    out, _ = demo_run
    report = _report(out)
    values = [v["scores"]["tagger"][k] for v in report["variants"] for k in ("recall", "precision", "jaccard")]
    assert not all(x == 1.0 for x in values), values
    assert any(v["scores"]["tagger"]["missing"] or v["scores"]["tagger"]["spurious"] for v in report["variants"])


def test_demo_tagger_scores_follow_the_pixels(demo_run):
    """The demo's tagger file, through the real loader: distinct pictures get distinct tags."""
    from tagloop.tagger.base import LoadOptions
    from tagloop.tagger.resolve import get_tagger
    from tagloop.tagger.run import TagOptions, tag_sources

    out, _ = demo_run
    dd, _ = build_models(out / "models")  # cached: the very file the demo used
    tagger = get_tagger(str(dd), LoadOptions(device="cpu"))
    rng = np.random.default_rng(5)
    images = {
        "source": draw_source_image(),
        "noise": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "red": Image.new("RGB", (256, 256), (200, 30, 30)),
        "white": Image.new("RGB", (256, 256), (255, 255, 255)),
    }
    probs = tagger.predict(np.stack([tagger.preprocess(im) for im in images.values()]))
    general = probs[:, :-3]  # the three ratings come last
    assert ((general > 0.05) & (general < 0.95)).mean() > 0.5  # mostly not saturated
    for i in range(len(probs)):
        for j in range(i + 1, len(probs)):
            assert np.abs(general[i] - general[j]).max() > 0.1, (i, j)
    results = list(tag_sources(tagger, list(images.values()), TagOptions(workers=1)))
    tag_sets = [frozenset(r.names()) for r in results]
    assert all(0 < len(s) < general.shape[1] for s in tag_sets), tag_sets
    assert len(set(tag_sets)) == len(tag_sets), tag_sets  # every picture its own tag set
    flipped = next(tag_sources(tagger, [images["source"].transpose(Image.FLIP_LEFT_RIGHT)], TagOptions(workers=1)))
    assert flipped.names()  # a flip is read too (a trained model would mostly agree with the source)


def test_demo_rerun_starts_clean_and_keeps_models_and_user_files(tmp_path):
    out = tmp_path / "demo"
    assert _demo(out, "--variants", "2").exit_code == 0
    model_files = sorted(p.relative_to(out) for p in (out / "models").rglob("*") if p.is_file())
    user_png = out / "variants" / "mine.png"
    Image.new("RGB", (8, 8)).save(user_png)
    user_note = out / "variants" / "notes.txt"
    user_note.write_text("keep me", encoding="utf-8")
    r = _demo(out, "--variants", "1", "--seed", "77", "--refine", "0")
    assert r.exit_code == 0, r.output
    report = _report(out)
    demo_pngs = sorted(p.name for p in (out / "variants").glob("*.png") if p != user_png)
    assert demo_pngs == ["r0-00000-77.png"]  # the first run's variants are gone
    assert [Path(v["file"]).name for v in report["variants"]] == demo_pngs
    assert user_png.is_file() and user_note.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.relative_to(out) for p in (out / "models").rglob("*") if p.is_file()) == model_files


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.json").write_text("{}", encoding="utf-8")
    (out / "thesis.txt").write_text("do not delete", encoding="utf-8")
    r = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert r.exit_code == 2
    assert "not made by the demo" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "thesis.txt"]
    assert (out / "report.json").read_text(encoding="utf-8") == "{}"
