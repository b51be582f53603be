"""``tagloop demo``: the whole loop offline, on tiny models built in code.

source image -> DeepDanbooru (tiny, random weights) -> filters -> prompt -> Stable Diffusion 1.x
(tiny, random weights) -> PNGs with A1111 infotext -> DeepDanbooru again -> tag overlap per variant.

Random weights make the tags and the pictures meaningless; what the demo shows is that every stage
runs, hands its typed value to the next and writes what a user would get. The models are built once
into ``OUT/models`` and reused on the next run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_write_text


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


def build_models(models: Path) -> tuple[Path, Path]:
    """The tiny DeepDanbooru file and tiny SD1 diffusers folder (built once, then reused)."""
    from ..generator.tiny import save_tiny_diffusers
    from ..tagger.deepdanbooru import save_tiny_deepdanbooru

    models.mkdir(parents=True, exist_ok=True)
    dd = models / "deepdanbooru-tiny.safetensors"
    if not dd.is_file():
        save_tiny_deepdanbooru(dd, num_tags=32, seed=3)
    sd = models / "sd15-tiny"
    if not (sd / "model_index.json").is_file():
        save_tiny_diffusers("sd1", sd, seed=0)
    return dd, sd


def overlap(source: set[str], variant: set[str]) -> dict[str, float]:
    """Recall of the source's tags, precision of the variant's, and Jaccard of the two sets."""
    inter = len(source & variant)
    return {
        "recall": inter / len(source) if source else 1.0,
        "precision": inter / len(variant) if variant else 1.0,
        "jaccard": inter / len(source | variant) if source | variant else 1.0,
    }


def run_demo(out: Path, variants: int = 2, seed: int = 1234, echo=click.echo) -> dict:
    from ..generator.generate import GenerationSettings, Generator
    from ..prompt import PromptSettings, compose_prompt
    from ..tagger.base import LoadOptions
    from ..tagger.resolve import get_tagger
    from ..tagger.run import TagOptions, tag_image, tag_sources

    _quiet_loaders()
    p = _paths(Path(out))
    p.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    echo("tagloop demo: tiny models with RANDOM weights, built in code. Every stage runs for real;")
    echo("the tags and pictures are meaningless until you point tagloop at real models (see README).\n")
    dd_path, sd_path = build_models(p.models)
    source = draw_source_image()
    source.save(p.source)

    tagger = get_tagger(str(dd_path), LoadOptions(device="cpu"))
    options = TagOptions(threshold=0.5, workers=2)
    result = tag_image(tagger, str(p.source), options, name=str(p.source))
    echo(f"1. tag      {p.source.name}: edge density {result.edge_density:.3f} ({result.complexity}), "
         f"{len(result.tags)} tags at {options.threshold}")
    echo(f"           {', '.join(t.name for t in result.tags) or '(none)'}")

    composed = compose_prompt(result, PromptSettings(tokenizer="estimate"))
    echo(f"2. prompt   {composed.positive}")
    echo(f"           Negative prompt: {composed.negative}")

    gen = Generator(str(sd_path), device="cpu", progress=False, notice=lambda m: None)
    images = gen.generate(GenerationSettings(
        prompt=composed.positive, negative_prompt=composed.negative, seed=seed, batch_size=variants,
        steps=4, width=64, height=64, sampler="Euler a", out_dir=p.variants,
    ))
    echo(f"3. generate {len(images)} variants -> {p.variants}/ (A1111 'parameters' chunk in each PNG)")

    source_tags = set(result.names())
    rows = []
    for img, again in zip(images, tag_sources(tagger, [str(i.path) for i in images], options)):
        scores = overlap(source_tags, set(again.names()))
        rows.append({"path": str(img.path), "seed": img.seed, "tags": again.names(), **scores})
    echo("4. re-tag   variant                 seed   recall  precision  jaccard")
    for r in rows:
        echo(f"           {Path(r['path']).name:<22} {r['seed']:<6} {r['recall']:>6.2f} {r['precision']:>10.2f} {r['jaccard']:>8.2f}")
    report = {
        "note": "random-weight demo: numbers show the mechanics, not model quality",
        "source": {"path": str(p.source), **result.to_json()},
        "prompt": composed.to_json(),
        "variants": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(p.report, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    echo(f"\nreport: {p.report}  ({report['seconds']} s). Try: tagloop info {rows[0]['path'] if rows else p.source}")
    return report


def _quiet_loaders() -> None:
    """No loading bars from diffusers/transformers in the demo's short output."""
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except Exception:
        pass


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="tagloop-demo", show_default=True, help="Output folder.")
@click.option("--variants", type=click.IntRange(1, 8), default=2, show_default=True, help="Images to generate.")
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the first variant.")
def demo_command(out, variants, seed):
    """Run the whole loop offline on tiny built-in models (random weights): tag, prompt, generate, re-tag.

    \b
    Example:
      tagloop demo --out tagloop-demo --variants 3
    """
    run_demo(Path(out), variants=variants, seed=seed)
