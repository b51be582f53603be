"""The tagger's per-image host work (JPEG decode, Canny edge density, preprocessing) in torch, on any device.

On a GPU machine the CPU work around the model -- Pillow decode, ``cv2.Canny`` for the adaptive
threshold band (:func:`tagloop.tagger.threshold.edge_density`) and the Pillow resizes of
:mod:`tagloop.tagger.preprocess` -- costs ~40 ms per image per core and starves the GPU. The
functions here do the same work with torch ops, so it runs where the tensors are:

* :func:`canny_edges` / :func:`canny_density` / :func:`edge_density_torch`: a port of OpenCV's
  ``Canny(gray, low, high)`` with its defaults (3x3 Sobel on a replicated border, L1 magnitude,
  OpenCV's non-maximum suppression rule and double threshold, 8-connected hysteresis), and of
  ``cvtColor(RGB2GRAY)``'s fixed-point weights. Integer arithmetic throughout: the edge maps are
  meant to be identical to OpenCV's, not close (the tests compare them pixel by pixel).
* :func:`decode_jpegs`: ``torchvision.io.decode_jpeg`` (nvjpeg on CUDA, libjpeg-turbo on CPU) with
  :func:`~tagloop.tagger.preprocess.load_image`'s EXIF orientation; anything it cannot promise to
  decode as Pillow would comes back as ``None`` for the caller's CPU path.
* :func:`preprocess_torch`: :func:`~tagloop.tagger.preprocess.deepdanbooru_a1111` and
  :func:`~tagloop.tagger.preprocess.wd14`, with Pillow's resampling itself ported (its filter
  weights, their 22-bit fixed-point rounding, the two passes with 8-bit rounding in between),
  evaluated as float64 matrix products whose every term is an integer below 2**53, so exact.

Facts about OpenCV's Canny used here (``modules/imgproc/src/canny.cpp``, read for the rules):

* ``dx``, ``dy``: ``Sobel(src, CV_16S, 1, 0 / 0, 1, ksize=3, BORDER_REPLICATE)``; magnitude
  ``|dx| + |dy|``; outside the image the magnitude is 0 (the ring buffer's padding), so the outer
  frame of pixels is processed like any other and can be an edge.
* thresholds: ``low > high`` are swapped, then both floored to ints; a pixel is a candidate when
  ``m > low`` and it survives non-maximum suppression, strong when also ``m > high``.
* direction, with ``TG22 = round(tan(22.5 deg) * 2**15) = 13573``, ``x = |dx|``, ``y = |dy| << 15``:
  ``y < x * TG22``: horizontal gradient, keep when ``m > left and m >= right``;
  ``y > x * TG22 + (x << 16)``: vertical, keep when ``m > up and m >= down``;
  otherwise diagonal, ``s = -1`` when ``dx`` and ``dy`` differ in sign (``(dx ^ dy) < 0``) else 1,
  keep when ``m > mag[up][j - s] and m > mag[down][j + s]`` (strict on both sides).
* hysteresis: every candidate 8-connected (through candidates) to a strong pixel is an edge.
  OpenCV's ``prev_flag`` / "pixel above is already 2" shortcuts only stop it pushing a strong
  pixel whose neighbour is already on the stack; flooding reaches it anyway, so they do not change
  the result and are not reproduced.

Note on grey conversion: OpenCV (5.1 here) converts 8-bit RGB to grey with 15-bit weights,
``(9798 R + 19235 G + 3735 B + 2**14) >> 15``, checked against ``cv2.cvtColor`` on all 2**24
colours; the often-quoted 14-bit ``(4899, 9617, 1868)`` differs on ~0.26% of them.
"""

from __future__ import annotations

import io
import math
import warnings
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .preprocess import DEFAULT_MAX_PIXELS

__all__ = [
    "rgb_to_gray",
    "canny_edges",
    "canny_density",
    "edge_density_torch",
    "decode_jpegs",
    "jpeg_orientation",
    "apply_orientation",
    "preprocess_torch",
    "pil_resize",
]

# --------------------------------------------------------------------------- grey conversion

