"""Preprocessing against values derived by hand from the reference projects' published behaviour."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from tagloop.tagger.preprocess import (
    ImageDecodeError,
    deepdanbooru_a1111,
    deepdanbooru_kdd,
    load_image,
    wd14,
)

R0 = (100, 50, 200)
R1 = (20, 10, 40)


def two_row_image() -> Image.Image:
    """4 wide, 2 tall: row 0 = R0, row 1 = R1."""
    arr = np.array([[R0] * 4, [R1] * 4], dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def test_wd14_alpha_on_white_pad_bgr():
    # 2x1 RGBA: opaque red, fully transparent blue
    arr = np.array([[[255, 0, 0, 255], [0, 0, 255, 0]]], dtype=np.uint8)
    out = wd14(Image.fromarray(arr, "RGBA"), size=2)
    # composite on white -> red, white; padded to 2x2 with white below (pad_top = (2-1)//2 = 0); BGR
    expected = np.array([[[0, 0, 255], [255, 255, 255]], [[255, 255, 255], [255, 255, 255]]], dtype=np.uint8)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, expected)


def test_wd14_no_resize_when_side_equals_size():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = wd14(Image.fromarray(arr, "RGB"), size=16)
    np.testing.assert_array_equal(out, arr[:, :, ::-1])


def test_wd14_centres_tall_image():
    arr = np.zeros((4, 2, 3), dtype=np.uint8)  # black 2 wide x 4 tall
    out = wd14(Image.fromarray(arr, "RGB"), size=4)
    # pad_left = (4-2)//2 = 1: columns 0 and 3 white, 1..2 black
    assert (out[:, 0] == 255).all() and (out[:, 3] == 255).all()
    assert (out[:, 1:3] == 0).all()


def test_deepdanbooru_a1111_edge_stretch_bands():
    out = deepdanbooru_a1111(two_row_image(), 4, 4)
    # Fit: src_w = 4, src_h = 2*4//4 = 2, pasted at y = 4//2 - 2//2 = 1; bands of height 1.
    # Bands: Pillow's default (bicubic, a = -0.5) over a zero-height box at row 0 weights rows 0 and 1
    # by w(0.5) = 0.5625 and w(1.5) = -0.0625, normalised: 1.125 * R0 - 0.125 * R1 (and mirrored below).
    top = [1.125 * a - 0.125 * b for a, b in zip(R0, R1)]  # 110, 55, 220
    bottom = [1.125 * b - 0.125 * a for a, b in zip(R0, R1)]  # 10, 5, 20
    np.testing.assert_array_equal(out[0], np.array([top] * 4, dtype=np.uint8))
    np.testing.assert_array_equal(out[1], np.array([R0] * 4, dtype=np.uint8))
    np.testing.assert_array_equal(out[2], np.array([R1] * 4, dtype=np.uint8))
    np.testing.assert_array_equal(out[3], np.array([bottom] * 4, dtype=np.uint8))


def test_deepdanbooru_a1111_drops_alpha_without_compositing():
    arr = np.array([[[10, 20, 30, 0]] * 4] * 4, dtype=np.uint8)
    out = deepdanbooru_a1111(Image.fromarray(arr, "RGBA"), 4, 4)
    assert (out == np.array([10, 20, 30], dtype=np.uint8)).all()


def test_deepdanbooru_kdd_edge_padding():
    out = deepdanbooru_kdd(two_row_image(), 4, 4)
    # no resize (scale 1), edge padding one row above and below
    for row, colour in zip(out, (R0, R0, R1, R1)):
        assert (row == np.array(colour, dtype=np.uint8)).all()


@pytest.mark.parametrize("size", [(1, 1), (3000, 2), (2, 3000)])
def test_tiny_and_very_wide_images_do_not_crash(size):
    img = Image.new("RGB", size, (120, 30, 60))
    assert deepdanbooru_a1111(img, 128, 128).shape == (128, 128, 3)
    assert deepdanbooru_kdd(img, 128, 128).shape == (128, 128, 3)
    assert wd14(img, 64).shape == (64, 64, 3)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_are_converted_to_8bit_rgb(tmp_path):
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in CMYK
    out = load_image(_save(cmyk, "JPEG", quality=100))
    assert out.mode == "RGB" and out.getpixel((1, 1))[0] > 200

    sixteen = Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16))
    p = tmp_path / "deep.png"
    sixteen.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (100, 100, 100)

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    out = load_image(_save(pal, "PNG", transparency=0))
    assert out.mode == "RGBA" and out.getpixel((0, 0))[3] == 0

    assert load_image(_save(Image.new("L", (3, 3), 7), "PNG")).getpixel((0, 0)) == (7, 7, 7)
    assert load_image(_save(Image.new("LA", (3, 3), (7, 9)), "PNG")).mode == "RGBA"


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(buf.getvalue())
    r, g, b = out.convert("RGB").getpixel((4, 4))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = load_image(_save(img, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_bad_files_raise_clear_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image", encoding="utf-8")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(text)
    data = _save(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated|decode|open"):
        load_image(trunc)
    with pytest.raises(ImageDecodeError, match="cap"):
        load_image(_save(Image.new("RGB", (100, 100)), "PNG"), max_pixels=1000)


def test_decompression_bomb_header_is_refused():
    data = bytearray(_save(Image.new("RGB", (1, 1)), "PNG"))
    # IHDR payload starts at byte 16: width, height; patch to 100000 x 100000 and fix the CRC
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    with pytest.raises(ImageDecodeError, match="cap of 64,000,000"):
        load_image(bytes(data))


def test_a_cap_above_pillows_bomb_limit_is_honoured():
    """--max-pixels above Pillow's own limit (2 x MAX_IMAGE_PIXELS) lets the image through to our check."""
    data = bytearray(_save(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", 20_000, 10_000)  # 200 MP header, tiny pixel data
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    limit = Image.MAX_IMAGE_PIXELS
    assert 20_000 * 10_000 > 2 * limit
    with pytest.raises(ImageDecodeError, match="cap of 100,000,000"):
        load_image(bytes(data), max_pixels=100_000_000)
    with pytest.raises(ImageDecodeError) as e:  # allowed by the cap: opens, then the data is too short
        load_image(bytes(data), max_pixels=300_000_000)
    assert "cap" not in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's global is restored


def _wd14_on_the_full_square(img: Image.Image, size: int) -> np.ndarray:
    """The WD reference, literally: alpha on white, white square of side max(w, h), bicubic, BGR."""
    canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
    canvas.alpha_composite(img.convert("RGBA"))
    rgb = canvas.convert("RGB")
    side = max(rgb.size)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        padded = padded.resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.asarray(padded, dtype=np.uint8)[:, :, ::-1]


def _noise(w: int, h: int, seed: int = 0, alpha: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 4 if alpha else 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGBA" if alpha else "RGB")


@pytest.mark.parametrize(
    "w, h, size",
    [
        (300, 200, 448),
        (512, 768, 448),
        (1000, 999, 448),
        (2000, 50, 448),
        (50, 2000, 448),
        (1080, 2340, 448),
        (600, 200, 64),
        (200, 600, 64),
        (90, 40, 64),
        (72, 100, 64),
        (500, 100, 448),
        (7, 3, 448),
    ],
)
def test_wd14_matches_the_full_square_exactly_on_ordinary_images(w, h, size):
    """Without building the square, the output is bit-identical to padding then resizing it."""
    for alpha in (False, True):
        img = _noise(w, h, seed=w * 7 + h, alpha=alpha)
        np.testing.assert_array_equal(wd14(img, size), _wd14_on_the_full_square(img, size))


@pytest.mark.parametrize("w, h", [(1500, 20), (20, 1500), (1600, 3), (3, 1600)])
def test_wd14_long_strips_stay_within_one_level_of_the_full_square(w, h):
    """Strips take the band path (side > 8 x size, short side < size / 2): at most 1 level off, rarely."""
    img = _noise(w, h, seed=w + h)
    ours, ref = wd14(img, 64).astype(int), _wd14_on_the_full_square(img, 64).astype(int)
    diff = np.abs(ours - ref)
    assert diff.max() <= 1 and (diff > 0).sum() <= 16, (diff.max(), (diff > 0).sum())


def test_wd14_very_long_narrow_strips_resampled_transposed_stay_within_two_levels(monkeypatch):
    """Past the band's work limit a tall strip is resampled transposed (pass order swapped)."""
    import tagloop.tagger.preprocess as pp

    monkeypatch.setattr(pp, "_BAND_TAPS_MAX", 0)
    for w, h in ((20, 1500), (3, 1600), (31, 2000)):
        img = _noise(w, h, seed=w * h)
        diff = np.abs(wd14(img, 64).astype(int) - _wd14_on_the_full_square(img, 64).astype(int))
        assert diff.max() <= 2, (w, h, diff.max())


_PEAK_PROBE = r"""
import json, sys, time, tracemalloc
import cv2
cv2.setNumThreads(1)
from tagloop.tagger.preprocess import deepdanbooru_a1111, deepdanbooru_kdd, load_image, wd14


def status(key):
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


def reset_peak():  # Linux: VmHWM back to the current RSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


try:  # a safety net: the full-square code would need ~6.4 GB and fail here at once, not swap
    import resource
    vm = status("VmSize")
    if vm:
        resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
except (ImportError, ValueError, OSError):
    pass

report = {}
for path in sys.argv[1:]:
    img = load_image(path)
    for name, fn in (("wd14", lambda: wd14(img, 448)), ("a1111", lambda: deepdanbooru_a1111(img, 512, 512)),
                     ("kdd", lambda: deepdanbooru_kdd(img, 512, 512))):
        native = reset_peak() and status("VmRSS")
        tracemalloc.start()
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
        python_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss_peak = (status("VmHWM") - native) if native else None
        report[f"{img.width}x{img.height} {name}"] = [list(out.shape), python_peak, rss_peak, seconds]
print(json.dumps(report))
"""


def test_long_strip_preprocessing_memory_follows_the_image_not_its_square(tmp_path):
    """A 40000 x 100 strip (4 MP, under the cap) must not cost a 40000 x 40000 square (~6.4 GB).

    tracemalloc sees numpy and Python allocations; Pillow allocates natively, so on Linux the
    resident-set peak (VmHWM, reset per call) is bounded too. Run in a child process so its peak is
    its own and an address-space limit can stop a regression at once.
    """
    w, h = 40_000, 100
    x = np.arange(w, dtype=np.uint32)[None, :]
    y = np.arange(h, dtype=np.uint32)[:, None]
    arr = np.stack([(x * 7 + y) % 256, (x // 3 + y * 5) % 256, (x ^ y) % 256], axis=-1).astype(np.uint8)
    paths = []
    for name, a in (("wide.png", arr), ("tall.png", arr.transpose(1, 0, 2))):
        paths.append(str(tmp_path / name))
        Image.fromarray(np.ascontiguousarray(a), "RGB").save(paths[-1], compress_level=1)
    decoded = w * h * 3  # 12 MB
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PEAK_PROBE, *paths], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert len(report) == 6
    for key, (shape, python_peak, rss_peak, seconds) in report.items():
        assert shape[0] == shape[1] and shape[0] in (448, 512), key
        assert python_peak <= 4 * decoded, (key, python_peak)
        if rss_peak is not None:
            assert rss_peak <= 4 * decoded, (key, rss_peak)
        assert seconds < 5.0, (key, seconds)  # the full square took ~20 s
