"""CLIP's byte-level BPE alphabet and vocabulary layout, shared by the token counter and the tiny models.

Pure Python (no torch, no transformers), so anything may import it cheaply.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable

#: CLIP's merge list (OpenAI CLIP, MIT licence), shipped once inside the package.
PACKAGED_BPE = Path(__file__).resolve().parents[1] / "data" / "configs" / "clip_bpe_simple_vocab_16e6.txt.gz"

#: CLIP uses the first 49152 - 256 - 2 merges of ``bpe_simple_vocab_16e6.txt.gz`` (after its header).
NUM_MERGES = 49152 - 256 - 2

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


def read_bpe_merges(bpe_gz: str | Path = PACKAGED_BPE) -> list[str]:
    """The merges CLIP's tokenizer uses from a ``bpe_simple_vocab_16e6.txt.gz`` file (header skipped)."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    return [m for m in lines[1 : NUM_MERGES + 1] if m.strip()]
