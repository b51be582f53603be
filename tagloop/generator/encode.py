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

from typing import TYPE_CHECKING, Any, Sequence

from ..a1111.chunking import (  # noqa: F401  (re-exported: the encoders and their tests use them)
    CHUNK_LENGTH,
    EMPHASIS_MODES,
    PromptChunk,
    _check_emphasis,
    _empty_chunk,
    _pad_chunks,
    _special_ids,
    chunk_text,
    count_chunks,
    pack_chunks,
    tokenize_chunks,
    tokenize_prompt,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _chunk_tensors(tokenizer: Any, chunks: Sequence[PromptChunk], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
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


def _apply_emphasis(z: torch.Tensor, weights: torch.Tensor, emphasis: str) -> torch.Tensor:
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
        ratio = torch.where(
            usable, original_mean / torch.where(usable, new_mean, torch.ones_like(new_mean)), torch.ones_like(new_mean)
        )
        weighted = weighted * ratio
    return weighted.to(z.dtype)


def _module_device_dtype(module: Any) -> tuple[Any, Any]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def _encode_chunks(
    text_encoder: Any, ids: torch.Tensor, *, hidden_index: int | None, final_norm: bool
) -> tuple[torch.Tensor, Any]:
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
) -> torch.Tensor:
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
) -> tuple[torch.Tensor, torch.Tensor]:
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
