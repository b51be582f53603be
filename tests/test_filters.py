"""Each filter on hand-written tag lists with expected outputs."""

from __future__ import annotations

import pytest

from tagloop.filters import (
    FilterFileError,
    FilterLog,
    FilterSettings,
    apply_filters,
    dedupe_tags,
    drop_overlapping_tags,
    drop_ratings,
    implied_by,
    limit_tags,
    load_blocklist,
    load_blocklist_filter,
    order_tags,
    parse_blocklist,
    read_blocklist,
    read_style_file,
    replace_tags,
    resolve_style,
)
from tagloop.filters.replace import load_replacements, read_replace_file
from tagloop.tagger.result import TagResult, TagScore


def T(name: str, score: float = 0.5, category: str = "general") -> TagScore:
    return TagScore(name, score, category)


def names(tags):
    return [t.name for t in tags]


# --- blocklist -------------------------------------------------------------------------------


SEED_FILTER = """\
# 不相关标签 (unrelated tags)
comic, manga, artist_name, multiple_views
# 冗余评级 (ratings)
rating:general, rating:sensitive, rating:explicit
# 风格冲突项 (style conflicts)
chibi, super_deformed, furry
"""


def test_seed_filter_file_blocks_its_tags(tmp_path):
    path = tmp_path / "filter.txt"
    path.write_text(SEED_FILTER, encoding="utf-8")
    bl = read_blocklist(path)
    tags = [T("1girl"), T("comic"), T("artist name"), T("Multiple_Views"), T("super deformed"), T("smile"), T("rating:explicit")]
    log = FilterLog()
    assert names(bl.apply(tags, log)) == ["1girl", "smile"]
    assert [e.tag for e in log.events] == ["comic", "artist name", "Multiple_Views", "super deformed", "rating:explicit"]
    assert all("filter.txt:" in e.reason for e in log.events)


def test_blocklist_written_with_spaces_removes_underscore_tags_and_back():
    """The most reported filter bug: a blocklist in spaces must remove the tagger's underscore tags."""
    spaces = parse_blocklist("long hair, Hair Ribbon \\(Blue\\), ^ ^")
    tagger = [T("long_hair"), T("hair_ribbon_(blue)"), T("^_^"), T("short_hair")]
    assert names(spaces.apply(tagger)) == ["short_hair"]
    underscores = parse_blocklist("long_hair\nhair_ribbon_(blue)")
    a1111_text = [T("long hair"), T("hair ribbon \\(blue\\)"), T("LONG HAIR")]
    assert names(underscores.apply(a1111_text)) == []


def test_wildcards_regex_and_force_keep():
    bl = parse_blocklist(
        "*_background\n"
        "!simple background  # keep this one\n"
        "re:.*_(focus|request)\n"
        "re:holding .*\n"  # a regex written with spaces also matches underscore tags
        "!re:holding_(sword|bow)\n"
    )
    tags = [
        T("white_background"),
        T("simple_background"),
        T("male_focus"),
        T("commentary_request"),
        T("holding_umbrella"),
        T("holding_sword"),
        T("background"),
        T("focus"),
    ]
    log = FilterLog()
    assert names(bl.apply(tags, log)) == ["simple_background", "holding_sword", "background", "focus"]
    forced = [e for e in log.events if e.action == "force_kept"]
    assert [e.tag for e in forced] == ["simple_background", "holding_sword"]
    assert "force-kept" in forced[0].reason


def test_regex_runs_to_end_of_line_and_comments():
    bl = parse_blocklist("comic, re:a{1,2}b # trailing comment\n\\#compass, x # y")
    assert [p.key for p in bl.block] == ["comic", "a{1,2}b", "#compass", "x"]
    assert names(bl.apply([T("ab"), T("aab"), T("aaab"), T("#compass")])) == ["aaab"]


def test_several_files_combine(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("comic\n*_background\n", encoding="utf-8")
    b.write_text("manga\n!white_background\n", encoding="utf-8")
    bl = load_blocklist([a, b], ["smile"])
    tags = [T("comic"), T("manga"), T("smile"), T("white_background"), T("blue_background"), T("1girl")]
    assert names(bl.apply(tags)) == ["white_background", "1girl"]


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("comic\nre:(unclosed\n", 2, "not a valid regular expression"),
        ("comic\n\n# c\nre:   \n", 4, "no regular expression"),
        ("comic, !\n", 1, "lone `!`"),
        ("a\nb\nc, *\n", 3, "every tag"),
        ("ok\n!re:[z-a]\n", 2, "not a valid regular expression"),
    ],
)
def test_malformed_line_reports_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "bad_filter.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FilterFileError) as info:
        read_blocklist(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}, line {line}: ")
    assert words in str(info.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FilterFileError, match="does not exist"):
        read_blocklist(tmp_path / "nope.txt")


