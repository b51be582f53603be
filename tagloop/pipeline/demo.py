"""``tagloop demo``: the whole loop offline, on tiny models built in code.

source image -> DeepDanbooru (tiny, random weights) -> filters -> prompt -> Stable Diffusion 1.x
(tiny, random weights) -> PNGs with A1111 infotext -> DeepDanbooru again -> tag overlap per variant.

Random weights make the tags and the pictures meaningless; what the demo shows is that every stage
runs, hands its typed value to the next and writes what a user would get. The tagger is the real
DeepDanbooru architecture loaded through the real loader; its random weights are scaled on a few
varied pictures (see :func:`save_demo_deepdanbooru`) so that its scores depend on the pixels, as a
trained model's do, and the re-tag overlap numbers move. The models are built once into
``OUT/models`` and reused on the next run; every run starts from a clean ``source.png``,
``report.json`` and ``variants/`` (only files the demo wrote are removed).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import OutputPathError
from ..fileio import atomic_write_text

#: The file that marks a folder as the demo's (so a re-run may clean what the demo wrote there).
MARKER = ".tagloop-demo"
#: The demo's tiny tagger file; the name changes whenever its builder does, so a cached older
#: file is never reused.
DD_FILE = "deepdanbooru-tiny-v2.safetensors"
SD_FOLDER = "sd15-tiny"
#: What a demo folder holds (the marker, the model cache and one run's outputs).
_DEMO_ENTRIES = {MARKER, "models", "variants", "source.png", "report.json", "report.html", "prompt.json"}
#: Variant file names: the loop's ``r0-00000-SEED.png``, and A1111's ``00000-SEED.png`` (older demos).
_VARIANT_NAME = re.compile(r"^(r\d+-)?\d{5,}--?\d+\.png$")


def draw_source_image(size: int = 256, seed: int = 7) -> Image.Image:
    """A small drawn 'character' (face, hair, eyes, ribbon) on a gradient: a deterministic test picture."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, size)[:, None]
    sky = np.stack([170 + 60 * y, 200 + 40 * y, np.full_like(y, 250)], axis=-1) * np.ones((1, size, 1))
    img = Image.fromarray(sky.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    c = size // 2
    d.ellipse([c - 80, c - 90, c + 80, c + 110], fill=(60, 40, 90))  # hair
    d.ellipse([c - 55, c - 60, c + 55, c + 60], fill=(255, 224, 205))  # face
    for dx in (-25, 25):
        d.ellipse([c + dx - 10, c - 15, c + dx + 10, c + 12], fill=(40, 90, 200))  # eyes
        d.ellipse([c + dx - 4, c - 8, c + dx + 2, c - 2], fill=(255, 255, 255))
    d.arc([c - 15, c + 20, c + 15, c + 38], 20, 160, fill=(180, 60, 80), width=3)  # smile
    d.polygon([(c + 40, c - 70), (c + 75, c - 95), (c + 70, c - 55)], fill=(220, 40, 60))  # ribbon
    for _ in range(40):  # strands
        x0 = int(rng.integers(c - 80, c + 80))
        d.line([(x0, c - 90), (x0 + int(rng.integers(-20, 20)), c + 100)], fill=(80, 55, 120), width=1)
    return img


@dataclass
class DemoPaths:
    out: Path
    models: Path
    source: Path
    variants: Path
    report: Path


def _paths(out: Path) -> DemoPaths:
    return DemoPaths(out, out / "models", out / "source.png", out / "variants", out / "report.json")


def _calibration_images(seed: int, size: int = 128) -> list[Image.Image]:
    """Varied pictures to set the random tagger's scale on: noise, blurred noise, flat colours,
    gradients, random shapes and a checkerboard. None of them is the demo's source picture."""
    rng = np.random.default_rng(seed)
    images = [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC),
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR),
    ]
    images += [Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(3)]
    ramp = np.linspace(0, 1, size)
    for axis in (0, 1):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (ramp[:, None] if axis == 0 else ramp[None, :])[..., None] * np.ones((size, size, 1))
        images.append(Image.fromarray((a + (b - a) * t).astype(np.uint8)))
    for _ in range(4):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 8))):
            x0, y0 = (int(v) for v in rng.integers(0, size, 2))
            w, h = (int(v) for v in rng.integers(8, size // 2, 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
        images.append(img)
    checker = (np.indices((size, size)).sum(axis=0) // 16) % 2
    images.append(Image.fromarray((checker[..., None] * np.array([230, 230, 230]) + 10).astype(np.uint8)))
    return images


def save_demo_deepdanbooru(
    path: str | Path, num_tags: int = 32, seed: int = 3, spread: float = 2.0, mean: float = -0.6, mean_spread: float = 0.8
) -> tuple[Path, list[str]]:
    """Write the demo's tiny DeepDanbooru: real architecture and file layout, random weights.

    The body is :func:`~tagloop.testing.taggers.make_random_state_dict` (every conv scaled to
    unit spread, as batch norm would leave it). Its pooled features vary from picture to picture
    along a few directions only, and a plain random head mostly reads the features' common mean, so
    every tag gets nearly the same score on every picture. The head (``n_Conv_178``, no bias) is
    therefore set from a forward pass over :func:`_calibration_images`, as batch-norm statistics are:
    each tag reads a random direction of the whitened feature deviations (``spread`` logits per unit
    deviation), on top of its own offset drawn around ``mean`` (``mean_spread`` apart; most tags of
    a real model sit below 0.5). Still random weights: the scores follow the pixels, the names mean
    nothing.
    """
    import torch

    from ..tagger.deepdanbooru import (
        DEFAULT_INPUT_SIZE,
        HEAD_INDEX,
        DeepDanbooruWidths,
        build_net,
        save_deepdanbooru_safetensors,
    )
    from ..tagger.preprocess import deepdanbooru_a1111
    from ..testing.taggers import make_random_state_dict, tiny_tag_names

    sd = make_random_state_dict(DeepDanbooruWidths.tiny(num_tags), seed=seed)
    net = build_net(sd)
    batch = np.stack([deepdanbooru_a1111(im, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE) for im in _calibration_images(seed)])
    with torch.no_grad():
        feats = net.features(torch.from_numpy(batch).float().div_(255)).double().mean(dim=(2, 3))  # (N, C)
    mu = feats.mean(dim=0)
    _, s, vt = torch.linalg.svd(feats - mu, full_matrices=False)
    sigma = s / len(feats) ** 0.5  # spread of the pictures along each principal direction
    keep = sigma > sigma[0] * 1e-4
    v, sigma = vt[keep].T, sigma[keep].clamp(min=float(sigma[0]) * 0.05)  # at most 20x gain on a direction
    gen = torch.Generator().manual_seed(seed + 1)
    directions = torch.randn((num_tags, v.shape[1]), generator=gen, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    w_dev = spread * (directions / sigma) @ v.T  # (T, C): logit change per feature deviation
    offset = mean + mean_spread * torch.randn(num_tags, generator=gen, dtype=torch.float64)
    # No bias in the real head: carry each tag's offset on the part of the mean feature vector that
    # the calibration pictures do not vary along (feats @ d == 1 on every one of them).
    mu_rest = mu - v @ (v.T @ mu)
    d = mu_rest / (mu @ mu_rest)
    weight = w_dev + (offset - w_dev @ mu)[:, None] * d[None, :]
    sd[f"n_Conv_{HEAD_INDEX}.weight"] = weight[:, :, None, None].float().contiguous()
    tags = tiny_tag_names(num_tags)
    path = Path(path)
    part = path.with_name(path.name + ".part")
    save_deepdanbooru_safetensors(sd, tags, part)
    os.replace(part, path)
    return path, tags


def build_models(models: Path) -> tuple[Path, Path]:
    """The tiny DeepDanbooru file and tiny SD1 diffusers folder (built once, then reused)."""
    from ..testing.diffusion import save_tiny_diffusers

    models.mkdir(parents=True, exist_ok=True)
    dd = models / DD_FILE
    if not dd.is_file():
        save_demo_deepdanbooru(dd, num_tags=32, seed=3)
    sd = models / SD_FOLDER
    if not (sd / "model_index.json").is_file():
        save_tiny_diffusers("sd1", sd, seed=0)
    return dd, sd


def _is_demo_variant(path: Path) -> bool:
    """A PNG the demo wrote: A1111 name and the demo model's infotext (``Model: sd15-tiny``, tagloop)."""
    from ..a1111.infotext import read_image_metadata

    if not (_VARIANT_NAME.match(path.name) and path.is_file()):
        return False
    try:
        params = read_image_metadata(path).parameters
    except Exception:
        return False
    return params.get("Model") == SD_FOLDER and str(params.get("Version", "")).startswith("tagloop")


def _is_older_demo_folder(out: Path) -> bool:
    """A folder an earlier demo (before the marker) wrote: only the demo's names, and its report or models."""
    if not {e.name for e in out.iterdir()} <= _DEMO_ENTRIES:
        return False
    try:
        note = json.loads((out / "report.json").read_text(encoding="utf-8")).get("note", "")
    except (OSError, ValueError, AttributeError):
        note = ""
    models = out / "models"
    return (
        str(note).startswith("random-weight demo")
        or (models / SD_FOLDER / "model_index.json").is_file()
        or (models / "deepdanbooru-tiny.safetensors").is_file()
    )


def prepare_out(p: DemoPaths) -> None:
    """Claim ``p.out`` for the demo and remove the previous run's outputs (never anything else).

    A missing or empty folder is claimed (a marker file, ``.tagloop-demo``, is written); a folder with
    the marker, or one an earlier demo wrote, is the demo's; any other non-empty folder is refused
    with :class:`OutputPathError` before anything is written or removed. Removed: ``report.json``,
    ``source.png`` and the PNGs in ``variants/`` that the demo wrote (A1111 name and the demo
    model's infotext). Kept: ``models/`` (the cache) and anything else.
    """
    out = p.out
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"The demo's `out` {str(out)!r} is a file; give a folder.")
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()) and not _is_older_demo_folder(out):
        raise OutputPathError(
            f"The demo's `out` folder {str(out)!r} is not empty and was not made by the demo (no {MARKER} "
            f"marker); nothing was changed. Give a new or empty folder: every run replaces the demo's outputs there."
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"created_by": "tagloop demo", "version": 1}) + "\n")
    for f in (p.report, p.source, out / "report.html", out / "prompt.json"):
        if f.is_file():
            f.unlink()
    if p.variants.is_dir():
        for f in sorted(p.variants.iterdir()):
            if _is_demo_variant(f):
                f.unlink()


