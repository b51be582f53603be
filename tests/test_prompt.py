"""Composer rules on hand-written tag lists: quality tags, negatives, emphasis, escaping, LoRA, budget, record."""

from __future__ import annotations

import json

import pytest
from test_prompt_tokens import write_tiny_clip

from tagloop.filters import FilterFileError
from tagloop.prompt import (
    LoraSpec,
    PresetError,
    PromptSettings,
    builtin_presets,
    compose_prompt,
    negative_presets,
    parse_prompt_attention,
)
from tagloop.tagger.result import TagResult, TagScore
from tagloop.tagtext import canonical, split_tags, unescape

SEED_QUALITY = "masterpiece, best quality, official art, extremely detailed CG"
SEED_NEGATIVE = "low quality, worst quality, blurry, cropped, text, watermark, signature"


def R(*tags, rating=None) -> TagResult:
    out = []
    for t in tags:
        name, score, *cat = t
        out.append(TagScore(name, score, cat[0] if cat else "general"))
    return TagResult("img.png", out, rating=rating or {})


SEED_TAGS = R(
    ("1girl", 0.99),
    ("solo", 0.97),
    ("blue_hair", 0.9),
    ("long_hair", 0.88),
    ("school_uniform", 0.8),
    ("smile", 0.7),
    ("hair_ribbon", 0.6),
    ("classroom", 0.5),
    rating={"safe": 0.93},
)


def test_default_is_seed_001():
    c = compose_prompt(SEED_TAGS)
    assert c.positive == SEED_QUALITY + ", 1girl, solo, blue hair, long hair, school uniform, smile, hair ribbon, classroom"
    assert c.negative == SEED_NEGATIVE
    assert c.text() == c.positive + "\nNegative prompt: " + SEED_NEGATIVE
    assert c.preset == "default" and c.style is None and c.rating == {"safe": 0.93}
    assert [p.kind for p in c.parts[:4]] == ["quality"] * 4


def test_negative_presets_are_the_seed_templates():
    presets = negative_presets()
    assert presets["seed"] == SEED_NEGATIVE
    assert presets["general"].startswith("lowres, bad anatomy, bad hands, text, error") and presets["general"].endswith(
        "username, blurry"
    )
    assert len(split_tags(presets["anime"])) == 25 and presets["anime"].startswith("nsfw, ")
    assert presets["portrait"].endswith("jpeg artifacts, watermark, text")
    assert presets["landscape"] == (
        "blurry, lowres, overexposed, underexposed, low contrast, watermark, signature, text, "
        "distorted, jpeg artifacts, noise, bad composition"
    )
    for name in ("general", "anime", "portrait", "landscape"):
        assert compose_prompt(SEED_TAGS, PromptSettings(negative_preset=name)).negative == presets[name]
    c = compose_prompt(SEED_TAGS, PromptSettings(negative_preset="none"))
    assert c.negative == "" and "Negative prompt" not in c.text()
    with pytest.raises(PresetError, match="unknown negative preset 'gothic'"):
        compose_prompt(SEED_TAGS, PromptSettings(negative_preset="gothic"))


def test_escaping_round_trips_through_tagtext():
    c = compose_prompt(R(("hair_ribbon_(blue)", 0.9), ("pokemon_(creature)", 0.8)), PromptSettings(preset="plain"))
    assert c.positive == "hair ribbon \\(blue\\), pokemon \\(creature\\)"
    # read back: split, canonical -> the tagger's names again
    assert [canonical(t) for t in split_tags(c.positive)] == ["hair_ribbon_(blue)", "pokemon_(creature)"]
    # and A1111 reads the parentheses as text, not emphasis
    assert parse_prompt_attention(c.positive) == [(unescape(c.positive), 1.0)]
    raw = compose_prompt(R(("hair_ribbon_(blue)", 0.9)), PromptSettings(preset="plain", escape=False, use_spaces=False))
    assert raw.positive == "hair_ribbon_(blue)"


def test_kaomoji_keep_their_underscore():
    c = compose_prompt(R(("^_^", 0.9), ("open_mouth", 0.8)), PromptSettings(preset="plain"))
    assert c.positive == "^_^, open mouth"