#: cv2.cvtColor(COLOR_RGB2GRAY) on uint8: (R*9798 + G*19235 + B*3735 + (1 << 14)) >> 15.
_GRAY_R, _GRAY_G, _GRAY_B, _GRAY_SHIFT = 9798, 19235, 3735, 15


def rgb_to_gray(rgb: torch.Tensor, channels_first: bool = False) -> torch.Tensor:
    """uint8 RGB ``(..., H, W, 3)`` (``(..., 3, H, W)`` with ``channels_first``) -> uint8 grey ``(..., H, W)``,
    bit-identical to ``cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)``. A 4th (alpha) channel is ignored."""
    dim = -3 if channels_first else -1
    x = rgb.to(torch.int32)
    r, g, b = (x.select(dim, c) for c in range(3))
    y = (r * _GRAY_R + g * _GRAY_G + b * _GRAY_B + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT
    return y.to(torch.uint8)


# --------------------------------------------------------------------------- Canny

_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)  # 13573


def _as_levels(gray: torch.Tensor) -> torch.Tensor:
    """Grey levels as int32 ``(N, H, W)``; float input is rounded and clamped to 0..255 first
    (OpenCV's Canny only takes 8-bit images)."""
    if gray.ndim == 2:
        gray = gray.unsqueeze(0)
    if gray.ndim != 3:
        raise ValueError(f"expected grey images (N, H, W) or (H, W), got shape {tuple(gray.shape)}")
    if gray.is_floating_point():
        gray = gray.round().clamp(0, 255)
    return gray.to(torch.int32)


def _thresholds(low: float, high: float) -> tuple[int, int]:
    if low > high:
        low, high = high, low
    return math.floor(low), math.floor(high)


