"""Adaptive threshold on synthetic images of known edge density; bands; MCut by hand."""

import numpy as np
import pytest
from PIL import Image

from tagloop.tagger.threshold import DEFAULT_BANDS, edge_density, mcut_threshold, parse_bands, pick_band

H = W = 200


def stripes(steps: int) -> np.ndarray:
    """Vertical stripes with ``steps`` black/white steps across the width, none at the borders."""
    arr = np.zeros((H, W), dtype=np.uint8)
    period = W // (steps + 1)
    for k in range(steps + 1):
        if k % 2:
            arr[:, k * period : (k + 1) * period] = 255
    return arr


def edge_columns_per_step() -> int:
    arr = np.zeros((H, W), dtype=np.uint8)
    arr[:, W // 2 :] = 255
    d = edge_density(arr)
    k = round(d * W)
    assert d == pytest.approx(k * H / (H * W))
    assert k in (1, 2)
    return k


def test_flat_image_has_no_edges():
    assert edge_density(Image.new("RGB", (64, 64), (90, 90, 90))) == 0.0
    assert pick_band(0.0).name == "simple" and pick_band(0.0).threshold == 0.55


@pytest.mark.parametrize("target,band", [(0.03, "simple"), (0.11, "medium"), (0.25, "complex")])
def test_stripes_land_in_their_band(target, band):
    k = edge_columns_per_step()
    arr = stripes(round(target * W / k))
    n_steps = int(np.count_nonzero(np.diff(arr[0].astype(int))))
    d = edge_density(np.stack([arr] * 3, axis=-1))
    assert d == pytest.approx(n_steps * k / W)
    assert pick_band(d).name == band


def test_band_edges_are_exclusive():
    assert pick_band(0.0799).name == "simple"
    assert pick_band(0.08).name == "medium"
    assert pick_band(0.15).name == "complex"
    assert [b.threshold for b in DEFAULT_BANDS] == [0.55, 0.45, 0.38]


def test_parse_bands():
    bands = parse_bands("0.1:0.6, 0.2:0.4, 0.3")
    assert [(b.upper, b.threshold, b.name) for b in bands] == [(0.1, 0.6, "simple"), (0.2, 0.4, "medium"), (None, 0.3, "complex")]
    assert parse_bands("flat=0.05:0.7, busy=0.33")[0].name == "flat"
    for bad in ("", "0.1:0.6", "0.2:0.5, 0.1:0.4, 0.3", "0.1:1.5, 0.3", "x:y, 0.3"):
        with pytest.raises(ValueError):
            parse_bands(bad)


def test_mcut_by_hand():
    # sorted: 0.9 0.8 0.3 0.2 -> largest gap 0.8 -> 0.3, threshold 0.55
    assert mcut_threshold(np.array([0.2, 0.9, 0.3, 0.8])) == pytest.approx(0.55)
    assert mcut_threshold(np.array([0.5])) == 0.0
