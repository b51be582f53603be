"""`tagloop reproduce --compare-styles`: round 0 again with other prompt styles, the same seeds, the same scores."""

from __future__ import annotations

import pytest
from test_reproduce import FAST, _check_numbers, _expected, _json, _run, _sources

import tagloop
from tagloop.a1111.infotext import read_image_metadata


@pytest.fixture(scope="module")
def styled(loop_models, tmp_path_factory):
    dd, sd = loop_models
    base = tmp_path_factory.mktemp("styles")
    _sources(base / "in", seeds=(7,))
    out = base / "out"
    args = ["reproduce", str(base / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(out), "--variants", "2", "--refine", "1", "--seed", "5", "--threshold", "0.5", "--no-overlap", "--compare-styles", "tags,sentence", *FAST]  # fmt: skip
    r = _run(*args)
    assert r.exit_code == 0, r.output
    return out / "pic7", args


def test_both_styles_same_seeds_their_own_prompts(styled):
    folder, _ = styled
    report = _json(folder / "report.json")
    styles = report["styles"]
    assert styles["base"] == "tags" and list(styles["by_style"]) == ["tags", "sentence"]
    tags, sentence = styles["by_style"]["tags"], styles["by_style"]["sentence"]
    assert tags["variants"] == report["rounds"][0]["variants"]  # the run's own style is round 0
    assert tags["prompt"] == report["rounds"][0]["positive"]
    assert sentence["prompt"] != tags["prompt"]
    assert sentence["variants"] == ["s-sentence-00000-5", "s-sentence-00001-6"]
    by_id = {v["id"]: v for v in report["variants"]}
    assert [by_id[i]["seed"] for i in sentence["variants"]] == [by_id[i]["seed"] for i in tags["variants"]] == [5, 6]
    for vid in sentence["variants"]:
        v = by_id[vid]
        assert v["style"] == "sentence" and v["round"] is None and v["file"] == f"variants/{vid}.png"
        params = read_image_metadata(folder / v["file"]).parameters
        assert params["Prompt"] == sentence["prompt"] and params.get("Negative prompt", "") == sentence["negative"]
        assert str(params["Seed"]) == str(v["seed"])
    assert styles["best"] in ("tags", "sentence")
    assert styles["by_style"][styles["best"]]["mean"]["tagger"]["f1"] == max(
        e["mean"]["tagger"]["f1"] for e in styles["by_style"].values()
    )
    # the run's own summary and best are its rounds' variants only; refinement went on from the tags prompt
    assert not report["best"]["id"].startswith("s-")
    own = [v for v in report["variants"] if not v.get("style")]
    f1s = [v["scores"]["tagger"]["f1"] for v in own]
    assert report["summary"]["tagger"]["mean"]["f1"] == pytest.approx(sum(f1s) / len(f1s), abs=2e-6)
    assert all(i.startswith("r") for rnd in report["rounds"] for i in rnd["variants"])
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert 'id="styles"' in html and "s-sentence-00000-5" in html


def test_style_scores_match_an_independent_recomputation(styled):
    folder, _ = styled
    report = _json(folder / "report.json")
    assert _check_numbers(report, 0.5) == len(report["variants"])  # style variants included
    for entry in report["styles"]["by_style"].values():
        f1s = [_expected(report, i, 0.5)["f1"] for i in entry["variants"]]
        assert entry["mean"]["tagger"]["f1"] == pytest.approx(sum(f1s) / len(f1s), abs=2e-6)
        recalls = [_expected(report, i, 0.5)["recall"] for i in entry["variants"]]
        assert entry["mean"]["tagger"]["recall"] == pytest.approx(sum(recalls) / len(recalls), abs=2e-6)
        assert entry["best"]["f1"] == pytest.approx(max(f1s), abs=2e-6)
        assert entry["best"]["id"] in entry["variants"]


def test_resume_reuses_the_style_files(styled):
    folder, args = styled
    full = _json(folder / "report.json")
    (folder / "report.json").unlink()
    (folder / "variants" / "s-sentence-00001-6.png").unlink()
    kept = folder / "variants" / "s-sentence-00000-5.png"
    mtime = kept.stat().st_mtime_ns
    assert _run(*args).exit_code == 0
    assert kept.stat().st_mtime_ns == mtime  # read back, not generated again
    again = _json(folder / "report.json")
    for name, entry in full["styles"]["by_style"].items():
        assert {k: again["styles"]["by_style"][name][k] for k in ("prompt", "negative", "variants")} == {
            k: entry[k] for k in ("prompt", "negative", "variants")
        }
    # the read-back variant scores as before (a regenerated one may differ in the last digits: batch of 1 vs 2)
    score = {v["id"]: v["scores"] for v in again["variants"]}
    assert [score[v["id"]] for v in full["variants"] if v["id"] != "s-sentence-00001-6"] == [
        v["scores"] for v in full["variants"] if v["id"] != "s-sentence-00001-6"
    ]


def test_without_the_option_no_styles(loop_models, tmp_path):
    dd, sd = loop_models
    src = _sources(tmp_path / "in", seeds=(5,))[0]
    result = tagloop.reproduce(src, tagger=str(dd), generator=str(sd), device="cpu", variants=1, seed=2, steps=3, width=64, height=64, tokenizer="estimate")  # fmt: skip
    assert "styles" not in result.report and "compare_styles" not in result.report["settings"]
    assert all("style" not in v for v in result.report["variants"])


def test_python_api_compare_styles(loop_models, tmp_path):
    dd, sd = loop_models
    src = _sources(tmp_path / "in", seeds=(5,))[0]
    result = tagloop.reproduce(src, tagger=str(dd), generator=str(sd), device="cpu", variants=1, seed=2, steps=3, width=64, height=64, tokenizer="estimate", compare_styles=("sentence",))  # fmt: skip
    styles = result.report["styles"]
    assert list(styles["by_style"]) == ["tags", "sentence"]  # the run's own style is always compared
    assert [v.id for v in result.variants] == ["r0-00000-2", "s-sentence-00000-2"]
    assert result.variants[1].image is not None and result.best["id"] == "r0-00000-2"


@pytest.mark.parametrize("value", ["tags,poem", "sentences"])
def test_a_bad_style_is_one_sentence(loop_models, tmp_path, value):
    dd, sd = loop_models
    _sources(tmp_path / "in", seeds=(7,))
    r = _run("reproduce", str(tmp_path / "in"), "--tagger", str(dd), "--model", str(sd), "--out", str(tmp_path / "out"), "--compare-styles", value, *FAST)  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "compare_styles" in lines[0], r.output
    assert not (tmp_path / "out").exists()


def test_rescore_recomputes_the_styles(styled):
    folder, _ = styled
    assert _run("report", str(folder), "--threshold", "0.4", "--no-overlap").exit_code == 0
    report = _json(folder / "report.json")
    for entry in report["styles"]["by_style"].values():
        f1s = [_expected(report, i, 0.4)["f1"] for i in entry["variants"]]
        assert entry["mean"]["tagger"]["f1"] == pytest.approx(sum(f1s) / len(f1s), abs=2e-6)
