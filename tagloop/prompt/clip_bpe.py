"""CLIP's byte-level BPE alphabet and vocabulary layout, shared by the token counter and the tiny models.

Pure Python (no torch, no transformers), so anything may import it cheaply.
"""

from __future__ import annotations

from typing import Iterable

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2/CLIP byte-level BPE.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the other
    68 bytes map, in byte order, to the characters from U+0100 on. Dict order: the printable bytes
    first, then the remapped ones (the order CLIP's vocabulary lists them in).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return table


def clip_vocab(merges: Iterable[str] = ()) -> dict[str, int]:
    """CLIP's ``vocab.json`` for a merge list (``"a b"`` lines, no header).

    As CLIP defines it: the 256 byte characters, the same with ``</w>``, one entry per merge (the
    two halves joined), then ``<|startoftext|>`` and ``<|endoftext|>``. With no merges this is a
    character-level vocabulary of 514 entries (BOS 512, EOS 513).
    """
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}
