"""Sentence prompts (``prompt_style`` sentence / llm): golden sentences, tag coverage, budget, the LLM check."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tagloop import notices
from tagloop.errors import InputError, TagloopError
from tagloop.prompt import PromptSettings, compose_prompt
from tagloop.prompt.presets import PromptPreset
from tagloop.prompt.sentence import estimate_t5_tokens, find_tag, load_sentence_groups
from tagloop.tagger.result import TagResult, TagScore

EXAMPLE = (
    "A girl with long blue hair and red eyes, smiling, wearing a school uniform with a red necktie, "
    "sitting at a desk in a classroom by a window, sunlight, looking at the viewer."
)
EXAMPLE_TAGS = (
    "1girl long_hair blue_hair red_eyes smile school_uniform red_necktie sitting desk classroom window sunlight looking_at_viewer"
).split()


def R(*tags) -> TagResult:
    return TagResult("img.png", [TagScore(t[0], t[1], t[2] if len(t) > 2 else "general") for t in tags])


def example() -> TagResult:
    return R(*[(t, 0.9) for t in EXAMPLE_TAGS])


def S(**kw) -> PromptSettings:
    kw.setdefault("preset", "plain")
    kw.setdefault("prompt_style", "sentence")
    return PromptSettings(**kw)


def covered(c) -> None:
    """Every kept tag is in exactly the phrases' tags."""
    tags = [t for p in c.phrases for t in p["tags"]]
    assert sorted(tags) == sorted(c.kept_tags()) and len(tags) == len(set(tags))


@pytest.fixture
def said():
    got: list[str] = []
    notices.set_sink(got.append)
    yield got
    notices.set_sink(None)


# -- the rule-based sentence ------------------------------------------------------------------------


def test_the_issue_example_and_its_phrases():
    c = compose_prompt(example(), S())
    assert c.positive == EXAMPLE and c.sentence == EXAMPLE and c.prompt_style == "sentence"
    covered(c)
    assert {"text": "long blue hair", "tags": ["long_hair", "blue_hair"], "group": "hair"} in c.phrases
    assert {"text": "at a desk", "tags": ["desk"], "group": "objects"} in c.phrases
    data = json.loads(c.to_json_str())
    assert data["prompt_style"] == "sentence" and data["sentence"] == EXAMPLE and data["dropped_by_llm"] == []
    assert data["phrases"] == c.phrases


def test_counts_merge_and_join():
    c = compose_prompt(
        R(("2girls", 0.99), ("multiple_girls", 0.98), ("1boy", 0.9), ("holding_sword", 0.7), ("outdoors", 0.6), ("night", 0.5)),
        S(),
    )
    assert c.positive == "Two girls and a boy, holding a sword, outdoors at night."
    assert {"text": "two girls", "tags": ["2girls", "multiple_girls"], "group": "subject"} in c.phrases
    covered(c)
    solo = compose_prompt(R(("1girl", 0.99), ("solo", 0.98), ("looking_at_viewer", 0.6)), S())
    assert solo.positive == "A girl alone, looking at the viewer."


def test_character_and_series_lead():
    c = compose_prompt(
        R(
            ("1girl", 0.99),
            ("hatsune_miku", 0.95, "character"),
            ("vocaloid", 0.9, "copyright"),
            ("twintails", 0.9),
            ("aqua_hair", 0.85),
            ("aqua_eyes", 0.8),
            ("necktie", 0.7),
        ),
        S(),
    )
    assert c.positive == "Hatsune Miku from Vocaloid, a girl with twintails, aqua hair and aqua eyes, wearing a necktie."
    covered(c)


def test_unknown_tags_are_kept_verbatim():
    c = compose_prompt(R(("1girl", 0.99), ("solo", 0.98), ("weird_tag_(x)", 0.7), ("looking_at_viewer", 0.6)), S())
    assert c.positive == "A girl alone, looking at the viewer, weird tag \\(x\\)."
    assert {"text": "weird tag \\(x\\)", "tags": ["weird_tag_(x)"], "group": "other"} in c.phrases
    covered(c)