NOTE = (
    "random-weight demo: tiny models with random weights; the numbers show that every stage and score runs, "
    "not how good a model or picture is"
)


def run_demo(out: Path, variants: int = 2, seed: int = 1234, refine: int = 1, echo=print) -> dict:
    """The loop of ``tagloop reproduce`` on the tiny models: writes OUT/report.json and OUT/report.html."""
    from ..generator.generate import GenerationSettings, Generator
    from ..prompt import PromptSettings
    from ..tagger.base import LoadOptions
    from ..tagger.resolve import get_tagger
    from ..tagger.run import TagOptions
    from .reproduce import Reproducer, ReproduceSettings

    _quiet_loaders()
    p = _paths(Path(out))
    prepare_out(p)
    t0 = time.perf_counter()
    echo("tagloop demo: tiny models with RANDOM weights, built in code. Every stage runs for real and the")
    echo("tagger's scores follow the pixels, but tag names and pictures mean nothing until you point tagloop")
    echo("at real models (see README).\n")
    dd_path, sd_path = build_models(p.models)
    tagger = get_tagger(str(dd_path), LoadOptions(device="cpu"))
    gen = Generator(str(sd_path), device="cpu", progress=False, notice=lambda m: None)
    reproducer = Reproducer(
        tagger,
        gen,
        tag_options=TagOptions(workers=2),  # threshold None: the adaptive edge-density band, as `tagloop tag`
        prompt_settings=PromptSettings(tokenizer="estimate"),
        generation=GenerationSettings(steps=4, width=64, height=64, sampler="Euler a"),
        settings=ReproduceSettings(variants=variants, refine=refine, seed=seed, note=NOTE),
    )
    result = reproducer.run(draw_source_image(), p.out, name="source.png")
    report = result.report
    src = report["source_tags"]["tagger"]
    echo(
        f"1. tag      source.png: edge density {src['edge_density']:.3f} -> {src['complexity']} band, "
        f"threshold {src['threshold']:.2f}: {len(src['tags'])} tags"
    )
    listed = ", ".join(f"{t['name']} {t['score']:.2f}" for t in src["tags"])
    echo(f"           {listed or '(none)'}")
    echo(f"2. prompt   {report['prompt']['positive']}")
    echo(f"           Negative prompt: {report['prompt']['negative']}")
    echo(f"3. generate {variants} variant(s) a round -> {p.variants}/ (A1111 'parameters' chunk in each PNG)")
    echo("4. re-tag   each variant with the same tagger and score it against the source's tags")
    echo("           (random-weight tagger reading both: shows the mechanics, not image or tag quality)")
    echo("           variant                    F1  recall  precision  soft recall")
    for v in report["variants"]:
        sc = v.get("scores", {}).get("tagger")
        if sc is None:
            echo(f"           {v['id']:<22} {v.get('error') or 'not scored'}")
            continue
        echo(
            f"           {v['id']:<22} {_num(sc['f1']):>6} {_num(sc['recall']):>7} {_num(sc['precision']):>10} "
            f"{_num(sc['soft_recall']):>12}"
        )
    ceiling = (report["calibration"]["tagger"].get("ceiling") or {}).get("mean", {})
    echo(f"           ceiling (the source against altered copies of itself): F1 {_num(ceiling.get('f1'))}")
    for r in report["rounds"][1:]:
        moves = ", ".join(f"{c['tag']} {c['change']}" + (f" {c['to']}" if c["to"] is not None else "") for c in r["changes"])
        echo(f"5. refine   round {r['round']}: {moves or 'no change'}")
    means = " -> ".join(_num((r["mean"].get("tagger") or {}).get("f1")) for r in report["rounds"])
    echo(f"           mean F1 by round: {means}")
    seconds = round(time.perf_counter() - t0, 2)
    echo(
        f"\nreport: {p.out / 'report.html'} and {p.report} ({seconds} s). Try: tagloop info {p.variants}/{report['variants'][0]['id']}.png"
    )
    return report


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _quiet_loaders() -> None:
    """No loading bars from diffusers/transformers in the demo's short output."""
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except Exception:
        pass
