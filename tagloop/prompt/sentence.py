"""Sentence prompts from tags (``prompt_style = "sentence"``), deterministic and model-free.

The composer keeps every tag it would write in a tag prompt; here they become one sentence. Tags
are grouped by ``tagloop/data/sentence_groups.toml`` (subject and count, character, series, hair,
eyes, face and expression, clothing, pose and action, objects, scene and background, lighting, view
and framing, style) and each group is written by its role's template (see the data file), e.g.
``1girl, long_hair, blue_hair, red_eyes, smile, school_uniform, red_necktie, sitting, desk,
classroom, window, sunlight, looking_at_viewer`` ->

    A girl with long blue hair and red eyes, smiling, wearing a school uniform with a red necktie,
    sitting at a desk in a classroom by a window, sunlight, looking at the viewer.

A tag in no group is kept verbatim in a clause of its own. Trigger words, quality tags and LoRA
trigger words stay in front (as the preset puts them), followed by a period; ``<lora:...>`` tags go
last. A weight is written as words (``prominent long blue hair``) or in A1111 syntax
(``(long blue hair:1.2)``), as the preset's ``sentence_weights`` says.

Token budget: the sentence is counted with the composer's CLIP counter and, when the preset sets
``t5_limit`` (SD3's T5 encoder reads 256 tokens in diffusers), with :func:`estimate_t5_tokens`, an
estimate because no T5 tokenizer ships with tagloop. Over either limit, phrases are dropped from
the lowest-scored group first (a group's score is the mean of its phrases' scores, a phrase's the
highest tagger score of its tags), lowest phrase first within the group; pinned tags stay.

``prompt_style = "llm"`` hands the rule-based sentence and the tag list to a local language model
(:mod:`tagloop.prompt.llm`) and checks its answer against the tags with :func:`find_tag`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InputError
from ..filters.base import Removal
from ..tagtext import TagPolicy, canonical

if TYPE_CHECKING:  # pragma: no cover
    from .composer import ComposedPrompt, PromptPart, PromptSettings
    from .presets import PromptPreset
    from .tokens import TokenCounter

PROMPT_STYLES = ("tags", "sentence", "llm")
SENTENCE_WEIGHTS = ("words", "a1111")
ROLES = ("subject", "character", "series", "feature", "clothing", "action", "clause")
#: Words that let a phrase follow the one before it without a comma ("sitting" + "at a desk").
PREPOSITIONS = frozenset(
    "in at on by under over near with among inside outside behind beside against from during through across into "
    "onto above below around".split()
)
_ARTICLES = frozenset({"a", "an", "the"})
_STOP = frozenset({"a", "an", "the", "of"})
_FRONT_KINDS = ("trigger", "quality", "lora_trigger")


class SentenceError(InputError, ValueError):
    """A bad sentence setting or sentence group file (also a ValueError, as settings errors are)."""


# -- the group file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceGroup:
    """One group of ``sentence_groups.toml``: its members and how its phrases are written."""

    name: str
    label: str
    role: str = "clause"
    tags: frozenset[str] = frozenset()
    match: tuple[str, ...] = ()
    category: str | None = None
    exclude: tuple[str, ...] = ()
    template: str = "{text}"
    rewrite: tuple[tuple[str, str], ...] = ()
    phrases: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)
    absorb: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)
    trailing: frozenset[str] = frozenset()
    lengths: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    colours: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def has(self, key: str, category: str | None = None) -> bool:
        """Whether the canonical tag ``key`` (of tagger ``category``) belongs to the group."""
        if any(key == e or fnmatch.fnmatchcase(key, e) for e in self.exclude):
            return False
        if key in self.tags or key in self.phrases or key in self.lengths or key in self.colours:
            return True
        if self.category is not None and category == self.category:
            return True
        return any(fnmatch.fnmatchcase(key, p) for p in self.match) or any(fnmatch.fnmatchcase(key, p) for p, _ in self.rewrite)


@dataclass(frozen=True)
class SentenceGroups:
    """The groups of one file, in sentence order, and the weight words."""

    groups: tuple[SentenceGroup, ...]
    weight_words: tuple[tuple[float, str], ...] = ()
    source: str = "builtin"

    def __iter__(self):
        return iter(self.groups)

    def group_of(self, key: str, category: str | None = None) -> SentenceGroup | None:
        for g in self.groups:
            if g.has(key, category):
                return g
        return None

    def forms(self, key: str, category: str | None = None) -> list[str]:
        """Ways a sentence may express tag ``key``: its phrase, its own words, its synonyms."""
        out = [key.replace("_", " ")]
        g = self.group_of(key, category)
        if g is not None:
            if key in g.phrases:
                out.append(g.phrases[key])
            out.extend(g.synonyms.get(key, ()))
            if key in g.lengths:
                out.append(f"{g.lengths[key]} hair")
            if key in g.colours:
                out.append(f"{g.colours[key]} hair")
        return out


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SentenceError(f"{where}: expected a list of strings, got {value!r}.")
    return tuple(v for v in value if v.strip())


def _table(value: Any, where: str, lists: bool = False) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SentenceError(f"{where}: expected a table of tag = {'[...]' if lists else chr(34) + 'words' + chr(34)}.")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if lists:
            out[canonical(k)] = _strings(v, f"{where}.{k}")
        elif isinstance(v, str):
            out[canonical(k)] = v.strip()
        else:
            raise SentenceError(f"{where}.{k}: expected a string, got {v!r}.")
    return out


_GROUP_KEYS = {
    "label", "role", "tags", "match", "category", "exclude", "template", "rewrite", "phrases", "synonyms", "absorb",
    "trailing", "lengths", "colours",
}  # fmt: skip


def parse_sentence_groups(data: dict[str, Any], source: str) -> SentenceGroups:
    """Groups from a parsed TOML document (``[weights]`` and ``[groups.NAME]`` tables)."""
    unknown = sorted(set(data) - {"weights", "groups"})
    if unknown:
        raise SentenceError(f"sentence groups {source}: unknown table(s) {unknown}; expected [weights] and [groups.NAME].")
    bands = []
    for item in (data.get("weights") or {}).get("words", []):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (int, float)) and isinstance(item[1], str)):
            raise SentenceError(f'sentence groups {source}: [weights] words must be [[1.3, "very prominent"], ...].')
        bands.append((float(item[0]), item[1].strip()))
    groups = []
    for name, table in (data.get("groups") or {}).items():
        where = f"sentence groups {source}: [groups.{name}]"
        if not isinstance(table, dict):
            raise SentenceError(f"{where} must be a table.")
        bad = sorted(set(table) - _GROUP_KEYS)
        if bad:
            raise SentenceError(f"{where} has unknown key(s) {bad}; allowed: {sorted(_GROUP_KEYS)}.")
        role = table.get("role", "clause")
        if role not in ROLES:
            raise SentenceError(f"{where}: role must be one of {list(ROLES)}, not {role!r}.")
        rewrite = []
        for item in table.get("rewrite", []):
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise SentenceError(f'{where}: rewrite must be [["pattern_*", "template {{1}}"], ...].')
            rewrite.append((canonical(item[0]), item[1]))
        template = table.get("template", "{text}")
        if not isinstance(template, str) or "{text}" not in template:
            raise SentenceError(f'{where}: template must be a string with {{text}}, e.g. "with {{a}}{{text}}".')
        groups.append(
            SentenceGroup(
                name=name,
                label=str(table.get("label", name)),
                role=role,
                tags=frozenset(canonical(t) for t in _strings(table.get("tags"), f"{where} tags")),
                match=tuple(canonical(m) for m in _strings(table.get("match"), f"{where} match")),
                category=table.get("category"),
                exclude=tuple(canonical(m) for m in _strings(table.get("exclude"), f"{where} exclude")),
                template=template,
                rewrite=tuple(rewrite),
                phrases=_table(table.get("phrases"), f"{where} phrases"),
                synonyms=_table(table.get("synonyms"), f"{where} synonyms", lists=True),
                absorb={
                    k: tuple(canonical(x) for x in v) for k, v in _table(table.get("absorb"), f"{where} absorb", True).items()
                },
                trailing=frozenset(canonical(t) for t in _strings(table.get("trailing"), f"{where} trailing")),
                lengths=_table(table.get("lengths"), f"{where} lengths"),
                colours=_table(table.get("colours"), f"{where} colours"),
            )
        )
    return SentenceGroups(tuple(groups), tuple(sorted(bands, reverse=True)), source)


def load_sentence_groups(groups: str | Path | SentenceGroups | None = None) -> SentenceGroups:
    """The built-in sentence groups (None or ``builtin``), a file of the same shape, or ``groups`` itself."""
    if isinstance(groups, SentenceGroups):
        return groups
    from ..datafiles import load_data_file

    return load_data_file(
        groups, builtin="sentence_groups.toml", setting="sentence_groups", parse=parse_sentence_groups, error=SentenceError
    )


# -- phrases ----------------------------------------------------------------------------------------


@dataclass
class Phrase:
    """Words of the sentence and the tags they came from."""

    base: str
    tags: list[str]
    group: str
    role: str
    score: float
    weight: float | None = None
    pinned: bool = False
    index: int = 0
    trailing: bool = False
    text: str = ""
    appended: bool = False
    categories: list[str | None] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text or self.base, "tags": list(self.tags), "group": self.group}
        if self.weight is not None:
            out["weight"] = self.weight
        if self.appended:
            out["appended"] = True
        return out


def _article(text: str) -> str:
    """``a `` / ``an `` for a singular noun phrase, nothing for a plural (``thighhighs``) or a number."""
    words = text.split()
    if not words or words[0][0].isdigit():
        return ""
    last = words[-1].lower()
    if last.endswith("s") and not last.endswith("ss"):
        return ""
    return "an " if words[0][0].lower() in "aeiou" else "a "


def _fill(template: str, text: str, capture: str = "") -> str:
    target = capture or text
    return " ".join(template.replace("{a}", _article(target)).replace("{1}", capture).replace("{text}", text).split())


def _rewrite(pattern: str, key: str) -> str | None:
    rx = "^" + re.escape(pattern).replace(r"\*", "(.*)") + "$"
    m = re.match(rx, key)
    if not m:
        return None
    return " ".join(m.group(1).replace("_", " ").split()) if m.groups() else ""


def phrase_base(key: str, group: SentenceGroup | None, policy: TagPolicy) -> str:
    """How one tag is written by its group (or verbatim, with the preset's spacing and escaping)."""
    text = policy.format(key)
    if group is None:
        return text
    if group.role in ("character", "series") and key not in group.phrases:  # names: "Hatsune Miku"
        return " ".join(re.sub(r"[^\W\d_]", lambda m: m.group(0).upper(), w, count=1) for w in text.split())
    if key in group.phrases:
        return group.phrases[key]
    for pattern, template in group.rewrite:
        captured = _rewrite(pattern, key)
        if captured is not None:
            return _fill(template, text, policy.format(captured) if captured else "")
    return _fill(group.template, text)


def weighted(text: str, weight: float | None, mode: str, bands: Sequence[tuple[float, str]]) -> str:
    """``text`` with its weight: A1111 ``(text:1.2)``, or a band's word put before the noun."""
    if weight is None or abs(weight - 1.0) < 0.005:
        return text
    if mode == "a1111":
        return f"({text}:{f'{weight:.3f}'.rstrip('0').rstrip('.')})"
    word = next((w for threshold, w in bands if weight >= threshold), "")
    if not word:
        return text
    words = text.split(" ")
    i = 0
    while i < len(words) - 1 and words[i].lower() in PREPOSITIONS | _ARTICLES:
        i += 1
    if i > 0 and words[i - 1].lower() in ("a", "an"):
        words[i - 1] = "an" if word[0].lower() in "aeiou" else "a"
    return " ".join(words[:i] + [word] + words[i:])


def build_phrases(tag_parts: Sequence[PromptPart], groups: SentenceGroups, policy: TagPolicy) -> list[Phrase]:
    """One phrase per tag (hair length + colour merged, absorbed tags joined), in group order."""
    present = {p.tag for p in tag_parts if p.tag}
    order = {g.name: i for i, g in enumerate(groups)}
    phrases: list[Phrase] = []
    by_tag: dict[str, Phrase] = {}
    absorbed: list[tuple[PromptPart, str]] = []
    hair: dict[str, list[tuple[PromptPart, Phrase]]] = {}
    for i, part in enumerate(tag_parts):
        key = part.tag or canonical(part.text)
        g = groups.group_of(key, part.category)
        if g is not None and key in g.absorb:
            host = next((h for h in g.absorb[key] if h in present), None)
            if host is not None:
                absorbed.append((part, host))
                continue
        ph = Phrase(
            base=phrase_base(key, g, policy),
            tags=[key],
            group=g.name if g else "other",
            role=g.role if g else "clause",
            score=float(part.score if part.score is not None else 1.0),
            weight=part.weight,
            pinned=part.pinned,
            index=i,
            trailing=bool(g and key in g.trailing),
            categories=[part.category],
        )
        if g is not None and (key in g.lengths or key in g.colours):
            hair.setdefault(g.name, []).append((part, ph))
        phrases.append(ph)
        by_tag[key] = ph
    for part, host in absorbed:
        ph = by_tag[host]
        ph.tags.append(part.tag or canonical(part.text))
        ph.categories.append(part.category)
        ph.score = max(ph.score, float(part.score if part.score is not None else 1.0))
        ph.pinned = ph.pinned or part.pinned
    for gname, items in hair.items():
        g = next(x for x in groups if x.name == gname)
        lengths = [(p, ph) for p, ph in items if p.tag in g.lengths]
        colours = [(p, ph) for p, ph in items if p.tag in g.colours]
        for (lp, lph), (cp, cph) in zip(lengths, colours):
            if lp.weight != cp.weight:
                continue
            cph.base = f"{g.lengths[lp.tag]} {g.colours[cp.tag]} hair"
            cph.tags = [lp.tag, cp.tag] if lp.tag and cp.tag else cph.tags
            cph.score = max(lph.score, cph.score)
            cph.pinned = cph.pinned or lph.pinned
            cph.index = min(lph.index, cph.index)
            cph.categories = [lp.category, cp.category]
            phrases.remove(lph)
    phrases.sort(key=lambda p: (order.get(p.group, len(order)), p.index))
    return phrases


def _and(items: Sequence[str]) -> str:
    items = [x for x in items if x]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _first_word(text: str) -> str:
    m = re.match(r"[\s(\[]*([A-Za-z]+)", text)
    return m.group(1).lower() if m else ""


def render_sentence(phrases: Sequence[Phrase], mode: str, bands: Sequence[tuple[float, str]]) -> str:
    """The sentence of ``phrases`` (each phrase's ``text`` is set to its weighted words)."""
    for p in phrases:
        p.text = weighted(p.base, p.weight, mode, bands)
    by_role: dict[str, list[Phrase]] = {}
    for p in phrases:
        by_role.setdefault(p.role, []).append(p)
    counts = [p.text for p in by_role.get("subject", []) if not p.trailing]
    after = [p.text for p in by_role.get("subject", []) if p.trailing]
    subject = " ".join(x for x in (_and(counts), " ".join(after)) if x)
    names = _and([p.text for p in by_role.get("character", [])])
    series = _and([p.text for p in by_role.get("series", [])])
    if names and series:
        names += f" from {series}"
    elif series:
        subject = f"{subject} from {series}" if subject else f"from {series}"
    head = ", ".join(x for x in (names, subject) if x)
    features = _and([p.text for p in by_role.get("feature", [])])
    if features:
        head = f"{head} with {features}" if head else features
    clauses = [head] if head else []
    done_roles = {"subject", "character", "series", "feature"}
    i = 0
    rest = [p for p in phrases if p.role not in done_roles]
    while i < len(rest):
        p = rest[i]
        if p.role == "clothing":
            items = [q.text for q in rest[i:] if q.role == "clothing"]
            i += len(items)
            clauses.append(f"wearing {items[0]}" + (f" with {_and(items[1:])}" if len(items) > 1 else ""))
        elif p.role == "action":
            text = p.text
            i += 1
            while i < len(rest) and rest[i].role == "action":
                nxt = rest[i].text
                text += (" " if _first_word(nxt) in PREPOSITIONS else ", ") + nxt
                i += 1
            clauses.append(text)
        else:
            clauses.append(p.text)
            i += 1
    sentence = ", ".join(c for c in clauses if c)
    if not sentence:
        return ""
    m = re.search(r"[A-Za-z]", sentence)
    if m:
        sentence = sentence[: m.start()] + sentence[m.start()].upper() + sentence[m.start() + 1 :]
    return sentence if sentence[-1] in ".!?" else sentence + "."


def assemble(front: Sequence[str], sentence: str, loras: Sequence[str]) -> str:
    """Trigger/quality words in front (then a period), the sentence, ``<lora:...>`` tags last."""
    head = ", ".join(x for x in front if x)
    pieces = [head + ("." if head and sentence and head[-1] not in ".!?" else ""), sentence, ", ".join(loras)]
    return " ".join(x for x in pieces if x) if sentence else ", ".join(x for x in [head, *loras] if x)


# -- T5 estimate ------------------------------------------------------------------------------------

T5_LIMIT_SD3 = 256


def estimate_t5_tokens(text: str) -> int:
    """An estimate of T5's SentencePiece count of ``text`` (with the closing ``</s>``).

    No T5 tokenizer ships with tagloop, so this is an estimate: a run of letters counts 1 up to 6
    letters, 2 up to 10, else ``ceil(len / 4)``; a digit or a symbol counts 1 each; plus 1 for the
    end-of-sequence token. English prose in T5's vocabulary is mostly one piece per common word,
    so the estimate errs high for long rare words. ``<lora:...>`` tags are left out (A1111 strips them).
    """
    text = re.sub(r"<[^<>]*>", " ", text)
    n = 1
    for piece in re.findall(r"[^\W\d_]+|\d|[^\w\s]|_", text):
        if piece[0].isalpha():
            n += 1 if len(piece) <= 6 else 2 if len(piece) <= 10 else math.ceil(len(piece) / 4)
        else:
            n += 1
    return n


# -- matching a sentence back to tags --------------------------------------------------------------


def _stem(word: str) -> str:
    w = word.lower()
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeioulsz":
        w = w[:-1]  # sitt -> sit
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]  # smile -> smil, as smiling
    return w


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(stem, start, end) of each word of ``text``, without articles and punctuation."""
    out = []
    for m in re.finditer(r"[^\W_]+(?:['-][^\W_]+)*", text.lower()):
        for sub in re.finditer(r"[^\W_]+", m.group(0)) if "-" in m.group(0) else [m]:
            word = sub.group(0)
            if word in _STOP:
                continue
            start = m.start() + (sub.start() if sub is not m else 0)
            out.append((_stem(word), start, start + len(word)))
    return out


def find_form(form: str, words: Sequence[tuple[str, int, int]], max_gap: int = 3) -> tuple[int, int] | None:
    """The (start, end) characters where ``form``'s words appear in order, at most ``max_gap`` words apart."""
    stems = [s for s, _, _ in _tokens(form)]
    if not stems:
        return None
    for i, (s, start, _) in enumerate(words):
        if s != stems[0]:
            continue
        j, end, ok = i, words[i][2], True
        for target in stems[1:]:
            k = next((k for k in range(j + 1, min(len(words), j + 2 + max_gap)) if words[k][0] == target), None)
            if k is None:
                ok = False
                break
            j, end = k, words[k][2]
        if ok:
            return start, end
    return None


