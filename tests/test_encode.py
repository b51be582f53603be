"""A1111-style CLIP prompt encoding: 75-token chunks, BREAK, comma backtracking, emphasis, clip skip, SDXL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tagloop.a1111.clip_bpe import clip_vocab
from tagloop.generator.encode import (
    count_chunks,
    encode_prompt_a1111,
    encode_prompt_sdxl,
    tokenize_chunks,
)

MERGES = [("c", "a"), ("ca", "t</w>")]


def make_tokenizer(folder: Path, pad_token: str | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer from a vocabulary written here (positional constructor, works on tf4 and tf5)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = clip_vocab(f"{a} {b}" for a, b in MERGES)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, **kwargs)


def make_encoder(tokenizer: CLIPTokenizer, cls=CLIPTextModel, seed: int = 0, hidden: int = 32, layers: int = 3):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = cls(config).eval()
    norm = getattr(model, "text_model", model).final_layer_norm
    with torch.no_grad():  # trained CLIP has a non-zero final LN bias, so chunk means are not ~0
        norm.bias.copy_(torch.linspace(0.2, 0.8, hidden))
        norm.weight.copy_(torch.linspace(0.5, 1.5, hidden))
    return model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def encoder(tokenizer) -> CLIPTextModel:
    return make_encoder(tokenizer)


def letter_id(tokenizer: CLIPTokenizer, letter: str) -> int:
    return tokenizer.get_vocab()[letter + "</w>"]


def full_ids(tokenizer: CLIPTokenizer, chunk) -> torch.Tensor:
    """BOS + 75 + EOS, written out independently of the code under test."""
    return torch.tensor([[tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]])


# -- chunking -----------------------------------------------------------------------------------


def test_tokenizer_fixture_is_sane(tokenizer) -> None:
    ids = tokenizer("a cat, b", add_special_tokens=False)["input_ids"]
    assert ids == [
        letter_id(tokenizer, "a"),
        tokenizer.get_vocab()["cat</w>"],
        tokenizer.get_vocab()[",</w>"],
        letter_id(tokenizer, "b"),
    ]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_eighty_words_make_two_chunks(tokenizer) -> None:
    chunks = tokenize_chunks(tokenizer, " ".join(["a"] * 80))
    assert [c.length for c in chunks] == [75, 5]
    assert all(len(c.tokens) == 75 and len(c.weights) == 75 for c in chunks)
    eos = tokenizer.eos_token_id
    assert chunks[1].tokens == [letter_id(tokenizer, "a")] * 5 + [eos] * 70
    assert count_chunks(tokenizer, " ".join(["a"] * 80)) == 2
    assert count_chunks(tokenizer, " ".join(["a"] * 75)) == 1


def test_empty_prompt_is_one_padding_chunk(tokenizer) -> None:
    (chunk,) = tokenize_chunks(tokenizer, "")
    assert chunk.length == 0 and chunk.tokens == [tokenizer.eos_token_id] * 75 and chunk.weights == [1.0] * 75


def test_break_starts_a_new_chunk(tokenizer) -> None:
    chunks = tokenize_chunks(tokenizer, "a cat BREAK b")
    assert [c.length for c in chunks] == [2, 1]
    assert chunks[1].tokens[0] == letter_id(tokenizer, "b")
    # lower-case "break" is just text (b, r, e, a, k</w> in this tiny vocabulary)
    lower = tokenizer("a break b", add_special_tokens=False)["input_ids"]
    (chunk,) = tokenize_chunks(tokenizer, "a break b")
    assert chunk.tokens[: chunk.length] == lower
    assert [c.length for c in tokenize_chunks(tokenizer, "BREAK a")] == [0, 1]
    # emphasis "None" reads the text as written: no BREAK, brackets are tokens
    raw = tokenizer("a BREAK (b)", add_special_tokens=False)["input_ids"]
    (chunk,) = tokenize_chunks(tokenizer, "a BREAK (b)", emphasis="None")
    assert chunk.tokens[: chunk.length] == raw and chunk.weights == [1.0] * 75


def test_bracketed_break_is_the_word_break_like_a1111(tokenizer) -> None:
    # A1111 parity: the parser multiplies BREAK's -1 marker by the bracket weight, and A1111's
    # chunker only breaks on ("BREAK", -1), so "(a BREAK b)" is one chunk holding the (lower-cased)
    # word "break" with weight -1.1 between a and b at 1.1.
    (chunk,) = tokenize_chunks(tokenizer, "(a BREAK b)")
    word = tokenizer("BREAK", add_special_tokens=False)["input_ids"]
    assert word == tokenizer("break", add_special_tokens=False)["input_ids"]
    assert chunk.tokens[: chunk.length] == [letter_id(tokenizer, "a"), *word, letter_id(tokenizer, "b")]
    assert chunk.weights[: chunk.length] == pytest.approx([1.1] + [-1.1] * len(word) + [1.1])
    assert count_chunks(tokenizer, "(a BREAK b)") == 1 and count_chunks(tokenizer, "a BREAK b") == 2


def test_comma_backtracking_moves_the_tail(tokenizer) -> None:
    comma = tokenizer.get_vocab()[",</w>"]
    text = " ".join(["a"] * 70) + ", b c d e f g"
    chunks = tokenize_chunks(tokenizer, text)
    # 70 a + comma = 71 tokens stay; "b c d e" would fill 75, so the 6 words after the comma move on
    assert [c.length for c in chunks] == [71, 6]
    assert chunks[0].tokens[70] == comma
    assert chunks[1].tokens[:6] == [letter_id(tokenizer, x) for x in "bcdefg"]
    # without backtracking the chunk is filled to 75
    assert [c.length for c in tokenize_chunks(tokenizer, text, comma_backtrack=0)] == [75, 2]
    # a comma further back than the limit does not move anything
    far = " ".join(["a"] * 40) + ", " + " ".join(["b"] * 40)
    assert [c.length for c in tokenize_chunks(tokenizer, far)] == [75, 6]
    assert [c.length for c in tokenize_chunks(tokenizer, far, comma_backtrack=40)] == [41, 40]


def test_weights_follow_the_tokens(tokenizer) -> None:
    (chunk,) = tokenize_chunks(tokenizer, "a (cat:1.5) [b]")
    assert chunk.length == 3
    assert chunk.weights[:3] == [1.0, 1.5, pytest.approx(1 / 1.1)]
    assert chunk.weights[3:] == [1.0] * 72


# -- encoding -----------------------------------------------------------------------------------


def test_shapes_and_chunk_encodings(tokenizer, encoder) -> None:
    text = " ".join(["a"] * 80)
    z = encode_prompt_a1111(tokenizer, encoder, text)
    assert z.shape == (1, 154, 32)
    chunks = tokenize_chunks(tokenizer, text)
    with torch.no_grad():
        first = encoder(full_ids(tokenizer, chunks[0])).last_hidden_state
        second = encoder(full_ids(tokenizer, chunks[1])).last_hidden_state
    torch.testing.assert_close(z, torch.cat([first, second], dim=1), rtol=1e-5, atol=1e-5)


def test_unweighted_prompt_equals_the_plain_encoder(tokenizer, encoder) -> None:
    z = encode_prompt_a1111(tokenizer, encoder, "a cat, b")
    ids = tokenizer("a cat, b", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = encoder(ids).last_hidden_state
    assert torch.equal(z, reference)


def test_clip_skip_two_is_penultimate_with_final_norm(tokenizer, encoder) -> None:
    z = encode_prompt_a1111(tokenizer, encoder, "a cat", clip_skip=2)
    ids = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids, output_hidden_states=True).hidden_states
        reference = torch.nn.functional.layer_norm(
            hidden[-2], (32,), encoder.final_layer_norm.weight, encoder.final_layer_norm.bias, encoder.config.layer_norm_eps
        )
    torch.testing.assert_close(z, reference, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(z, encode_prompt_a1111(tokenizer, encoder, "a cat"))
    z3 = encode_prompt_a1111(tokenizer, encoder, "a cat", clip_skip=3)
    assert not torch.allclose(z3, z)
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompt_a1111(tokenizer, encoder, "a", clip_skip=0)
    with pytest.raises(ValueError, match="skips more layers"):
        encode_prompt_a1111(tokenizer, encoder, "a", clip_skip=4)


def test_clip_skip_on_nested_text_model_layout(tokenizer) -> None:
    """``*WithProjection`` (and transformers 4's CLIPTextModel) keep the modules under ``.text_model``."""
    nested = make_encoder(tokenizer, CLIPTextModelWithProjection, seed=3)
    z = encode_prompt_a1111(tokenizer, nested, "a cat", clip_skip=2)
    ids = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = nested(ids, output_hidden_states=True).hidden_states
        reference = nested.text_model.final_layer_norm(hidden[-2])
    torch.testing.assert_close(z, reference)


def test_emphasis_original_keeps_the_mean(tokenizer, encoder) -> None:
    plain = encode_prompt_a1111(tokenizer, encoder, "a cat b")
    weighted = encode_prompt_a1111(tokenizer, encoder, "a (cat:1.5) b")
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    # by hand: rows times weights, then rescaled to the original mean
    weights = torch.ones(1, 77, 1)
    weights[0, 2] = 1.5
    scaled = plain * weights
    expected = scaled * (plain.mean() / scaled.mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)
    changed = (weighted - plain).abs().amax(dim=-1)[0]
    assert changed[2] > changed[1] and changed[2] > changed[3]
    no_norm = encode_prompt_a1111(tokenizer, encoder, "a (cat:1.5) b", emphasis="No norm")
    torch.testing.assert_close(no_norm, scaled)
    assert not torch.allclose(no_norm.mean(), plain.mean())
    ignore = encode_prompt_a1111(tokenizer, encoder, "a (cat:1.5) b", emphasis="Ignore")
    assert torch.equal(ignore, plain)
    with pytest.raises(ValueError, match="emphasis"):
        encode_prompt_a1111(tokenizer, encoder, "a", emphasis="Loud")


def test_emphasis_is_applied_per_chunk(tokenizer, encoder) -> None:
    text = "(a:1.3) " + " ".join(["b"] * 74) + " (c:0.5)"
    z = encode_prompt_a1111(tokenizer, encoder, text)
    chunks = tokenize_chunks(tokenizer, text)
    assert len(chunks) == 2
    parts = []
    with torch.no_grad():
        for chunk in chunks:
            raw = encoder(full_ids(tokenizer, chunk)).last_hidden_state
            w = torch.tensor([1.0, *chunk.weights, 1.0]).view(1, 77, 1)
            parts.append(raw * w * (raw.mean() / (raw * w).mean()))
    torch.testing.assert_close(z, torch.cat(parts, dim=1), rtol=1e-5, atol=1e-5)


def test_pad_to_chunks_appends_empty_chunks(tokenizer, encoder) -> None:
    short = encode_prompt_a1111(tokenizer, encoder, "a cat", pad_to_chunks=3)
    assert short.shape == (1, 231, 32)
    empty = encode_prompt_a1111(tokenizer, encoder, "")
    torch.testing.assert_close(short[:, 77:154], empty)
    torch.testing.assert_close(short[:, :77], encode_prompt_a1111(tokenizer, encoder, "a cat"))
    long = " ".join(["a"] * 80)
    assert encode_prompt_a1111(tokenizer, encoder, long, pad_to_chunks=1).shape == (1, 154, 32)


def test_sd2_style_pad_token_after_first_eos(tmp_path: Path) -> None:
    tok = make_tokenizer(tmp_path / "sd2", pad_token="!")
    assert tok.pad_token_id == 0 != tok.eos_token_id
    enc = make_encoder(tok, seed=1)
    z = encode_prompt_a1111(tok, enc, "a cat")
    ids = torch.tensor([[tok.bos_token_id, letter_id(tok, "a"), tok.get_vocab()["cat</w>"], tok.eos_token_id] + [0] * 73])
    with torch.no_grad():
        reference = enc(ids).last_hidden_state
    torch.testing.assert_close(z, reference)
    # diffusers' own padding gives the same ids
    assert tok("a cat", padding="max_length", max_length=77).input_ids == ids[0].tolist()


def test_dtype_and_device_arguments(tokenizer, encoder) -> None:
    z = encode_prompt_a1111(tokenizer, encoder, "a", dtype=torch.float16, device="cpu")
    assert z.dtype == torch.float16 and z.device.type == "cpu"


# -- SDXL -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    tok1 = make_tokenizer(tmp_path_factory.mktemp("tok1"))
    tok2 = make_tokenizer(tmp_path_factory.mktemp("tok2"), pad_token="!")
    enc1 = make_encoder(tok1, seed=4, hidden=32)
    enc2 = make_encoder(tok2, CLIPTextModelWithProjection, seed=5, hidden=48)
    return tok1, tok2, enc1, enc2


def test_sdxl_shapes_layers_and_pooled(sdxl) -> None:
    tok1, tok2, enc1, enc2 = sdxl
    text = " ".join(["a"] * 80)
    embeds, pooled = encode_prompt_sdxl([tok1, tok2], [enc1, enc2], text)
    assert embeds.shape == (1, 154, 32 + 48)
    assert pooled.shape == (1, 16)
    chunks1 = tokenize_chunks(tok1, text)
    chunks2 = tokenize_chunks(tok2, text)
    with torch.no_grad():
        expected_rows = []
        for c1, c2 in zip(chunks1, chunks2):
            ids1 = full_ids(tok1, c1)
            ids2 = tok2(" ".join(["a"] * c2.length), padding="max_length", max_length=77, return_tensors="pt").input_ids
            h1 = enc1(ids1, output_hidden_states=True).hidden_states[-2]  # penultimate, no final LN
            out2 = enc2(ids2, output_hidden_states=True)
            expected_rows.append(torch.cat([h1, out2.hidden_states[-2]], dim=-1))
            if len(expected_rows) == 1:
                expected_pooled = out2.text_embeds
    torch.testing.assert_close(embeds, torch.cat(expected_rows, dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
    # the pooled embedding comes from the first chunk only
    _, pooled_short = encode_prompt_sdxl([tok1, tok2], [enc1, enc2], " ".join(["a"] * 75))
    torch.testing.assert_close(pooled, pooled_short, rtol=1e-5, atol=1e-5)


def test_sdxl_clip_skip_and_padding(sdxl) -> None:
    tok1, tok2, enc1, enc2 = sdxl
    base, _ = encode_prompt_sdxl([tok1, tok2], [enc1, enc2], "a cat")
    skipped, _ = encode_prompt_sdxl([tok1, tok2], [enc1, enc2], "a cat", clip_skip=2)
    ids = tok1("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        h = enc1(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(base[..., :32], h[-2])
    torch.testing.assert_close(skipped[..., :32], h[-3])
    padded, _ = encode_prompt_sdxl([tok1, tok2], [enc1, enc2], "a cat", pad_to_chunks=2)
    assert padded.shape == (1, 154, 80)
    weighted, _ = encode_prompt_sdxl([tok1, tok2], [enc1, enc2], "a (cat:1.4)")
    assert weighted[..., :32].mean().item() == pytest.approx(base[..., :32].mean().item(), rel=1e-4)
    assert not torch.allclose(weighted, base)


def test_emphasis_with_break_and_zero_mean_chunk_is_finite():
    """A chunk whose layer-norm output has mean 0 (weight 1, bias 0) must not turn into NaN."""
    import tempfile

    import torch

    from tagloop.generator.encode import encode_prompt_a1111
    from tagloop.testing.diffusion import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1", 0, tempfile.mkdtemp())
    for text in ("a (cat:1.2), BREAK dog", "(cat:1.2) BREAK dog"):
        z = encode_prompt_a1111(pipe.tokenizer, pipe.text_encoder, text)
        assert z.shape[1] == 154 and torch.isfinite(z).all()
        plain = encode_prompt_a1111(pipe.tokenizer, pipe.text_encoder, text.replace("(cat:1.2)", "cat"))
        # the unweighted second chunk is untouched; the weighted first chunk differs
        assert torch.allclose(z[:, 77:], plain[:, 77:])
        assert not torch.allclose(z[:, :77], plain[:, :77])