def test_weights_as_words_or_a1111_syntax():
    tags = R(("1girl", 0.99), ("long_hair", 0.9), ("blue_hair", 0.9), ("smile", 0.8), ("sunlight", 0.5))
    weights = ("blue hair=1.3", "long_hair=1.3", "smile=0.8")
    words = compose_prompt(tags, PromptSettings(preset="sd3-natural", weights=weights))
    assert words.positive == (
        "an anime illustration, high quality, detailed. A girl with very prominent long blue hair, subtle smiling, sunlight."
    )
    a1111 = compose_prompt(tags, S(weights=weights))
    assert a1111.positive == "A girl with (long blue hair:1.3), (smiling:0.8), sunlight."
    # different weights do not merge: each keeps its own
    split = compose_prompt(tags, S(weights=("blue hair=1.2",)))
    assert split.positive == "A girl with long hair and (blue hair:1.2), smiling, sunlight."
    covered(split)


def test_quality_trigger_and_lora_stay_where_the_preset_puts_them():
    c = compose_prompt(
        R(("1girl", 0.99), ("smile", 0.8)),
        PromptSettings(prompt_style="sentence", trigger_words=("ace_step style",), loras=("myStyle:0.8=mystyle",)),
    )
    assert c.positive == (
        "ace_step style, masterpiece, best quality, official art, extremely detailed CG, mystyle. A girl, smiling. "
        "<lora:myStyle:0.8>"
    )
    assert [p.kind for p in c.parts] == [
        "trigger",
        "quality",
        "quality",
        "quality",
        "quality",
        "lora_trigger",
        "tag",
        "tag",
        "lora",
    ]


def test_sd3_natural_defaults_to_sentence_and_tags_stay_bit_identical():
    c = compose_prompt(example(), PromptSettings(preset="sd3-natural"))
    assert c.prompt_style == "sentence" and c.positive == "an anime illustration, high quality, detailed. " + EXAMPLE
    t5 = c.to_json()["tokens"]["t5"]
    assert t5["limit"] == 256 and t5["exact"] is False and t5["tokens"] == estimate_t5_tokens(c.positive)
    tags = compose_prompt(example(), PromptSettings(preset="sd3-natural", prompt_style="tags"))
    assert tags.positive.startswith("an anime illustration, high quality, detailed, one girl, long hair, blue hair")
    default = compose_prompt(example())
    data = default.to_json()
    assert data["prompt_style"] == "tags" and not {"phrases", "dropped_by_llm", "sentence"} & set(data)
    assert default.positive == compose_prompt(example(), PromptSettings(prompt_style="tags")).positive


def test_budget_drops_the_lowest_scored_groups_words_first():
    tags = R(("1girl", 0.99), ("smile", 0.95), ("blush", 0.2), ("classroom", 0.5), ("window", 0.5))
    full = compose_prompt(tags, S())
    assert full.positive == "A girl, smiling, blushing, in a classroom by a window."
    # scene's mean score (0.5) is below face's (0.575): its words go first, although blush scores lowest
    one = compose_prompt(tags, S(budget=full.tokens.tokens - 1))
    assert one.dropped_for_budget == ["window"] and one.positive == "A girl, smiling, blushing, in a classroom."
    two = compose_prompt(tags, S(budget=one.tokens.tokens - 1))
    assert two.dropped_for_budget == ["window", "classroom"]
    three = compose_prompt(tags, S(budget=two.tokens.tokens - 1))
    assert three.dropped_for_budget == ["window", "classroom", "blush"] and three.positive == "A girl, smiling."
    assert three.tokens.tokens <= two.tokens.tokens - 1 and "blush" not in three.kept_tags()
    assert {(r.tag, r.filter) for r in three.removals if r.filter == "budget"} == {
        ("window", "budget"),
        ("classroom", "budget"),
        ("blush", "budget"),
    }
    covered(three)
    # pinned tags never go
    pinned = compose_prompt(tags, S(budget=1, always_first=("classroom",)))
    assert "classroom" in pinned.kept_tags() and pinned.warnings


