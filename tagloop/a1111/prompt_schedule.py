"""AUTOMATIC1111 prompt editing and alternation: a prompt turned into its per-step schedule.

A1111 (``modules/prompt_parser.py``, ``get_learned_conditioning_prompt_schedules``) reads

=========================== ============================================================
``[from:to:when]``          ``from`` up to step ``when``, then ``to``
``[to:when]``               nothing up to step ``when``, then ``to``
``[from::when]``            ``from`` up to step ``when``, then nothing
``[a|b|c]``                 ``a`` at step 1, ``b`` at step 2, ``c`` at 3, ``a`` at 4 ...
=========================== ============================================================

and nests them freely. :func:`prompt_schedule` gives A1111's list of ``(end_step, text)``: ``text`` is
used for the steps up to ``end_step`` (1-based). ``when`` written with a ``.`` is a fraction of the
steps (``0.25`` of 20 steps = 5), without one a step number (``5``, ``1e1``); both are truncated
toward zero and capped at the steps; a switch below step 1 means ``to`` from the start. For the
hires-fix pass (``hires_steps``) A1111 shifts both: step numbers count on from the first pass
(``25`` is step 5 of the hires pass after 20 first-pass steps) and fractions from 1 (``1.5`` is
half-way through the hires pass), so a switch the first pass already made stays made.

The produced texts keep everything else as written: emphasis ``(x:1.2)``, ``[x]``, escapes
``\\[`` ``\\]`` ``\\:`` (they are text here, read later by :mod:`.prompt_parser`) and ``<lora:...>``
tags outside a schedule (A1111 takes those out of the prompt before it schedules it).

Inside a schedule the text must be well formed: a ``:`` only as the separator of a schedule or of
an explicit weight ``(x:1.2)``, a ``|`` only between alternatives, brackets paired. A prompt that is
not well formed as a whole still has its well-formed parts scheduled and its stray brackets kept as
text (``(a [b:2]`` -> ``(a `` then ``(a b``). A ``|`` outside any ``[...]`` or a backslash at the
end of the prompt makes A1111's grammar fail; the prompt is then used as written at every step.

Differences from A1111, chosen on purpose:

* Where stray brackets leave A1111's parser two readings (``[a:1]]``: an edit followed by ``]``, or
  all text), A1111's choice depends on Python's per-process string hashing, so it varies between
  runs. Here the reading with the longest well-formed part at the end wins, consistently
  (``[a:1]]`` is an edit followed by ``]``). A1111 is consistent for every well-formed prompt.
* A ``when`` too large for a float (``1e999``) makes A1111 raise; here it means "never switch".
* A1111's old scheduling (the "use old prompt editing timelines" option) is not offered.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.(?:[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
)  # lark's SIGNED_NUMBER, the terminal A1111's grammar reads ``when`` with
_SPACE = re.compile(r"\s*")
_SPECIAL = frozenset("\\[]():|")  # characters that are not plain text in A1111's grammar
_STRAY = frozenset("[]():")  # characters A1111 keeps as text where they fit no bracket pair
_NEVER = -(1 << 62)  # a switch step no sampling step reaches


@dataclass(frozen=True)
class _Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: _Seq | None
    after: _Seq
    number: str  # ``when`` as written, as A1111 needs it (a ``.`` means a fraction)


@dataclass(frozen=True)
class _Alternate:
    """``[a|b|...]``; an empty alternative is an empty sequence."""

    options: tuple[_Seq, ...]


_Node = Union[str, _Edit, _Alternate]
_Seq = tuple[_Node, ...]


def _plain_ends(text: str) -> list[int]:
    """``ends[p]``: where the run of plain text starting at ``p`` ends (``p`` itself on a special
    character, -1 when the run holds a backslash with nothing after it to escape)."""
    n = len(text)
    ends = [n] * (n + 2)
    for p in range(n - 1, -1, -1):
        char = text[p]
        if char == "\\":
            # a backslash escapes any character but a newline (A1111's ``\\.``)
            ends[p] = ends[p + 2] if p + 1 < n and text[p + 1] != "\n" else -1
        elif char in _SPECIAL:
            ends[p] = p
        else:
            ends[p] = ends[p + 1]
    return ends


class _Parser:
    """A1111's schedule grammar over one prompt, without recursion (nesting depth is unbounded).

    Every ``[`` and ``(`` is tried as the start of a bracket pair, right to left, so the pairs
    nested in it are known when it is read. ``end[p]`` is where the pair starting at ``p`` ends
    (-1: it is not well formed) and ``node[p]`` what it reads as.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        n = len(text)
        self.plain = _plain_ends(text)
        self.end = [-1] * (n + 1)
        self.node: dict[int, _Seq] = {}
        for p in range(n - 1, -1, -1):
            if text[p] in "[(":
                self._pair(p)

    def _items(self, start: int) -> tuple[int, list[_Node]]:
        """The longest run of items (text, bracket pairs) from ``start``: where it stops, and the items."""
        text, n = self.text, len(self.text)
        items: list[_Node] = []
        p = start
        while p < n:
            char = text[p]
            if char in "[(":
                e = self.end[p]
                if e < 0:
                    break
                items.extend(self.node[p])
                p = e
            elif char in _SPECIAL and char != "\\":
                break
            else:
                e = self.plain[p]
                if e < 0:
                    break
                items.append(text[p:e])
                p = e
        return p, items

    def _when(self, at: int) -> tuple[int, str] | None:
        """``[white space] NUMBER [white space] ]`` at ``at``: (index after the ``]``, the number)."""
        text = self.text
        p = _SPACE.match(text, at).end()
        number = _NUMBER.match(text, p)
        if number is None:
            return None
        p = _SPACE.match(text, number.end()).end()
        if p < len(text) and text[p] == "]":
            return p + 1, number.group(0)
        return None

    def _pair(self, p: int) -> None:
        text, n = self.text, len(self.text)
        q, first = self._items(p + 1)
        close = text[q] if q < n else ""
        if text[p] == "(":
            if close == ")":
                self._done(p, q + 1, ("(", *first, ")"))
            elif close == ":":
                q2, second = self._items(q + 1)
                if q2 < n and text[q2] == ")":
                    self._done(p, q2 + 1, ("(", *first, ":", *second, ")"))
            return
        if close == "]":
            self._done(p, q + 1, ("[", *first, "]"))
        elif close == "|":
            options = [tuple(first)]
            while q < n and text[q] == "|":
                q, option = self._items(q + 1)
                options.append(tuple(option))
            if q < n and text[q] == "]":
                self._done(p, q + 1, (_Alternate(tuple(options)),))
        elif close == ":":
            when = self._when(q + 1)
            if when is not None:
                self._done(p, when[0], (_Edit(None, tuple(first), when[1]),))
                return
            q2, second = self._items(q + 1)
            if q2 < n and text[q2] == ":":
                when = self._when(q2 + 1)
                if when is not None:
                    self._done(p, when[0], (_Edit(tuple(first), tuple(second), when[1]),))

    def _done(self, p: int, end: int, node: _Seq) -> None:
        self.end[p] = end
        self.node[p] = node

    def parse(self) -> _Seq | None:
        """The whole prompt as top-level pieces, or None when A1111's grammar fails on it.

        At the top level A1111 also accepts ``[ ] ( ) :`` that pair with nothing, as text. The
        prompt is cut from its end: the longest well-formed run of items that ends there, else one
        stray character, as A1111's parser prefers (its choice between runs of equal rank depends on
        string hashing; the longest is taken here).
        """
        text, n = self.text, len(self.text)
        # reach[j]: the earliest i from which a run of items ends exactly at j, the text before i
        # being readable; readable[j]: text[:j] is readable at all
        reach = [-1] * (n + 1)
        readable = [False] * (n + 1)
        readable[0] = True
        for p in range(n):
            # the earliest start of a run of items passing through p (or starting at p)
            reach_p = reach[p] if reach[p] >= 0 else (p if readable[p] else -1)
            if reach_p >= 0:
                e = self._item_end(p)
                if e > p and (reach[e] < 0 or reach_p < reach[e]):
                    reach[e] = reach_p
            if reach[p + 1] >= 0 or (readable[p] and text[p] in _STRAY):
                readable[p + 1] = True
        if not readable[n]:
            return None
        stray_prefix = 0  # text[:stray_prefix] is all stray characters
        while stray_prefix < n and text[stray_prefix] in _STRAY:
            stray_prefix += 1
        pieces: list[_Node] = []
        j = n
        while j > 0:
            if j <= stray_prefix:
                pieces.append(text[:j])
                break
            i = reach[j]
            if i >= 0:
                pieces.extend(reversed(self._items_between(i, j)))
                j = i
            else:
                pieces.append(text[j - 1])
                j -= 1
        return tuple(reversed(pieces))

    def _item_end(self, p: int) -> int:
        """Where the single item starting at ``p`` ends (-1: none starts there)."""
        char = self.text[p]
        if char in "[(":
            return self.end[p]
        if char in _SPECIAL and char != "\\":
            return -1
        return self.plain[p]

    def _items_between(self, i: int, j: int) -> list[_Node]:
        """The items of the run from ``i`` that ends at ``j``."""
        items: list[_Node] = []
        p = i
        while p < j:
            e = self._item_end(p)
            items.extend(self.node[p] if self.text[p] in "[(" else (self.text[p:e],))
            p = e
        return items


def _parse(prompt: str) -> _Seq | None:
    if "[" not in prompt:
        # no schedule possible; only the validity of the whole prompt matters (a stray "|" or a
        # trailing backslash makes A1111 fall back to the prompt as written, which is the same)
        return (prompt,)
    return _Parser(prompt).parse()


def _walk(seq: _Seq):
    """Every node of ``seq``, nested ones included (the branches a step does not take too)."""
    stack = [seq]
    while stack:
        for node in stack.pop():
            yield node
            if isinstance(node, _Edit):
                stack.append(node.after)
                if node.before is not None:
                    stack.append(node.before)
            elif isinstance(node, _Alternate):
                stack.extend(node.options)


def _switch_step(number: str, steps: int, hires_steps: int | None) -> int:
    """A1111's step for ``when`` (non-old scheduling): the last step of ``from``."""
    value = float(number)
    total = steps if hires_steps is None else hires_steps
    if "." in number:
        value = (value - (0.0 if hires_steps is None else 1.0)) * total
    else:
        value = value - (0 if hires_steps is None else steps)
    if math.isinf(value):
        return total if value > 0 else _NEVER
    return min(total, int(value))


def _text_at(seq: _Seq, step: int, switches: dict[int, int]) -> str:
    out: list[str] = []
    stack: list[_Node | _Seq] = [seq]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, _Edit):
            chosen = (item.before or ()) if step <= switches[id(item)] else item.after
            stack.append(chosen)
        elif isinstance(item, _Alternate):
            stack.append(item.options[(step - 1) % len(item.options)])
        else:
            stack.extend(reversed(item))
    return "".join(out)


def _check_steps(steps: int, hires_steps: int | None) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer >= 1, got {steps!r}.")
    if hires_steps is not None and (not isinstance(hires_steps, int) or hires_steps < 1):
        raise ValueError(f"`hires_steps` must be an integer >= 1 (or None), got {hires_steps!r}.")


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's schedule of ``prompt``: ``(end_step, text)`` pairs, ``text`` used up to ``end_step``.

    ``steps`` is the number of sampling steps; with ``hires_steps`` it is the first pass's and the
    schedule is the hires pass's (``hires_steps`` long, switch points shifted as the module says).
    Steps count from 1; the last pair ends at the pass's steps. A prompt without editing or
    alternation gives ``[(steps, prompt)]``. Like A1111, neighbouring pairs may hold the same text
    (every step is a pair when the prompt alternates).

    >>> prompt_schedule("a [cat:dog:0.5] in (snow:1.2)", 10)
    [(5, 'a cat in (snow:1.2)'), (10, 'a dog in (snow:1.2)')]
    >>> prompt_schedule("[fe|]male", 3)
    [(1, 'female'), (2, 'male'), (3, 'female')]
    >>> prompt_schedule("a [b:1.5] c", 20, hires_steps=10)
    [(5, 'a  c'), (10, 'a b c')]
    """
    _check_steps(steps, hires_steps)
    tree = _parse(prompt)
    total = steps if hires_steps is None else hires_steps
    if tree is None or not _has_schedule_tree(tree):
        return [(total, prompt)]
    switches: dict[int, int] = {}
    ends = {total}
    for node in _walk(tree):
        if isinstance(node, _Edit):
            step = _switch_step(node.number, steps, hires_steps)
            switches[id(node)] = step
            if step >= 1:
                ends.add(step)
        elif isinstance(node, _Alternate):
            ends.update(range(1, total + 1))
    return [(end, _text_at(tree, end, switches)) for end in sorted(ends)]


def _has_schedule_tree(tree: _Seq) -> bool:
    return any(isinstance(node, (_Edit, _Alternate)) for node in _walk(tree))


def has_schedule(prompt: str) -> bool:
    """Whether A1111 reads prompt editing or alternation in ``prompt`` (whatever the steps).

    False means :func:`prompt_schedule` is ``[(steps, prompt)]`` for any ``steps``; True means the
    texts differ from the prompt as written, even if only one is left (``[a:b:0]`` is ``b``).

    >>> has_schedule("(masterpiece:1.2), [blue|red] hair"), has_schedule("[faint] smile, \\\\[tag\\\\]")
    (True, False)
    """
    if "[" not in prompt:
        return False
    tree = _Parser(prompt).parse()
    return tree is not None and _has_schedule_tree(tree)
