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
    help="`json`: infotext, the parameters it states, the defaults A1111 would fill in, ComfyUI graphs and other "
    "text chunks; `text`: the raw A1111 infotext.",
)
def info_command(image: Path, output_format: str) -> None:
    """Print the A1111 infotext (and ComfyUI graphs) stored in IMAGE.

    Reads the PNG `parameters` chunk (tEXt or iTXt), the EXIF UserComment of JPEG/WebP files, or a
    GIF comment, and ComfyUI's `prompt`/`workflow` PNG chunks. In the JSON, `parameters` holds what
    the image's infotext says and `defaults` the values A1111 fills in for keys it lacks when the
    text is pasted (`RNG`, `Schedule type`, ...). An image without metadata prints nulls in JSON
    (exit 0); with `--format text` it is named on stderr (exit 1), as is an unreadable file.

    \b
    Example:
      tagloop info outputs/00012-2607380765.png
      tagloop info outputs/00012-2607380765.png --format text
    """
    from PIL import Image

    from ..a1111.infotext import read_image_metadata

    try:
        metadata = read_image_metadata(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        click.echo(f"{image}: cannot read the image ({error}).", err=True)
        sys.exit(1)
    if output_format == "text":
        if not metadata.infotext:
            other = (
                " (it has a ComfyUI graph: see `tagloop info` without --format text)"
                if (metadata.comfyui_prompt or metadata.comfyui_workflow)
                else ""
            )
            click.echo(f"{image}: no A1111 generation parameters in this image{other}.", err=True)
            sys.exit(1)
        click.echo(metadata.infotext)
        return
    click.echo(metadata.to_json())
