"""Sentence prompts written by a local causal language model (``prompt_style = "llm"``).

The model is the ``llm`` setting: a ``transformers`` model folder (loaded offline), a ``.gguf`` file
(through ``llama-cpp-python``, the optional extra ``tagloop[llm]``), or a hub id (``owner/name``),
the only case in which anything is downloaded. Python callers may pass any object with the method
``generate(prompt: str, max_new_tokens: int) -> str`` instead (see :class:`TextGenerator`).

The model gets one fixed instruction (:data:`INSTRUCTION`): the tags it must keep and the
rule-based sentence as a draft; it decodes greedily (temperature 0) for at most
``llm_max_new_tokens`` tokens. The answer is checked: every kept tag must still be expressed,
matched back through ``sentence_groups.toml`` (the tag's phrase, its own words, its synonyms;
see :func:`tagloop.prompt.sentence.find_tag`). Tags it left out are reported (``dropped_by_llm``)
and their phrases appended. An answer that is empty, expresses fewer than half of the tags, or
breaks the token budget is not used: the rule-based sentence is, with a notice.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from ..errors import ModelFileError, ModelNotFoundError
from ..notices import notice
from .sentence import Phrase, SentenceError, SentenceGroups, find_tag

#: The fixed instruction; ``{tags}`` is one tag a line, ``{draft}`` the rule-based sentence.
INSTRUCTION = (
    "Rewrite the draft below as one fluent English description of a picture, for an image generator. "
    "Keep the meaning of every tag in the list and add nothing that is not in it. "
    "Answer with the description only.\n"
    "Tags:\n{tags}\n"
    "Draft: {draft}\n"
    "Description:"
)
DEFAULT_MAX_NEW_TOKENS = 120


@runtime_checkable
class TextGenerator(Protocol):
    """What the ``llm`` path calls: greedy text generation with a length bound."""

    def generate(self, prompt: str, max_new_tokens: int) -> str: ...


class TransformersGenerator:
    """A ``transformers`` causal LM and its tokenizer; the prompt goes through the chat template if it has one."""

    def __init__(self, source: str, local: bool) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            self.model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local)
        except Exception as e:  # transformers raises many types for a bad folder or id
            raise ModelFileError(
                f"`llm` {source}: cannot load a causal language model and its tokenizer ({type(e).__name__}: {e}); "
                "give a transformers model folder, a .gguf file or a hub id."
            ) from None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.name = Path(source).name if local else source

    def generate(self, prompt: str, max_new_tokens: int) -> str:
        import torch

        tok = self.tokenizer
        text = prompt
        if getattr(tok, "chat_template", None):
            try:
                text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            except Exception:  # a template that wants other roles: the plain instruction still works
                text = prompt
        enc = tok(text, return_tensors="pt").to(self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(**enc, do_sample=False, max_new_tokens=int(max_new_tokens), pad_token_id=pad)
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


class GGUFGenerator:
    """A GGUF model through ``llama-cpp-python`` (``pip install tagloop[llm]``), temperature 0."""

    def __init__(self, path: Path) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelFileError(
                f"`llm` {path.name} is a GGUF file, which needs llama-cpp-python: install tagloop[llm], or give a "
                "transformers model folder."
            ) from None
        try:
            self.model = Llama(model_path=str(path), n_ctx=2048, seed=0, verbose=False)
        except Exception as e:
            raise ModelFileError(f"`llm` {path}: llama-cpp-python cannot load it ({type(e).__name__}: {e}).") from None
        self.name = path.name

    def generate(self, prompt: str, max_new_tokens: int) -> str:
        out = self.model.create_completion(prompt, max_tokens=int(max_new_tokens), temperature=0.0, top_k=1)
        return out["choices"][0]["text"]


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@functools.lru_cache(maxsize=2)
def _load(spec: str) -> TextGenerator:
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return GGUFGenerator(path)
    if path.is_dir():
        return TransformersGenerator(str(path.resolve()), local=True)
    if path.exists():
        raise ModelFileError(f"`llm` {spec} is neither a transformers model folder nor a .gguf file.")
    if _HUB_ID.fullmatch(spec) and not spec.startswith((".", "/", "~")):
        return TransformersGenerator(spec, local=False)
    raise ModelNotFoundError(
        f"`llm` {spec} does not exist; give a local transformers model folder, a .gguf file, or a hub id (owner/name)."
    )


def load_language_model(llm: str | Path | TextGenerator) -> TextGenerator:
    """A :class:`TextGenerator` for the ``llm`` setting (a folder, a ``.gguf`` file, a hub id, or one already made)."""
    if isinstance(llm, TextGenerator) and not isinstance(llm, (str, Path)):
        return llm
    if llm is None or not str(llm).strip():
        raise SentenceError("`prompt_style` llm needs `llm`: a local transformers model folder, a .gguf file or a hub id.")
    return _load(str(llm))


def instruction(tags: Sequence[str], draft: str) -> str:
    """The fixed instruction for these tags (written with spaces) and the rule-based ``draft``."""
    return INSTRUCTION.format(tags="\n".join(f"- {t}" for t in tags), draft=draft)


def clean_answer(text: str) -> str:
    """The model's first paragraph, without quotes, a leading label or runs of white space."""
    text = (text or "").strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    text = re.sub(r"^(description|answer|sentence)\s*:\s*", "", text, flags=re.I)
    text = " ".join(text.split()).strip(" \"'`")
    return text