def test_quality_triggers_and_lora_order():
    s = PromptSettings(
        trigger_words=("ace_step style",),
        loras=("detail_tweaker:0.6", LoraSpec("mystyle", 0.8, ("mystyle",))),
        quality_tags=("masterpiece", "best quality"),
    )
    c = compose_prompt(R(("1girl", 0.9), ("smile", 0.8)), s)
    assert c.positive == (
        "ace_step style, masterpiece, best quality, mystyle, 1girl, smile, <lora:detail_tweaker:0.6>, <lora:mystyle:0.8>"
    )
    assert [p.kind for p in c.parts] == ["trigger", "quality", "quality", "lora_trigger", "tag", "tag", "lora", "lora"]
    assert LoraSpec.parse("x:1=a, b") == LoraSpec("x", 1.0, ("a", "b"))
    with pytest.raises(ValueError, match="not a number"):
        LoraSpec.parse("x:heavy")


def test_tag_already_in_quality_tags_is_recorded():
    c = compose_prompt(R(("official_art", 0.9), ("1girl", 0.8)))
    assert c.positive == SEED_QUALITY + ", 1girl"
    (rec,) = [r for r in c.removals if r.filter == "compose"]
    assert rec.tag == "official_art" and rec.reason == "already in the prompt as a quality"


def test_emphasis_modes_and_explicit_weights():
    tags = R(("1girl", 1.0), ("smile", 0.5), ("blush", 0.35))
    conf = compose_prompt(tags, PromptSettings(preset="plain", emphasis="confidence"))
    assert conf.positive == "(1girl:1.2), smile, (blush:0.94)"
    assert [p.weight for p in conf.parts] == [1.2, None, 0.94]
    score = compose_prompt(tags, PromptSettings(preset="plain", emphasis="score"))
    assert score.positive == "1girl, (smile:0.5), (blush:0.35)"
    weights = compose_prompt(
        tags, PromptSettings(weights=("masterpiece=1.3", ("blush", 1.1)), quality_tags=("masterpiece",), negative_preset="none")
    )
    assert weights.positive == "(masterpiece:1.3), 1girl, smile, (blush:1.1)"
    esc = compose_prompt(R(("hair_ribbon_(blue)", 1.0)), PromptSettings(preset="plain", emphasis="confidence"))
    assert esc.positive == "(hair ribbon \\(blue\\):1.2)"
    assert parse_prompt_attention(esc.positive) == [("hair ribbon (blue)", pytest.approx(1.2))]


def test_style_moves_tags_to_the_negative_prompt():
    c = compose_prompt(
        R(("1girl", 0.9), ("realistic", 0.6), ("chibi", 0.5), ("photo_(medium)", 0.4)), PromptSettings(style="anime")
    )
    assert c.positive == SEED_QUALITY + ", 1girl"
    assert c.negative == SEED_NEGATIVE + ", realistic, photo \\(medium\\)"
    assert [(p.source, p.tag) for p in c.negative_parts[-2:]] == [("style", "realistic"), ("style", "photo_(medium)")]


def test_family_presets():
    presets = builtin_presets()
    assert {"default", "plain", "sd15-anime", "sdxl-anime", "sd3-natural"} <= set(presets)
    tags = R(
        ("1girl", 0.99),
        ("hatsune_miku", 0.9, "character"),
        ("vocaloid", 0.8, "copyright"),
        ("chibi", 0.5),
        ("hair_ornament_(x)", 0.4),
    )
    sd15 = compose_prompt(tags, PromptSettings(preset="sd15-anime", tokenizer="estimate"))
    assert sd15.positive == "masterpiece, best quality, highres, hatsune miku, 1girl, vocaloid, hair ornament \\(x\\)"
    assert sd15.style == "anime" and sd15.budget == 75 and sd15.negative.startswith("nsfw, lowres")
    sdxl = compose_prompt(tags, PromptSettings(preset="sdxl-anime"))
    assert sdxl.positive.startswith("masterpiece, best quality, very aesthetic, absurdres, hatsune miku, vocaloid, 1girl")
    sd3 = compose_prompt(tags, PromptSettings(preset="sd3-natural", prompt_style="tags"))  # its default is sentence
    assert sd3.positive == "an anime illustration, high quality, detailed, hatsune miku, one girl, vocaloid, hair ornament (x)"
    assert any(r.action == "replaced" and r.tag == "1girl" for r in sd3.removals)
    # explicit settings win over the preset
    mine = compose_prompt(
        tags, PromptSettings(preset="sd15-anime", style="none", quality_tags=(), budget=0, negative_preset="none")
    )
    assert mine.positive == "hatsune miku, 1girl, vocaloid, chibi, hair ornament \\(x\\)" and mine.budget is None


