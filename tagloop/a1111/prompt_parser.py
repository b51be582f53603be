"""AUTOMATIC1111 prompt syntax: attention weights, ``BREAK`` and extra networks (``<lora:NAME:W>``).

What is honoured, with A1111's numbers:

=============== =========== ==================================================
text            weight      note
=============== =========== ==================================================
``(x)``         1.1         each ``(`` ... ``)`` pair multiplies by 1.1
``((x))``       1.21
``[x]``         1/1.1       each ``[`` ... ``]`` pair divides by 1.1
``(x:1.3)``     1.3         an explicit weight replaces the 1.1 of its pair
``((x:1.5))``   1.65        explicit weights still multiply with outer pairs
``(x:-0.5)``    -0.5        negative weights are kept
``(x``          1.1         an unclosed bracket runs to the end of the text
=============== =========== ==================================================

Escapes ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` give the literal character; a backslash before any
other character is dropped (``a\\b`` -> ``ab``), as in A1111. ``BREAK`` (upper case, a word on its
own; the white space around it is eaten) becomes the marker ``("BREAK", -1.0)``, which ends the
current 75-token chunk.

As in A1111 (``modules/prompt_parser.py``), brackets multiply every entry inside them, the
``BREAK`` marker included: a bracketed ``BREAK`` such as ``(a BREAK b)`` comes out as
``("BREAK", -1.1)``, which is no longer the marker, so it is encoded as the word "break" with that
weight instead of ending the chunk. Neighbouring entries of equal weight merge, as in A1111.

Differences from A1111, chosen on purpose (A1111 raises or does something else):

* A malformed explicit weight such as ``(x:1.2.3)`` makes A1111 raise (``float("1.2.3")``); here the
  ``:1.2.3`` is kept as text and the ``)`` closes its bracket as a plain pair: ``[("x:1.2.3", 1.1)]``.
* Prompt editing ``[from:to:when]`` and alternation ``[a|b]`` are not read here: the generator
  first turns a prompt into one text per step with :mod:`.prompt_schedule`, as A1111 does, and
  each text comes here. Given such syntax directly, this parser reads it with the rules above
  (``[`` ``]`` de-emphasise, ``:`` and ``|`` stay text). Nothing crashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

#: The pair returned for a ``BREAK`` keyword (A1111 uses the same marker).
BREAK_MARKER: tuple[str, float] = ("BREAK", -1.0)

_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_SPECIAL = set("\\()[]:")
_ESCAPABLE = set("()[]\\")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


class _Piece:
    """One run of text with its weight while parsing (mutable, unlike the returned tuples)."""

    __slots__ = ("text", "weight")

    def __init__(self, text: str, weight: float = 1.0) -> None:
        self.text = text
        self.weight = weight


def _text_run(text: str, start: int) -> int:
    """Index just after the run of ordinary characters that begins at ``start``."""
    end = start
    while end < len(text) and text[end] not in _SPECIAL:
        end += 1
    return end


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into ``(text, weight)`` runs.

    Neighbouring runs of equal weight are merged; a ``BREAK`` keyword becomes ``("BREAK", -1.0)``
    (inside brackets its weight is multiplied like any other entry, as A1111 does, so it stops being
    the marker: see the module docstring). An empty prompt gives ``[("", 1.0)]``.

    >>> parse_prompt_attention("a (b:1.5) [c] d")
    [('a ', 1.0), ('b', 1.5), (' ', 1.0), ('c', 0.9090909090909091), (' d', 1.0)]
    """
    pieces: list[_Piece] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:  # the BREAK marker too, as in A1111
            piece.weight *= factor

    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                pieces.append(_Piece(text[i + 1]))
                i += 2
            else:
                pieces.append(_Piece(""))  # a backslash before anything else is dropped
                i += 1
            continue
        if char == "(":
            round_open.append(len(pieces))
            i += 1
            continue
        if char == "[":
            square_open.append(len(pieces))
            i += 1
            continue
        if char == ")":
            if round_open:
                scale_from(round_open.pop(), ROUND_MULTIPLIER)
            else:
                pieces.append(_Piece(")"))
            i += 1
            continue
        if char == "]":
            if square_open:
                scale_from(square_open.pop(), SQUARE_MULTIPLIER)
            else:
                pieces.append(_Piece("]"))
            i += 1
            continue
        if char == ":":
            match = _EXPLICIT_WEIGHT.match(text, i)
            if match is not None:
                weight = _to_float(match.group(1))
                if round_open and weight is not None:
                    scale_from(round_open.pop(), weight)
                    i = match.end()
                elif round_open:
                    # "(x:1.2.3)": keep the bad number as text and let ")" close the bracket
                    _append_text(pieces, text[i : match.end() - 1])
                    i = match.end() - 1
                else:
                    _append_text(pieces, match.group(0))
                    i = match.end()
            else:
                pieces.append(_Piece(":"))
                i += 1
            continue
        end = _text_run(text, i)
        _append_text(pieces, text[i:end])
        i = end

    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    # Merge neighbours of equal weight (A1111's rule). A marker still at -1 is never merged: its
    # neighbours are the text around it, scaled by the same factors, so they weigh +1 times those.
    merged: list[_Piece] = []
    for piece in pieces:
        if merged and merged[-1].weight == piece.weight:
            merged[-1].text += piece.text
        else:
            merged.append(piece)
    if not merged:
        return [("", 1.0)]
    return [(p.text, float(p.weight)) for p in merged]