def find_tag(key: str, text: str, groups: SentenceGroups, category: str | None = None, extra: Sequence[str] = ()) -> str | None:
    """The words of ``text`` that express tag ``key`` (its phrase, own words or synonyms), or None."""
    words = _tokens(text)
    for form in (*extra, *groups.forms(key, category)):
        span = find_form(form, words)
        if span is not None:
            return text[span[0] : span[1]]
    return None


# -- the composer's step ----------------------------------------------------------------------------


def _trim_order(phrases: Sequence[Phrase]) -> list[Phrase]:
    scores: dict[str, list[float]] = {}
    for p in phrases:
        scores.setdefault(p.group, []).append(p.score)
    mean = {g: sum(v) / len(v) for g, v in scores.items()}
    return sorted((p for p in phrases if not p.pinned), key=lambda p: (mean[p.group], p.score, -p.index))


def apply_prompt_style(
    composed: ComposedPrompt,
    eff: PromptSettings,
    preset: PromptPreset,
    counter: TokenCounter,
    budget: int | None,
    policy: TagPolicy,
) -> ComposedPrompt:
    """Rewrite the tag prompt of ``composed`` as a sentence (``sentence``) or a model's sentence (``llm``)."""
    style = str(eff.prompt_style)
    mode = preset.sentence_weights
    groups = load_sentence_groups(eff.sentence_groups)
    front = [p.text for p in composed.parts if p.kind in _FRONT_KINDS]
    loras = [p.text for p in composed.parts if p.kind == "lora"]
    tag_parts = [p for p in composed.parts if p.kind == "tag"]
    phrases = build_phrases(tag_parts, groups, policy)
    t5_limit = preset.t5_limit

    def measure(text: str):
        return counter.count(text), estimate_t5_tokens(text)

    def over(tokens, t5: int) -> bool:
        return (budget is not None and tokens.tokens > budget) or (t5_limit is not None and t5 > t5_limit)

    positive = assemble(front, render_sentence(phrases, mode, groups.weight_words), loras)
    tokens, t5 = measure(positive)
    dropped_tags: set[str] = set()
    if over(tokens, t5):
        for p in _trim_order(phrases):
            if not over(tokens, t5):
                break
            before = f"{tokens.tokens} CLIP tokens" + (f" and about {t5} T5 tokens" if t5_limit else "")
            limits = " / ".join(x for x in (f"{budget} CLIP" if budget else "", f"{t5_limit} T5" if t5_limit else "") if x)
            phrases.remove(p)
            positive = assemble(front, render_sentence(phrases, mode, groups.weight_words), loras)
            tokens, t5 = measure(positive)
            for tag, cat in zip(p.tags, p.categories):
                dropped_tags.add(tag)
                composed.dropped_for_budget.append(tag)
                composed.removals.append(
                    Removal(
                        tag,
                        "budget",
                        f"the sentence had {before}, over the limit of {limits} tokens; the lowest-scored groups' words go first",
                        "removed",
                        p.score,
                        cat,
                    )
                )
        if over(tokens, t5):
            composed.warnings.append(
                f"the sentence prompt still has {tokens.tokens} CLIP tokens (about {t5} T5 tokens), over its limit: "
                "quality tags, trigger words, LoRA and pinned tags are never dropped; raise `budget` or shorten them."
            )
    if budget is not None and not tokens.exact:
        composed.warnings.append(
            "token counts are an estimate; pass `--tokenizer DIR` (a CLIP tokenizer folder) for exact counts."
        )
    composed.parts = [p for p in composed.parts if not (p.kind == "tag" and p.tag in dropped_tags)]
    sentence = render_sentence(phrases, mode, groups.weight_words)
    phrase_json = [p.to_json() for p in phrases]
    if style == "llm":
        from .llm import llm_sentence

        result = llm_sentence(
            eff.llm,
            phrases,
            groups,
            sentence,
            max_new_tokens=eff.llm_max_new_tokens,
            fits=lambda text: not over(*measure(assemble(front, text, loras))),
        )
        composed.llm = result.record
        if result.accepted:
            sentence = result.sentence
            phrase_json = result.phrases
            composed.dropped_by_llm = list(result.dropped)
            positive = assemble(front, sentence, loras)
            tokens, t5 = measure(positive)
    composed.positive = positive
    composed.tokens = tokens
    composed.budget = budget
    composed.prompt_style = style
    composed.sentence = sentence
    composed.phrases = phrase_json
    composed.t5_tokens = (
        {"tokens": t5, "limit": t5_limit, "counter": "estimate", "exact": False} if t5_limit is not None else None
    )
    return composed


__all__ = [
    "PROMPT_STYLES",
    "SENTENCE_WEIGHTS",
    "Phrase",
    "SentenceError",
    "SentenceGroup",
    "SentenceGroups",
    "apply_prompt_style",
    "assemble",
    "build_phrases",
    "estimate_t5_tokens",
    "find_tag",
    "load_sentence_groups",
    "parse_sentence_groups",
    "render_sentence",
]