def test_user_preset_file(tmp_path):
    path = tmp_path / "my_model.toml"
    path.write_text(
        'extends = "sd15-anime"\ntrigger_words = ["ace_step style"]\nquality = "best quality"\nnegative = "portrait"\n'
        'loras = [{name = "ace", weight = 0.7, triggers = ["ace"]}]\n[replace]\n"smile" = "gentle smile"\n',
        encoding="utf-8",
    )
    c = compose_prompt(R(("1girl", 0.9), ("smile", 0.8)), PromptSettings(preset=str(path), tokenizer="estimate"))
    assert c.preset == "my_model"
    assert c.positive == "ace_step style, best quality, ace, 1girl, gentle smile, <lora:ace:0.7>"
    assert c.negative == negative_presets()["portrait"]
    bad = tmp_path / "bad.toml"
    bad.write_text("qualiti = []\n", encoding="utf-8")
    with pytest.raises(PresetError, match=r"bad.toml: .*unknown key\(s\) \['qualiti'\]"):
        compose_prompt(SEED_TAGS, PromptSettings(preset=str(bad)))
    with pytest.raises(PresetError, match="unknown preset 'sd99'"):
        compose_prompt(SEED_TAGS, PromptSettings(preset="sd99"))


def test_keep_rating_puts_the_top_rating_in_the_prompt():
    c = compose_prompt(SEED_TAGS, PromptSettings(preset="plain", keep_rating=True, max_tags=2))
    assert c.positive == "1girl, solo"  # the rating (0.93) was kept, then cut by max_tags like any tag
    assert "rating:safe" in [r.tag for r in c.removals if r.filter == "max_tags"]
    c = compose_prompt(
        R(("1girl", 0.5), rating={"general": 0.9, "explicit": 0.1}), PromptSettings(preset="plain", keep_rating=True)
    )
    assert c.positive == "rating:general, 1girl"
    c = compose_prompt(R(("1girl", 0.5), ("rating:safe", 0.9, "rating")), PromptSettings(preset="plain"))
    assert c.positive == "1girl" and c.rating == {"safe": 0.9}


# --- token budget ----------------------------------------------------------------------------


@pytest.fixture
def tiny_tok(tmp_path):
    return write_tiny_clip(tmp_path / "tokenizer")


def test_budget_drops_lowest_scores_first_never_quality_or_triggers(tiny_tok):
    # tiny vocab: "hair", "long", "blue" are 1 token each; every other letter is one token
    tags = R(("blue", 0.9), ("long_hair", 0.3), ("hair", 0.8), ("long", 0.1), ("ab", 0.5))
    s = PromptSettings(
        quality_tags=("long hair",), trigger_words=("blue long",), tokenizer=str(tiny_tok), overlap=False, negative_preset="none"
    )
    full = compose_prompt(tags, s)
    # long_hair is already a quality tag; "ab" is 2 letter tokens; each ", " is one comma token
    assert full.positive == "blue long, long hair, blue, hair, ab, long"
    assert full.tokens.tokens == 2 + 1 + 2 + 1 + 1 + 1 + 1 + 1 + 2 + 1 + 1 and full.tokens.exact
    fit = compose_prompt(tags, PromptSettings(**{**s.__dict__, "budget": 10}))
    # drops "long" (0.1): 14 -> 12 tokens; then "ab" (0.5): 12 -> 9
    assert fit.dropped_for_budget == ["long", "ab"]
    assert fit.positive == "blue long, long hair, blue, hair" and fit.tokens.tokens == 9
    budget_recs = [r for r in fit.removals if r.filter == "budget"]
    assert [r.tag for r in budget_recs] == ["long", "ab"] and "over the budget of 10" in budget_recs[0].reason
    # a budget below the protected parts: every tag goes, quality/trigger stay, a warning says so
    tight = compose_prompt(tags, PromptSettings(**{**s.__dict__, "budget": 2}))
    assert tight.positive == "blue long, long hair"
    assert tight.dropped_for_budget == ["long", "ab", "hair", "blue"]
    assert any("never dropped" in w for w in tight.warnings)


def test_budget_keeps_pinned_tags_and_uses_estimate_without_tokenizer():
    tags = R(*[(f"tag{i}", 1 - i / 100) for i in range(40)], ("1girl", 0.01))
    c = compose_prompt(tags, PromptSettings(preset="plain", always_first=("1girl",), budget=20, tokenizer="estimate"))
    assert c.positive.startswith("1girl, tag0, tag1")
    assert c.tokens.tokens <= 20 and not c.tokens.exact
    assert c.dropped_for_budget[0] == "tag39" and "1girl" not in c.dropped_for_budget
    assert any("estimate" in w for w in c.warnings)


