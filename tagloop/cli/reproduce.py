"""``tagloop reproduce`` (the loop, with reports) and ``tagloop report`` (re-score a run, or compare any images).

Both take every tagger and prompt option of ``tagloop prompt`` (the same click parameters) and
``reproduce`` the generator options of ``tagloop generate``; the tagger is ``--tagger``, the
Stable Diffusion model ``--model``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import handle_errors

#: Parameters of the prompt command (with its tagger options) the loop leaves out or names itself.
_NOT_FROM_PROMPT = {"image", "tags_text", "from_json", "fmt", "model", "dtype"}
#: Generator options the loop takes from the generate command (device, folders and pickles are shared).
_FROM_GENERATE = (
    "sampler", "schedule_type", "steps", "cfg", "size", "max_batch", "clip_skip", "hires_scale", "hires_steps",
    "hires_denoise", "hires_upscaler", "vae", "lora_dir", "embeddings_dir", "dtype", "offload", "vae_tiling",
    "attention_slicing", "compile_", "config_dir",
    # ControlNet: --control canny --control-model M conditions every variant on the source's edges
    "control", "control_image", "control_model", "control_weight", "control_start", "control_end", "control_resize",
    "control_low", "control_high", "controlnet_dir", "control_annotator",
)  # fmt: skip


def _shared_params(generator: bool) -> list[click.Parameter]:
    from .prompt import prompt_command

    params = [p for p in prompt_command.params if p.name not in _NOT_FROM_PROMPT]
    if generator:
        from .generate import generate_command

        by_name = {p.name: p for p in generate_command.params}
        params += [by_name[n] for n in _FROM_GENERATE]
    return params


def _loop_options(f):
    options = [
        click.option(
            "--tagger",
            "tagger_model",
            default=None,
            help="Tagger: file, folder, `deepdanbooru`, WD14 name or hub id (default: the config's `model`, else WD v3 SwinV2).",
        ),
        click.option(
            "--judge-tagger",
            default=None,
            help="A second, independent tagger that scores source and variants too (e.g. WD v3 when DeepDanbooru wrote the prompt).",
        ),
        click.option(
            "--clip-model", default=None, help="CLIP model folder or hub id: cosine of image embeddings beside the tag scores."
        ),
        click.option(
            "--floor",
            "floor_dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Folder of unrelated pictures: the floor calibration.",
        ),
        click.option(
            "--groups",
            "groups_file",
            type=click.Path(dir_okay=False),
            default=None,
            help="Tag group file replacing the built-in one (see tagloop/data/tag_groups.toml).",
        ),
        click.option(
            "--batch-size",
            "-b",
            "tag_batch_size",
            type=click.IntRange(min=1),
            default=16,
            show_default=True,
            help="Images per tagger forward pass.",
        ),
        click.option(
            "--workers", type=click.IntRange(min=1), default=None, help="Decode threads (default: one per core, up to 8)."
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="json: one summary object per source on stdout.",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars or library warnings."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _tag_kwargs(opts: dict[str, Any], model: str | None) -> dict[str, Any]:
    from .tag import TAGGER_OPTION_NAMES

    kw = {k: opts.get(k) for k in TAGGER_OPTION_NAMES if k in opts}
    kw["model"] = model
    dtype = opts.get("dtype")
    kw["dtype"] = dtype if dtype in ("auto", "fp32", "fp16", "bf16") else "auto"
    kw["batch_size"] = opts.get("tag_batch_size")
    kw["workers"] = opts.get("workers")
    return kw


def _load_taggers(opts: dict[str, Any]):
    from .tag import build_tagger

    tagger, options = build_tagger(**_tag_kwargs(opts, opts.get("tagger_model")))
    judge = None
    if opts.get("judge_tagger"):
        judge, _ = build_tagger(**_tag_kwargs(opts, opts["judge_tagger"]))
    clip = None
    if opts.get("clip_model"):
        from ..report.clip import load_clip

        clip = load_clip(opts["clip_model"], device=opts.get("device") or "auto")
    return tagger, options, judge, clip


def _prompt_settings(opts: dict[str, Any]):
    from .prompt import PROMPT_OPTION_NAMES, build_prompt_settings

    return build_prompt_settings(**{k: opts.get(k) for k in PROMPT_OPTION_NAMES})


def _summary_line(result) -> str:
    if result.status != "ok":
        return f"{result.source}: {result.status}: {result.message}"
    best = result.best or {}
    s = (result.report.get("summary", {}).get("tagger") or {}).get("mean", {})
    ceiling = ((result.report.get("calibration", {}).get("tagger") or {}).get("ceiling") or {}).get("mean", {})
    parts = [f"best F1 {best.get('f1', 0):.3f} ({best.get('id')})", f"mean F1 {s.get('f1') or 0:.3f}"]
    if ceiling.get("f1") is not None:
        parts.append(f"ceiling {ceiling['f1']:.3f}")
    rounds = result.rounds
    if len(rounds) > 1:
        parts.append("rounds " + " -> ".join(f"{(r.get('mean', {}).get('tagger') or {}).get('f1') or 0:.3f}" for r in rounds))
    return f"{result.source}: " + ", ".join(parts) + ("  (already finished: skipped)" if result.skipped else "")


@click.command("reproduce", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option(
    "--model",
    "-m",
    default=None,
    help="Stable Diffusion checkpoint file, diffusers folder, name in your A1111/ComfyUI folders, or hub id.",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False),
    default="reproduce",
    show_default=True,
    help="Output folder: OUT/<stem>/ per source, OUT/index.html.",
)
@click.option(
    "--variants", type=click.IntRange(min=1), default=4, show_default=True, help="Variants per round (image i gets seed+i)."
)
@click.option(
    "--refine", type=click.IntRange(min=0), default=0, show_default=True, help="Refinement rounds after the first (same seeds)."
)
@click.option("--seed", type=int, default=-1, show_default=True, help="First variant's seed; -1 picks one (recorded).")
@click.option("--img2img", is_flag=True, help="Start every variant from the source (keeps the composition).")
@click.option(
    "--denoise",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.75,
    show_default=True,
    help="img2img denoising strength (A1111's step rule).",
)
@click.option(
    "--compare-styles",
    default=None,
    metavar="STYLE,...",
    help="Also generate round 0 with these prompt styles (tags, sentence, llm), same seeds, and compare them in the report.",
)
@click.option("--recursive", "-r", is_flag=True, help="Walk folders recursively.")
@_loop_options
@handle_errors
def reproduce_command(
    sources, model, out_dir, variants, refine, seed, img2img, denoise, compare_styles, recursive, **opts
) -> None:
    """Reproduce pictures: tag, compose a prompt, generate variants, tag them again, score and report.

    Per source OUT/<stem>/ gets source.png, prompt.json, variants/*.png (A1111 infotext),
    report.json and report.html; OUT/index.html lists every source. A re-run skips finished
    sources and finishes a half-done one.

    \b
    Examples:
      tagloop reproduce art.png --tagger deepdanbooru --a1111-dir ~/sd-webui \\
          --model anything-v5.safetensors --variants 4 --refine 2 --seed 42 --out runs/
      tagloop reproduce pictures/ --tagger SmilingWolf/wd-swinv2-tagger-v3 --model sd15.safetensors \\
          --judge-tagger deepdanbooru --floor unrelated/ --img2img --denoise 0.6
      tagloop reproduce art.png --model sd15.safetensors --compare-styles tags,sentence --seed 42
    """
    from ..errors import InputError
    from ..pipeline.reproduce import Reproducer, ReproduceSettings
    from ..tagger.run import expand_paths
    from .generate import base_generation_settings, build_generator, control_units

    if not model:
        raise InputError(
            "`model` is required: a Stable Diffusion checkpoint file, diffusers folder, a name in your A1111/ComfyUI folders or a hub id."
        )
    files, problems = expand_paths(sources, recursive)
    for path, why in problems:
        click.echo(f"tagloop: {path}: {why}", err=True)
    if not files:
        raise click.UsageError("no images to reproduce.")
    settings = ReproduceSettings(
        variants=variants,
        refine=refine,
        seed=seed,
        img2img=img2img,
        denoise=denoise,
        floor=opts.get("floor_dir"),
        groups=opts.get("groups_file"),
        compare_styles=tuple(x.strip() for x in (compare_styles or "").split(",") if x.strip()),
    )
    settings.check()
    prompt_settings = _prompt_settings(opts)
    # every model resolved before any work: a missing one is one sentence
    tagger, tag_options, judge, clip = _load_taggers(opts)
    gen_opts = {**opts, "model": model}
    generator = build_generator(gen_opts)
    quiet = bool(opts.get("quiet"))
    reproducer = Reproducer(
        tagger,
        generator,
        tag_options=tag_options,
        prompt_settings=prompt_settings,
        generation=dataclasses.replace(base_generation_settings(gen_opts), control=control_units(gen_opts)),
        settings=settings,
        judge=judge,
        clip=clip,
        echo=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)),
    )
    failed = len(problems)

    def on_error(path: str, message: str) -> None:
        nonlocal failed
        failed += 1
        click.echo(f"tagloop: {path}: {message}", err=True)

    def on_result(result) -> None:
        nonlocal failed
        if result.status != "ok":  # recorded in its report; said on stderr and counted as a failed input
            failed += 1
            click.echo(f"tagloop: {_summary_line(result)}", err=True)
            if opts.get("fmt") != "json":
                return
        if opts.get("fmt") == "json":
            click.echo(json.dumps(_summary_json(result), ensure_ascii=False))
        else:
            click.echo(_summary_line(result))

    out = Path(out_dir)
    reproducer.run_many([str(f) for f in files], out, on_error=on_error, on_result=on_result)
    if opts.get("fmt") != "json":
        click.echo(f"report: {out / 'index.html'}", err=True)
    if failed:
        sys.exit(1)


def _summary_json(result) -> dict[str, Any]:
    return {
        "source": result.source,
        "status": result.status,
        "message": result.message,
        "out": str(result.out_dir) if result.out_dir else None,
        "best": result.best,
        "mean": (result.report.get("summary", {}).get("tagger") or {}).get("mean"),
        "skipped": result.skipped,
    }


@click.command("report", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--compare", "compare_mode", is_flag=True, help="PATHS are SOURCE IMAGE...: tag them and score the images against the source."
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="--compare: write report.json/report.html here.",
)
@_loop_options
@handle_errors
def report_command(paths, compare_mode, out_dir, **opts) -> None:
    """Rebuild reports of a finished run with new settings, or score any images against a source.

    `tagloop report DIR` re-scores every OUT/<stem>/report.json under DIR (a run folder or one
    source's folder) from the tagger outputs it kept: new thresholds, filters or groups, no
    models, no generation; report.html and index.html are written again.
    `tagloop report --compare SOURCE IMAGE...` tags the images (made anywhere: A1111, ComfyUI...).

    \b
    Examples:
      tagloop report runs/ --threshold 0.4 --filters my-blocklist.txt
      tagloop report --compare art.png 00012-1234.png 00013-1235.png --tagger deepdanbooru --out cmp/
    """
    if compare_mode:
        _compare(paths, out_dir, opts)
    else:
        _rescore(paths, opts)


def _compare(paths, out_dir, opts) -> None:
    from ..pipeline.reproduce import ReproduceSettings, compare_images
    from ..tagger.run import expand_paths

    if len(paths) < 2:
        raise click.UsageError("--compare needs SOURCE and at least one IMAGE.")
    source, rest = paths[0], paths[1:]
    if not Path(source).is_file():
        raise click.UsageError(f"SOURCE {source} is not a file.")
    files, problems = expand_paths(rest)
    for path, why in problems:
        click.echo(f"tagloop: {path}: {why}", err=True)
    tagger, tag_options, judge, clip = _load_taggers(opts)
    settings = ReproduceSettings(floor=opts.get("floor_dir"), groups=opts.get("groups_file"))
    settings.check()
    if out_dir is not None:
        from ..fileio import check_outputs

        out = Path(out_dir)
        check_outputs([("report", out / n) for n in ("source.png", "report.json", "report.html")], [source, *map(str, files)])
    result = compare_images(
        tagger,
        source,
        [str(f) for f in files],
        tag_options=tag_options,
        prompt_settings=_prompt_settings(opts),
        settings=settings,
        judge=judge,
        clip=clip,
        out=Path(out_dir) if out_dir else None,
    )
    if opts.get("fmt") == "json":
        click.echo(json.dumps(result.report, ensure_ascii=False, indent=1))
    else:
        for line in _table(result.report):
            click.echo(line)
        if out_dir:
            click.echo(f"report: {Path(out_dir) / 'report.html'}", err=True)
    failed = len(problems) + sum(1 for v in result.variants if v.error)
    for v in result.variants:
        if v.error:
            click.echo(f"tagloop: {v.path}: {v.error}", err=True)
    if failed:
        sys.exit(1)


def _table(report: dict[str, Any]) -> list[str]:
    scorers = [s for s in report.get("scorers", []) if s not in ("clip", "structure")]
    lines = [f"{'image':<40} " + " ".join(f"{s + ' F1':>10}" for s in scorers) + f" {'recall':>7} {'soft':>6}"]
    for v in report["variants"]:
        sc = v.get("scores", {})
        cells = [
            f"{(sc.get(s) or {}).get('f1') if (sc.get(s) or {}).get('f1') is not None else float('nan'):>10.3f}" for s in scorers
        ]
        t = sc.get("tagger") or {}
        name = str(v.get("path") or v.get("file") or v["id"])[-40:]
        lines.append(f"{name:<40} " + " ".join(cells) + f" {t.get('recall') or 0:>7.3f} {t.get('soft_recall') or 0:>6.3f}")
    ceiling = ((report.get("calibration", {}).get("tagger") or {}).get("ceiling") or {}).get("mean", {})
    if ceiling.get("f1") is not None:
        lines.append(f"{'ceiling (source vs altered copies)':<40} {ceiling['f1']:>10.3f}")
    return lines


def _rescore(paths, opts) -> None:
    from ..pipeline.reproduce import rescore_folder

    ctx = click.get_current_context()
    overrides = {k: opts.get(k) for k in _given(ctx)}
    total = 0
    for raw in paths:
        folder = Path(raw)
        if not folder.is_dir():
            raise click.UsageError(f"{raw} is not a folder of a finished run.")
        done = rescore_folder(folder, overrides, groups=opts.get("groups_file"), prompt_overrides=_prompt_overrides(ctx, opts))
        for report in done:
            total += 1
            best = report.get("best") or {}
            click.echo(
                f"{(report.get('source') or {}).get('path')}: best F1 {best.get('f1') if best.get('f1') is not None else float('nan'):.3f}"
            )
    if not total:
        raise click.UsageError(f"no report.json under {', '.join(paths)}: run `tagloop reproduce` first.")


def _given(ctx: click.Context) -> list[str]:
    """The tag options set on the command line or in the config file (the others keep the run's values)."""
    names = ("threshold", "general_threshold", "character_threshold", "mcut", "bands")
    return [n for n in names if (src := ctx.get_parameter_source(n)) is not None and src.name != "DEFAULT"]


def _prompt_overrides(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """The filter settings given for re-scoring (the others keep the run's values)."""
    fields = {
        "filter_files": "filter_files",
        "block": "block",
        "keep_rating": "keep_rating",
        "style": "style",
        "no_overlap": "overlap",
        "replace_pairs": "replace",
        "replace_files": "replace_files",
    }
    given = [n for n in fields if (src := ctx.get_parameter_source(n)) is not None and src.name != "DEFAULT"]
    if not given:
        return {}
    settings = _prompt_settings(opts)
    return {fields[n]: getattr(settings, fields[n]) for n in given}


reproduce_command.params.extend(_shared_params(generator=True))
report_command.params.extend(_shared_params(generator=False))
