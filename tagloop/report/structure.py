"""The structure score: how well a variant keeps the source's composition, from their Canny edge maps.

Both images are compared at the variant's size (the source resized to it, Lanczos), each turned into
a Canny edge map of its grey image with the thresholds the edge density uses (100/200,
:func:`tagloop.tagger.threshold.edge_density`). An edge pixel of one map counts as matched when the
other map has an edge within ``tolerance`` pixels (a square dilation of ``2 * tolerance + 1``):
precision = matched variant edges / variant edges, recall = matched source edges / source edges, and
the score is their F1 (1 = the same edges, 0 = none shared; 0 when only one map has edges, 1 when
neither has any). The report calibrates it like the tag scores: the source's augmented copies are
the ceiling, the unrelated floor pictures the floor.
"""

from __future__ import annotations

from typing import Any

#: Pixels within which an edge counts as kept.
TOLERANCE = 2
LOW, HIGH = 100, 200


def edge_map(image: Any, size: tuple[int, int] | None = None, low: int = LOW, high: int = HIGH):
    """``cv2.Canny`` of ``image``'s grey version (resized to ``size`` first), as a bool array."""
    import cv2
    import numpy as np
    from PIL import Image

    rgb = image.convert("RGB")
    if size is not None and rgb.size != tuple(size):
        rgb = rgb.resize(tuple(size), Image.LANCZOS)
    gray = cv2.cvtColor(np.asarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    return cv2.Canny(gray, low, high) > 0


def edge_f1(source_edges, variant_edges, tolerance: int = TOLERANCE) -> float:
    """F1 of two same-sized edge maps, an edge matching when the other map has one within ``tolerance`` px."""
    import cv2
    import numpy as np

    a = np.asarray(source_edges, dtype=bool)
    b = np.asarray(variant_edges, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"edge maps of different sizes {a.shape} and {b.shape}")
    na, nb = int(a.sum()), int(b.sum())
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    grow_a = cv2.dilate(a.astype(np.uint8), kernel) > 0
    grow_b = cv2.dilate(b.astype(np.uint8), kernel) > 0
    precision = float((b & grow_a).sum()) / nb
    recall = float((a & grow_b).sum()) / na
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def structure_score(source: Any, variant: Any, tolerance: int = TOLERANCE) -> float:
    """The structure score of ``variant`` against ``source`` (PIL images), at the variant's size."""
    size = variant.size
    return edge_f1(edge_map(source, size), edge_map(variant, size), tolerance)
