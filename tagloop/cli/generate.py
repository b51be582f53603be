"""``tagloop generate``: prompts to PNGs with A1111 infotext, from the models users already have."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from ..errors import OutputPathError
from ..generator.models import GeneratorError


def _size(ctx, param, value):
    if value is None:
        return None
    text = str(value).lower().replace("*", "x").replace(" ", "")
    try:
        w, h = (int(v) for v in text.split("x")) if "x" in text else (int(text), int(text))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 512x768, not {value!r}") from None
    if w < 1 or h < 1:
        raise click.BadParameter(f"both sides must be at least 1 pixel, not {value!r}")
    return w, h


#: ``--inpainting-fill`` choices -> the setting ``inpainting_fill`` (A1111's Masked content 0..3).
_FILL_CHOICES = {"fill": 0, "original": 1, "latent-noise": 2, "latent-nothing": 3}

#: Settings whose name differs from their option's: library messages name the setting.
_SETTING_FLAGS = {
    "controlnet_dirs": "--controlnet-dir",
    "guidance_start": "--control-start",
    "guidance_end": "--control-end",
    "resize_mode": "--control-resize",
    "low_threshold": "--control-low",
    "high_threshold": "--control-high",
    "lora_dirs": "--lora-dir",
    "embeddings_dirs": "--embeddings-dir",
    "config": "--config-dir",
    "denoising_strength": "--denoise",
    "negative_prompt": "--negative",
    "cfg_scale": "--cfg",
    "width": "--size",
    "height": "--size",
    "init_image": "--init-image",
    "mask_image": "--mask",
    "inpainting_fill": "--inpainting-fill",
    "inpainting_mask_invert": "--mask-invert",
    "inpaint_full_res": "--inpaint-area",
    "inpaint_full_res_padding": "--inpaint-padding",
    "prompt_file": "--prompt-file",
    "from_json": "--from-json",
}


def _fail(message: str) -> None:
    """One sentence on stderr, exit 2; a setting named in backticks gets its option: `lora_dirs` (--lora-dir)."""
    from .errors import with_flags

    click.echo(f"tagloop: {with_flags(message, aliases=_SETTING_FLAGS)}", err=True)
    sys.exit(2)


def _extras_settings(opts: dict) -> dict:
    """The tiling and inpainting settings the options give (the option defaults are A1111's img2img tab's)."""
    return dict(
        tiling=bool(opts.get("tiling")),
        mask_image=opts.get("mask"),
        mask_blur=4 if opts.get("mask_blur") is None else opts["mask_blur"],
        inpainting_fill=_FILL_CHOICES[opts.get("inpainting_fill") or "original"],
        inpainting_mask_invert=bool(opts.get("mask_invert")),
        inpaint_full_res=(opts.get("inpaint_area") or "whole") == "masked",
        inpaint_full_res_padding=32 if opts.get("inpaint_padding") is None else opts["inpaint_padding"],
    )


def control_units(opts: dict) -> list:
    """The ControlNet units the ``--control*`` options give (one per ``--control``; every per-unit option
    is given once for all units or once per unit, in order). ``--control-image`` may be left out where
    the caller supplies the image (``tagloop reproduce``: the source)."""
    from ..generator.control import ControlUnit

    modules = list(opts.get("control") or ())
    per_unit = {
        "control_image": "image",
        "control_model": "model",
        "control_weight": "weight",
        "control_start": "guidance_start",
        "control_end": "guidance_end",
        "control_resize": "resize_mode",
        "control_low": "low_threshold",
        "control_high": "high_threshold",
    }
    if opts.get("control_annotator"):
        raise click.UsageError(
            "--control-annotator: tagloop runs only the canny and image modules, which need no annotator weights; "
            "pose, depth and line-art maps need their annotator models (e.g. body_pose_model.pth, dpt_hybrid-midas, "
            "sk_model.pth): make the map elsewhere and pass it with --control image."
        )
    if not modules:
        given = [f"--{k.replace('_', '-')}" for k in per_unit if opts.get(k)]
        if given:
            raise click.UsageError(f"{', '.join(given)} need --control canny or --control image.")
        return []
    units = []
    for i, module in enumerate(modules):
        fields = {}
        for opt, field in per_unit.items():
            values = list(opts.get(opt) or ())
            if not values:
                continue
            if len(values) not in (1, len(modules)):
                raise click.UsageError(
                    f"--{opt.replace('_', '-')} is given {len(values)} times for {len(modules)} --control units; "
                    "give it once (for all) or once per unit."
                )
            fields[field] = values[0] if len(values) == 1 else values[i]
        if "model" not in fields:
            raise click.UsageError("--control needs --control-model (a ControlNet file, folder, name or hub id).")
        units.append(ControlUnit(module="none" if module == "image" else module, **fields))
    return units


def _explicit(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT",)


#: The generate command's options that :func:`base_generation_settings` and :func:`build_generator` read.
GENERATOR_OPTION_NAMES = (
    "model", "sampler", "schedule_type", "steps", "cfg", "size", "max_batch", "clip_skip", "hires_scale", "hires_steps",
    "hires_denoise", "hires_upscaler", "vae", "lora_dir", "embeddings_dir", "a1111_dir", "comfyui_dir", "device", "dtype",
    "offload", "vae_tiling", "attention_slicing", "compile_", "allow_pickle", "config_dir", "quiet", "controlnet_dir",
)  # fmt: skip

#: The ControlNet options (``tagloop reproduce`` takes them too).
CONTROL_OPTION_NAMES = (
    "control", "control_image", "control_model", "control_weight", "control_start", "control_end", "control_resize",
    "control_low", "control_high", "controlnet_dir", "control_annotator",
)  # fmt: skip


def base_generation_settings(opts: dict):
    """The sampling settings the options give (sampler, steps, CFG, size, clip skip, hires fix)."""
    from ..generator.generate import GenerationSettings

    size = opts.get("size")
    return GenerationSettings(
        sampler=opts.get("sampler"),
        schedule_type=opts.get("schedule_type"),
        steps=opts.get("steps"),
        cfg_scale=opts.get("cfg"),
        width=size[0] if size else None,
        height=size[1] if size else None,
        max_batch=opts.get("max_batch") or 4,
        clip_skip=opts.get("clip_skip") or 1,
        hires_scale=opts.get("hires_scale"),
        hires_steps=opts.get("hires_steps") or 0,
        hires_denoise=opts.get("hires_denoise") if opts.get("hires_denoise") is not None else 0.5,
        hires_upscaler=opts.get("hires_upscaler") or "latent",
    )


def build_generator(opts: dict):
    """The :class:`Generator` the options name (resolved now: a missing model is an error before any work)."""
    from ..generator.generate import Generator

    return Generator(
        opts["model"],
        vae=opts.get("vae"),
        lora_dirs=opts.get("lora_dir") or (),
        embeddings_dirs=opts.get("embeddings_dir") or (),
        a1111_dir=opts.get("a1111_dir"),
        comfyui_dir=opts.get("comfyui_dir"),
        device=opts.get("device") or "auto",
        dtype=opts.get("dtype") or "auto",
        offload=opts.get("offload") or "none",
        vae_tiling=bool(opts.get("vae_tiling")),
        attention_slicing=bool(opts.get("attention_slicing")),
        compile=bool(opts.get("compile_")),
        allow_pickle=bool(opts.get("allow_pickle")),
        config=opts.get("config_dir"),
        controlnet_dirs=opts.get("controlnet_dir") or (),
        progress=not opts.get("quiet"),
        quiet=bool(opts.get("quiet")),
        notice=lambda m: click.echo(m, err=True),
    )


@click.command("generate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model", "-m", default=None, help="Checkpoint file, diffusers folder, name in your A1111/ComfyUI folders, or hub id."
)
@click.option("--prompt", "-p", default=None, help="Positive prompt (A1111 syntax: (tag:1.2), [tag], BREAK, <lora:NAME:W>).")
@click.option("--negative", "-n", default="", help="Negative prompt.")
@click.option(
    "--prompt-file", type=click.Path(dir_okay=False), default=None, help="Text file, one prompt a line (all batched together)."
)
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output of `tagloop prompt --format json` (fields positive/negative or prompt/negative_prompt).",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False),
    default="outputs",
    show_default=True,
    help="Output folder (00000-SEED.png, counter continues).",
)
@click.option(
    "--sampler",
    default=None,
    help="A1111 sampler name (default per family: SD1.5 'DPM++ 2M Karras', SDXL 'Euler a', SD3 'Euler').",
)
@click.option("--schedule-type", default=None, help="A1111 1.9+ schedule type: Automatic, Karras, Exponential, ...")
@click.option("--steps", type=int, default=None, help="Sampling steps (default per family: 20 SD1.5, 30 SDXL/SD3).")
@click.option("--cfg", type=float, default=None, help="CFG scale (default 7).")
@click.option(
    "--seed",
    type=int,
    default=-1,
    show_default=True,
    help="Seed; -1 picks a random one (recorded in the PNG). Image k gets seed+k.",
)
@click.option(
    "--size",
    callback=_size,
    default=None,
    help="WIDTHxHEIGHT, multiples of 8 (default per family: 512x512 SD1.5, 1024x1024 SDXL/SD3).",
)
@click.option("--batch-size", type=int, default=1, show_default=True, help="Images per prompt per batch (A1111 batch size).")
@click.option("--batch-count", type=int, default=1, show_default=True, help="Batches per prompt (A1111 batch count).")
@click.option(
    "--max-batch",
    type=int,
    default=4,
    show_default=True,
    help="Images per forward pass when packing several prompts/batches together.",
)
@click.option(
    "--clip-skip",
    type=int,
    default=1,
    show_default=True,
    help="A1111 clip skip: 1 = last layer, 2 = penultimate (anime SD1.x models); SDXL ignores it, as in A1111.",
)
@click.option("--vae", default=None, help="VAE file or folder (or a name in models/VAE).")
@click.option(
    "--lora-dir",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Folder of LoRA files for <lora:NAME:WEIGHT> (repeatable).",
)
@click.option(
    "--embeddings-dir",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Folder of textual-inversion embeddings (used by file name).",
)
@click.option("--init-image", type=click.Path(dir_okay=False), default=None, help="img2img source image.")
@click.option("--denoise", type=float, default=0.75, show_default=True, help="img2img denoising strength.")
@click.option(
    "--mask",
    type=click.Path(dir_okay=False),
    default=None,
    help="Inpaint --init-image: white (or the alpha of a transparent PNG) marks what is repainted.",
)
@click.option("--mask-blur", type=int, default=4, show_default=True, help="Blur of the mask's edge, in pixels.")
@click.option(
    "--inpainting-fill",
    type=click.Choice(list(_FILL_CHOICES)),
    default="original",
    show_default=True,
    help="What the masked area starts from (A1111's Masked content).",
)
@click.option("--mask-invert", is_flag=True, help="Repaint what is not masked (A1111's Inpaint not masked).")
@click.option(
    "--inpaint-area",
    type=click.Choice(["whole", "masked"]),
    default="whole",
    show_default=True,
    help="whole: the whole picture at --size; masked: only the masked region, generated at --size and pasted back.",
)
@click.option(
    "--inpaint-padding",
    type=int,
    default=32,
    show_default=True,
    help="Pixels around the masked region with --inpaint-area masked (A1111's Only masked padding).",
)
@click.option("--tiling", is_flag=True, help="Seamless images that tile (A1111's Tiling: circular padding).")
@click.option(
    "--control",
    multiple=True,
    type=click.Choice(["canny", "image"]),
    help="A ControlNet unit (repeatable): canny = the edges of --control-image; image = --control-image as the condition.",
)
@click.option("--control-image", multiple=True, type=click.Path(dir_okay=False), help="Control image (per unit, or once).")
@click.option("--control-model", multiple=True, help="ControlNet: file, diffusers folder, name in models/ControlNet, or hub id.")
@click.option("--control-weight", multiple=True, type=float, help="ControlNet weight 0..2 (default 1).")
@click.option("--control-start", multiple=True, type=float, help="Fraction of the steps where the unit starts (default 0).")
@click.option("--control-end", multiple=True, type=float, help="Fraction of the steps where the unit ends (default 1).")
@click.option(
    "--control-resize",
    multiple=True,
    type=click.Choice(["crop", "fit", "stretch"]),
    help="Fit the control image to --size: crop (Crop and Resize, default), fit (Resize and Fill), stretch (Just Resize).",
)
@click.option("--control-low", multiple=True, type=float, help="Canny low threshold (default 100).")
@click.option("--control-high", multiple=True, type=float, help="Canny high threshold (default 200).")
@click.option(
    "--controlnet-dir", multiple=True, type=click.Path(file_okay=False), help="Folder of ControlNet models (repeatable)."
)
@click.option(
    "--control-annotator",
    type=click.Path(file_okay=False),
    default=None,
    help="Annotator weights for pose/depth/line-art preprocessors (not supported: refused with what is needed).",
)
@click.option("--hires-scale", type=float, default=None, help="Hires fix: upscale factor of a second pass (e.g. 1.3).")
@click.option("--hires-steps", type=int, default=0, show_default=True, help="Hires fix steps (0 = same as --steps).")
@click.option("--hires-denoise", type=float, default=0.5, show_default=True, help="Hires fix denoising strength.")
@click.option(
    "--hires-upscaler",
    type=click.Choice(["latent", "lanczos"]),
    default="latent",
    show_default=True,
    help="Hires fix upscale: latent (bilinear) or image (Lanczos).",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "fp32", "fp16", "bf16", "fp8"]),
    default="auto",
    show_default=True,
    help="auto: fp32 on CPU, fp16 (SD1/SDXL) or bf16 (SD3) on CUDA, fp8 storage for FP8 checkpoints.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--offload",
    type=click.Choice(["none", "model", "sequential"]),
    default="none",
    show_default=True,
    help="CPU offload for small GPUs.",
)
@click.option("--vae-tiling", is_flag=True, help="Decode in tiles (large images on small GPUs).")
@click.option("--attention-slicing", is_flag=True, help="Slice attention to save memory (slower).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the UNet/transformer (first image slow, later faster).")
@click.option(
    "--a1111-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Your stable-diffusion-webui folder (models/Stable-diffusion, models/VAE, models/Lora, embeddings).",
)
@click.option(
    "--comfyui-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Your ComfyUI folder (models/checkpoints, models/vae, models/loras, models/embeddings).",
)
@click.option(
    "--config-dir",
    "config_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Local diffusers folder whose configs a single-file checkpoint uses (default: the packaged ones).",
)
@click.option("--allow-pickle", is_flag=True, help="Allow .ckpt/.pt checkpoints (pickle files can run code).")
@click.option("--list-samplers", is_flag=True, help="Print the A1111 sampler names and exit.")
@click.option(
    "--infotext", default=None, help="Re-create an image: a PNG with A1111 parameters, or a text file with an infotext."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per image (path, seed, infotext) on stdout.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress bars, and no warnings from diffusers/transformers (tagloop's own notices still print).",
)
@click.pass_context
def generate_command(ctx: click.Context, **opts) -> None:
    """Generate images with Stable Diffusion (SD1.x/2.x, SDXL, SD3.x) as AUTOMATIC1111 does.

    Writes OUT/00000-SEED.png files carrying A1111's `parameters` text (PNG Info reads it back).

    \b
    Examples:
      tagloop generate --model models/Stable-diffusion/anything-v5.safetensors \\
          --prompt "masterpiece, 1girl, (silver hair:1.2) <lora:style:0.8>" --lora-dir models/Lora \\
          --negative "lowres, bad anatomy" --seed 42 --batch-size 2 --clip-skip 2
      tagloop generate --model sdxl.safetensors --from-json prompts.json --size 1024x1024
      tagloop generate --model m.safetensors --infotext 00012-2607380765.png
    """
    from ..generator.generate import read_prompt_file, read_prompt_json, settings_from_infotext

    if opts["list_samplers"]:
        from ..a1111.samplers import list_samplers

        for name in list_samplers():
            click.echo(name)
        return
    if not opts["model"]:
        _fail("`--model` is required: a checkpoint file, a diffusers folder, a name in your A1111/ComfyUI folders or a hub id.")
    sources = [k for k in ("prompt", "prompt_file", "from_json") if opts[k] is not None]
    if len(sources) > 1:
        _fail("give only one of --prompt, --prompt-file and --from-json.")
    try:
        settings = dataclasses.replace(
            base_generation_settings(opts),
            prompt=opts["prompt"] or "",
            negative_prompt=opts["negative"] or "",
            seed=opts["seed"],
            batch_size=opts["batch_size"],
            batch_count=opts["batch_count"],
            init_image=opts["init_image"],
            denoising_strength=opts["denoise"],
            out_dir=Path(opts["out_dir"]),
            control=control_units(opts),
            **_extras_settings(opts),
        )
        size = opts["size"]
        if opts["infotext"]:
            from dataclasses import replace

            from ..generator.generate import GenerationSettings

            # inpainting keys the infotext does not state keep this command's values
            from_info = settings_from_infotext(
                opts["infotext"],
                base=GenerationSettings(**_extras_settings(opts)),
                saved_conditions=not opts["control_image"],
            )
            overrides = {}
            for opt, field in (
                ("prompt", "prompt"),
                ("negative", "negative_prompt"),
                ("sampler", "sampler"),
                ("schedule_type", "schedule_type"),
                ("steps", "steps"),
                ("cfg", "cfg_scale"),
                ("seed", "seed"),
                ("clip_skip", "clip_skip"),
                ("denoise", "denoising_strength"),
                ("hires_scale", "hires_scale"),
                ("hires_steps", "hires_steps"),
                ("hires_denoise", "hires_denoise"),
                ("hires_upscaler", "hires_upscaler"),
                ("tiling", "tiling"),
                ("mask_blur", "mask_blur"),
                ("inpainting_fill", "inpainting_fill"),
                ("mask_invert", "inpainting_mask_invert"),
                ("inpaint_area", "inpaint_full_res"),
                ("inpaint_padding", "inpaint_full_res_padding"),
            ):
                if _explicit(ctx, opt):
                    overrides[field] = getattr(settings, field)
            if size:
                overrides.update(width=size[0], height=size[1])
            for field in ("batch_size", "batch_count", "max_batch", "init_image", "mask_image", "out_dir"):
                overrides[field] = getattr(settings, field)
            if opts["control"]:
                overrides["control"] = settings.control
            elif opts["control_image"] and from_info.control:
                # the infotext's units with the control images given again (once for all, or once per unit)
                images = list(opts["control_image"])
                overrides["control"] = [
                    replace(u, image=images[0] if len(images) == 1 else images[i], module=u.module)
                    for i, u in enumerate(from_info.control)
                ]
            settings = replace(from_info, **overrides)
        if opts["prompt_file"]:
            settings.prompts = read_prompt_file(opts["prompt_file"], opts["negative"] or "")
        elif opts["from_json"]:
            settings.prompts = read_prompt_json(opts["from_json"], opts["negative"] or "")
        if opts["init_image"] and not Path(opts["init_image"]).is_file():
            _fail(f"`--init-image` {opts['init_image']} does not exist.")
        gen = build_generator(opts)
        gen.prepare(settings)  # every check before the model loads, outputs over inputs included
        images = gen.generate(settings)
    except OutputPathError as e:  # an image of this run would be written over one of its inputs
        _fail(str(e))
    except GeneratorError as e:
        _fail(str(e))
    for im in images:
        if opts["fmt"] == "json":
            click.echo(
                json.dumps(
                    {"path": str(im.path) if im.path else None, "seed": im.seed, "infotext": im.infotext}, ensure_ascii=False
                )
            )
        else:
            click.echo(str(im.path))
