"""A1111 prompt syntax: emphasis weights, escapes, BREAK, extra networks."""

from __future__ import annotations

import pytest

from tagloop.a1111.prompt_parser import (
    BREAK_MARKER,
    extract_extra_networks,
    is_break,
    parse_prompt_attention,
)


def weight_of(text: str, word: str = "x") -> float:
    pieces = [w for t, w in parse_prompt_attention(text) if t == word]
    assert len(pieces) == 1, parse_prompt_attention(text)
    return pieces[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(x)", 1.1),
        ("((x))", 1.1 * 1.1),
        ("[x]", 1 / 1.1),
        ("[[x]]", 1 / 1.1 / 1.1),
        ("(x:1.3)", 1.3),
        ("((x:1.5))", 1.65),
        ("(x:-0.5)", -0.5),
        ("(x", 1.1),
        ("[x", 1 / 1.1),
        ("( x : 0.7 )", None),  # whitespace inside: text " x " weighs 0.7
    ],
)
def test_formats_table_weights(text: str, expected: float | None) -> None:
    if expected is None:
        assert parse_prompt_attention(text) == [(" x ", 0.7)]
        return
    assert weight_of(text) == pytest.approx(expected, rel=1e-12)


def test_documented_table_values_to_five_digits() -> None:
    assert round(weight_of("[x]"), 5) == 0.90909
    assert round(weight_of("[[x]]"), 5) == 0.82645
    assert weight_of("((x))") == pytest.approx(1.21)


def test_mixed_prompt_and_merging() -> None:
    assert parse_prompt_attention("a (b:1.5) [c] d") == [
        ("a ", 1.0),
        ("b", 1.5),
        (" ", 1.0),
        ("c", 1 / 1.1),
        (" d", 1.0),
    ]
    # neighbours of equal weight merge into one run
    assert parse_prompt_attention("(a)(b)") == [("ab", 1.1)]
    assert parse_prompt_attention("") == [("", 1.0)]
    assert parse_prompt_attention("plain, text") == [("plain, text", 1.0)]


def test_explicit_weight_multiplies_with_outer_brackets() -> None:
    pieces = dict(parse_prompt_attention("((a:1.5), b)"))
    assert pieces["a"] == pytest.approx(1.65)
    assert pieces[", b"] == pytest.approx(1.1)
    assert weight_of("[(x:2)]") == pytest.approx(2 / 1.1)


def test_escapes_are_literal() -> None:
    assert parse_prompt_attention(r"hair ribbon \(blue\)") == [("hair ribbon (blue)", 1.0)]
    assert parse_prompt_attention(r"\[x\]") == [("[x]", 1.0)]
    assert parse_prompt_attention("a\\\\b") == [("a\\b", 1.0)]
    # a backslash before any other character is dropped
    assert parse_prompt_attention(r"a\b") == [("ab", 1.0)]
    # escaped brackets inside real brackets take the outer weight
    assert parse_prompt_attention(r"(ribbon \(blue\))") == [("ribbon (blue)", pytest.approx(1.1))]


def test_stray_closers_and_colons_are_text() -> None:
    assert parse_prompt_attention("a) b]") == [("a) b]", 1.0)]
    assert parse_prompt_attention("score: 9") == [("score: 9", 1.0)]
    assert parse_prompt_attention("a:1.2)") == [("a:1.2)", 1.0)]


def test_malformed_weight_does_not_crash() -> None:
    # A1111 raises here (float("1.2.3")); this parser keeps the text and closes the bracket as a
    # plain pair (documented in the module docstring).
    pieces = parse_prompt_attention("(x:1.2.3)")
    assert "".join(t for t, _ in pieces) == "x:1.2.3"
    assert pieces == [("x:1.2.3", pytest.approx(1.1))]
    assert parse_prompt_attention("(x:.) y") == [("x:.", pytest.approx(1.1)), (" y", 1.0)]


