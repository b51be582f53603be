"""The prompt composer: from a :class:`TagResult` to positive and negative prompts, with a record.

Positive prompt, in order:

1. model trigger words (verbatim; the seeds put the model's trigger word first),
2. quality tags (verbatim, e.g. seed 001's ``masterpiece, best quality, official art, extremely
   detailed CG``),
3. LoRA trigger words (verbatim),
4. the filtered tags, formatted by one :class:`~tagloop.tagtext.TagPolicy` (spaces, escaped
   parentheses, kaomoji kept), with ``(tag:1.2)`` weights where emphasis asks for them,
5. ``<lora:NAME:WEIGHT>`` tags (A1111 removes them from the text before encoding).

Negative prompt: the negative preset (default seed 001's), extra entries, then tags the style
rules moved there; duplicates (by canonical form) removed. ``none`` gives an empty negative.

Emphasis modes: ``none``; ``confidence`` maps a tagger score ``s`` to ``lo + (hi - lo) * s``
(default range 0.8-1.2: a 0.5 score is neutral, 1.0 gives ``(tag:1.2)``), rounded to 2 decimals;
``score`` writes the score itself (A1111's "interrogate: include ranks", 3 decimals). Explicit
``weights`` (``tag=1.3``) win over both and apply to quality tags and trigger words too. A weight
within 0.005 of 1 is written plainly.

Token budget: when the positive prompt has more CLIP tokens than ``budget`` (counted like A1111,
see :mod:`tagloop.prompt.tokens`), tagger tags are dropped lowest score first (ties: the later
one), never quality tags, trigger words, LoRA parts or pinned (``always_first``) tags; every drop is
recorded. If the protected parts alone exceed the budget a warning says so.

Prompt styles (``prompt_style``, default the preset's, else ``tags``): ``tags`` is the above;
``sentence`` writes the same kept tags as one sentence (:mod:`tagloop.prompt.sentence`), ``llm`` has a
local language model write it and checks the answer (:mod:`tagloop.prompt.llm`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from ..filters.base import Removal
from ..filters.chain import FilterSettings, _tuple, apply_filters
from ..filters.style import StyleRules, resolve_style
from ..tagger.result import TagResult, TagScore
from ..tagtext import TagPolicy, canonical
from .presets import EMPHASIS_MODES, LoraSpec, PresetError, PromptPreset, negative_preset_tags, resolve_preset
from .tokens import TokenCount, TokenCounter, get_token_counter

PartKind = Literal["trigger", "quality", "lora_trigger", "tag", "lora", "negative"]


@dataclass(frozen=True)
class PromptSettings(FilterSettings):
    """Every option of the filters and the composer; None means "take the preset's value".

    Filter options: see :class:`~tagloop.filters.FilterSettings` (``style`` and ``category_order``
    and ``max_tags`` default to the preset's).
    preset: built-in preset name, preset file or :class:`PromptPreset` (default ``default``).
    quality_tags: replace the preset's quality tags (``()`` = none).
    trigger_words: added after the preset's trigger words.
    loras: :class:`LoraSpec` or ``"NAME[:WEIGHT][=triggers]"`` strings, added to the preset's.
    negative_preset: negative preset name or ``none``; negative_extra: more negative entries.
    emphasis: ``none`` | ``confidence`` | ``score``; emphasis_range: (low, high) for ``confidence``.
    weights: ``(tag, weight)`` pairs or ``"tag=weight"`` strings, written as ``(tag:weight)``.
    budget: CLIP-token budget of the positive prompt (0 = none).
    tokenizer: tokenizer folder, ``auto``, ``open_clip`` or ``estimate``.
    use_spaces / escape: tag text policy (see :class:`~tagloop.tagtext.TagPolicy`).
    prompt_style: ``tags`` | ``sentence`` | ``llm`` (None = the preset's, else ``tags``).
    llm: for ``llm``: a transformers model folder, a ``.gguf`` file, a hub id, or an object with
        ``generate(prompt, max_new_tokens) -> str`` (see :mod:`tagloop.prompt.llm`).
    llm_max_new_tokens: the longest answer the model may write.
    sentence_groups: a group file shaped like ``tagloop/data/sentence_groups.toml`` for the
    ``sentence`` and ``llm`` styles (None: the built-in one).
    """

    style: str | Path | StyleRules | None = None
    category_order: tuple[str, ...] | None = None  # type: ignore[assignment]
    preset: str | Path | PromptPreset | None = None
    quality_tags: tuple[str, ...] | None = None
    trigger_words: tuple[str, ...] = ()
    loras: tuple[Any, ...] = ()
    negative_preset: str | None = None
    negative_extra: tuple[str, ...] = ()
    emphasis: str | None = None
    emphasis_range: tuple[float, float] = (0.8, 1.2)
    weights: tuple[Any, ...] = ()
    budget: int | None = None
    tokenizer: str | Path | TokenCounter | None = "auto"
    use_spaces: bool | None = None
    escape: bool | None = None
    prompt_style: str | None = None
    llm: Any = None
    llm_max_new_tokens: int = 120
    sentence_groups: str | Path | None = None

    def __post_init__(self) -> None:
        if self.category_order is not None:
            object.__setattr__(self, "category_order", _tuple(self.category_order))
        order = self.category_order
        object.__setattr__(self, "category_order", ())  # FilterSettings' check wants a tuple
        super().__post_init__()
        object.__setattr__(self, "category_order", order)
        for name in ("trigger_words", "negative_extra", "weights"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if self.quality_tags is not None:
            object.__setattr__(self, "quality_tags", _tuple(self.quality_tags))
        loras = tuple(LoraSpec.parse(x) if isinstance(x, str) else x for x in _tuple(self.loras))
        object.__setattr__(self, "loras", loras)
        weights = []
        for w in self.weights:
            if isinstance(w, str):
                tag, sep, value = w.rpartition("=")
                if not sep or not tag.strip():
                    raise ValueError(f"weight {w!r}: write `tag=1.2`.")
                w = (tag, value)
            try:
                value = float(w[1])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"weight {w!r}: the weight must be a finite number, e.g. `detailed eyes=1.2`.")
            weights.append((canonical(w[0]), value))
        object.__setattr__(self, "weights", tuple(weights))
        if self.emphasis is not None and self.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"`emphasis` must be one of {list(EMPHASIS_MODES)}, got {self.emphasis!r}.")
        lo, hi = self.emphasis_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"`emphasis_range` must be (low, high) with low <= high, got {self.emphasis_range!r}.")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"`budget` must be >= 0, got {self.budget}.")
        if self.prompt_style is not None and self.prompt_style not in ("tags", "sentence", "llm"):
            raise ValueError(f"`prompt_style` must be one of tags, sentence, llm, got {self.prompt_style!r}.")
        if not isinstance(self.llm_max_new_tokens, int) or self.llm_max_new_tokens < 1:
            raise ValueError(f"`llm_max_new_tokens` must be a whole number >= 1, got {self.llm_max_new_tokens!r}.")


def resolve_settings(settings: PromptSettings) -> tuple[PromptSettings, PromptPreset]:
    """Fill every None of ``settings`` from its preset; returns (settings, preset)."""
    preset = resolve_preset(settings.preset)
    style = settings.style if settings.style is not None else (preset.style or "none")
    order = settings.category_order if settings.category_order is not None else (preset.category_order or ("character",))
    return (
        replace(
            settings,
            preset=preset,
            style=style,
            category_order=order,
            max_tags=settings.max_tags if settings.max_tags is not None else preset.max_tags,
            replace=tuple(f"{o} = {n}" for o, n in preset.replace) + settings.replace,
            quality_tags=settings.quality_tags if settings.quality_tags is not None else preset.quality,
            trigger_words=preset.trigger_words + settings.trigger_words,
            loras=preset.loras + settings.loras,
            negative_preset=settings.negative_preset or preset.negative,
            negative_extra=preset.negative_extra + settings.negative_extra,
            emphasis=settings.emphasis or preset.emphasis,
            budget=settings.budget if settings.budget is not None else preset.budget,
            use_spaces=preset.use_spaces if settings.use_spaces is None else settings.use_spaces,
            escape=preset.escape if settings.escape is None else settings.escape,
            prompt_style=settings.prompt_style or preset.prompt_style or "tags",
        ),
        preset,
    )


@dataclass(frozen=True)
class PromptPart:
    """One entry of a prompt: what was written, and where it came from."""

    text: str
    kind: PartKind
    source: str
    tag: str | None = None
    score: float | None = None
    category: str | None = None
    weight: float | None = None
    pinned: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "kind": self.kind, "source": self.source}
        if self.tag is not None:
            out["tag"] = self.tag
        if self.score is not None:
            out["score"] = round(float(self.score), 6)
        if self.category is not None:
            out["category"] = self.category
        if self.weight is not None:
            out["weight"] = self.weight
        if self.pinned:
            out["pinned"] = True
        return out


@dataclass
class ComposedPrompt:
    """The composer's output: the two prompt strings and how they were built."""

    positive: str
    negative: str
    parts: list[PromptPart]
    negative_parts: list[PromptPart]
    removals: list[Removal]
    tokens: TokenCount
    negative_tokens: TokenCount
    dropped_for_budget: list[str] = field(default_factory=list)
    budget: int | None = None
    preset: str = "default"
    style: str | None = None
    negative_preset: str = "seed"
    rating: dict[str, float] = field(default_factory=dict)
    path: str = ""
    warnings: list[str] = field(default_factory=list)
    prompt_style: str = "tags"
    sentence: str | None = None
    phrases: list[dict[str, Any]] = field(default_factory=list)
    dropped_by_llm: list[str] = field(default_factory=list)
    t5_tokens: dict[str, Any] | None = None
    llm: dict[str, Any] | None = None

    def kept_tags(self) -> list[str]:
        """Canonical names of the tagger tags that made it into the positive prompt."""
        return [p.tag for p in self.parts if p.kind == "tag" and p.tag is not None]

    def text(self) -> str:
        """A1111 infotext style: the positive prompt, then ``Negative prompt: ...`` if there is one."""
        return self.positive + (f"\nNegative prompt: {self.negative}" if self.negative else "")

    def to_json(self) -> dict[str, Any]:
        out = {
            "path": self.path,
            "positive": self.positive,
            "negative": self.negative,
            "preset": self.preset,
            "style": self.style,
            "negative_preset": self.negative_preset,
            "rating": {k: round(float(v), 6) for k, v in self.rating.items()},
            "parts": [p.to_json() for p in self.parts],
            "negative_parts": [p.to_json() for p in self.negative_parts],
            "removals": [r.to_json() for r in self.removals],
            "dropped_for_budget": list(self.dropped_for_budget),
            "budget": self.budget,
            "tokens": {"positive": self.tokens.to_json(), "negative": self.negative_tokens.to_json()},
            "warnings": list(self.warnings),
            "prompt_style": self.prompt_style,
        }
        if self.prompt_style != "tags":
            out["sentence"] = self.sentence
            out["phrases"] = list(self.phrases)
            out["dropped_by_llm"] = list(self.dropped_by_llm)
            if self.t5_tokens is not None:
                out["tokens"]["t5"] = self.t5_tokens
            if self.llm is not None:
                out["llm"] = self.llm
        return out

    def to_json_str(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=indent)


def _fmt_weight(w: float) -> str:
    return f"{w:.3f}".rstrip("0").rstrip(".")


def _weighted(text: str, weight: float | None) -> str:
    if weight is None or abs(weight - 1.0) < 0.005:
        return text
    return f"({text}:{_fmt_weight(weight)})"


def _join(parts: Sequence[PromptPart]) -> str:
    return ", ".join(p.text for p in parts if p.text)


def _tag_weight(tag: TagScore, mode: str, rng: tuple[float, float]) -> float | None:
    if mode == "confidence":
        lo, hi = rng
        return round(lo + (hi - lo) * float(tag.score), 2)
    if mode == "score":
        return round(float(tag.score), 3)
    return None


def compose_prompt(result: TagResult, settings: PromptSettings | None = None) -> ComposedPrompt:
    """Filter ``result``'s tags and build the positive and negative prompts with a full record.

    Raises :class:`~tagloop.filters.FilterFileError` (or its subclass ``PresetError``) for bad
    files or names and :class:`~tagloop.prompt.tokens.TokenizerError` for a bad tokenizer folder.
    """
    settings = settings if settings is not None else PromptSettings()
    eff, preset = resolve_settings(settings)
    style_rules = resolve_style(eff.style)
    policy = TagPolicy(use_spaces=bool(eff.use_spaces), escape=bool(eff.escape))
    weights = dict(eff.weights)
    warnings: list[str] = []

    tags = list(result.tags)
    if (
        eff.keep_rating
        and result.rating
        and not any(t.category == "rating" or canonical(t.name).startswith("rating:") for t in tags)
    ):
        top = max(result.rating, key=result.rating.__getitem__)
        tags.append(TagScore(f"rating:{top}", float(result.rating[top]), "rating"))
    kept, log = apply_filters(tags, eff)
    removals = list(log.events)

    parts: list[PromptPart] = []
    seen: dict[str, str] = {}

    def literal(text: str, kind: PartKind, source: str) -> None:
        key = canonical(text)
        if not key or key in seen:
            return
        seen[key] = kind
        parts.append(PromptPart(_weighted(text.strip(), weights.get(key)), kind, source, weight=weights.get(key)))

    for word in eff.trigger_words:
        literal(word, "trigger", f"preset:{preset.name}" if word in preset.trigger_words else "settings")
    for word in eff.quality_tags or ():
        literal(word, "quality", f"preset:{preset.name}" if settings.quality_tags is None else "settings")
    for lora in eff.loras:
        for word in lora.triggers:
            literal(word, "lora_trigger", f"lora:{lora.name}")

    pins = {canonical(p) for p in eff.always_first}
    for tag in kept:
        key = canonical(tag.name)
        if key in seen:
            kind = seen[key].replace("_", " ")
            removals.append(
                Removal(tag.name, "compose", f"already in the prompt as a {kind}", "removed", tag.score, tag.category)
            )
            continue
        seen[key] = "tag"
        weight = weights.get(key, _tag_weight(tag, str(eff.emphasis), eff.emphasis_range))
        if weight is not None and abs(weight - 1.0) < 0.005:
            weight = None
        parts.append(
            PromptPart(
                _weighted(policy.format(tag.name), weight), "tag", "tagger", key, tag.score, tag.category, weight, key in pins
            )
        )
    for lora in eff.loras:
        parts.append(PromptPart(lora.tag(), "lora", f"lora:{lora.name}", weight=lora.weight))

    negative_parts: list[PromptPart] = []
    neg_seen: set[str] = set()

    def negative(text: str, source: str, tag: TagScore | None = None) -> None:
        key = canonical(text)
        if key and key not in neg_seen:
            neg_seen.add(key)
            negative_parts.append(
                PromptPart(
                    text, "negative", source, key if tag else None, tag.score if tag else None, tag.category if tag else None
                )
            )

    neg_name = str(eff.negative_preset)
    for entry in negative_preset_tags(neg_name):
        negative(entry, f"negative:{neg_name}")
    for entry in eff.negative_extra:
        negative(entry, "settings")
    for tag in log.negative:
        negative(policy.format(tag.name), "style", tag)

    counter = get_token_counter(eff.tokenizer)
    positive = _join(parts)
    tokens = counter.count(positive)
    dropped: list[str] = []
    budget = eff.budget or None
    style_budget, budget = (budget, None) if eff.prompt_style != "tags" else (None, budget)
    if budget is not None and tokens.tokens > budget:
        candidates = sorted(
            (i for i, p in enumerate(parts) if p.kind == "tag" and not p.pinned),
            key=lambda i: (parts[i].score if parts[i].score is not None else 0.0, -i),
        )
        removed_idx: set[int] = set()
        for i in candidates:
            if tokens.tokens <= budget:
                break
            removed_idx.add(i)
            p = parts[i]
            before = tokens.tokens
            tokens = counter.count(_join([q for j, q in enumerate(parts) if j not in removed_idx]))
            dropped.append(p.tag or p.text)
            removals.append(
                Removal(
                    p.tag or p.text,
                    "budget",
                    f"prompt had {before} CLIP tokens, over the budget of {budget}; lowest-scoring tags go first",
                    "removed",
                    p.score,
                    p.category,
                )
            )
        parts = [p for j, p in enumerate(parts) if j not in removed_idx]
        positive = _join(parts)
        if tokens.tokens > budget:
            warnings.append(
                f"the prompt still has {tokens.tokens} CLIP tokens, over the budget of {budget}: quality tags, trigger words, "
                "LoRA and pinned tags are never dropped; raise `budget` or shorten them."
            )
    if budget is not None and not tokens.exact:
        warnings.append("token counts are an estimate; pass `--tokenizer DIR` (a CLIP tokenizer folder) for exact counts.")
    negative_text = _join(negative_parts)
    composed = ComposedPrompt(
        positive=positive,
        negative=negative_text,
        parts=parts,
        negative_parts=negative_parts,
        removals=removals,
        tokens=tokens,
        negative_tokens=counter.count(negative_text),
        dropped_for_budget=dropped,
        budget=budget,
        preset=preset.name,
        style=style_rules.name if style_rules is not None else None,
        negative_preset=neg_name,
        rating={**result.rating, **log.rating},
        path=result.path,
        warnings=warnings,
    )
    if eff.prompt_style != "tags":
        from .sentence import apply_prompt_style

        composed = apply_prompt_style(composed, eff, preset, counter, style_budget, policy)
    return composed


__all__ = ["ComposedPrompt", "PromptPart", "PromptSettings", "PresetError", "compose_prompt", "resolve_settings"]
