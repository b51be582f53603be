"""``tagloop demo``: the whole loop offline on tiny built-in models."""

from __future__ import annotations

from pathlib import Path

import click

from .errors import handle_errors


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="tagloop-demo",
    show_default=True,
    help="Output folder: new, empty or an earlier demo's (its previous outputs are removed; models/ is kept).",
)
@click.option("--variants", type=click.IntRange(1, 8), default=2, show_default=True, help="Images to generate.")
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the first variant.")
@click.option("--refine", type=click.IntRange(0, 4), default=1, show_default=True, help="Refinement rounds after the first.")
@handle_errors
def demo_command(out, variants, seed, refine):
    """Run the loop of `tagloop reproduce` offline on tiny built-in models (random weights).

    Tag, prompt, generate, re-tag, score against a calibration ceiling, refine; writes
    OUT/report.json and OUT/report.html.

    \b
    Example:
      tagloop demo --out tagloop-demo --variants 3 --refine 2
    """
    from ..pipeline.demo import run_demo

    run_demo(Path(out), variants=variants, seed=seed, refine=refine, echo=click.echo)