def test_t5_limit_trims_too():
    preset = PromptPreset("t5", negative="none", prompt_style="sentence", t5_limit=12)
    c = compose_prompt(example(), PromptSettings(preset=preset))
    assert c.t5_tokens["tokens"] <= 12 < estimate_t5_tokens(EXAMPLE) and c.dropped_for_budget
    assert c.positive.startswith("A girl") and c.to_json()["tokens"]["t5"]["counter"] == "estimate"
    covered(c)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="prompt_style"):
        PromptSettings(prompt_style="prose")
    with pytest.raises(InputError, match="`llm`"):
        compose_prompt(example(), S(prompt_style="llm"))


def test_matching_back_through_synonyms():
    groups = load_sentence_groups()
    assert find_tag("smile", "She smiles at us", groups) == "smiles"
    assert find_tag("long_hair", "a girl with long, flowing blue hair", groups) == "long, flowing blue hair"
    assert find_tag("looking_at_viewer", "she is looking at the camera", groups) == "looking at the camera"
    assert find_tag("sitting", "she sits on a bench", groups) == "sits"
    assert find_tag("red_eyes", "her eyes are blue", groups) is None


# -- the language model -----------------------------------------------------------------------------


class StubModel:
    """A test double of the generate interface the llm path calls."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls: list[tuple[str, int]] = []

    def generate(self, prompt: str, max_new_tokens: int) -> str:
        self.calls.append((prompt, max_new_tokens))
        return self.answer


GOOD = (
    "Description: A smiling girl with long blue hair and red eyes sits at a desk in a classroom by a window, wearing a "
    "school uniform with a red necktie, in the sunlight, looking at the viewer."
)


def test_llm_answer_that_keeps_every_tag_is_used(said):
    stub = StubModel(GOOD + "\n\nSome trailing chatter.")
    c = compose_prompt(example(), S(prompt_style="llm", llm=stub, llm_max_new_tokens=64))
    assert c.positive == GOOD.removeprefix("Description: ") and c.dropped_by_llm == [] and said == []
    prompt, n = stub.calls[0]
    assert n == 64 and "- long hair\n" in prompt and "- looking at viewer" in prompt and EXAMPLE in prompt
    covered(c)
    assert {"text": "smiling", "tags": ["smile"], "group": "face"} in c.phrases
    assert {"text": "sits", "tags": ["sitting"], "group": "pose"} in c.phrases
    data = c.to_json()
    assert data["prompt_style"] == "llm" and data["llm"]["accepted"] is True and data["llm"]["temperature"] == 0


def test_llm_answer_that_drops_a_tag_gets_it_back(said):
    answer = GOOD.replace(", in the sunlight", "").replace(", looking at the viewer", "")
    c = compose_prompt(example(), S(prompt_style="llm", llm=StubModel(answer)))
    assert c.dropped_by_llm == ["sunlight", "looking_at_viewer"]
    assert c.positive.endswith("red necktie, sunlight, looking at the viewer.")
    assert [p for p in c.phrases if p.get("appended")] == [
        {"text": "sunlight", "tags": ["sunlight"], "group": "lighting", "appended": True},
        {"text": "looking at the viewer", "tags": ["looking_at_viewer"], "group": "view", "appended": True},
    ]
    covered(c)
    assert c.to_json()["dropped_by_llm"] == ["sunlight", "looking_at_viewer"] and said == []


def _tiny_gpt2(folder):
    """A random-weight GPT-2 with a byte-level tokenizer (256 symbols, no merges), saved like a hub model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    for b in range(256):  # GPT-2's byte-to-character map
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    vocab = {chr(c): i for i, c in enumerate(cs)}
    vocab["<|endoftext|>"] = len(vocab)
    raw = folder / "raw"
    raw.mkdir(parents=True)
    (raw / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (raw / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = GPT2Tokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"))
    torch.manual_seed(0)
    eos = vocab["<|endoftext|>"]
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(vocab), n_positions=2048, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos)
    )
    out = folder / "tiny-gpt2"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_tiny_random_llm_fails_the_check_and_falls_back(tmp_path, said):
    folder = _tiny_gpt2(tmp_path)
    c = compose_prompt(example(), S(prompt_style="llm", llm=str(folder), llm_max_new_tokens=24))
    assert c.positive == EXAMPLE and c.prompt_style == "llm" and c.dropped_by_llm == []
    assert c.llm["accepted"] is False and c.llm["model"] == "tiny-gpt2" and "expressed only" in c.llm["reason"]
    assert len(said) == 1 and "rule-based sentence is used instead" in said[0]
    covered(c)


