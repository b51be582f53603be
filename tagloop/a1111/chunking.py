"""A1111's prompt chunking for CLIP: emphasis pieces tokenized alone, 75-token chunks, BREAK, comma backtrack.

Token ids only (no torch): the same chunks drive the text encoders in :mod:`tagloop.generator.encode`
and the exact token counts of the prompt composer's budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .prompt_parser import is_break, parse_prompt_attention

CHUNK_LENGTH = 75
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass
class PromptChunk:
    """75 token ids (without BOS/EOS) and their emphasis weights."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    #: How many of the 75 positions hold prompt tokens (the rest is padding).
    length: int = 0


def _check_emphasis(emphasis: str) -> str:
    for mode in EMPHASIS_MODES:
        if emphasis.lower() == mode.lower():
            return mode
    raise ValueError(f"Unknown emphasis mode {emphasis!r}; use one of {', '.join(EMPHASIS_MODES)}.")


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """``(bos, eos, pad)``; pad equals eos for tokenizers that pad with EOS (SD1, SDXL encoder 1)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("The tokenizer has no BOS/EOS token; a CLIP tokenizer is needed for A1111-style encoding.")
    pad = tokenizer.pad_token_id
    return int(bos), int(eos), int(eos if pad is None else pad)


def _comma_id(tokenizer: Any) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(",</w>")


def pack_chunks(
    segments: Iterable[tuple[Sequence[int], float] | None],
    *,
    comma_id: int | None,
    pad_id: int,
    comma_backtrack: int = 20,
) -> tuple[list[PromptChunk], int]:
    """A1111's chunking of token ids: ``(ids, weight)`` segments (``None`` = ``BREAK``) -> 75-token chunks.

    Returns the chunks (padded with ``pad_id``) and the number A1111's token counter shows (every
    chunk closed before the end counts 75, the last one its length). When a chunk is full and the
    next token is not ``comma_id``, the tokens after the last comma (at most ``comma_backtrack``
    back; 0 turns it off) move to the next chunk. No segments (or only empty ones) give one chunk
    of padding.
    """
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1
    count = 0

    def close_chunk(is_last: bool = False) -> None:
        nonlocal tokens, weights, last_comma, count
        length = len(tokens)
        padding = CHUNK_LENGTH - length
        count += length if is_last else CHUNK_LENGTH
        chunks.append(PromptChunk(tokens + [pad_id] * padding, weights + [1.0] * padding, length))
        tokens, weights, last_comma = [], [], -1

    for segment in segments:
        if segment is None:
            close_chunk()
            continue
        ids, weight = segment
        for token in ids:
            if comma_id is not None and token == comma_id:
                last_comma = len(tokens)
            elif (
                comma_backtrack
                and len(tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(tokens) - last_comma <= comma_backtrack
            ):
                moved_tokens, moved_weights = tokens[last_comma + 1 :], weights[last_comma + 1 :]
                tokens, weights = tokens[: last_comma + 1], weights[: last_comma + 1]
                close_chunk()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_LENGTH:
                close_chunk()
            tokens.append(int(token))
            weights.append(float(weight))
    if tokens or not chunks:
        close_chunk(is_last=True)
    return chunks, count


def chunk_text(
    text: str,
    encode_batch: Callable[[list[str]], Sequence[Sequence[int]]],
    *,
    comma_id: int | None,
    pad_id: int,
    comma_backtrack: int = 20,
    emphasis: str = "Original",
) -> tuple[list[PromptChunk], int]:
    """Parse ``text`` (emphasis, ``BREAK``), token-ize each piece with ``encode_batch`` and :func:`pack_chunks` it.

    ``encode_batch`` maps texts to token ids without BOS/EOS and without truncation (a CLIP
    tokenizer's call, or an estimate). Emphasis "None" reads the text as written (no brackets, no
    ``BREAK``). Returns the chunks and A1111's token count.
    """
    emphasis = _check_emphasis(emphasis)
    if not 0 <= comma_backtrack <= CHUNK_LENGTH - 1:
        raise ValueError(f"`comma_backtrack` must be between 0 and 74, got {comma_backtrack}.")
    parse = emphasis != "None"
    pieces = parse_prompt_attention(text) if parse else [(text, 1.0)]
    encoded = encode_batch([piece[0] for piece in pieces])
    segments = [None if parse and is_break(piece) else (ids, piece[1]) for piece, ids in zip(pieces, encoded)]
    return pack_chunks(segments, comma_id=comma_id, pad_id=pad_id, comma_backtrack=comma_backtrack)


def tokenize_prompt(
    tokenizer: Any, text: str, *, comma_backtrack: int = 20, emphasis: str = "Original"
) -> tuple[list[PromptChunk], int]:
    """:func:`tokenize_chunks` plus the token count A1111's UI shows for ``text``."""
    _, eos, _ = _special_ids(tokenizer)

    def encode_batch(texts: list[str]) -> Sequence[Sequence[int]]:
        return tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]

    return chunk_text(
        text, encode_batch, comma_id=_comma_id(tokenizer), pad_id=eos, comma_backtrack=comma_backtrack, emphasis=emphasis
    )


def tokenize_chunks(tokenizer: Any, text: str, *, comma_backtrack: int = 20, emphasis: str = "Original") -> list[PromptChunk]:
    """Cut ``text`` into A1111 75-token chunks with per-token weights.

    An empty prompt gives one chunk of padding. ``comma_backtrack`` is A1111's
    ``comma_padding_backtrack`` (20; 0 turns it off).
    """
    return tokenize_prompt(tokenizer, text, comma_backtrack=comma_backtrack, emphasis=emphasis)[0]


def count_chunks(tokenizer: Any, text: str, *, emphasis: str = "Original") -> int:
    """How many 77-token chunks :func:`encode_prompt_a1111` produces for ``text``."""
    return len(tokenize_chunks(tokenizer, text, emphasis=emphasis))


def _empty_chunk(eos: int) -> PromptChunk:
    return PromptChunk([eos] * CHUNK_LENGTH, [1.0] * CHUNK_LENGTH, 0)


def _pad_chunks(chunks: list[PromptChunk], eos: int, pad_to_chunks: int | None) -> list[PromptChunk]:
    if pad_to_chunks is None or pad_to_chunks <= len(chunks):
        return chunks
    return chunks + [_empty_chunk(eos) for _ in range(pad_to_chunks - len(chunks))]
