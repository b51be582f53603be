"""Prompt encoding as AUTOMATIC1111 does it, for diffusers' CLIP text encoders.

* The prompt is parsed for emphasis (``(x:1.2)``, ``[x]``, ``BREAK``; see :mod:`.prompt_parser`);
  each piece is tokenized on its own, without BOS/EOS.
* Tokens are cut into chunks of 75: ``BREAK`` starts a new chunk; when a chunk is full and the next
  token is not a comma, the tokens after the last comma (at most ``comma_backtrack`` back) move to
  the next chunk. Each chunk becomes ``BOS + 75 + EOS`` = 77 ids, padded with EOS; for tokenizers
  whose pad token is not EOS (SD2, SDXL's second encoder) every id after the first EOS is the pad id.
* Every chunk is encoded on its own; the results are concatenated on the token axis, so a prompt of
  k chunks gives ``(1, 77*k, C)``. Long prompts are not truncated.
* Emphasis "Original": each token's output is multiplied by its weight, then the chunk is rescaled
  to its original mean. "No norm": multiplied only. "Ignore": brackets parsed, weights unused.
  "None": the text is encoded as written (no bracket parsing, no ``BREAK``).
* Clip skip (A1111 meaning): 1 = last layer; N > 1 = ``hidden_states[-N]`` passed through the
  final layer norm. Done here on ``output_hidden_states`` so it works with transformers 4 (which
  nests the modules under ``.text_model``) and 5 (``CLIPTextModel`` flattened), where the SD1
  pipeline's own ``clip_skip`` fails.
* SDXL: both encoders' penultimate layer without final layer norm, concatenated on the channel
  axis; the pooled embedding is text_encoder_2's projection of the first chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .prompt_parser import is_break, parse_prompt_attention

if TYPE_CHECKING:  # pragma: no cover
    import torch

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


def tokenize_chunks(
    tokenizer: Any, text: str, *, comma_backtrack: int = 20, emphasis: str = "Original"
) -> list[PromptChunk]:
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


def _chunk_tensors(tokenizer: Any, chunks: Sequence[PromptChunk], device: Any) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``(ids, weights)`` of shape ``(k, 77)``: BOS + tokens + EOS, pad id after the first EOS."""
    import torch

    bos, eos, pad = _special_ids(tokenizer)
    rows, weight_rows = [], []
    for chunk in chunks:
        ids = [bos, *chunk.tokens, eos]
        if pad != eos:
            first_eos = ids.index(eos, 1)
            ids = ids[: first_eos + 1] + [pad] * (len(ids) - first_eos - 1)
        rows.append(ids)
        weight_rows.append([1.0, *chunk.weights, 1.0])
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(weight_rows, dtype=torch.float32, device=device),
    )