def test_llm_path_must_exist():
    with pytest.raises(TagloopError, match="does not exist"):
        compose_prompt(example(), S(prompt_style="llm", llm="./no/such/model"))


# -- command line, server, generator ----------------------------------------------------------------


def test_cli_sentence_json_and_reproduce_takes_the_option():
    from tagloop.cli.prompt import prompt_command
    from tagloop.cli.reproduce import reproduce_command

    tags = ", ".join(EXAMPLE_TAGS)
    res = CliRunner().invoke(
        prompt_command, ["--tags", tags, "--preset", "plain", "--prompt-style", "sentence", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["positive"] == EXAMPLE and data["prompt_style"] == "sentence"
    assert {"text": "long blue hair", "tags": ["long_hair", "blue_hair"], "group": "hair"} in data["phrases"]
    text = CliRunner().invoke(prompt_command, ["--tags", "1girl, smile", "--preset", "sd3-natural"])
    assert text.output.startswith("an anime illustration, high quality, detailed. A girl, smiling.\nNegative prompt: ")
    names = {p.name for p in reproduce_command.params}
    assert {"prompt_style", "llm", "llm_max_new_tokens"} <= names


def test_server_rejects_llm_style():
    pytest.importorskip("fastapi")
    from tagloop.server.routes_tagloop import _prompt_settings

    assert _prompt_settings({"prompt_style": "sentence"}) == {"prompt_style": "sentence"}
    with pytest.raises(Exception) as e:
        _prompt_settings({"prompt_style": "llm", "llm": "/models/x"})
    assert getattr(e.value, "http_status", None) == 422 and "llm" in str(e.value)


def test_sd3_tiny_pipeline_takes_a_sentence(tmp_path):
    pytest.importorskip("diffusers")
    import numpy as np

    from tagloop.generator.generate import GenerationSettings, Generator
    from tagloop.testing import diffusion as tiny

    tiny.save_tiny_diffusers("sd3", tmp_path / "sd3")
    c = compose_prompt(example(), PromptSettings(preset="sd3-natural"))
    g = Generator(tmp_path / "sd3", device="cpu", progress=False, notice=lambda m: None)
    out = g.generate(GenerationSettings(prompt=c.positive, negative_prompt=c.negative, seed=1, steps=2, width=64, height=64))
    img = np.asarray(out[0].image, dtype=np.int16)
    assert img.shape == (64, 64, 3) and img.std() > 0
    assert out[0].infotext.startswith(c.positive + "\nNegative prompt: ")


def test_a_users_own_group_file(tmp_path):
    """`sentence_groups` (--sentence-groups) replaces the built-in file: its phrases are what is written."""
    from pathlib import Path

    import tagloop
    from tagloop.cli import main

    builtin = (Path(tagloop.__file__).parent / "data" / "sentence_groups.toml").read_text(encoding="utf-8")
    mine = builtin.replace('"classroom" = "in a classroom"', '"classroom" = "inside a school classroom"')
    assert mine != builtin
    path = tmp_path / "groups.toml"
    path.write_text(mine, encoding="utf-8")
    tags = "1girl, solo, smile, classroom"
    plain = tagloop.compose_prompt(tags, preset="plain", prompt_style="sentence").positive
    own = tagloop.compose_prompt(tags, preset="plain", prompt_style="sentence", sentence_groups=str(path)).positive
    assert "in a classroom" in plain and "inside a school classroom" in own
    r = CliRunner().invoke(
        main,
        [
            "prompt",
            "--tags",
            tags,
            "--preset",
            "plain",
            "--prompt-style",
            "sentence",
            "--sentence-groups",
            str(path),
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "inside a school classroom" in json.loads(r.output)["positive"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[groups.x]\ntags = 3\n", encoding="utf-8")
    with pytest.raises(InputError):
        tagloop.compose_prompt(tags, preset="plain", prompt_style="sentence", sentence_groups=str(bad))
