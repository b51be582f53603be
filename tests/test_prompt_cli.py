"""``tagloop prompt`` end to end with CliRunner: --tags, --from-json, text and json, exit codes."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_prompt_tokens import write_tiny_clip

from tagloop.cli.prompt import prompt_command
from tagloop.tagger.result import TagResult, TagScore

SEED_QUALITY = "masterpiece, best quality, official art, extremely detailed CG"
SEED_NEGATIVE = "low quality, worst quality, blurry, cropped, text, watermark, signature"


def run(*args, input=None):
    return CliRunner().invoke(prompt_command, list(args), input=input, catch_exceptions=False)


def result(
    path="a.png",
    tags=(("1girl", 0.99), ("long_hair", 0.8), ("very_long_hair", 0.7), ("hair_ribbon_(blue)", 0.6), ("comic", 0.5)),
    rating=None,
    error=None,
):
    return TagResult(path, [TagScore(n, s) for n, s in tags], rating=rating or {"general": 0.9}, error=error).to_json()


def test_tags_to_text():
    r = run("--tags", "1girl, solo, long_hair, very long hair, hair_ribbon_(blue), rating:safe")
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        f"{SEED_QUALITY}, 1girl, solo, very long hair, hair ribbon \\(blue\\)\nNegative prompt: {SEED_NEGATIVE}\n"
    )


def test_tags_with_all_the_options(tmp_path):
    filt = tmp_path / "filter.txt"
    filt.write_text("# mine\n*_background\n!simple background\n", encoding="utf-8")
    r = run(
        "--tags",
        "smile, white_background, simple_background, solo, 1girl, chibi, realistic, long hair",
        "--filters",
        str(filt),
        "--style",
        "anime",
        "--preset",
        "plain",
        "--negative-preset",
        "landscape",
        "--always-first",
        "1girl, solo",
        "--replace",
        "smile=grin",
        "--no-overlap",
        "--trigger",
        "ace_step style",
        "--lora",
        "ace:0.8",
        "--weight",
        "grin=1.2",
    )
    assert r.exit_code == 0, r.output
    pos, neg = r.stdout.rstrip("\n").split("\n")
    assert pos == "ace_step style, 1girl, solo, (grin:1.2), simple background, long hair, <lora:ace:0.8>"
    assert neg.startswith("Negative prompt: blurry, lowres,") and neg.endswith("bad composition, realistic")


def test_from_json_object_list_and_jsonl(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(result()), encoding="utf-8")
    r = run("--from-json", str(one), "--format", "json", "--block", "comic")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["positive"] == f"{SEED_QUALITY}, 1girl, very long hair, hair ribbon \\(blue\\)"
    assert data["negative"] == SEED_NEGATIVE and data["rating"] == {"general": 0.9} and data["path"] == "a.png"
    assert {(x["tag"], x["filter"]) for x in data["removals"]} == {("comic", "blocklist"), ("long_hair", "overlap")}
    assert all(x["reason"] for x in data["removals"])

    many = [result("a.png"), result("b.png", tags=(("smile", 0.9),))]
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps(many), encoding="utf-8")
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text("\n".join(json.dumps(m) for m in many) + "\n", encoding="utf-8")
    for path in (lst, jsonl):
        r = run("--from-json", str(path), "--format", "json", "--preset", "plain", "--negative-preset", "none")
        assert r.exit_code == 0, r.output
        assert [d["positive"] for d in json.loads(r.stdout)] == ["1girl, very long hair, hair ribbon \\(blue\\), comic", "smile"]
    r = run("--from-json", str(jsonl), "--preset", "plain")
    assert r.stdout.startswith("# a.png\n1girl, very long hair")
    assert r.stdout.endswith("\n\n# b.png\nsmile\n")  # plain: no negative prompt, so no `Negative prompt:` line
    r = run("--from-json", "-", "--preset", "plain", "--negative-preset", "none", input=json.dumps(many[1]))
    assert r.stdout == "smile\n"


def test_tokenizer_and_budget_in_json(tmp_path):
    tok = write_tiny_clip(tmp_path / "model" / "tokenizer")
    r = run(
        "--tags",
        "(hair:0.9), (long:0.2), (blue:0.5)",
        "--preset",
        "plain",
        "--tokenizer",
        str(tok.parent),
        "--budget",
        "3",
        "--format",
        "json",
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["positive"] == "hair, blue" and data["dropped_for_budget"] == ["long"]
    assert data["tokens"]["positive"] == {
        "tokens": 3,
        "chunks": 1,
        "a1111_count": 3,
        "limit": 75,
        "counter": "clip:tokenizer",
        "exact": True,
    }


def test_bad_filter_file_exits_2_with_line(tmp_path):
    filt = tmp_path / "filter.txt"
    filt.write_text("comic\n\nre:(oops\n", encoding="utf-8")
    r = run("--tags", "1girl", "--filters", str(filt))
    assert r.exit_code == 2
    assert f"{filt}, line 3: `re:(oops` is not a valid regular expression" in r.output


def test_usage_errors_exit_2(tmp_path):
    assert run().exit_code == 2  # no source
    assert run("--tags", "a", "--from-json", __file__).exit_code == 2  # two sources
    r = run("--tags", "a", "--preset", "sd99")
    assert r.exit_code == 2 and "unknown preset 'sd99'" in r.output
    r = run("--tags", "a", "--style", "animu")
    assert r.exit_code == 2 and "unknown style" in r.output
    r = run("--tags", "a, b", "--emphasis", "confidence")
    assert r.exit_code == 2 and "needs tagger scores" in r.output
    assert run("--tags", "a", "--replace", "nothing").exit_code == 2
    assert run("--tags", "a", "--tokenizer", str(tmp_path / "none")).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"tags": [1, 2]', encoding="utf-8")
    r = run("--from-json", str(bad))
    assert r.exit_code == 2 and "not JSON or JSONL" in r.output


def test_failed_results_exit_1(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        json.dumps(result("ok.png")) + "\n" + json.dumps(result("bad.png", error="cannot decode")) + "\n", encoding="utf-8"
    )
    r = run("--from-json", str(path), "--format", "json")
    assert r.exit_code == 1
    assert "bad.png: cannot decode" in r.stderr
    assert [d["path"] for d in json.loads(r.stdout)] == ["ok.png"]


def test_help_has_example_and_every_option_has_help():
    r = run("--help")
    assert r.exit_code == 0 and "Example" in r.output and "tagloop prompt --tags" in r.output
    assert all(p.help for p in prompt_command.params if hasattr(p, "help") and p.param_type_name == "option")


def test_image_is_tagged_then_composed(tmp_path):
    """IMAGE input: the tagger options reach the tagger; same prompt as composing its JSON result."""
    import numpy as np
    from PIL import Image

    from tagloop.cli.tag import tag_one
    from tagloop.testing import save_tiny_deepdanbooru

    model, tags = save_tiny_deepdanbooru(tmp_path / "model-resnet_custom_v3.pt", num_tags=12, seed=3)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB").save(img)
    r = run(str(img), "--model", str(model), "--threshold", "0", "--format", "json", "--max-tags", "5", "--preset", "plain")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len([p for p in data["parts"] if p["kind"] == "tag"]) == 5
    assert set(data["rating"]) == {t.removeprefix("rating:") for t in tags if t.startswith("rating:")}
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(tag_one(str(img), model=str(model), threshold=0.0).to_json()), encoding="utf-8")
    again = json.loads(run("--from-json", str(saved), "--format", "json", "--max-tags", "5", "--preset", "plain").stdout)
    assert again["positive"] == data["positive"]


def test_unreadable_or_malformed_json_is_a_usage_error_not_a_traceback(tmp_path):
    cases = {
        "latin1.json": b'{"tags": [{"name": "caf\xe9", "score": 0.5}]}',
        "null_name.json": b'{"tags": [{"name": null, "score": 0.5}]}',
        "number_name.json": b'{"tags": [{"name": 3, "score": 0.5}]}',
        "rating_list.json": b'{"tags": [{"name": "a", "score": 0.5}], "rating": [1]}',
        "tags_not_objects.json": b'{"tags": ["a", "b"]}',
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        r = run("--from-json", str(path))
        assert r.exit_code == 2, (name, r.output)
        assert name in r.output
    r = run("--from-json", "-", input=b'{"tags": [{"name": "caf\xe9", "score": 0.5}]}')
    assert r.exit_code == 2 and "UTF-8" in r.output


def test_image_that_cannot_be_decoded_fails_with_exit_1(tmp_path):
    from tagloop.testing import save_tiny_deepdanbooru

    model, _ = save_tiny_deepdanbooru(tmp_path / "model-resnet_custom_v3.pt", num_tags=12, seed=3)
    img = tmp_path / "broken.png"
    img.write_bytes(b"not an image")
    r = run(str(img), "--model", str(model))
    assert r.exit_code == 1, r.output
    assert "broken.png" in r.stderr and "not an image" in r.stderr
    assert r.stdout == ""  # no prompt, not an empty line