def _final_layer_norm(text_encoder: Any) -> Any:
    """The final layer norm of a CLIP text model, nested (transformers 4, ``*WithProjection``) or not."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    norm = getattr(inner, "final_layer_norm", None)
    if norm is None:
        raise ValueError(f"{type(text_encoder).__name__} has no final_layer_norm; a CLIP text model is needed.")
    return norm


def _num_layers(text_encoder: Any) -> int:
    return int(text_encoder.config.num_hidden_layers)


def _apply_emphasis(z: "torch.Tensor", weights: "torch.Tensor", emphasis: str) -> "torch.Tensor":
    """Weight each token row of ``z`` (k, 77, C) by ``weights`` (k, 77), per chunk."""
    import torch

    if emphasis in ("Ignore", "None") or bool((weights == 1.0).all()):
        return z
    original = z.float()
    weighted = original * weights.unsqueeze(-1)
    if emphasis == "Original":
        original_mean = original.mean(dim=(1, 2), keepdim=True)
        new_mean = weighted.mean(dim=(1, 2), keepdim=True)
        # A chunk whose mean is (numerically) zero cannot be rescaled to it: 0/0 would give NaN and
        # a near-zero divisor a huge factor. Such chunks keep the plain weighted values.
        scale = weighted.abs().mean(dim=(1, 2), keepdim=True)
        usable = new_mean.abs() > 1e-6 * scale
        ratio = torch.where(usable, original_mean / torch.where(usable, new_mean, torch.ones_like(new_mean)), torch.ones_like(new_mean))
        weighted = weighted * ratio
    return weighted.to(z.dtype)


def _module_device_dtype(module: Any) -> tuple[Any, Any]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def _encode_chunks(
    text_encoder: Any, ids: "torch.Tensor", *, hidden_index: int | None, final_norm: bool
) -> tuple["torch.Tensor", Any]:
    """Run the encoder on ``ids``; return the chosen hidden state and the raw output."""
    output = text_encoder(ids, output_hidden_states=hidden_index is not None)
    if hidden_index is None:
        z = output.last_hidden_state
    else:
        z = output.hidden_states[hidden_index]
        if final_norm:
            z = _final_layer_norm(text_encoder)(z)
    return z, output


def _check_clip_skip(clip_skip: int, text_encoder: Any, offset: int = 0) -> None:
    if not isinstance(clip_skip, int) or clip_skip < 1:
        raise ValueError(f"`clip_skip` must be an integer >= 1 (1 = last layer, 2 = penultimate), got {clip_skip!r}.")
    layers = _num_layers(text_encoder)
    if clip_skip + offset > layers:
        raise ValueError(f"`clip_skip` {clip_skip} skips more layers than the text encoder's {layers}.")


def encode_prompt_a1111(
    tokenizer: Any,
    text_encoder: Any,
    text: str,
    *,
    clip_skip: int = 1,
    emphasis: str = "Original",
    device: Any = None,
    dtype: Any = None,
    pad_to_chunks: int | None = None,
) -> "torch.Tensor":
    """Encode ``text`` for SD1/SD2 as A1111 does; returns ``prompt_embeds`` of shape (1, 77*k, C).

    ``clip_skip`` has A1111's meaning (2 = penultimate layer + final layer norm). ``pad_to_chunks``
    appends encodings of empty chunks so cond and uncond can share a length (pass the larger of
    :func:`count_chunks` for both). ``device`` defaults to the encoder's, ``dtype`` to the encoder's.
    """
    import torch

    emphasis = _check_emphasis(emphasis)
    _check_clip_skip(clip_skip, text_encoder)
    encoder_device, encoder_dtype = _module_device_dtype(text_encoder)
    _, eos, _ = _special_ids(tokenizer)
    chunks = _pad_chunks(tokenize_chunks(tokenizer, text, emphasis=emphasis), eos, pad_to_chunks)
    ids, weights = _chunk_tensors(tokenizer, chunks, encoder_device)
    with torch.no_grad():
        hidden_index = None if clip_skip == 1 else -clip_skip
        z, _ = _encode_chunks(text_encoder, ids, hidden_index=hidden_index, final_norm=True)
        z = _apply_emphasis(z, weights, emphasis)
    z = z.reshape(1, -1, z.shape[-1])
    return z.to(device=device or encoder_device, dtype=dtype or encoder_dtype)


def encode_prompt_sdxl(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    text: str,
    *,
    clip_skip: int = 1,
    emphasis: str = "Original",
    device: Any = None,
    dtype: Any = None,
    pad_to_chunks: int | None = None,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Encode ``text`` for SDXL as A1111 does; returns ``(prompt_embeds, pooled_prompt_embeds)``.

    ``prompt_embeds`` is (1, 77*k, C1 + C2): per chunk, both encoders' penultimate hidden state
    (no final layer norm) side by side. ``pooled`` is (1, P): ``text_encoder_2``'s projected pooled
    output of the first chunk. ``clip_skip`` > 1 goes further back (``hidden_states[-(clip_skip+1)]``,
    diffusers' convention for SDXL); A1111 ignores clip skip on SDXL by default. A ``None`` first
    tokenizer/encoder (SDXL refiner) uses the second encoder alone.
    """
    import torch

    emphasis = _check_emphasis(emphasis)
    if len(tokenizers) != 2 or len(text_encoders) != 2:
        raise ValueError("`tokenizers` and `text_encoders` must each hold two entries (the SDXL pair).")
    pairs = [(tok, enc) for tok, enc in zip(tokenizers, text_encoders) if tok is not None and enc is not None]
    if text_encoders[1] is None or tokenizers[1] is None:
        raise ValueError("SDXL needs its second text encoder (CLIPTextModelWithProjection) for the pooled embedding.")
    for _, encoder in pairs:
        _check_clip_skip(clip_skip, encoder, offset=1)

    token_chunks = [tokenize_chunks(tok, text, emphasis=emphasis) for tok, _ in pairs]
    total = max([len(c) for c in token_chunks] + [pad_to_chunks or 0])
    outputs = []
    pooled = None
    out_device = device
    out_dtype = dtype
    with torch.no_grad():
        for (tokenizer, encoder), chunks in zip(pairs, token_chunks):
            encoder_device, encoder_dtype = _module_device_dtype(encoder)
            out_device = out_device or encoder_device
            out_dtype = out_dtype or encoder_dtype
            _, eos, _ = _special_ids(tokenizer)
            ids, weights = _chunk_tensors(tokenizer, _pad_chunks(chunks, eos, total), encoder_device)
            z, output = _encode_chunks(encoder, ids, hidden_index=-(clip_skip + 1), final_norm=False)
            z = _apply_emphasis(z, weights, emphasis)
            outputs.append(z.to(device=out_device, dtype=out_dtype))
            if encoder is text_encoders[1]:
                embeds = getattr(output, "text_embeds", None)
                if embeds is None:
                    raise ValueError(
                        "The second SDXL text encoder gave no `text_embeds`; it must be a CLIPTextModelWithProjection."
                    )
                pooled = embeds[:1]
    z = torch.cat(outputs, dim=-1)
    return z.reshape(1, -1, z.shape[-1]), pooled.to(device=out_device, dtype=out_dtype)