def test_blocklist_filter_on_results_keeps_rating(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("comic\n", encoding="utf-8")
    f = load_blocklist_filter([path])
    out = f(TagResult("x.png", [T("comic"), T("1girl")], rating={"general": 0.9}))
    assert names(out.tags) == ["1girl"] and out.rating == {"general": 0.9}


# --- ratings ---------------------------------------------------------------------------------


def test_ratings_of_every_family_are_removed_and_kept_as_rating():
    tags = [
        T("1girl", 0.99),
        T("rating:safe", 0.9, "general"),  # DeepDanbooru 2021 list, category from the name
        T("rating:questionable", 0.1, "rating"),
        T("rating:sensitive", 0.2, "rating"),  # DeepDanbooru 2022+
        T("general", 0.8, "rating"),  # WD14 category 9
        T("explicit", 0.05, "rating"),
        T("general_(term)", 0.3, "general"),  # not a rating
    ]
    log = FilterLog()
    assert names(drop_ratings(tags, log)) == ["1girl", "general_(term)"]
    assert log.rating == {"safe": 0.9, "questionable": 0.1, "sensitive": 0.2, "general": 0.8, "explicit": 0.05}
    assert {e.filter for e in log.events} == {"rating"}


def test_keep_rating_switch():
    kept, log = apply_filters([T("rating:general", 0.9, "rating"), T("1girl")], FilterSettings(keep_rating=True))
    assert names(kept) == ["rating:general", "1girl"] and not log.events


# --- style rules -----------------------------------------------------------------------------


def test_builtin_anime_style_drops_and_moves():
    tags = [T("1girl"), T("chibi"), T("super_deformed"), T("furry"), T("realistic", 0.6), T("3d", 0.4), T("smile")]
    kept, log = apply_filters(tags, FilterSettings(style="anime", overlap=False))
    assert names(kept) == ["1girl", "smile"]
    assert names(log.negative) == ["realistic", "3d"]
    actions = {e.tag: e.action for e in log.events}
    assert actions == {
        "chibi": "removed",
        "super_deformed": "removed",
        "furry": "removed",
        "realistic": "moved_to_negative",
        "3d": "moved_to_negative",
    }
    assert all("`anime` style" in e.reason for e in log.events)


def test_style_file_toml_and_yaml(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text(
        'extends = "anime"\n[[groups]]\nname = "no text"\naction = "negative"\ntags = ["speech bubble", "*_text"]\n',
        encoding="utf-8",
    )
    rules = read_style_file(toml)
    assert rules.name == "mine" and [g.name for g in rules.groups][-1] == "no text"
    kept, log = apply_filters([T("speech_bubble"), T("english_text"), T("chibi"), T("1girl")], FilterSettings(style=str(toml)))
    assert names(kept) == ["1girl"] and names(log.negative) == ["speech_bubble", "english_text"]

    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text(
        "groups:\n  - name: photo\n    action: drop\n    tags: [photorealistic, 're:photo_\\(.*\\)']\n", encoding="utf-8"
    )
    rules = resolve_style(str(yaml_path))
    kept, log = apply_filters([T("photo_(medium)"), T("photorealistic"), T("smile")], FilterSettings(style=rules))
    assert names(kept) == ["smile"]


def test_style_errors_name_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[groups]]\nname = "x"\naction = "explode"\ntags = ["a"]\n', encoding="utf-8")
    with pytest.raises(FilterFileError, match="bad.toml.*action 'explode'"):
        resolve_style(str(bad))
    with pytest.raises(FilterFileError, match="unknown style 'animu'"):
        resolve_style("animu")
    assert resolve_style("none") is None


def test_force_keep_beats_style_and_overlap():
    kept, log = apply_filters(
        [T("chibi"), T("long_hair"), T("very_long_hair")],
        FilterSettings(style="anime", block=("!chibi", "!long hair")),
    )
    assert names(kept) == ["chibi", "long_hair", "very_long_hair"]
    assert [e.action for e in log.events] == ["force_kept", "force_kept"]


# --- overlap ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "short, long, expected",
    [
        ("long_hair", "very_long_hair", True),
        ("hair", "long_hair", True),
        ("ribbon", "hair_ribbon", True),
        ("hair_ribbon", "red_hair_ribbon", True),
        ("thighhighs", "white thighhighs", True),
        ("hair", "hairband", False),  # whole words only
        ("bow", "bow_(weapon)", False),  # a qualifier disambiguates
        ("slime_(substance)", "green_slime_(creature)", False),
        ("shoes", "no_shoes", False),  # negation
        ("cloud", "cloud_print", False),  # a print is not the thing
        ("solo", "solo_focus", False),
        ("long_hair", "long_hair", False),
        ("^_^", "^_^_face", False),  # kaomoji
        ("bow", "bowtie", False),  # one word: a bowtie is not a bow tag
        ("bow", "hair_bow", True),
        # the last word names the thing; earlier words only qualify it
        ("hair", "hair_ornament", False),
        ("hair", "hair_between_eyes", False),
        ("cat", "cat_ears", False),  # a cat and a girl with cat ears are different pictures
        ("animal", "animal_ears", False),
        ("heart", "heart_hands", False),
        ("ears", "cat_ears", True),
    ],
)
def test_overlap_rule(short, long, expected):
    assert implied_by(short, long) is expected


