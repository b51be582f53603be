"""The prompt composer: quality tags, trigger words, LoRA, negative presets, emphasis, token budget.

Entry point: :func:`compose_prompt(result, settings) <compose_prompt>` -> :class:`ComposedPrompt`.
The ``tagloop prompt`` command lives in :mod:`tagloop.cli.prompt`.
"""

from .composer import ComposedPrompt, PromptPart, PromptSettings, compose_prompt, resolve_settings
from .presets import LoraSpec, PresetError, PromptPreset, builtin_presets, negative_preset_tags, negative_presets, resolve_preset
from .tokens import (
    ClipTokenCounter,
    EstimateTokenCounter,
    TokenCount,
    TokenCounter,
    TokenizerError,
    count_prompt,
    get_token_counter,
    parse_prompt_attention,
)

__all__ = [
    "ClipTokenCounter",
    "ComposedPrompt",
    "EstimateTokenCounter",
    "LoraSpec",
    "PresetError",
    "PromptPart",
    "PromptPreset",
    "PromptSettings",
    "TokenCount",
    "TokenCounter",
    "TokenizerError",
    "builtin_presets",
    "compose_prompt",
    "count_prompt",
    "get_token_counter",
    "negative_preset_tags",
    "negative_presets",
    "parse_prompt_attention",
    "resolve_preset",
    "resolve_settings",
]
