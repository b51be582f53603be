"""Prompt presets per model family, negative prompt presets, and LoRA specs.

Built-in presets are in ``tagloop/data/prompt_presets.toml`` (``default``, ``plain``,
``sd15-anime``, ``sdxl-anime``, ``sd3-natural``) and ``tagloop/data/negative_presets.toml``
(``seed``, ``general``, ``anime``, ``portrait``, ``landscape``). A user preset file (TOML) holds one
preset's keys at the top level (see the data file's header), optionally ``extends = "NAME"``.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..filters.base import FilterFileError
from ..tagtext import split_tags

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EmphasisMode = Literal["none", "confidence", "score"]
EMPHASIS_MODES = ("none", "confidence", "score")


class PresetError(FilterFileError):
    """An unknown preset name or a malformed preset file (CLI exit code 2)."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA written as ``<lora:NAME:WEIGHT>``, with the trigger words its training used."""

    name: str
    weight: float = 1.0
    triggers: tuple[str, ...] = ()

    def tag(self) -> str:
        return f"<lora:{self.name}:{self.weight:g}>"

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``NAME[:WEIGHT][=trigger, trigger]`` -> LoraSpec, e.g. ``ace_step:0.8=ace_step style``."""
        head, _, triggers = text.partition("=")
        name, _, weight = head.strip().partition(":")
        name = name.strip()
        if not name or not re.fullmatch(r"[^<>:,]+", name):
            raise ValueError(f"LoRA {text!r}: give `NAME[:WEIGHT][=trigger words]`, e.g. `mystyle:0.8=mystyle`.")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"LoRA {text!r}: weight {weight!r} is not a number.") from None
        if not math.isfinite(w):
            raise ValueError(f"LoRA {text!r}: weight {weight!r} is not a finite number.")
        return cls(name, w, tuple(split_tags(triggers)))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "triggers": list(self.triggers)}


@dataclass(frozen=True)
class PromptPreset:
    """What a model family wants around the tags; None means "not set by this preset"."""

    name: str
    description: str = ""
    quality: tuple[str, ...] = ()
    trigger_words: tuple[str, ...] = ()
    negative: str = "seed"
    negative_extra: tuple[str, ...] = ()
    style: str | None = None
    use_spaces: bool = True
    escape: bool = True
    emphasis: EmphasisMode = "none"
    budget: int | None = None
    max_tags: int | None = None
    category_order: tuple[str, ...] | None = None
    replace: tuple[tuple[str, str], ...] = ()
    loras: tuple[LoraSpec, ...] = ()
    prompt_style: str | None = None
    sentence_weights: str = "a1111"
    t5_limit: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}


_LIST_KEYS = {"quality", "trigger_words", "negative_extra", "category_order"}
_KEYS = {f.name for f in fields(PromptPreset)} | {"extends"}


def _as_list(value: Any, key: str, where: str, path: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(split_tags(value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise PresetError(f"{where}: `{key}` must be a list of strings or a comma-separated string.", path)


def _parse_preset(name: str, data: dict[str, Any], path: Any, base: PromptPreset | None = None) -> PromptPreset:
    where = f"preset `{name}`"
    unknown = set(data) - _KEYS
    if unknown:
        raise PresetError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}.", path)
    preset = replace(base, name=name) if base else PromptPreset(name)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("extends", "name"):
            continue
        if key in _LIST_KEYS:
            values[key] = _as_list(value, key, where, path)
        elif key in ("use_spaces", "escape"):
            if not isinstance(value, bool):
                raise PresetError(f"{where}: `{key}` must be true or false.", path)
            values[key] = value
        elif key in ("prompt_style", "sentence_weights"):
            allowed = ("tags", "sentence", "llm") if key == "prompt_style" else ("words", "a1111")
            if value not in allowed:
                raise PresetError(f"{where}: `{key}` must be one of {list(allowed)}.", path)
            values[key] = value
        elif key in ("budget", "max_tags", "t5_limit"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PresetError(f"{where}: `{key}` must be a whole number >= 0.", path)
            values[key] = value or None
        elif key == "emphasis":
            if value not in EMPHASIS_MODES:
                raise PresetError(f"{where}: `emphasis` must be one of {list(EMPHASIS_MODES)}.", path)
            values[key] = value
        elif key == "replace":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise PresetError(f'{where}: `replace` must be a table of old = "new".', path)
            values[key] = preset.replace + tuple(value.items())
        elif key == "loras":
            if not isinstance(value, list):
                raise PresetError(f"{where}: `loras` must be a list of tables {{name, weight, triggers}}.", path)
            loras = []
            for item in value:
                if isinstance(item, str):
                    try:
                        loras.append(LoraSpec.parse(item))
                    except ValueError as e:
                        raise PresetError(f"{where}: {e}", path) from None
                elif isinstance(item, dict) and isinstance(item.get("name"), str):
                    name = item["name"].strip()
                    if not re.fullmatch(r"[^<>:,]+", name):
                        raise PresetError(f"{where}: LoRA name {item['name']!r} must be a file name without `<>:,`.", path)
                    weight = item.get("weight", 1.0)
                    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
                        raise PresetError(f"{where}: LoRA `{name}`: weight {weight!r} is not a number.", path)
                    trig = _as_list(item.get("triggers", []), "loras.triggers", where, path)
                    loras.append(LoraSpec(name, float(weight), trig))
                else:
                    raise PresetError(f"{where}: each LoRA needs a `name`.", path)
            values[key] = tuple(loras)
        else:
            if not isinstance(value, str):
                raise PresetError(f"{where}: `{key}` must be a string.", path)
            values[key] = value
    return replace(preset, **values)


def _read_toml_resource(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("tagloop").joinpath(f"data/{name}").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def builtin_presets() -> dict[str, PromptPreset]:
    """The presets of ``tagloop/data/prompt_presets.toml``, by name."""
    return {
        name: _parse_preset(name, body, "prompt_presets.toml")
        for name, body in _read_toml_resource("prompt_presets.toml").items()
    }


@functools.lru_cache(maxsize=1)
def negative_presets() -> dict[str, str]:
    """Negative prompt presets, by name (``none`` is the empty prompt)."""
    data = _read_toml_resource("negative_presets.toml")
    out = {name: body["text"] for name, body in data.items()}
    out["none"] = ""
    return out


def negative_preset_tags(name: str) -> list[str]:
    """The entries of a negative preset; raises :class:`PresetError` for an unknown name."""
    presets = negative_presets()
    if name not in presets:
        raise PresetError(f"unknown negative preset {name!r}; choose one of {sorted(presets)}.")
    return split_tags(presets[name])


def read_preset_file(path: str | Path) -> PromptPreset:
    """Read a user preset (TOML, one preset's keys at the top level, or ``[NAME]`` with one table)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise PresetError("preset file does not exist.", path) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"not a readable TOML preset ({e}).", path) from None
    if len(data) == 1 and isinstance(next(iter(data.values())), dict) and next(iter(data)) not in _KEYS:
        ((name, body),) = data.items()
    else:
        name, body = str(data.get("name") or path.stem), data
    base = None
    if "extends" in body:
        presets = builtin_presets()
        if body["extends"] not in presets:
            raise PresetError(f"`extends = {body['extends']!r}` names no built-in preset; choose one of {sorted(presets)}.", path)
        base = presets[body["extends"]]
    return _parse_preset(name, body, path, base)


def resolve_preset(preset: str | Path | PromptPreset | None) -> PromptPreset:
    """A built-in preset name, a ``.toml`` preset file, or a :class:`PromptPreset` (None = ``default``)."""
    if isinstance(preset, PromptPreset):
        return preset
    text = "default" if preset is None else str(preset)
    presets = builtin_presets()
    if text in presets:
        return presets[text]
    path = Path(text)
    if path.suffix.lower() == ".toml" or path.is_file():
        return read_preset_file(path)
    raise PresetError(f"unknown preset {text!r}; choose one of {sorted(presets)} or give a TOML preset file.")


__all__ = [
    "EMPHASIS_MODES",
    "LoraSpec",
    "PresetError",
    "PromptPreset",
    "builtin_presets",
    "negative_preset_tags",
    "negative_presets",
    "read_preset_file",
    "resolve_preset",
]
