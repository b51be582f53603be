"""``tagloop retag MANIFEST`` (new thresholds and filters, captions rewritten, no model) and ``tagloop stats MANIFEST``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import handle_errors
from .tag import UNIT_FLOAT, BandsType, ThresholdType


@click.command("retag", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option(
    "--threshold", type=ThresholdType(), default=None, help="New threshold: a number in 0..1, or `auto` (the edge-density band)."
)
@click.option("--general-threshold", type=UNIT_FLOAT, default=None, help="New threshold for general tags.")
@click.option("--character-threshold", type=UNIT_FLOAT, default=None, help="New threshold for character tags.")
@click.option("--mcut/--no-mcut", default=None, help="Per-category MCut thresholds.")
@click.option("--bands", type=BandsType(), default=None, help="New edge-density bands (`0.08:0.55, 0.15:0.45, 0.38`).")
@click.option(
    "--filters",
    "filter_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Blocklist file(s), replacing the run's.",
)
@click.option("--max-tags", type=click.IntRange(min=0), default=None, help="Keep at most N tags per image.")
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a new manifest here (else the records are appended to MANIFEST).",
)
@click.option("--force", is_flag=True, help="Rewrite captions edited since tagloop wrote them too.")
@click.pass_context
@handle_errors
def retag_command(
    ctx, manifest, threshold, general_threshold, character_threshold, mcut, bands, filter_files, max_tags, out, force
):
    """Re-threshold a bulk run from its manifest and rewrite the stale captions, without the model.

    \b
    Examples:
      tagloop tag dataset/ -r --sidecar --out manifest.jsonl --model deepdanbooru --a1111-dir ~/webui
      tagloop retag manifest.jsonl --threshold 0.4 --filters filter.txt --max-tags 40
      tagloop retag manifest.jsonl --general-threshold 0.3 --out manifest-0.3.jsonl
    """
    from ..tagger.retag import retag_manifest

    overrides = {}
    src = ctx.get_parameter_source("threshold")
    if src is not None and src.name != "DEFAULT":
        overrides["threshold"] = threshold  # None = auto, said explicitly
    for name, value in (
        ("general_threshold", general_threshold),
        ("character_threshold", character_threshold),
        ("mcut", mcut),
        ("bands", bands),
    ):
        if value is not None:
            overrides[name] = value
    stats = retag_manifest(
        Path(manifest),
        tag_overrides=overrides,
        filter_files=tuple(filter_files) if filter_files else None,
        max_tags=max_tags,
        out=Path(out) if out else None,
        force=force,
    )
    click.echo(
        f"tagloop: {stats.images} image(s): {stats.rewritten} stale caption(s) rewritten, {stats.missing} missing written, "
        f"{stats.unchanged} unchanged, {len(stats.edited)} edited by hand left alone, {stats.gone} image(s) gone, "
        f"{stats.failed} failed image(s) "
        f"in {stats.seconds:.1f} s",
        err=True,
    )
    for path in stats.edited[:20]:
        click.echo(f"tagloop: {path}: changed since tagloop wrote it; left alone (--force rewrites it)", err=True)


@click.command("stats", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=50, show_default=True, help="Text: the N most frequent tags.")
@handle_errors
def stats_command(manifest, fmt, top):
    """Tag frequencies, per-band counts and failures of a bulk run (what LoRA trainers look at first).

    \b
    Examples:
      tagloop stats manifest.jsonl
      tagloop stats manifest.jsonl --format json > stats.json
    """
    from ..tagger.retag import manifest_stats

    data = manifest_stats(Path(manifest), top=None if fmt == "json" else top)
    if fmt == "json":
        click.echo(json.dumps(data, ensure_ascii=False, indent=1))
        return
    click.echo(
        f"{data['images']} images: {data['tagged']} tagged, {data['failed']} failed; {data['distinct_tags']} distinct tags, {data['tags_per_image']:.1f} per image"
    )
    click.echo("bands: " + ", ".join(f"{k} {v}" for k, v in data["bands"].items()))
    if data["ratings"]:
        click.echo("ratings: " + ", ".join(f"{k} {v}" for k, v in data["ratings"].items()))
    click.echo(f"{'tag':<40} {'images':>8} {'share':>7}")
    for t in data["tags"]:
        click.echo(f"{t['tag']:<40} {t['images']:>8} {t['share']:>7.1%}")
    for f in data["failures"][:20]:
        click.echo(f"failed: {f['path']}: {f['error']}")
