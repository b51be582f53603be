"""``tagloop tag``: tag images or folders; text, JSON, JSONL or kohya ``.txt`` sidecars."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import InputError
from ..fileio import atomic_open
from ..notices import notice
from ..progress import Progress
from ..tagger.captions import (
    caption,
    check_outputs_outside_folders,
    check_run_outputs,
    normalise_extension,
    sidecar_collisions,
)
from ..tagger.result import TagResult
from ..tagger.threshold import DEFAULT_BANDS, format_bands, parse_bands
from ..tagtext import TagPolicy
from .errors import GracefulInterrupt, handle_errors, interrupted


class ThresholdType(click.ParamType):
    """``auto`` or a number in 0..1."""

    name = "auto|FLOAT"

    def convert(self, value: Any, param, ctx) -> float | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither `auto` nor a number", param, ctx)
        if not 0.0 <= v <= 1.0:
            self.fail(f"{v} is outside 0..1", param, ctx)
        return v


class BandsType(click.ParamType):
    name = "BANDS"

    def convert(self, value: Any, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_bands(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


UNIT_FLOAT = click.FloatRange(0.0, 1.0)


def tagger_options(f: Callable) -> Callable:
    """The options that choose, load and threshold a tagger (shared by ``tag`` and ``prompt``)."""
    from ..tagger.base import backends
    from ..tagger.resolve import DEFAULT_MODEL

    options = [
        click.option(
            "--model",
            "-m",
            default=DEFAULT_MODEL,
            show_default=True,
            help="Tagger: a file, a folder, `deepdanbooru` (found under --a1111-dir), a WD14 name, or a hub id.",
        ),
        click.option(
            "--threshold",
            type=ThresholdType(),
            default="auto",
            show_default=True,
            help="Score threshold: `auto` picks it from the image's Canny edge density (see --bands), a number fixes it; 0 returns every tag.",
        ),
        click.option(
            "--general-threshold", type=UNIT_FLOAT, default=None, help="Threshold for general tags (overrides --threshold)."
        ),
        click.option(
            "--character-threshold", type=UNIT_FLOAT, default=None, help="Threshold for character tags (overrides --threshold)."
        ),
        click.option(
            "--mcut", is_flag=True, default=False, help="Per-category MCut thresholds (largest gap between sorted scores)."
        ),
        click.option(
            "--bands",
            type=BandsType(),
            default=format_bands(DEFAULT_BANDS),
            show_default=True,
            help="Adaptive bands, `upper:threshold` pairs by edge density, the last a bare threshold.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
            help="Where the model runs.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
            default="auto",
            show_default=True,
            help="Compute precision (auto: bf16/fp16 on CUDA, fp32 on CPU).",
        ),
        click.option(
            "--require-gpu", is_flag=True, default=False, help="Fail instead of falling back to the CPU when CUDA is not in use."
        ),
        click.option("--tensorrt", is_flag=True, default=False, help="ONNX models: try onnxruntime's TensorRT provider first."),
        click.option(
            "--backend",
            type=click.Choice(list(backends())),
            default=None,
            help="Force a tagger backend (default: detected from the files).",
        ),
        click.option(
            "--allow-pickle",
            is_flag=True,
            default=False,
            help="Allow full-pickle .ckpt/.pt files (they can run code: only for files you trust).",
        ),
        click.option(
            "--dd-preprocess",
            type=click.Choice(["a1111", "kdd"]),
            default="a1111",
            show_default=True,
            help="DeepDanbooru input: as AUTOMATIC1111 feeds it, or as the original project (area resize, edge pad).",
        ),
        click.option(
            "--tags-file",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="Label file (tags.txt or selected_tags.csv) when it is not beside the model.",
        ),
        click.option(
            "--a1111-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="An AUTOMATIC1111 install whose models/ folder holds your models.",
        ),
        click.option(
            "--comfyui-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="A ComfyUI install whose custom_nodes/ComfyUI-WD14-Tagger/models holds WD14 .onnx files.",
        ),
        click.option(
            "--max-pixels",
            type=click.IntRange(min=1),
            default=None,
            help="Refuse images with more pixels than this (default 64 million).",
        ),
        click.option(
            "--max-tags", type=click.IntRange(min=0), default=None, help="Keep at most N tags per image (highest scores)."
        ),
        click.option(
            "--input-size",
            default=None,
            help="DeepDanbooru input side (multiple of 128, or HxW); default 512 or the project.json beside the model.",
        ),
        click.option(
            "--preprocess-on",
            type=click.Choice(["auto", "cpu", "device"]),
            default="auto",
            show_default=True,
            help="Where JPEG decoding, the edge density and resizing run: auto = on the GPU for a torch tagger on CUDA.",
        ),
        click.option(
            "--fast-decode",
            is_flag=True,
            default=False,
            help="Decode large JPEGs at a reduced scale that still covers the model's input (faster; scores move a little).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


TAGGER_OPTION_NAMES = (
    "model",
    "threshold",
    "general_threshold",
    "character_threshold",
    "mcut",
    "bands",
    "device",
    "dtype",
    "require_gpu",
    "tensorrt",
    "backend",
    "allow_pickle",
    "dd_preprocess",
    "tags_file",
    "a1111_dir",
    "comfyui_dir",
    "max_pixels",
    "max_tags",
    "input_size",
    "fast_decode",
    "preprocess_on",
)


def tagger_load_kwargs(**kw: Any) -> dict[str, Any]:
    """The :func:`tagloop.load_tagger` keywords of the tagger options (the model itself aside)."""
    return dict(
        device=kw.get("device") or "auto",
        dtype=kw.get("dtype") or "auto",
        tensorrt=bool(kw.get("tensorrt")),
        require_gpu=bool(kw.get("require_gpu")),
        allow_pickle=bool(kw.get("allow_pickle")),
        dd_preprocess=kw.get("dd_preprocess") or "a1111",
        tags_file=kw.get("tags_file"),
        input_size=kw.get("input_size"),
        a1111_dir=kw.get("a1111_dir"),
        comfyui_dir=kw.get("comfyui_dir"),
        backend=kw.get("backend"),
    )


def tag_options_from(**kw: Any):
    """The :class:`TagOptions` of the tagger options (thresholds, bands, batch, workers, pixel cap)."""
    from ..tagger.preprocess import DEFAULT_MAX_PIXELS
    from ..tagger.run import make_tag_options

    bands = kw.get("bands") or DEFAULT_BANDS
    return make_tag_options(
        threshold=kw.get("threshold"),
        general_threshold=kw.get("general_threshold"),
        character_threshold=kw.get("character_threshold"),
        mcut=bool(kw.get("mcut")),
        bands=bands if isinstance(bands, str) else tuple(bands),
        max_tags=kw.get("max_tags"),
        max_pixels=kw.get("max_pixels") or DEFAULT_MAX_PIXELS,
        fast_decode=bool(kw.get("fast_decode")),
        preprocess_on=kw.get("preprocess_on") or "auto",
        batch_size=int(kw["batch_size"]) if kw.get("batch_size") else None,
        workers=int(kw["workers"]) if kw.get("workers") else None,
    )


def build_tagger(**kw: Any):
    """Load (or reuse) the tagger the options name and make its :class:`TagOptions` (options -> settings -> API)."""
    from ..api import load_tagger

    tagger = load_tagger(kw.get("model") or None, **tagger_load_kwargs(**kw))
    return tagger, tag_options_from(**kw)


def tag_one(image_path: str | Path, **kw: Any) -> TagResult:
    """Tag one image with the tagger options' values (as ``tagger_options`` names them)."""
    from ..tagger.run import tag_image

    tagger, options = build_tagger(**kw)
    return tag_image(tagger, str(image_path), options, name=str(image_path))