def test_json_record_lists_every_removal_with_reason(tmp_path, tiny_tok):
    filt = tmp_path / "filter.txt"
    filt.write_text("comic\n", encoding="utf-8")
    tags = R(
        ("1girl", 0.99),
        ("comic", 0.9),
        ("rating:safe", 0.9, "rating"),
        ("long_hair", 0.8),
        ("very_long_hair", 0.7),
        ("chibi", 0.6),
        ("realistic", 0.5),
        ("official_art", 0.4),
        ("smile", 0.3),
        ("Smile", 0.2),
        ("blush", 0.1),
    )
    s = PromptSettings(filter_files=(filt,), style="anime", tokenizer=str(tiny_tok))
    full = compose_prompt(tags, s).tokens.tokens
    c = compose_prompt(tags, PromptSettings(**{**s.__dict__, "budget": full - 1}))  # ", blush" = , blu s h</w> = 4 tokens
    data = json.loads(c.to_json_str())
    got = {(r["tag"], r["filter"], r["action"]) for r in data["removals"]}
    assert got == {
        ("comic", "blocklist", "removed"),
        ("rating:safe", "rating", "removed"),
        ("long_hair", "overlap", "removed"),
        ("chibi", "style", "removed"),
        ("realistic", "style", "moved_to_negative"),
        ("official_art", "compose", "removed"),
        ("Smile", "dedupe", "removed"),
        ("blush", "budget", "removed"),
    }
    assert all(r["reason"] for r in data["removals"])
    assert data["dropped_for_budget"] == ["blush"]
    assert data["tokens"]["positive"]["tokens"] == full - 4 and data["tokens"]["positive"]["exact"] is True
    assert data["positive"] == c.positive and data["negative"].endswith(", realistic")
    assert [p["tag"] for p in data["parts"] if p["kind"] == "tag"] == ["1girl", "very_long_hair", "smile"]
    assert data["rating"] == {"safe": 0.9} and data["style"] == "anime" and data["preset"] == "default"


def test_bad_filter_file_raises_with_line(tmp_path):
    filt = tmp_path / "filter.txt"
    filt.write_text("comic\nre:([\n", encoding="utf-8")
    with pytest.raises(FilterFileError, match=r"filter.txt, line 2"):
        compose_prompt(SEED_TAGS, PromptSettings(filter_files=(filt,)))


def test_settings_validation():
    with pytest.raises(ValueError, match="emphasis"):
        PromptSettings(emphasis="loud")
    with pytest.raises(ValueError, match="weight"):
        PromptSettings(weights=("tag=heavy",))
    with pytest.raises(ValueError, match="max_tags"):
        PromptSettings(max_tags=0)


def test_preset_file_lora_tables_are_checked(tmp_path):
    bad_weight = tmp_path / "w.toml"
    bad_weight.write_text('[[loras]]\nname = "mystyle"\nweight = "strong"\n', encoding="utf-8")
    with pytest.raises(PresetError, match="weight"):
        compose_prompt(R(("smile", 0.9)), PromptSettings(preset=str(bad_weight)))
    bad_name = tmp_path / "n.toml"
    bad_name.write_text('[[loras]]\nname = "my>style"\n', encoding="utf-8")  # would write <lora:my>style:1>
    with pytest.raises(PresetError, match="my>style"):
        compose_prompt(R(("smile", 0.9)), PromptSettings(preset=str(bad_name)))
    good = tmp_path / "g.toml"
    good.write_text('[[loras]]\nname = "mystyle"\nweight = 0.7\ntriggers = "mystyle look"\n', encoding="utf-8")
    c = compose_prompt(R(("smile", 0.9)), PromptSettings(preset=str(good)))
    assert c.positive.endswith("mystyle look, smile, <lora:mystyle:0.7>")


def test_preset_category_order_is_case_insensitive(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('quality = []\ncategory_order = ["Character"]\n', encoding="utf-8")
    c = compose_prompt(R(("smile", 0.9), ("hatsune_miku", 0.5, "character")), PromptSettings(preset=str(preset)))
    assert c.positive == "hatsune miku, smile"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_weights_must_be_finite(value):
    """`(tag:nan)` or `<lora:x:inf>` would reach the prompt parser as text or break the generation."""
    with pytest.raises(ValueError, match="weight"):
        PromptSettings(weights=(f"smile={value}",))
    with pytest.raises(ValueError, match="weight"):
        PromptSettings(loras=(f"mystyle:{value}",))
    with pytest.raises(ValueError, match="emphasis_range"):
        PromptSettings(emphasis_range=(0.8, float(value)))