def test_prompt_editing_and_alternation_are_text_not_errors() -> None:
    edit = parse_prompt_attention("[cat:dog:0.5]")
    assert "".join(t for t, _ in edit) == "cat:dog:0.5"
    assert all(w == pytest.approx(1 / 1.1) for _, w in edit)
    alt = parse_prompt_attention("[a|b]")
    assert alt == [("a|b", pytest.approx(1 / 1.1))]


def test_break_keyword() -> None:
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), BREAK_MARKER, ("b", 1.0)]
    assert parse_prompt_attention("a,BREAK,b") == [("a,", 1.0), BREAK_MARKER, (",b", 1.0)]
    # only the upper-case standalone word counts
    assert parse_prompt_attention("a break b") == [("a break b", 1.0)]
    assert parse_prompt_attention("aBREAKb") == [("aBREAKb", 1.0)]
    pieces = parse_prompt_attention("(x) BREAK [y]")
    assert sum(is_break(p) for p in pieces) == 1
    assert dict(p for p in pieces if not is_break(p))["x"] == pytest.approx(1.1)
    # two BREAKs stay two markers
    assert sum(is_break(p) for p in parse_prompt_attention("a BREAK BREAK b")) == 2


def test_break_inside_brackets_is_weighted_text_like_a1111() -> None:
    # A1111 parity: its parse_prompt_attention multiplies every entry inside brackets, the BREAK
    # marker's -1 too, so a bracketed BREAK is no longer the marker (it is encoded as the word
    # "break" with weight -1.1) and ends no chunk. This parser used to keep it a break.
    pieces = parse_prompt_attention("(a BREAK b)")
    assert pieces == [("a", pytest.approx(1.1)), ("BREAK", pytest.approx(-1.1)), ("b", pytest.approx(1.1))]
    assert not any(is_break(p) for p in pieces)
    assert [is_break(p) for p in parse_prompt_attention("[a BREAK b]")] == [False] * 3
    # a factor of exactly 1 leaves the marker a marker, as in A1111
    assert parse_prompt_attention("(a BREAK b:1)") == [("a", 1.0), BREAK_MARKER, ("b", 1.0)]


def test_extra_networks_extraction() -> None:
    text, nets = extract_extra_networks("1girl, <lora:ace_step:0.7>, smile <lyco:Other-Net:0.5:0.25> <hypernet:h>")
    assert text == "1girl, , smile  "
    assert [(n.kind, n.name) for n in nets] == [("lora", "ace_step"), ("lora", "Other-Net"), ("hypernet", "h")]
    assert nets[0].te_multiplier == 0.7 and nets[0].unet_multiplier == 0.7
    assert nets[1].te_multiplier == 0.5 and nets[1].unet_multiplier == 0.25
    assert nets[2].te_multiplier == 1.0 and nets[2].unet_multiplier == 1.0
    assert nets[0].text == "<lora:ace_step:0.7>"


def test_extra_network_defaults_and_named_arguments() -> None:
    _, (plain,) = extract_extra_networks("<lora:name>")
    assert (plain.te_multiplier, plain.unet_multiplier, plain.dyn_dim) == (1.0, 1.0, None)
    _, (named,) = extract_extra_networks("<lora:name:0.8:unet=0.3:dyn=16>")
    assert named.positional == ["name", "0.8"]
    assert named.named == {"unet": "0.3", "dyn": "16"}
    assert (named.te_multiplier, named.unet_multiplier, named.dyn_dim) == (0.8, 0.3, 16)
    _, (te_only,) = extract_extra_networks("<lora:name:te=0.4>")
    assert (te_only.te_multiplier, te_only.unet_multiplier) == (0.4, 0.4)


def test_extra_network_bad_multiplier_is_one_sentence() -> None:
    with pytest.raises(ValueError, match="not a number"):
        extract_extra_networks("<lora:name:strong>")


def test_text_without_extra_networks_is_unchanged() -> None:
    assert extract_extra_networks("a <b> c") == ("a <b> c", [])