user_errors = handle_errors  # model, filter and config problems: one sentence, exit code 2


def caption_extension(value: str) -> str:
    """``txt`` or ``.txt`` -> ``.txt``; anything that is not a file extension is a usage error."""
    try:
        return normalise_extension(value)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="'--caption-extension'") from None


@click.command("tag")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@tagger_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "jsonl"]),
    default="text",
    show_default=True,
    help="text: caption per image (PATH<TAB>caption when several); json: an object (a list for several); jsonl: one object a line.",
)
@click.option(
    "--sidecar", is_flag=True, default=False, help="Write a kohya-style caption file (IMAGE_STEM.txt) next to each image."
)
@click.option(
    "--caption-extension",
    default=".txt",
    show_default=True,
    callback=lambda ctx, param, value: caption_extension(value),
    help="Extension of sidecar caption files (`.txt`, `.caption`; the dot is optional).",
)
@click.option(
    "--skip-existing", is_flag=True, default=False, help="With --sidecar: leave images that already have a caption file alone."
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the results to this file (atomically) instead of stdout.",
)
@click.option(
    "--failures",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also record every image that failed, with the reason, in this JSONL file (written atomically).",
)
@click.option(
    "--out",
    "--manifest",
    "manifest",
    type=click.Path(dir_okay=False),
    default=None,
    help="Manifest (JSON Lines, appended): one record per image with its scores; a re-run skips what it holds.",
)
@click.option("--overwrite", is_flag=True, default=False, help="With --out: tag again images the manifest already holds.")
@click.option(
    "--existing",
    type=click.Choice(["overwrite", "skip", "append", "prepend"]),
    default=None,
    help="With --sidecar, a caption the image already has: overwrite (default), skip the image, append or prepend the tags.",
)
@click.option(
    "--score-floor",
    type=click.FloatRange(0.0, 1.0),
    default=0.05,
    show_default=True,
    help="With --out: keep every tag's score at or above this (what `tagloop retag` can re-threshold down to).",
)
@click.option(
    "--devices",
    default=None,
    help="Several devices at once, one process each on its own share of the files (`0,1` = cuda:0,cuda:1; `cpu,cpu`); needs --out.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help='ray: a Ray Data pipeline (pip install "tagloop[ray]"); needs --out.',
)
@click.option(
    "--ray-address",
    default=None,
    help="With --engine ray: an existing cluster (`auto`, `ray://HOST:10001`); default: a local Ray.",
)
@click.option("--recursive", "-r", is_flag=True, default=False, help="Walk folders recursively.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=16, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Decode threads (default: one per core, up to 8).")
@click.option(
    "--filters",
    "filter_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Blocklist file(s) (filter.txt format) applied to the tags; repeatable.",
)
@click.option("--underscores", is_flag=True, default=False, help="Keep underscores (default: spaces, as A1111's 'use spaces').")
@click.option("--no-escape", is_flag=True, default=False, help="Do not escape parentheses (default: `\\(` as A1111).")
@click.option("--scores", "show_scores", is_flag=True, default=False, help="Text/sidecar: write each tag as (tag:0.87).")
@click.option("--include-rating", is_flag=True, default=False, help="Text/sidecar: put the top rating tag first.")
@click.option("--character-first", is_flag=True, default=False, help="Text/sidecar: character tags before general ones.")
@click.option("--quiet", "-q", is_flag=True, default=False, help="No progress bar.")
@user_errors
def tag_command(
    paths,
    fmt,
    sidecar,
    caption_extension,
    skip_existing,
    output,
    failures,
    manifest,
    overwrite,
    existing,
    score_floor,
    devices,
    engine,
    ray_address,
    recursive,
    batch_size,
    workers,
    filter_files,
    underscores,
    no_escape,
    show_scores,
    include_rating,
    character_first,
    quiet,
    **kw,
):
    """Tag images (files or folders) with a DeepDanbooru or WD14 tagger.

    \b
    Examples:
      tagloop tag cat.png --model SmilingWolf/wd-swinv2-tagger-v3
      tagloop tag dataset/ -r --model deepdanbooru --a1111-dir ~/stable-diffusion-webui --sidecar
      tagloop tag a.jpg b.png --model ./wd-vit-tagger-v3 --threshold 0.35 --format json
      tagloop tag dataset/ -r --sidecar --out manifest.jsonl   # resumable; `tagloop retag` re-thresholds it

    Exit codes: 0 all tagged, 1 some images failed (each named on stderr), 2 usage, model or config error.
    """
    from ..tagger.bulk import BulkOptions, BulkStats, run_bulk
    from ..tagger.run import expand_paths, iter_image_files

    started = time.monotonic()
    failed_records: list[dict] = []
    walk_problems = [0]  # problems a lazily read folder turned up (not results)
    # With a manifest on one machine (a dataset of any size), folders are read lazily, one directory
    # at a time: nothing grows with the number of images but the resume index.
    lazy = bool(manifest) and not devices and engine == "local"
    if lazy:
        explicit = [Path(p) for p in paths if Path(p).is_file()]
        check_run_outputs(explicit, output, failures, sidecar, caption_extension)
        check_outputs_outside_folders(paths, [("--output", output), ("--failures", failures), ("--out", manifest)])

        def problem(path: str, why: str) -> None:
            click.echo(f"tagloop: {path}: {why}", err=True)
            failed_records.append({"path": path, "error": why})
            walk_problems[0] += 1

        files = iter_image_files(paths, recursive, problem, caption_extension if sidecar else None)
        problems: list[tuple[str, str]] = []
    else:
        files, problems = expand_paths(paths, recursive=recursive)
        check_run_outputs(files, output, failures, sidecar, caption_extension)
    if manifest:
        from ..fileio import check_outputs

        check_outputs([("--out", manifest)], files if not lazy else explicit)
        for other, name in ((output, "--output"), (failures, "--failures")):
            if other and Path(other).resolve() == Path(manifest).resolve():
                raise click.BadParameter(f"--out and {name} are the same file ({manifest}).", param_hint="'--out'")
    if skip_existing and not sidecar:
        notice("--skip-existing only applies to --sidecar captions (it skips images that already have one); ignored.")
    if existing and not sidecar:
        notice("--existing only applies to --sidecar captions; ignored.")
    if overwrite and not manifest:
        notice("--overwrite only applies with --out MANIFEST (every image is tagged anyway without one); ignored.")
    existing_mode = existing or ("skip" if skip_existing else "overwrite")
    if sidecar and not lazy:
        files, clashes = sidecar_collisions(files, caption_extension)
        problems.extend(clashes)
    for p, why in problems:
        click.echo(f"tagloop: {p}: {why}", err=True)
        failed_records.append({"path": p, "error": why})
    policy = TagPolicy(use_spaces=not underscores, escape=not no_escape)
    if filter_files:  # a malformed filter file is said before the model loads
        from ..filters.blocklist import load_blocklist

        load_blocklist([Path(f) for f in filter_files])
    if devices or engine == "ray":
        options = tag_options_from(batch_size=batch_size, workers=workers, **kw)
    else:
        tagger, options = build_tagger(batch_size=batch_size, workers=workers, **kw)
    bulk = BulkOptions(
        manifest=Path(manifest) if manifest else None,
        sidecar=sidecar,
        caption_extension=caption_extension,
        existing=existing_mode,
        overwrite=overwrite,
        score_floor=score_floor,
        policy=policy,
        show_scores=show_scores,
        include_rating=include_rating,
        character_first=character_first,
        filter_files=tuple(str(f) for f in filter_files),
        max_tags=options.max_tags,
    )
    stats = BulkStats()
    if devices or engine == "ray":
        _run_elsewhere(files, kw, options, bulk, devices, engine, ray_address, fmt, output, quiet, started, failed_records)
        return

    single = not lazy and len(files) == 1 and not problems and Path(paths[0]).is_file() and len(paths) == 1
    n_json = 0
    n_results = 0
    n_problems = len(failed_records)
    stopped = False
    progress = Progress(None if lazy else len(files), desc="tagging", enabled=not quiet, start=started)
    with ExitStack() as stack:
        # results stream to stdout or to a temp file renamed over --output at the end: memory stays
        # flat on huge folders, and a run that stops half-way leaves no half-written file
        out = _open_output(stack, output, "--output") if output else None
        failures_file = _open_output(stack, failures, "--failures") if failures else None

        def emit(text: str) -> None:
            click.echo(text, file=out)

        stack.enter_context(progress)
        # Ctrl-C stops the run between images: what was complete is still written (the --output
        # list closed, --failures recorded), then the exit code is 130; a second Ctrl-C stops at once
        ctrl_c = stack.enter_context(GracefulInterrupt())
        results = run_bulk(tagger, files, options, bulk, stats, on_skip=lambda path, why: progress.skip())
        while True:
            if ctrl_c.requested:
                stopped = True
                break
            try:
                result = next(results)
            except StopIteration:
                break
            n_results += 1
            progress.update(result.error is None)
            if result.error is not None:
                failed_records.append({"path": result.path, "error": result.error})
                click.echo(f"tagloop: {result.path}: {result.error}", err=True)
                continue
            if fmt == "jsonl":
                emit(json.dumps(result.to_json(), ensure_ascii=False))
            elif fmt == "json":
                obj = json.dumps(result.to_json(), ensure_ascii=False, indent=2)
                if single:  # one image, one object (written when it comes)
                    emit(obj)
                else:  # byte for byte what json.dumps(list, indent=2) gives, one item at a time
                    click.echo(("[\n" if n_json == 0 else ",\n") + textwrap.indent(obj, "  "), file=out, nl=False)
                n_json += 1
            elif not sidecar or out is not None:
                text = caption(result, policy, show_scores, include_rating, character_first)
                emit(text if single else f"{result.path}\t{text}")
        if stopped:
            results.close()
        if fmt == "json" and not (single and n_json):
            emit("\n]" if n_json else "[]")
        if failures_file is not None:
            for record in failed_records:
                failures_file.write(json.dumps(record, ensure_ascii=False) + "\n")
    progress.failed = len(failed_records)
    progress.done = n_results - (len(failed_records) - n_problems - walk_problems[0])
    if not quiet:
        if stats.skipped_existing:
            click.echo(f"tagloop: skipped {stats.skipped_existing} image(s) that already have a caption file", err=True)
        if stats.skipped_done:
            click.echo(
                f"tagloop: skipped {stats.skipped_done} image(s) already in {manifest} (same file, model and settings)", err=True
            )
        if stats.repaired_bytes:
            click.echo(f"tagloop: {manifest}: cut a torn last line ({stats.repaired_bytes} bytes) left by a crash", err=True)
        click.echo(progress.summary(interrupted=stopped), err=True)
    if stopped:
        raise interrupted()
    if failed_records:
        if quiet:  # otherwise the summary line above has said how many failed
            click.echo(f"tagloop: {len(failed_records)} input(s) failed", err=True)
        sys.exit(1)