def _sobel_nms(g: torch.Tensor, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 ``(N, H, W)`` levels -> (candidate, strong) bool maps after non-maximum suppression."""
    n, h, w = g.shape
    dev = g.device
    rows = torch.arange(-1, h + 1, device=dev).clamp_(0, h - 1)
    cols = torch.arange(-1, w + 1, device=dev).clamp_(0, w - 1)
    p = g.index_select(1, rows).index_select(2, cols)  # BORDER_REPLICATE, (N, H+2, W+2)
    ddx = p[:, :, 2:] - p[:, :, :-2]  # (N, H+2, W)
    dx = ddx[:, :-2] + 2 * ddx[:, 1:-1] + ddx[:, 2:]
    ddy = p[:, 2:, :] - p[:, :-2, :]  # (N, H, W+2)
    dy = ddy[:, :, :-2] + 2 * ddy[:, :, 1:-1] + ddy[:, :, 2:]
    del p, ddx, ddy
    ax, ay = dx.abs(), dy.abs()
    m = ax + ay
    mp = torch.nn.functional.pad(m, (1, 1, 1, 1))  # magnitude 0 outside the image
    up, down = mp[:, :-2, 1:-1], mp[:, 2:, 1:-1]
    left, right = mp[:, 1:-1, :-2], mp[:, 1:-1, 2:]
    y = ay << _CANNY_SHIFT
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_CANNY_SHIFT + 1))
    horizontal = y < tg22x
    vertical = y > tg67x
    same_sign = (dx ^ dy) >= 0  # s = 1: up-left / down-right; s = -1: up-right / down-left
    d_up = torch.where(same_sign, mp[:, :-2, :-2], mp[:, :-2, 2:])
    d_down = torch.where(same_sign, mp[:, 2:, 2:], mp[:, 2:, :-2])
    keep = torch.where(
        horizontal,
        (m > left) & (m >= right),
        torch.where(vertical, (m > up) & (m >= down), (m > d_up) & (m > d_down)),
    )
    cand = keep & (m > low)
    return cand, cand & (m > high)


def _reaches_back(cand: torch.Tensor, edge: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Candidates with an edge pixel at or before them in their own run (along the last dim)."""
    off = torch.zeros(cand.shape[:-1] + (1,), dtype=torch.bool, device=cand.device)
    start = cand & ~torch.cat([off, cand[..., :-1]], -1)
    first = torch.where(start, pos, -1).cummax(-1).values  # where the run of each candidate starts
    seen = torch.where(edge, pos, -1).cummax(-1).values  # the last edge pixel so far
    return cand & (seen >= first)


def _fill_runs(cand: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """Along the last dim: every run of consecutive candidates holding an edge pixel becomes edge.
    Elementwise ops and ``cummax`` scans only (int32, no gathers)."""
    pos = torch.arange(cand.shape[-1], dtype=torch.int32, device=cand.device).expand(cand.shape)
    back = _reaches_back(cand, edge, pos)
    ahead = _reaches_back(cand.flip(-1), edge.flip(-1), pos).flip(-1)
    return back | ahead


def _skewed(buf: torch.Tensor, h: int, w: int, anti: bool) -> torch.Tensor:
    """An ``(N, H, W)`` view of the contiguous ``(N, H, H + W - 1)`` buffer in which pixel (i, j)
    sits at column ``i + j`` (``anti``) or ``j - i + H - 1``: the buffer's columns are then the
    image's anti-diagonals or diagonals, and the gaps between them stay empty."""
    n, _, length = buf.shape
    if anti:
        return buf.as_strided((n, h, w), (h * length, length + 1, 1))
    return buf.as_strided((n, h, w), (h * length, length - 1, 1), h - 1)


def _fill_diagonal(cand: torch.Tensor, edge: torch.Tensor, anti: bool) -> torch.Tensor:
    """:func:`_fill_runs` along the diagonals (``anti``: the anti-diagonals) of ``(N, H, W)`` maps."""
    n, h, w = cand.shape
    buf_c = torch.zeros((n, h, h + w - 1), dtype=torch.bool, device=cand.device)
    buf_e = torch.zeros_like(buf_c)
    _skewed(buf_c, h, w, anti).copy_(cand)
    _skewed(buf_e, h, w, anti).copy_(edge)
    out = _fill_runs(buf_c.transpose(1, 2).contiguous(), buf_e.transpose(1, 2).contiguous())
    return _skewed(out.transpose(1, 2).contiguous(), h, w, anti)


def _hysteresis(cand: torch.Tensor, strong: torch.Tensor, max_sweeps: int | None = None) -> torch.Tensor:
    """Candidates 8-connected to a strong pixel. Each sweep floods whole straight runs of candidates
    (rows, columns, both diagonals), so a sweep crosses a straight edge at once and the number of
    sweeps follows the number of turns along a chain, not its length. It stops at the first sweep
    that changes nothing, which is the exact fixed point (the flood only grows and is bounded)."""
    edge = strong
    if not bool((cand & ~strong).any()):
        return edge
    sweeps = 0
    while max_sweeps is None or sweeps < max_sweeps:
        new = _fill_runs(cand, edge)
        new = _fill_runs(cand.transpose(1, 2), new.transpose(1, 2)).transpose(1, 2)
        new = _fill_diagonal(cand, new, anti=False)
        new = _fill_diagonal(cand, new, anti=True)
        sweeps += 1
        if torch.equal(new, edge):
            break
        edge = new
    return edge


def canny_edges(gray: torch.Tensor, low: float = 100, high: float = 200) -> torch.Tensor:
    """OpenCV's ``Canny(gray, low, high)`` (``apertureSize=3``, ``L2gradient=False``) on a batch of
    same-size grey images ``(N, H, W)`` or one ``(H, W)``, uint8 (or float holding 0..255 levels).
    Returns bool edge maps of the same shape, on the input's device."""
    squeeze = gray.ndim == 2
    g = _as_levels(gray)
    if g.shape[1] == 0 or g.shape[2] == 0:
        raise ValueError(f"empty image {tuple(gray.shape)}")
    lo, hi = _thresholds(low, high)
    cand, strong = _sobel_nms(g, lo, hi)
    edges = _hysteresis(cand, strong)
    return edges[0] if squeeze else edges


def canny_density(gray: torch.Tensor, low: float = 100, high: float = 200) -> torch.Tensor:
    """Fraction of Canny edge pixels per image: ``(N, H, W)`` -> float64 ``(N,)`` (``(H, W)`` -> scalar),
    the value :func:`~tagloop.tagger.threshold.edge_density` computes with ``cv2.Canny``."""
    edges = canny_edges(gray, low, high)
    return edges.sum(dim=(-2, -1), dtype=torch.int64).to(torch.float64) / float(edges.shape[-1] * edges.shape[-2])


def _gray_of(image: torch.Tensor, channels_first: bool) -> torch.Tensor:
    if image.ndim == 2:
        return image
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {tuple(image.shape)}")
    c = image.shape[0] if channels_first else image.shape[-1]
    if c in (1, 2):  # grey (+ alpha): Image.convert("RGB") replicates the grey, the grey of that is itself
        return image[0] if channels_first else image[..., 0]
    if c not in (3, 4):
        raise ValueError(f"expected 1 to 4 channels, got {c}")
    return rgb_to_gray(image, channels_first=channels_first)


def edge_density_torch(
    images: Sequence[torch.Tensor], low: float = 100, high: float = 200, channels_first: bool = False
) -> list[float]:
    """:func:`~tagloop.tagger.threshold.edge_density` for many images of any sizes, on their device.

    Each image is uint8 grey ``(H, W)`` or RGB(A) ``(H, W, 3|4)`` (``(3|4, H, W)`` with
    ``channels_first``, as :func:`decode_jpegs` returns them); alpha is dropped, as ``edge_density``
    does. Images of the same size and device run as one batch.
    """
    grays = [_gray_of(im, channels_first) for im in images]
    out: list[float] = [0.0] * len(grays)
    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(grays):
        groups.setdefault((tuple(g.shape), g.device), []).append(i)
    for idx in groups.values():
        dens = canny_density(torch.stack([grays[i] for i in idx]), low, high).tolist()
        for i, d in zip(idx, dens):
            out[i] = float(d)
    return out


# --------------------------------------------------------------------------- JPEG decoding

_TRANSPOSES = {
    2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda x: x.flip(-1, -2),  # ROTATE_180
    4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-1, -2),  # TRANSPOSE
    6: lambda x: torch.rot90(x, -1, (-2, -1)),  # ROTATE_270 (90 degrees clockwise)
    7: lambda x: x.transpose(-1, -2).flip(-1, -2),  # TRANSVERSE
    8: lambda x: torch.rot90(x, 1, (-2, -1)),  # ROTATE_90 (counter-clockwise)
}


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``(..., H, W)`` image turned as ``ImageOps.exif_transpose`` turns an image whose EXIF
    Orientation is ``orientation`` (1 or unknown values: unchanged). Returns a contiguous tensor."""
    fn = _TRANSPOSES.get(orientation)
    return (fn(image) if fn else image).contiguous()


def jpeg_orientation(data: bytes) -> int:
    """The orientation :func:`~tagloop.tagger.preprocess.load_image` applies to ``data``: Pillow's own
    reading (EXIF, or XMP ``tiff:Orientation`` when the EXIF has none); 1 when there is none."""
    info = _jpeg_info(data, None)
    return 1 if info is None else info[0]


def _jpeg_info(data: bytes, max_pixels: int | None) -> tuple[int, str] | None:
    """(orientation, mode) of a JPEG whose decode the torch path can match, else None.

    Only Pillow's header parse runs (no pixel decode). Refused: not a JPEG (or MPO, whose first
    frame is the JPEG stream torchvision decodes); modes other than RGB and L (CMYK/YCCK and
    12-bit JPEGs, which Pillow converts its own way); over ``max_pixels``; no end-of-image marker
    in the last 4 KiB (a truncated file: Pillow refuses it, and so does torchvision's CPU decoder,
    but a GPU decoder may pad it; a valid file with a longer trailer just takes the CPU path);
    metadata Pillow cannot read.
    """
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff" or b"\xff\xd9" not in data[-4096:]:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                if im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L"):
                    return None
                w, h = im.size
                if w <= 0 or h <= 0 or (max_pixels and w * h > max_pixels):
                    return None
                orientation = int(im.getexif().get(274, 1))  # ExifTags.Base.Orientation
                mode = im.mode
    except Exception:  # anything Pillow cannot parse: the CPU path reports it
        return None
    return orientation, mode


def decode_jpegs(
    datas: Sequence[bytes], device: torch.device | str = "cpu", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> list[torch.Tensor | None]:
    """Decode JPEG files to RGB uint8 ``(3, H, W)`` tensors on ``device`` (nvjpeg, as one batched call,
    on CUDA; libjpeg-turbo on CPU), EXIF orientation applied as :func:`load_image` applies it.

    An entry is ``None`` when the torch path cannot stand in for :func:`load_image` (not a JPEG,
    CMYK, over ``max_pixels``, truncated, undecodable): the caller decodes those on the CPU, which
    also gives the error message. torchvision's own ``apply_exif_orientation`` is not used: it only
    exists on CPU and reads the EXIF alone, while Pillow also falls back to the XMP orientation.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(datas)
    todo: list[tuple[int, int]] = []
    tensors: list[torch.Tensor] = []
    for i, data in enumerate(datas):
        info = _jpeg_info(bytes(data), max_pixels)
        if info is None:
            continue
        todo.append((i, info[0]))
        tensors.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if not tensors:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29's deprecation notice for its decoders
        try:
            decoded: list[torch.Tensor | None] = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except Exception:  # one bad file fails the whole batch: find it one by one
            decoded = []
            for t in tensors:
                try:
                    decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except Exception:
                    decoded.append(None)
    for (i, orientation), img in zip(todo, decoded):
        if img is not None and img.ndim == 3 and img.shape[0] == 3:
            out[i] = apply_orientation(img, orientation)
    return out