def _to_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _append_text(pieces: list[_Piece], text: str) -> None:
    """Append plain text, turning each standalone ``BREAK`` into a marker."""
    parts = _BREAK.split(text)
    for index, part in enumerate(parts):
        if index > 0:
            pieces.append(_Piece(*BREAK_MARKER))
        pieces.append(_Piece(part))


def is_break(piece: tuple[str, float]) -> bool:
    """Whether a parsed piece is the ``BREAK`` marker."""
    return piece[0] == BREAK_MARKER[0] and piece[1] == BREAK_MARKER[1]


@dataclass
class ExtraNetwork:
    """One ``<kind:arg:arg:...>`` tag taken out of a prompt (A1111 ``ExtraNetworkParams``).

    For LoRA (``<lora:NAME:TE:UNET:DYN>``, ``<lyco:...>`` is the same) the multipliers follow A1111:
    text-encoder multiplier = 2nd positional argument or ``te=`` (default 1.0), UNet multiplier =
    3rd positional argument or ``unet=`` (default: the text-encoder multiplier), ``dyn=`` the dim.
    """

    kind: str
    name: str
    positional: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None
    text: str = ""

    @property
    def multiplier(self) -> float:
        """The single weight most users mean (``<lora:NAME:0.8>`` -> 0.8)."""
        return self.te_multiplier


def _number(value: str, what: str, tag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"The {what} {value!r} in the prompt tag {tag!r} is not a number; write e.g. <lora:NAME:0.8>.") from None


def strip_extra_networks(prompt: str) -> str:
    """Remove every ``<kind:args>`` tag (``<lora:name:1>``, ``<hypernet:h>``) without parsing its arguments.

    The text left is the same as :func:`extract_extra_networks` gives, but a malformed tag never raises
    (for counting tokens of any prompt).
    """
    return _EXTRA_NETWORK.sub("", prompt)


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove every ``<kind:args>`` tag from ``prompt`` and return the rest with the parsed tags.

    The tags are removed before anything else sees the prompt, as A1111 does; the surrounding text
    (commas, spaces) is left as it was.

    >>> text, nets = extract_extra_networks("1girl, <lora:ace_step:0.7>, smile")
    >>> text, nets[0].name, nets[0].te_multiplier, nets[0].unet_multiplier
    ('1girl, , smile', 'ace_step', 0.7, 0.7)
    """
    found: list[ExtraNetwork] = []

    def take(match: re.Match[str]) -> str:
        kind = match.group(1).lower()
        if kind == "lyco":
            kind = "lora"
        items = match.group(2).split(":")
        positional = [item for item in items if "=" not in item]
        named = dict(item.split("=", 1) for item in items if "=" in item)
        tag = match.group(0)
        name = positional[0].strip() if positional else ""
        te = _number(positional[1], "multiplier", tag) if len(positional) > 1 else 1.0
        if "te" in named:
            te = _number(named["te"], "te= multiplier", tag)
        unet = _number(positional[2], "UNet multiplier", tag) if len(positional) > 2 else te
        if "unet" in named:
            unet = _number(named["unet"], "unet= multiplier", tag)
        dyn: int | None = None
        dyn_text = named.get("dyn", positional[3] if len(positional) > 3 else None)
        if dyn_text is not None:
            try:
                dyn = int(dyn_text)
            except ValueError:
                raise ValueError(f"The dyn dim {dyn_text!r} in the prompt tag {tag!r} is not an integer.") from None
        found.append(ExtraNetwork(kind, name, positional, named, te, unet, dyn, tag))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found