def _run_elsewhere(files, kw, options, bulk, devices, engine, ray_address, fmt, output, quiet, started, failed_records) -> None:
    """``--devices`` / ``--engine ray``: the work runs in other processes; results go to the manifest (and captions)."""
    from ..errors import InputError

    if bulk.manifest is None:
        raise InputError("several `devices` and the Ray `engine` write their results to a manifest: give it (`out`).")
    if output or fmt != "text":
        notice(
            "with several devices or the Ray engine, results go to the manifest (`tagloop stats`, `tagloop retag` read it); --format/--output ignored."
        )
    load_kwargs = tagger_load_kwargs(**kw)
    echo = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    if engine == "ray":
        from ..tagger.ray_engine import run_ray

        load_kwargs.pop("device", None)
        stats = run_ray(
            files,
            model=kw.get("model") or _default_model(),
            load_kwargs=load_kwargs,
            options=options,
            bulk=bulk,
            address=ray_address,
        )
    else:
        from ..tagger.multi import parse_devices, run_devices

        stats = run_devices(
            files,
            devices=parse_devices(devices),
            model=kw.get("model") or None,
            load_kwargs=load_kwargs,
            options=options,
            bulk=bulk,
            echo=echo,
        )
    failed = stats.failed + len(failed_records)
    if not quiet:
        skipped = stats.skipped_done + stats.skipped_existing
        click.echo(
            f"tagloop: {stats.tagged} tagged, {skipped} skipped, {failed} failed in {time.monotonic() - started:.1f} s", err=True
        )
    if failed:
        sys.exit(1)