# --------------------------------------------------------------------------- Pillow's resampling, ported

_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8 bits per channel
_HALF = float(1 << (_PRECISION_BITS - 1))
_ONE = float(1 << _PRECISION_BITS)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        px = x * math.pi
        return np.where(x == 0.0, 1.0, np.sin(px) / px)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


_FILTERS = {"bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


@lru_cache(maxsize=256)
def _coeffs_np(in_size: int, in0: float, in1: float, out_size: int, filt: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: each output's first source index
    and its ``ksize`` integer fixed-point weights (float64; zero past the output's ``xmax`` taps)."""
    fn, fsupport = _FILTERS[filt]
    scale = float(np.float32(in1) - np.float32(in0)) / out_size  # Pillow subtracts the box's C floats
    filterscale = max(scale, 1.0)
    support = fsupport * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = in0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    src = xmin[:, None] + taps[None, :]
    valid = taps[None, :] < xmax[:, None]
    w = np.where(valid, fn(((src - center[:, None]) + 0.5) * ss), 0.0)
    ww = np.zeros(out_size)
    for x in range(ksize):  # Pillow sums the taps in order
        ww = ww + w[:, x]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    k = np.where(w < 0, np.trunc(-0.5 + w * _ONE), np.trunc(0.5 + w * _ONE))
    return xmin, np.where(valid, k, 0.0)


def _coeffs(in_size: int, in0: float, in1: float, out_size: int, filt: str, device: torch.device) -> torch.Tensor:
    """The dense ``(out_size, in_size)`` float64 weight matrix, built on ``device``."""
    in0, in1 = float(np.float32(in0)), float(np.float32(in1))  # the box reaches Pillow's C code as floats
    xmin, k = _coeffs_np(in_size, in0, in1, out_size, filt)
    taps = torch.from_numpy(k).to(device)
    cols = torch.from_numpy(xmin).to(device)[:, None] + torch.arange(k.shape[1], device=device)[None, :]
    mat = torch.zeros((out_size, in_size + k.shape[1]), dtype=torch.float64, device=device)
    return mat.scatter_(1, cols, taps)[:, :in_size]


def _round8(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8(ss + (1 << 21)) >> 22`` on exact float64 sums."""
    return torch.floor((acc + _HALF) / _ONE).clamp_(0.0, 255.0)


def _resample(
    img: torch.Tensor,
    out_w: int,
    out_h: int,
    filt: str,
    box: tuple[float, float, float, float] | None = None,
    canvas: tuple[int, int, int, int, float] | None = None,
) -> torch.Tensor:
    """Pillow's ``Image.resize((out_w, out_h), filter, box)`` of float64 levels ``(C, h, w)``.

    ``canvas = (width, height, left, top, fill)``: resize instead the ``width x height`` image of
    constant ``fill`` with ``img`` pasted at ``(left, top)``, without building it -- the sums over
    the fill pixels are a constant per output (first pass) or a fill line (second pass), so the
    result equals Pillow's resize of the pasted canvas.

    Pass order, as Pillow 13's ``ImagingResampleInner`` picks it (read off its machine code; the
    source of that release was not at hand): the vertical pass goes first when both passes are
    needed and the height shrinks by more than twice as many pixels as the width,
    ``in_h - out_h > max(0, 2 * (in_w - out_w))`` (image sizes, not the box). Older Pillow always
    went horizontal first; the order matters, as each pass rounds to 8 bits.
    """
    c, h, w = img.shape
    cw, ch, left, top, fill = canvas if canvas is not None else (w, h, 0, 0, 0.0)
    box = box if box is not None else (0.0, 0.0, float(cw), float(ch))
    need_h = out_w != cw or box[0] != 0 or box[2] != out_w
    need_v = out_h != ch or box[1] != 0 or box[3] != out_h
    dh, dw = ch - out_h, cw - out_w
    if need_h and need_v and dh > 0 and dh > 2 * dw:  # vertical first: the same passes on the transpose
        out = _resample_hv(
            img.transpose(1, 2), out_h, out_w, filt, (box[1], box[0], box[3], box[2]), (ch, cw, top, left, fill), True, True
        )
        return out.transpose(1, 2)
    return _resample_hv(img, out_w, out_h, filt, box, (cw, ch, left, top, fill), need_h, need_v)


def _resample_hv(
    img: torch.Tensor,
    out_w: int,
    out_h: int,
    filt: str,
    box: tuple[float, float, float, float],
    canvas: tuple[int, int, int, int, float],
    need_h: bool,
    need_v: bool,
) -> torch.Tensor:
    """The horizontal pass (last dim) then the vertical one, each only when needed."""
    c, h, w = img.shape
    cw, ch, left, top, fill = canvas
    dev = img.device
    if need_h:
        kh = _coeffs(cw, box[0], box[2], out_w, filt, dev)
        inner = kh[:, left : left + w]
        rest = kh.sum(1) - inner.sum(1)
        rows = _round8(torch.matmul(img, inner.T) + fill * rest)  # (C, h, out_w)
        line = _round8(fill * kh.sum(1))  # a row that is all fill
    else:
        rows = img
        if (cw, left) != (w, 0):
            rows = torch.full((c, h, cw), fill, dtype=img.dtype, device=dev)
            rows[:, :, left : left + w] = img
        line = torch.full((cw,), fill, dtype=img.dtype, device=dev)
    if need_v:
        kv = _coeffs(ch, box[1], box[3], out_h, filt, dev)
        inner = kv[:, top : top + h]
        rest = kv.sum(1) - inner.sum(1)
        return _round8(torch.matmul(inner, rows) + rest[:, None] * line[None, :])
    if (ch, top) != (h, 0):
        full = line.expand(c, ch, line.shape[0]).clone()
        full[:, top : top + h] = rows
        return full
    return rows


def pil_resize(
    img: torch.Tensor, size: tuple[int, int], resample: str, box: tuple[float, float, float, float] | None = None
) -> torch.Tensor:
    """``Image.resize(size=(width, height), resample, box)`` of a uint8 ``(C, H, W)`` tensor, bit-exact
    (``resample``: ``"bicubic"`` or ``"lanczos"``)."""
    return _resample(img.to(torch.float64), size[0], size[1], resample, box=box).to(torch.uint8)


def _alpha_on_white(rgba: torch.Tensor) -> torch.Tensor:
    """Pillow's ``alpha_composite`` of ``(4, H, W)`` uint8 onto opaque white, RGB int32 ``(3, H, W)``."""
    x = rgba.to(torch.int32)
    a = x[3:4]
    bits = 7  # AlphaComposite.c: with an opaque destination coef1 = a << 7, coef2 = (255 - a) << 7
    t = x[:3] * (a << bits) + 255 * ((255 - a) << bits) + (0x80 << bits)
    return (((t >> 8) + t) >> 8) >> bits


def _rgb_levels(img: torch.Tensor, composite_alpha: bool) -> torch.Tensor:
    if img.ndim != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"expected a (C, H, W) uint8 image with 1 to 4 channels, got shape {tuple(img.shape)}")
    c = img.shape[0]
    if c in (1, 2):  # L / LA: to_8bit makes RGB / RGBA by repeating the grey
        img = torch.cat([img[:1].expand(3, -1, -1), img[1:]], 0)
    if img.shape[0] == 4:
        img = _alpha_on_white(img) if composite_alpha else img[:3]
    return img.to(torch.float64)


def _a1111(img: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """:func:`~tagloop.tagger.preprocess.deepdanbooru_a1111` on float64 RGB ``(3, H, W)``."""
    _, ih, iw = img.shape
    ratio = width / height
    src_ratio = iw / ih
    src_w = width if ratio < src_ratio else iw * height // ih
    src_h = height if ratio >= src_ratio else ih * width // iw
    src_w, src_h = max(src_w, 1), max(src_h, 1)
    resized = _resample(img, src_w, src_h, "lanczos")
    res = torch.zeros((3, height, width), dtype=img.dtype, device=img.device)

    def paste(part: torch.Tensor, x0: int, y0: int) -> None:  # Image.paste, clipped to the canvas
        ph, pw = part.shape[1:]
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, width), min(y0 + ph, height)
        if xa < xb and ya < yb:
            res[:, ya:yb, xa:xb] = part[:, ya - y0 : yb - y0, xa - x0 : xb - x0]

    paste(resized, width // 2 - src_w // 2, height // 2 - src_h // 2)
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            paste(_resample(resized, width, fill, "bicubic", box=(0, 0, width, 0)), 0, 0)
            paste(_resample(resized, width, fill, "bicubic", box=(0, src_h, width, src_h)), 0, fill + src_h)
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            paste(_resample(resized, fill, height, "bicubic", box=(0, 0, 0, height)), 0, 0)
            paste(_resample(resized, fill, height, "bicubic", box=(src_w, 0, src_w, height)), fill + src_w, 0)
    return res


def _wd14(img: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`~tagloop.tagger.preprocess.wd14` (before the BGR swap) on float64 RGB ``(3, H, W)``:
    the white square is never built, and the result equals Pillow's resize of that square."""
    _, h, w = img.shape
    side = max(w, h)
    canvas = (side, side, (side - w) // 2, (side - h) // 2, 255.0)
    return _resample(img, size, size, "bicubic", canvas=canvas)


def preprocess_torch(img: torch.Tensor, family: str, size: tuple[int, int]) -> torch.Tensor:
    """A decoded image -> the model input, as :meth:`Tagger.preprocess` returns it, on ``img``'s device.

    ``img``: uint8 ``(C, H, W)``, RGB (RGBA, L and LA too); ``family``: ``"deepdanbooru"`` (the A1111
    preprocessing, :func:`~tagloop.tagger.preprocess.deepdanbooru_a1111`) or ``"wd14"``
    (:func:`~tagloop.tagger.preprocess.wd14`, which needs a square ``size``); ``size``:
    ``(height, width)`` as ``Tagger.input_size``. Returns uint8 ``(height, width, 3)`` in the
    model's channel order (RGB for DeepDanbooru, BGR for WD14), equal to the Pillow functions'
    output (their resampling is ported, not approximated with ``interpolate``).
    """
    height, width = int(size[0]), int(size[1])
    if family == "deepdanbooru":
        out = _a1111(_rgb_levels(img, composite_alpha=False), width, height)
    elif family == "wd14":
        if height != width:
            raise ValueError(f"WD14 input must be square, got {height}x{width}")
        out = _wd14(_rgb_levels(img, composite_alpha=True), height).flip(0)  # RGB -> BGR
    else:
        raise ValueError(f"no torch preprocessing for family {family!r} (have 'deepdanbooru' [a1111], 'wd14')")
    return out.permute(1, 2, 0).to(torch.uint8).contiguous()
