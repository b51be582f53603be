"""CLIP token counting: a tiny real CLIP vocabulary written by the test, counts derived by hand."""

from __future__ import annotations

import gzip
import json

import pytest

from tagloop.a1111.clip_bpe import clip_vocab
from tagloop.generator.encode import pack_chunks
from tagloop.prompt.tokens import (
    ClipTokenCounter,
    EstimateTokenCounter,
    TokenizerError,
    _load_counter,
    clip_tokenizer_from_bpe,
    get_token_counter,
    open_clip_bpe_path,
    parse_prompt_attention,
    strip_extra_networks,
)

MERGES = ["h a", "ha i", "hai r</w>", "l o", "lo n", "lon g</w>", "b l", "bl u", "blu e</w>"]


def write_tiny_clip(folder):
    """vocab.json (256 byte chars, their </w> forms, merge results, specials) + merges.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(clip_vocab(MERGES)), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny_tokenizer_dir(tmp_path):
    return write_tiny_clip(tmp_path / "model" / "tokenizer")


def test_tiny_vocab_counts_by_hand(tiny_tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(tiny_tokenizer_dir / "vocab.json"), str(tiny_tokenizer_dir / "merges.txt"), model_max_length=77)
    counter = ClipTokenCounter(tok)
    assert counter.comma_id == tok.get_vocab()[",</w>"]
    # long</w> hair</w> ,</w> blue</w> | e y e s</w>
    assert counter.count("long hair, blue eyes").tokens == 8
    # emphasis syntax and <lora:..> are not text: "long hair" (2) + ", blue" (2)
    assert counter.count("(long hair:1.3), blue <lora:x:0.8>").tokens == 4
    # escaped parentheses are the literal characters: hair</w> (</w> blue</w> )</w>
    assert counter.count("hair \\(blue\\)").tokens == 4
    c = counter.count("hair")
    assert (c.chunks, c.a1111_count, c.exact, c.limit) == (1, 1, True, 75)


def test_diffusers_model_folder_and_cache(tiny_tokenizer_dir):
    model_dir = tiny_tokenizer_dir.parent
    counter = get_token_counter(model_dir)  # finds tokenizer/ inside the model folder
    assert counter.exact and counter.count("long hair").tokens == 2
    assert get_token_counter(str(model_dir)) is counter
    with pytest.raises(TokenizerError, match="does not exist"):
        get_token_counter(model_dir / "missing")


def test_a1111_chunks_and_comma_backtracking(tiny_tokenizer_dir):
    counter = get_token_counter(tiny_tokenizer_dir)
    # 38 x "hair" joined by ", " = 38 + 37 = 75 tokens: one chunk exactly
    c = counter.count(", ".join(["hair"] * 38))
    assert (c.tokens, c.chunks, c.a1111_count) == (75, 1, 75)
    # one more tag: 77 tokens; at 75 the next token is a comma -> no backtrack, 2 chunks
    c = counter.count(", ".join(["hair"] * 39))
    assert (c.tokens, c.chunks, c.a1111_count) == (77, 2, 77)
    # BREAK starts a new chunk; the first counts as a full 75 in A1111's counter
    c = counter.count("hair BREAK long")
    assert (c.tokens, c.chunks, c.a1111_count) == (2, 2, 76)


def chunk_token_ids(segments, comma_id, backtrack=20):
    """The counter's chunking, which is the generator's :func:`pack_chunks`; chunks as lists of ids."""
    chunks, count = pack_chunks(
        [None if ids is None else (ids, 1.0) for ids in segments], comma_id=comma_id, pad_id=-9, comma_backtrack=backtrack
    )
    return [c.tokens[: c.length] for c in chunks], count


def test_chunking_moves_the_tag_after_the_last_comma():
    comma = 0
    ids = [1] * 70 + [comma] + [2] * 10  # 81 tokens; the chunk fills inside the last tag
    chunks, count = chunk_token_ids([ids], comma)
    assert [len(c) for c in chunks] == [71, 10]  # the 10-token tag moved whole to chunk 2
    assert count == 75 + 10
    chunks, _ = chunk_token_ids([ids], comma, backtrack=0)
    assert [len(c) for c in chunks] == [75, 6]
    far = [1] * 40 + [comma] + [2] * 40  # comma 34 tokens back: more than 20, no backtrack
    assert [len(c) for c in chunk_token_ids([far], comma)[0]] == [75, 6]
    # a chunk ended by BREAK counts a full 75 in A1111's counter even when it is the last one
    assert chunk_token_ids([[1, 2], None, []], comma) == ([[1, 2]], 75)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(x)", [("x", 1.1)]),
        ("((x))", [("x", 1.21)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("(x:1.3)", [("x", 1.3)]),
        ("((x:1.5))", [("x", 1.65)]),
        ("(x:-0.5)", [("x", -0.5)]),
        ("(x", [("x", 1.1)]),
        ("a\\b", [("ab", 1.0)]),
        ("hair ribbon \\(blue\\)", [("hair ribbon (blue)", 1.0)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        ),
        # A1111 multiplies every entry inside brackets, BREAK's -1 too, so a bracketed BREAK is text
        ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ],
)
def test_parse_prompt_attention_matches_a1111_weights(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_strip_extra_networks():
    assert strip_extra_networks("a, <lora:my_style:0.8>, b <hypernet:h:1>") == "a, , b "


def test_estimate_is_documented_and_inexact():
    e = get_token_counter("estimate")
    assert isinstance(e, EstimateTokenCounter) and not e.exact
    # 1girl -> "1" + "girl"; ", " comma; "very long hair" 3 words; "thighhighs" (10 letters) 2
    assert e.count("1girl, very long hair, thighhighs").tokens == 2 + 1 + 3 + 1 + 2
    assert e.count("hair \\(blue\\)").tokens == 4


def test_open_clip_vocab_path_builds_the_clip_tokenizer(tmp_path, monkeypatch):
    """A BPE merges file like open_clip's bpe_simple_vocab_16e6.txt.gz gives an exact tokenizer."""
    bpe = tmp_path / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(MERGES) + "\n")
    tok = clip_tokenizer_from_bpe(bpe)
    vocab = tok.get_vocab()
    assert len(vocab) == 512 + len(MERGES) + 2
    assert vocab["<|endoftext|>"] == len(vocab) - 1 and vocab["hair</w>"] == 512 + 2
    assert ClipTokenCounter(tok).count("long hair, blue eyes").tokens == 8

    pkg = tmp_path / "site" / "open_clip"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n", encoding="utf-8")
    (pkg / "bpe_simple_vocab_16e6.txt.gz").write_bytes(bpe.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert open_clip_bpe_path() == pkg / "bpe_simple_vocab_16e6.txt.gz"
    _load_counter.cache_clear()
    try:
        counter = get_token_counter("open_clip")
        assert counter.exact and counter.name == "open_clip-bpe"
        assert counter.count("long hair").tokens == 2
    finally:
        _load_counter.cache_clear()


def test_bad_tokenizer_folder(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="cannot load a CLIP tokenizer"):
        get_token_counter(tmp_path / "tok")


def test_exact_count_is_the_generators_chunking(tiny_tokenizer_dir):
    """With a real tokenizer the budget counts what `tagloop generate` encodes (same chunker)."""
    from tagloop.generator.encode import count_chunks, tokenize_chunks

    counter = get_token_counter(tiny_tokenizer_dir)
    tok = counter.tokenizer
    for prompt in (
        ", ".join(["long hair"] * 30),
        "hair BREAK long",
        "(hair BREAK long)",  # bracketed BREAK is the word "break" (A1111 parity): one chunk
        "a (((blue:1.3)) [hair], " * 12,
        "",
    ):
        c = counter.count(prompt)
        chunks = tokenize_chunks(tok, prompt)
        assert c.chunks == len(chunks) == count_chunks(tok, prompt)
        assert c.tokens == sum(ch.length for ch in chunks)
    assert counter.count("(hair BREAK long)").chunks == 1
    assert counter.count("(hair BREAK long)").tokens == 2 + len(tok("break", add_special_tokens=False)["input_ids"])


def test_auto_counts_exactly_with_the_packaged_clip_vocabulary():
    """tagloop ships CLIP's merge list, so `auto` is exact offline; ids as CLIP's published vocab."""
    _load_counter.cache_clear()
    try:
        counter = get_token_counter("auto")
        assert counter.exact and counter.name == "clip-bpe"
        # "a photo of a cat" -> 320 1125 539 320 2368 in CLIP's vocab.json; the comma is 267
        tok = counter.tokenizer
        assert tok("a photo of a cat", add_special_tokens=False)["input_ids"] == [320, 1125, 539, 320, 2368]
        assert tok(",", add_special_tokens=False)["input_ids"] == [267]
        # the A1111-style count of a short prompt equals the tokenizer's own count without BOS/EOS
        text = "low quality, worst quality, blurry, cropped, text, watermark, signature"
        assert counter.count(text).tokens == len(tok(text)["input_ids"]) - 2
    finally:
        _load_counter.cache_clear()


def test_folder_without_tokenizer_files_is_an_error(tmp_path):
    """transformers builds a 2-entry tokenizer from an empty folder; counting with it is nonsense."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no CLIP tokenizer files"):
        get_token_counter(tmp_path / "empty")
    (tmp_path / "model" / "tokenizer").mkdir(parents=True)  # a diffusers folder whose tokenizer/ is empty
    with pytest.raises(TokenizerError, match="no CLIP tokenizer files"):
        get_token_counter(tmp_path / "model")
