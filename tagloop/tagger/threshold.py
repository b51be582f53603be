"""Score thresholds: the adaptive Canny-edge-density bands of the seed tutorial, fixed values, MCut.

Adaptive threshold (seed 001): ``cv2.Canny(gray, 100, 200)``; density = edge pixels / all pixels;
density < 0.08 -> "simple", 0.55; < 0.15 -> "medium", 0.45; else "complex", 0.38. The seed's prose
says simple (chibi, abstract) images want a *lower* threshold and its code does the opposite; the
code's numbers are the default here and the bands are configurable (``--bands``, config ``bands``).
The density is computed on the decoded image at its own resolution, as the seed does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Band:
    """Images with ``edge_density < upper`` (``upper=None``: any density) use ``threshold``."""

    upper: float | None
    threshold: float
    name: str


DEFAULT_BANDS: tuple[Band, ...] = (
    Band(0.08, 0.55, "simple"),
    Band(0.15, 0.45, "medium"),
    Band(None, 0.38, "complex"),
)

_DEFAULT_NAMES = ("simple", "medium", "complex")


def edge_density(image: Image.Image | np.ndarray, low: int = 100, high: int = 200) -> float:
    """Fraction of pixels Canny marks as edges in the grey image (alpha dropped, as ``cv2.imread`` does)."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)  # no copy of RGB
    else:
        arr = np.asarray(image, dtype=np.uint8)
    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY) if arr.ndim == 3 else arr
    edges = cv2.Canny(gray, low, high)
    return float(np.count_nonzero(edges)) / float(edges.size)


def pick_band(density: float, bands: Sequence[Band] = DEFAULT_BANDS) -> Band:
    for band in bands:
        if band.upper is None or density < band.upper:
            return band
    return bands[-1]


def parse_bands(text: str) -> tuple[Band, ...]:
    """Parse ``"0.08:0.55, 0.15:0.45, 0.38"`` (``upper:threshold`` pairs, the last a bare threshold).

    Each item may carry a name: ``"simple=0.08:0.55, medium=0.15:0.45, complex=0.38"``. Uppers must
    increase; thresholds must lie in [0, 1].
    """
    items = [s.strip() for s in re.split(r"[,;]", text) if s.strip()]
    if not items:
        raise ValueError("no bands given")
    bands: list[Band] = []
    last_upper = -1.0
    for i, item in enumerate(items):
        name = _DEFAULT_NAMES[i] if len(items) == 3 else f"band{i + 1}"
        if "=" in item:
            name, item = (s.strip() for s in item.split("=", 1))
        parts = item.split(":")
        is_last = i == len(items) - 1
        try:
            if len(parts) == 1 and is_last:
                upper, thr = None, float(parts[0])
            elif len(parts) == 2 and not is_last:
                upper, thr = float(parts[0]), float(parts[1])
            else:
                raise ValueError
        except ValueError:
            want = "a bare threshold" if is_last else "upper:threshold"
            raise ValueError(f"band {i + 1} {item!r} should be {want}") from None
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"band {i + 1}: threshold {thr} is outside 0..1")
        if upper is not None:
            if upper <= last_upper:
                raise ValueError(f"band {i + 1}: upper edge {upper} must be larger than the previous one")
            last_upper = upper
        bands.append(Band(upper, thr, name))
    return tuple(bands)


def format_bands(bands: Sequence[Band]) -> str:
    return ", ".join(f"{b.name}={b.threshold:g}" if b.upper is None else f"{b.name}={b.upper:g}:{b.threshold:g}" for b in bands)


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding (Largeron, Moulin & Gery, 2012): the middle of the largest drop
    between neighbouring sorted scores. Fewer than two scores: 1.0 for none, else keep everything."""
    p = np.sort(np.asarray(probs, dtype=np.float64).ravel())[::-1]
    if p.size < 2:
        return 0.0 if p.size == 1 else 1.0
    gaps = p[:-1] - p[1:]
    t = int(np.argmax(gaps))
    return float((p[t] + p[t + 1]) / 2.0)
