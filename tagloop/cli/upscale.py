"""``tagloop upscale IMAGE...``: A1111's Extras upscaling with its model-free upscalers (Lanczos, Nearest)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import TagloopError
from .generate import _size

#: Settings whose option has another name (library messages name the setting).
_SETTING_FLAGS = {"width": "--size", "height": "--size", "max_pixels": "--max-pixels"}


def _error(error: TagloopError) -> click.ClickException:
    from .errors import CommandError, exit_code_for, with_flags

    return CommandError(with_flags(str(error), aliases=_SETTING_FLAGS), exit_code_for(error))


@click.command("upscale", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--scale", type=float, default=None, help="Upscale by this factor (default 2).")
@click.option("--size", callback=_size, default=None, help="Upscale to WIDTHxHEIGHT instead of by a factor.")
@click.option(
    "--crop/--no-crop",
    default=True,
    show_default=True,
    help="With --size: centre the result on a WIDTHxHEIGHT canvas, cutting what does not fit (A1111's Crop to fit).",
)
@click.option("--upscaler", default="Lanczos", show_default=True, help="Lanczos, Nearest or None (see --list-upscalers).")
@click.option("--upscaler-2", "upscaler_2", default=None, help="A second upscaler blended over the first.")
@click.option(
    "--upscaler-2-visibility", type=float, default=0.0, show_default=True, help="How much of --upscaler-2 is blended in (0-1)."
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="outputs/extras-images",
    show_default=True,
    help="Output folder: one STEM.png per input (an existing file of that name that is not an input is replaced).",
)
@click.option("--max-pixels", type=int, default=None, help="Largest output in pixels (default 8192x8192).")
@click.option("--list-upscalers", is_flag=True, help="Print the upscalers (as A1111's /sdapi/v1/upscalers) and exit.")
def upscale_command(
    images: tuple[Path, ...],
    scale: float | None,
    size: tuple[int, int] | None,
    crop: bool,
    upscaler: str,
    upscaler_2: str | None,
    upscaler_2_visibility: float,
    out_dir: Path,
    max_pixels: int | None,
    list_upscalers: bool,
) -> None:
    """Upscale images as AUTOMATIC1111's Extras tab does, without a model.

    Writes OUT/STEM.png for each IMAGE, with the source's generation parameters (`parameters`) and
    A1111's postprocessing keys (`postprocessing` and `extras` chunks: "Postprocess upscale by: 2,
    Postprocess upscaler: Lanczos"). Sides are rounded down to multiples of 8, as A1111 does.
    Upscaler None leaves images as they are (A1111 skips the step).

    \b
    Examples:
      tagloop upscale outputs/00012-2607380765.png --scale 2
      tagloop upscale a.png b.jpg --size 1024x1536 --upscaler Nearest --out big/
    """
    import json

    from ..fileio import check_outputs
    from ..generator import upscale as up

    if list_upscalers:
        for entry in up.list_upscalers():
            click.echo(json.dumps(entry))
        return
    if not images:
        raise click.UsageError("give at least one IMAGE to upscale.")
    if scale is not None and size is not None:
        raise click.UsageError("give either --scale or --size, not both.")
    if max_pixels is not None and max_pixels < 1:
        raise click.UsageError(f"--max-pixels must be at least 1, not {max_pixels}.")
    options = dict(
        upscaler=upscaler,
        upscaler_2=upscaler_2,
        upscaler_2_visibility=upscaler_2_visibility,
        crop=crop,
        max_pixels=up.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
    )
    if size is not None:
        options.update(width=size[0], height=size[1])
    else:
        options["scale"] = 2.0 if scale is None else scale
    try:
        up.resolve_upscaler(upscaler)
        up.resolve_upscaler(upscaler_2, "upscaler_2")
        if not 0.0 <= upscaler_2_visibility <= 1.0:
            raise up.UpscaleError(f"`upscaler_2_visibility` must be between 0 and 1, not {upscaler_2_visibility!r}.")
        if options.get("scale") is not None and options["scale"] <= 0:
            raise up.UpscaleError(f"`scale` must be a number above 0, not {scale!r}.")
        if out_dir.exists() and not out_dir.is_dir():
            raise up.UpscaleError(f"the output folder {out_dir} is a file; give a folder for the images.")
        outputs = _plan_outputs(images, out_dir)
        check_outputs([("the upscaled image", path) for path in outputs], images)
    except TagloopError as e:
        raise _error(e) from None
    failed = 0
    for src, dest in zip(images, outputs):
        try:
            result = _upscale_one(src, options)
        except (OSError, ValueError, TagloopError) as e:
            from .errors import with_flags

            failed += 1
            click.echo(f"{src}: {with_flags(str(e), aliases=_SETTING_FLAGS) if isinstance(e, TagloopError) else e}", err=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        up.save_extras_png(result, dest)
        click.echo(str(dest))
    if failed:
        click.echo(f"tagloop: {len(images) - failed} upscaled, {failed} failed", err=True)
        sys.exit(1)


def _plan_outputs(images: tuple[Path, ...], out_dir: Path) -> list[Path]:
    """``out_dir/STEM.png`` per input; two inputs with one stem (``a.png``, ``a.jpg``) are refused."""
    from ..errors import OutputPathError

    seen: dict[str, Path] = {}
    outputs = []
    for src in images:
        dest = out_dir / f"{src.stem}.png"
        other = seen.get(dest.name)
        if other is not None:
            raise OutputPathError(
                f"{other} and {src} would both be written to {dest}; upscale them into different output folders."
            )
        seen[dest.name] = src
        outputs.append(dest)
    return outputs


def _upscale_one(path: Path, options: dict):
    """One input read as A1111 reads it (EXIF orientation applied) and upscaled, its text kept."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..generator.upscale import source_text_chunks, upscale

    try:
        with Image.open(path) as opened:
            opened.load()
            texts = source_text_chunks(opened)
            image = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise OSError("no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ValueError(f"not an image that can be read ({e})") from None
    result = upscale(image, **options)
    result.info = {**texts, "postprocessing": result.info.get("postprocessing", "")}
    return result
