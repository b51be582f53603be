"""``tagloop info IMAGE``: the generation metadata stored in an image, as JSON or raw infotext."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("info")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="`json`: infotext, parsed parameters, ComfyUI graphs and other text chunks; `text`: the raw A1111 infotext.",
)
def info_command(image: Path, output_format: str) -> None:
    """Print the A1111 infotext (and ComfyUI graphs) stored in IMAGE.

    Reads the PNG `parameters` chunk (tEXt or iTXt), the EXIF UserComment of JPEG/WebP files, or a
    GIF comment, and ComfyUI's `prompt`/`workflow` PNG chunks. An image without metadata prints
    nulls (exit 0); an unreadable file exits 1.

    \b
    Example:
      tagloop info outputs/00012-2607380765.png
      tagloop info outputs/00012-2607380765.png --format text
    """
    from PIL import Image

    from .infotext import read_image_metadata

    try:
        metadata = read_image_metadata(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        click.echo(f"{image}: cannot read the image ({error}).", err=True)
        sys.exit(1)
    if output_format == "text":
        if metadata.infotext:
            click.echo(metadata.infotext)
        return
    click.echo(metadata.to_json())