def _default_model() -> str:
    from ..api import default_tagger_model

    return default_tagger_model()


def _open_output(stack: ExitStack, path: str, option: str):
    """An :func:`atomic_open` file for ``option``; a path that cannot be written is a usage error."""
    try:
        return stack.enter_context(atomic_open(path))
    except OSError as e:
        raise click.BadParameter(f"cannot write {path} ({e.strerror or e}).", param_hint=f"'{option}'") from None


@click.command("convert-deepdanbooru")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", required=False, type=click.Path(dir_okay=False))
@click.option("--allow-pickle", is_flag=True, default=False, help="Allow a full-pickle source (only for files you trust).")
@click.option(
    "--tags-file", type=click.Path(exists=True, dir_okay=False), default=None, help="Tag list when the source has none."
)
@user_errors
def convert_deepdanbooru_command(src, dst, allow_pickle, tags_file):
    """Convert A1111's DeepDanbooru .pt to .safetensors (tags kept in the file's metadata).

    \b
    Example:
      tagloop convert-deepdanbooru models/torch_deepdanbooru/model-resnet_custom_v3.pt
    """
    from ..tagger.deepdanbooru import convert_to_safetensors

    out = convert_to_safetensors(src, dst, allow_pickle=allow_pickle, tags_file=tags_file)
    click.echo(str(out))