@dataclass
class LlmResult:
    """What the model answered and whether it is used (``record`` goes into the prompt's JSON as ``llm``)."""

    accepted: bool
    sentence: str
    phrases: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def llm_sentence(
    llm: str | Path | TextGenerator | None,
    phrases: Sequence[Phrase],
    groups: SentenceGroups,
    draft: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    fits: Callable[[str], bool] = lambda text: True,
) -> LlmResult:
    """Ask the model for a sentence expressing the tags of ``phrases``; check it (see the module docstring)."""
    model = load_language_model(llm)  # type: ignore[arg-type]
    name = getattr(model, "name", type(model).__name__)
    tags = [(t, c, p) for p in phrases for t, c in zip(p.tags, p.categories or [None] * len(p.tags))]
    record: dict[str, Any] = {"model": str(name), "max_new_tokens": int(max_new_tokens), "temperature": 0}
    if not tags:
        record.update(accepted=False, reason="no tags to write")
        return LlmResult(False, draft, record=record)
    raw = model.generate(instruction([t.replace("_", " ") for t, _, _ in tags], draft), int(max_new_tokens))
    answer = clean_answer(raw)
    record["answer"] = answer
    found: list[tuple[str, str, Phrase]] = []
    missing: list[tuple[str, Phrase]] = []
    for tag, category, phrase in tags:
        span = find_tag(tag, answer, groups, category, extra=[phrase.base])
        if span is None:
            missing.append((tag, phrase))
        else:
            found.append((tag, span, phrase))
    reason = None
    if not answer:
        reason = "the answer was empty"
    elif len(found) < math.ceil(len(tags) / 2):
        reason = f"it expressed only {len(found)} of {len(tags)} tags"
    sentence = answer
    appended: list[Phrase] = []
    for _, phrase in missing:
        if phrase not in appended:
            appended.append(phrase)
    if reason is None and appended:
        sentence = answer.rstrip(" .,;") + ", " + ", ".join(p.text or p.base for p in appended) + "."
    if reason is None and not fits(sentence):
        reason = "it is over the token budget"
    if reason is not None:
        record.update(accepted=False, reason=reason)
        notice(f"the language model's sentence is not used ({reason}); the rule-based sentence is used instead.", once=False)
        return LlmResult(False, draft, record=record)
    record.update(accepted=True, reason=None)
    out = [{"text": span, "tags": [tag], "group": p.group} for tag, span, p in found]
    out += [{**p.to_json(), "appended": True} for p in appended]
    return LlmResult(True, sentence, out, [t for t, _ in missing], record)


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "GGUFGenerator",
    "INSTRUCTION",
    "LlmResult",
    "TextGenerator",
    "TransformersGenerator",
    "clean_answer",
    "instruction",
    "llm_sentence",
    "load_language_model",
]
