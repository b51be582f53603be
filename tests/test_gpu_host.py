"""The torch host path (tagloop.tagger.gpu_host) against the CPU path it stands in for.

Canny edge density vs ``cv2.Canny`` (via :func:`edge_density`), grey conversion vs ``cv2.cvtColor``,
JPEG decode vs :func:`load_image`, preprocessing vs :func:`deepdanbooru_a1111` / :func:`wd14`.
Everything runs on CPU torch here; ``test_runs_on_device`` also runs on CUDA when there is one.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from tagloop.pipeline.demo import draw_source_image
from tagloop.tagger.gpu_host import (
    apply_orientation,
    canny_density,
    canny_edges,
    decode_jpegs,
    edge_density_torch,
    jpeg_orientation,
    pil_resize,
    preprocess_torch,
    rgb_to_gray,
)
from tagloop.tagger.preprocess import deepdanbooru_a1111, load_image, wd14
from tagloop.tagger.threshold import edge_density, pick_band

# --------------------------------------------------------------------------- test pictures


def _gradient(w: int, h: int, kind: str) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "h":
        v = x / max(w - 1, 1) * 255
    elif kind == "v":
        v = y / max(h - 1, 1) * 255
    elif kind == "radial":
        v = np.hypot(x - w / 2, y - h / 2) / math.hypot(w / 2, h / 2) * 255
    else:  # steep diagonal ramp: about 60 levels per pixel, strong gradients everywhere
        v = ((x + y) * 60) % 256
    return np.clip(v, 0, 255).astype(np.uint8)


def _shapes(w: int, h: int, seed: int, bg=(30, 30, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(-10, w)), int(rng.integers(-10, h))
        x1, y1 = x0 + int(rng.integers(4, w // 2 + 5)), y0 + int(rng.integers(4, h // 2 + 5))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            d.rectangle([x0, y0, x1, y1], fill=col)
        elif kind == 1:
            d.ellipse([x0, y0, x1, y1], outline=col, width=int(rng.integers(1, 4)))
        elif kind == 2:
            d.polygon([(x0, y0), (x1, y0 + 3), (x0 + 5, y1)], fill=col)
        else:
            d.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(1, 3)))
    return img


def _strokes(w: int, h: int, seed: int) -> Image.Image:
    """Text and pen-like strokes: thin lines at every angle, dots, glyphs."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (w, h), 245)
    d = ImageDraw.Draw(img)
    d.text((4, 4), "Tagloop 1girl, solo", fill=10)
    d.text((6, h // 2), "abc XYZ 0123 ~!?", fill=60)
    for _ in range(25):
        x0, y0 = rng.integers(0, w, 2)
        ang, ln = rng.uniform(0, 2 * math.pi), rng.uniform(5, 40)
        d.line([(int(x0), int(y0)), (int(x0 + ln * math.cos(ang)), int(y0 + ln * math.sin(ang)))], fill=int(rng.integers(0, 120)))
    for _ in range(15):
        x, y = rng.integers(0, w), rng.integers(0, h)
        d.point((int(x), int(y)), fill=0)
    return img


def _spiral(size: int = 120) -> np.ndarray:
    """A long 1-pixel spiral whose gradient is weak (between 100 and 200) except near its end:
    hysteresis has to walk the whole chain from one strong spot."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    c = size / 2
    pts = [(c + (2 + 0.9 * t) * math.cos(t * 0.5), c + (2 + 0.9 * t) * math.sin(t * 0.5)) for t in np.arange(0, 120, 0.05)]
    d.line(pts, fill=35, width=1)
    d.ellipse([pts[-1][0] - 2, pts[-1][1] - 2, pts[-1][0] + 2, pts[-1][1] + 2], fill=90)
    return np.asarray(img)


def _jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=quality)
    return Image.open(io.BytesIO(b.getvalue())).convert("RGB")


def _test_images() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(2024)
    demo = draw_source_image()
    out: list[tuple[str, np.ndarray]] = [
        ("demo", np.asarray(demo)),
        ("demo 300x200 bicubic", np.asarray(demo.resize((300, 200), Image.BICUBIC))),
        ("demo 77x191 lanczos", np.asarray(demo.resize((77, 191), Image.LANCZOS))),
        ("demo jpeg q40", np.asarray(_jpeg_roundtrip(demo, 40))),
        ("demo grey", np.asarray(demo.convert("L"))),
    ]
    for i, (w, h) in enumerate([(160, 120), (97, 131), (200, 64), (33, 250)]):
        out.append((f"shapes {w}x{h}", np.asarray(_shapes(w, h, seed=i))))
    out.append(("shapes on white", np.asarray(_shapes(128, 128, seed=9, bg=(255, 255, 255)))))
    out.append(("strokes 180x90", np.asarray(_strokes(180, 90, seed=1))))
    out.append(("strokes 101x143", np.asarray(_strokes(101, 143, seed=2))))
    out.append(("spiral", _spiral()))
    out += [
        ("noise rgb 96x80", rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)),
        ("noise grey 127x61", rng.integers(0, 256, (61, 127), dtype=np.uint8)),
        ("noise low contrast", rng.integers(100, 140, (90, 90), dtype=np.uint8)),
        ("salt", np.where(rng.random((70, 110)) < 0.03, 255, 0).astype(np.uint8)),
    ]
    for r in (0.7, 1.5, 3):
        noise = Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8))
        blurred = np.asarray(noise.filter(ImageFilter.GaussianBlur(r)), dtype=np.float64)
        stretched = np.clip((blurred - blurred.mean()) * (2.5 * r) + 128, 0, 255).astype(np.uint8)
        out.append((f"blurred noise r={r}", stretched))
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((150, 110), Image.BICUBIC)
    out.append(("upscaled noise", np.asarray(coarse)))
    for kind in ("h", "v", "radial", "steep"):
        out.append((f"gradient {kind}", _gradient(140, 100, kind)))
    checker = ((np.indices((64, 64)).sum(0) // 4) % 2 * 255).astype(np.uint8)
    out.append(("checkerboard 4px", checker))
    out.append(("stripes 1px", np.tile(np.array([0, 255], np.uint8), (40, 33))[:, :65]))
    border = np.zeros((50, 70), np.uint8)
    border[:, :3] = 255
    border[-2:, :] = 180
    border[10:20, -1] = 255
    out.append(("edges at the border", border))
    out.append(("flat", np.full((40, 40, 3), 77, np.uint8)))
    out += [
        ("tiny 8x8 noise", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        ("tiny 8x8 square", np.pad(np.full((4, 4), 255, np.uint8), 2)),
        ("3x5", rng.integers(0, 256, (5, 3), dtype=np.uint8)),
        ("1x9", rng.integers(0, 256, (9, 1), dtype=np.uint8)),
        ("2x2", np.array([[0, 255], [255, 0]], np.uint8)),
    ]
    return [(name, np.array(arr, dtype=np.uint8, order="C")) for name, arr in out]  # writable, contiguous


IMAGES = _test_images()


def _gray(arr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY) if arr.ndim == 3 else arr


# --------------------------------------------------------------------------- Canny


def test_edge_density_parity_with_opencv():
    """The issue's target: same band on every image, density within 1e-3. Measured (OpenCV 5.1,
    x86-64 with IPP): every edge map identical to cv2.Canny's, so max |d density| = 0."""
    assert len(IMAGES) >= 30
    tensors = [torch.from_numpy(a) for _, a in IMAGES]
    got = edge_density_torch(tensors)
    exact, worst = 0, 0.0
    for (name, arr), t, dens in zip(IMAGES, tensors, got):
        ref = edge_density(arr)
        assert abs(dens - ref) <= 1e-3, name
        assert pick_band(dens) == pick_band(ref), name
        worst = max(worst, abs(dens - ref))
        same = np.array_equal(canny_edges(torch.from_numpy(_gray(arr).copy())).numpy(), cv2.Canny(_gray(arr), 100, 200) > 0)
        exact += same
    print(f"\nCanny parity: {exact}/{len(IMAGES)} edge maps identical to OpenCV's, max |d density| = {worst:.2e}")
    # Identical everywhere on this build; other OpenCV builds (ARM HALs) may differ by a pixel
    # here and there, which the density bound above still covers.
    assert exact >= 0.8 * len(IMAGES)


def test_images_exercise_every_band_and_the_hysteresis():
    bands = {pick_band(edge_density(a)).name for _, a in IMAGES}
    assert bands == {"simple", "medium", "complex"}
    spiral = _spiral()
    edges = cv2.Canny(spiral, 100, 200) > 0
    weak_only = cv2.Canny(spiral, 100, 100_000) > 0  # no strong pixel: nothing survives
    assert edges.sum() > 300 and not weak_only.any()
    assert np.array_equal(canny_edges(torch.from_numpy(spiral.copy())).numpy(), edges)


@pytest.mark.parametrize("low,high", [(50, 150), (150, 50), (10.7, 30.2), (0, 0), (250, 600)])
def test_thresholds_as_opencv(low, high):
    """Swapped thresholds are reordered and fractional ones floored, as cv2.Canny does."""
    for name in ("demo", "strokes 101x143", "blurred noise r=1.5", "noise grey 127x61"):
        g = _gray(dict(IMAGES)[name])
        ref = cv2.Canny(g, low, high) > 0
        assert np.array_equal(canny_edges(torch.from_numpy(g.copy()), low, high).numpy(), ref), name


def test_batch_float_and_mixed_sizes():
    rng = np.random.default_rng(5)
    batch = np.stack(
        [np.asarray(_shapes(90, 70, seed=s).convert("L")) for s in range(3)] + [rng.integers(0, 256, (70, 90), np.uint8)]
    )
    ref = np.stack([cv2.Canny(g, 100, 200) > 0 for g in batch])
    assert np.array_equal(canny_edges(torch.from_numpy(batch)).numpy(), ref)
    assert np.array_equal(canny_edges(torch.from_numpy(batch).float()).numpy(), ref)  # float levels
    dens = canny_density(torch.from_numpy(batch))
    assert dens.dtype == torch.float64 and dens.shape == (4,)
    assert dens.tolist() == [float(r.mean()) for r in ref]
    # mixed sizes and layouts keep their order; (3, H, W) with channels_first
    picks = [IMAGES[i][1] for i in (0, 5, 12, 30)]
    want = [edge_density(a) for a in picks]
    assert edge_density_torch([torch.from_numpy(a) for a in picks]) == pytest.approx(want, abs=0)
    chw = [torch.from_numpy(a).permute(2, 0, 1) if a.ndim == 3 else torch.from_numpy(a) for a in picks]
    assert edge_density_torch(chw, channels_first=True) == pytest.approx(want, abs=0)
    rgba = np.concatenate([picks[0], np.full(picks[0].shape[:2] + (1,), 7, np.uint8)], -1)  # alpha is dropped
    assert edge_density_torch([torch.from_numpy(rgba)]) == [edge_density(Image.fromarray(rgba, "RGBA"))]
    with pytest.raises(ValueError):
        canny_edges(torch.zeros((1, 0, 5), dtype=torch.uint8))


def test_rgb_to_gray_matches_cvtcolor_on_every_colour():
    """All 2**24 colours (OpenCV 5's 15-bit weights; the 14-bit set misses ~0.26% of them)."""
    v = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(4096, 4096, 3)
    assert np.array_equal(rgb_to_gray(torch.from_numpy(rgb)).numpy(), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    rng = np.random.default_rng(0)
    for w in (1, 3, 7, 17, 33):  # short rows: OpenCV's scalar tail, not its SIMD body
        small = rng.integers(0, 256, (3, w, 3), dtype=np.uint8)
        assert np.array_equal(rgb_to_gray(torch.from_numpy(small)).numpy(), cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    chw = torch.from_numpy(rgb[:64, :64].copy()).permute(2, 0, 1)
    assert torch.equal(rgb_to_gray(chw, channels_first=True), rgb_to_gray(torch.from_numpy(rgb[:64, :64].copy())))


# --------------------------------------------------------------------------- JPEG decoding


def _jpeg(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


def _jpeg_cases() -> dict[str, bytes]:
    src = draw_source_image().resize((301, 203), Image.BICUBIC)
    rng = np.random.default_rng(1)
    cases = {f"q{q} sub{s}": _jpeg(src, quality=q, subsampling=s) for q in (40, 95) for s in (0, 1, 2)}
    cases["progressive"] = _jpeg(src, quality=90, progressive=True)
    cases["grey"] = _jpeg(src.convert("L"), quality=90)
    cases["noise 53x77"] = _jpeg(Image.fromarray(rng.integers(0, 256, (77, 53, 3), dtype=np.uint8)), quality=85)
    cases["tiny 1x1"] = _jpeg(Image.new("RGB", (1, 1), (200, 10, 30)))
    for o in range(1, 9):
        exif = Image.Exif()
        exif[274] = o
        cases[f"exif {o}"] = _jpeg(src, quality=90, exif=exif.tobytes())
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    cases["xmp 6"] = _jpeg(src, quality=90, xmp=xmp)
    return cases


def test_decode_jpegs_matches_load_image():
    """torchvision's libjpeg-turbo and Pillow's decode the same bytes to the same pixels: measured
    max |diff| = 0 on every case (colour, grey, 4:4:4 / 4:2:2 / 4:2:0, progressive, EXIF and XMP
    orientations). nvjpeg on CUDA is a different decoder; this test does not cover it."""
    cases = _jpeg_cases()
    got = decode_jpegs(list(cases.values()), "cpu")
    for (name, data), t in zip(cases.items(), got):
        ref = np.asarray(load_image(data).convert("RGB"))
        assert t is not None, name
        assert t.dtype == torch.uint8 and t.shape == (3,) + ref.shape[:2], name
        assert int(np.abs(t.permute(1, 2, 0).numpy().astype(int) - ref).max()) == 0, name
    assert jpeg_orientation(cases["exif 6"]) == 6 and jpeg_orientation(cases["xmp 6"]) == 6
    assert got[list(cases).index("xmp 6")].shape[1:] == (301, 203)  # turned, as Pillow turns it


def test_decode_jpegs_leaves_the_rest_to_the_cpu_path():
    src = draw_source_image()
    good = _jpeg(src, quality=90)
    png = io.BytesIO()
    src.save(png, "PNG")
    cmyk = _jpeg(src.convert("CMYK"))
    datas = [png.getvalue(), good[: len(good) // 2], cmyk, b"", b"\xff\xd8\xff\xe0" + bytes(64) + b"\xff\xd9", good]
    got = decode_jpegs(datas, torch.device("cpu"))
    assert [t is None for t in got] == [True, True, True, True, True, False]
    with pytest.raises(Exception):
        load_image(datas[1])  # truncated: the CPU path reports it
    assert decode_jpegs([good], max_pixels=100) == [None]  # over the cap: load_image's error message
    assert decode_jpegs([]) == []


def test_apply_orientation_is_exif_transpose():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = torch.from_numpy(arr).permute(2, 0, 1)
    for o in range(0, 10):
        img = Image.fromarray(arr)
        exif = img.getexif()
        exif[274] = o
        ref = np.asarray(ImageOps.exif_transpose(img))
        assert np.array_equal(apply_orientation(t, o).permute(1, 2, 0).numpy(), ref), o


# --------------------------------------------------------------------------- preprocessing


def _pictures() -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(11)
    demo = draw_source_image()
    pics = [(f"demo {w}x{h}", demo.resize((w, h), Image.BICUBIC)) for w, h in [(256, 256), (301, 203), (203, 301), (700, 699)]]
    pics += [(f"strip {w}x{h}", demo.resize((w, h), Image.BICUBIC)) for w, h in [(1000, 120), (120, 1000), (2000, 30), (37, 511)]]
    pics += [("exact 512", demo.resize((512, 512))), ("exact 448", demo.resize((448, 448)))]
    pics += [
        (f"noise {w}x{h}", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for w, h in [(1, 1), (3, 5), (513, 1), (97, 61)]
    ]
    rgba = np.concatenate([np.asarray(demo.resize((300, 200))), rng.integers(0, 256, (200, 300, 1), dtype=np.uint8)], -1)
    pics.append(("rgba", Image.fromarray(rgba, "RGBA")))
    pics.append(("grey", demo.convert("L").resize((180, 240))))
    return pics


def _chw(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img)
    return torch.from_numpy(arr.copy()[:, :, None] if arr.ndim == 2 else arr.copy()).permute(2, 0, 1)


@pytest.mark.parametrize(
    "family,size,ref",
    [
        ("deepdanbooru", (512, 512), lambda im: deepdanbooru_a1111(im, 512, 512)),
        ("deepdanbooru", (300, 511), lambda im: deepdanbooru_a1111(im, 511, 300)),
        ("wd14", (448, 448), lambda im: wd14(im, 448)),
    ],
)
def test_preprocess_matches_pillow(family, size, ref):
    """Pillow's resampling is ported (weights, fixed point, pass order), so the deviation bound is
    the measured one: max |diff| = 0, mean 0, on every picture (RGBA and grey included). For
    scale, torch's interpolate(bicubic, antialias=True) measured up to 19 levels off Pillow's bicubic
    and 46 off its Lanczos on noise (3 and 8 on the demo picture)."""
    worst, total, n = 0, 0.0, 0
    for name, img in _pictures():
        want = ref(img)
        got = preprocess_torch(_chw(img), family, size)
        assert got.dtype == torch.uint8 and got.shape == want.shape and got.is_contiguous(), name
        diff = np.abs(got.numpy().astype(int) - want)
        worst, total, n = max(worst, int(diff.max())), total + float(diff.sum()), n + diff.size
        assert int(diff.max()) == 0, name
    assert worst == 0 and total / n == 0.0


def test_channel_order():
    red = torch.zeros((3, 40, 60), dtype=torch.uint8)
    red[0] = 250
    dd = preprocess_torch(red, "deepdanbooru", (64, 64))
    assert dd[32, 32].tolist() == [250, 0, 0]  # RGB
    wd = preprocess_torch(red, "wd14", (32, 32))
    assert wd[16, 16].tolist() == [0, 0, 250]  # BGR, as wd14() and the WD models want
    assert wd[0, 16].tolist() == [255, 255, 255]  # the white pad
    with pytest.raises(ValueError):
        preprocess_torch(red, "wd14", (32, 48))
    with pytest.raises(ValueError):
        preprocess_torch(red, "kdd", (32, 32))


def test_pil_resize_with_boxes_and_both_pass_orders():
    """The general resampler on random sizes and fractional boxes, both Pillow pass orders."""
    rng = np.random.default_rng(7)
    for i in range(40):
        w, h, ow, oh = (int(v) for v in rng.integers(1, 90, 4))
        box = None
        if i % 2:
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            box = (x0, y0, rng.uniform(x0 + 0.1, w), rng.uniform(y0 + 0.1, h))
        filt, resample = (("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS))[i % 4 // 2]
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(arr).resize((ow, oh), resample, box=box))
        got = pil_resize(torch.from_numpy(arr).permute(2, 0, 1), (ow, oh), filt, box=box).permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), (w, h, ow, oh, box)


# --------------------------------------------------------------------------- devices


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _DEVICES)
def test_runs_on_device(device):
    """decode -> edge density -> preprocessing, all on ``device``; same answers as the CPU path
    (for CUDA the decode is nvjpeg's, so only the density band and a loose pixel bound are checked)."""
    dev = torch.device(device)
    srcs = [draw_source_image(), _shapes(200, 150, seed=4), Image.fromarray(_gradient(90, 120, "steep")).convert("RGB")]
    datas = [_jpeg(s, quality=92) for s in srcs]
    decoded = decode_jpegs(datas, dev)
    assert all(t is not None and t.device.type == dev.type for t in decoded)
    dens = edge_density_torch(decoded, channels_first=True)
    for data, t, d in zip(datas, decoded, dens):
        img = load_image(data)
        assert pick_band(d) == pick_band(edge_density(img))
        for family, size, fn in (("deepdanbooru", (512, 512), deepdanbooru_a1111), ("wd14", (448, 448), wd14)):
            out = preprocess_torch(t, family, size)
            assert out.device.type == dev.type and out.shape == size + (3,) and out.dtype == torch.uint8
            diff = np.abs(out.cpu().numpy().astype(int) - fn(img))
            if dev.type == "cpu":
                assert int(diff.max()) == 0
                assert abs(d - edge_density(img)) == 0
            else:
                assert float(diff.mean()) < 2.0
                assert abs(d - edge_density(img)) <= 1e-2