def test_overlap_removal_general_only_and_switchable():
    tags = [
        T("1girl", 0.99),
        T("long_hair", 0.9),
        T("very_long_hair", 0.7),
        T("hair", 0.4),
        T("ribbon", 0.5),
        T("hair_ribbon", 0.6),
        T("hair", 0.9, "character"),
        T("bow"),
        T("bow_(weapon)"),
    ]
    log = FilterLog()
    kept = drop_overlapping_tags(tags, log)
    assert names(kept) == ["1girl", "very_long_hair", "hair_ribbon", "hair", "bow", "bow_(weapon)"]
    assert [(e.tag, e.reason) for e in log.events] == [
        ("long_hair", "implied by the more specific tag `very_long_hair`"),
        ("hair", "implied by the more specific tag `very_long_hair`"),
        ("ribbon", "implied by the more specific tag `hair_ribbon`"),
    ]
    kept, _ = apply_filters(tags[:4], FilterSettings(overlap=False))
    assert names(kept) == ["1girl", "long_hair", "very_long_hair", "hair"]


# --- ordering, dedupe, max-tags --------------------------------------------------------------


def test_dedupe_keeps_first_spelling_best_score():
    log = FilterLog()
    out = dedupe_tags([T("long_hair", 0.5), T("smile", 0.6), T("Long Hair", 0.9), T("long hair", 0.2)], log)
    assert out == [T("long_hair", 0.9), T("smile", 0.6)]
    assert [e.filter for e in log.events] == ["dedupe", "dedupe"]


def test_order_pins_then_characters_then_score():
    tags = [
        T("smile", 0.95),
        T("solo", 0.9),
        T("hatsune_miku", 0.8, "character"),
        T("1girl", 0.7),
        T("vocaloid", 0.75, "copyright"),
        T("blush", 0.6),
    ]
    assert names(order_tags(tags, ["1girl", "solo", "absent_tag"])) == [
        "1girl",
        "solo",
        "hatsune_miku",
        "smile",
        "vocaloid",
        "blush",
    ]
    assert names(order_tags(tags, (), ("character", "copyright"))) == [
        "hatsune_miku",
        "vocaloid",
        "smile",
        "solo",
        "1girl",
        "blush",
    ]
    assert names(order_tags(tags, (), ())) == ["smile", "solo", "hatsune_miku", "vocaloid", "1girl", "blush"]


def test_max_tags_drops_lowest_scores_never_pins():
    tags = [T("1girl", 0.1), T("a", 0.9), T("b", 0.3), T("c", 0.3), T("d", 0.8)]
    log = FilterLog()
    assert names(limit_tags(tags, 3, ["1girl"], log)) == ["1girl", "a", "d"]
    assert [e.tag for e in log.events] == ["b", "c"] and log.events[0].filter == "max_tags"
    kept, _ = apply_filters(tags, FilterSettings(always_first=("1girl",), max_tags=2))
    assert names(kept) == ["1girl", "a"]


# --- replacement -----------------------------------------------------------------------------


def test_replacement_applies_to_wd_and_deepdanbooru_spellings_alike(tmp_path):
    rules = {"long hair": "very long hair", "hair_ribbon_(blue)": "blue ribbon", "watermark": ""}
    wd = [T("long_hair"), T("hair_ribbon_(blue)"), T("watermark")]  # selected_tags.csv names
    dd = [T("long_hair"), T("hair_ribbon_(blue)"), T("watermark")]  # tags.txt names
    a1111 = [T("long hair"), T("hair ribbon \\(blue\\)"), T("Watermark")]  # A1111-formatted text
    for tags in (wd, dd, a1111):
        log = FilterLog()
        assert names(replace_tags(tags, rules, log)) == ["very_long_hair", "blue_ribbon"]
        assert [e.action for e in log.events] == ["replaced", "replaced", "removed"]
    f = tmp_path / "rep.txt"
    f.write_text("# aliases\n1girl=girl, solo\n=_= = closed eyes\n", encoding="utf-8")
    rmap = read_replace_file(f)
    out = rmap.apply([T("1girl", 0.9), T("=_=", 0.4)])
    assert out == [T("girl", 0.9), T("solo", 0.9), T("closed_eyes", 0.4)]


def test_replacement_then_dedupe_in_chain():
    kept, log = apply_filters(
        [T("long_hair", 0.4), T("very_long_hair", 0.8)], FilterSettings(replace=("long hair=very long hair",))
    )
    assert kept == [T("very_long_hair", 0.8)]
    assert [(e.filter, e.action) for e in log.events] == [("replace", "replaced"), ("dedupe", "removed")]


def test_bad_replacement_line(tmp_path):
    f = tmp_path / "rep.txt"
    f.write_text("a=b\nno separator here\n", encoding="utf-8")
    with pytest.raises(FilterFileError, match=r"rep.txt, line 2: .*not an `old=new`"):
        load_replacements(files=[f])


# --- the chain -------------------------------------------------------------------------------


def test_chain_records_every_removal_with_a_reason(tmp_path):
    path = tmp_path / "filter.txt"
    path.write_text("comic\n*_background\n", encoding="utf-8")
    tags = [
        T("1girl", 0.99),
        T("comic", 0.8),
        T("white_background", 0.7),
        T("rating:safe", 0.9, "rating"),
        T("long_hair", 0.6),
        T("very_long_hair", 0.5),
        T("chibi", 0.4),
        T("realistic", 0.3),
        T("1girl", 0.2),
    ]
    kept, log = apply_filters(tags, FilterSettings(filter_files=(path,), style="anime"))
    assert names(kept) == ["1girl", "very_long_hair"]
    removed = {e.tag: e.filter for e in log.removed()}
    assert removed == {
        "1girl": "dedupe",
        "rating:safe": "rating",
        "comic": "blocklist",
        "white_background": "blocklist",
        "chibi": "style",
        "realistic": "style",
        "long_hair": "overlap",
    }
    assert all(e.reason for e in log.events)
    data = log.to_json()
    assert data["rating"] == {"safe": 0.9} and data["negative"][0]["name"] == "realistic"


def test_raw_names_with_a_backslash_round_trip_through_a1111_escaping():
    """Danbooru's `\\(^o^)/` is a raw name (it has a bare `)`), not escaped text: keep its backslash."""
    from tagloop.tagtext import TagPolicy, canonical, escape

    raw = "\\(^o^)/"
    a1111 = escape(raw)  # what A1111's DeepBooru writes: \\\(^o^\)/
    assert a1111 == "\\\\\\(^o^\\)/"
    assert canonical(raw) == canonical(a1111) == raw
    assert TagPolicy().format(raw) == a1111
    assert TagPolicy(escape=False).format(raw) == raw
    # escaped text still unescapes, and a bare-paren name is left as it is
    assert canonical("hair ribbon \\(blue\\)") == canonical("hair_ribbon_(blue)") == "hair_ribbon_(blue)"
    assert canonical("\\m/") == "\\m/" and canonical(escape("\\m/")) == "\\m/"
    log = FilterLog()
    kept = parse_blocklist(a1111).apply([T(raw), T("smile")], log)
    assert [t.name for t in kept] == ["smile"] and log.removed_names() == [raw]
