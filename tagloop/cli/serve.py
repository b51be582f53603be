"""``tagloop serve``: AUTOMATIC1111's API, the WD14 tagger extension's, tagloop's routes and a web page."""

from __future__ import annotations

import click

from .errors import CommandError, handle_errors


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise CommandError(f"{what} must be NAME=MODEL, not {item!r}.")
        out[name.strip()] = spec.strip()
    return out


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True, help="Port (A1111's is 7860).")
@click.option("--tagger", default=None, help="Tagger model (as `tagloop tag --model`): A1111's interrogate `deepdanbooru`.")
@click.option(
    "--interrogator",
    "interrogators",
    multiple=True,
    help="More taggers by name, NAME=MODEL (repeatable): clients ask for them as `model`.",
)
@click.option("--model", default=None, help="Stable Diffusion checkpoint (as `tagloop generate --model`), loaded on first use.")
@click.option("--checkpoint", "checkpoints", multiple=True, help="More checkpoints clients may switch to (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="tagloop.toml to read.")
@click.option("--api-auth", default=None, help="HTTP basic auth on every route: USER:PASS (comma-separated for several).")
@click.option(
    "--queue-size", type=click.IntRange(min=1), default=64, show_default=True, help="Requests waiting at most (then 503)."
)
@click.option(
    "--tag-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Images of waiting tag requests run together."
)
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=64.0, show_default=True, help="Request body cap (MB).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True, help="Pixels of one image.")
@click.option("--max-images", type=click.IntRange(min=1), default=64, show_default=True, help="Images in one tag request.")
@click.option("--max-steps", type=click.IntRange(min=1), default=150, show_default=True, help="Sampling steps of one request.")
@click.option("--max-size", type=click.IntRange(min=64), default=2048, show_default=True, help="Width and height cap.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True, help="Images of one generation request.")
@click.option(
    "--caption-threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="A1111 interrogate threshold."
)
@click.option(
    "--caption-sort",
    type=click.Choice(["alpha", "score"]),
    default="alpha",
    show_default=True,
    help="A1111 interrogate caption order.",
)
@click.option("--caption-spaces/--caption-underscores", default=True, show_default=True, help="Spaces for underscores.")
@click.option("--caption-escape/--no-caption-escape", default=True, show_default=True, help="Escape \\ ( ) in captions.")
@click.option("--caption-ranks", is_flag=True, help="Write (tag:0.873) in captions (A1111 interrogate_return_ranks).")
@click.option(
    "--jobs-dir", type=click.Path(file_okay=False), default=None, help="Where reproduce jobs write (default: a temp folder)."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "fp16", "bf16", "fp32"]), default="auto", show_default=True)
@click.option("--a1111-dir", type=click.Path(file_okay=False), default=None, help="Your WebUI folder (models/...).")
@click.option("--comfyui-dir", type=click.Path(file_okay=False), default=None, help="Your ComfyUI folder (models/...).")
@click.option("--lora-dir", "lora_dirs", multiple=True, type=click.Path(file_okay=False), help="LoRA folder (repeatable).")
@click.option("--embeddings-dir", "embeddings_dirs", multiple=True, type=click.Path(file_okay=False), help="Embeddings folder.")
@click.option("--vae", default=None, help="VAE file or folder.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle (.ckpt/.pt) models (they can run code).")
@click.option(
    "--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True
)
@click.pass_context
@handle_errors
def serve_command(ctx, **opts):
    """Serve AUTOMATIC1111's HTTP API (and the WD14 tagger extension's) for existing clients, tagloop's
    own routes, and a web page for the loop at /.

    Models load once (the generator on the first image request); GPU work runs in one worker in
    order, tag requests that wait together share one forward pass, and a full queue answers 503.
    SIGTERM (or Ctrl-C) finishes the job in flight, answers queued requests 503 and exits.

    \b
    Examples:
      tagloop serve --tagger deepdanbooru --a1111-dir ~/webui --model anything-v5
      tagloop serve --tagger SmilingWolf/wd-swinv2-tagger-v3 --port 7861 --api-auth me:secret
      curl -s localhost:7860/sdapi/v1/interrogate -d '{"image": "...", "model": "deepdanbooru", "threshold": 0.45}'
    """
    from ..server.settings import ServerLimits, ServerSettings

    if opts.pop("config_file"):
        opts = _with_config(ctx, opts)
    settings = ServerSettings(
        host=opts["host"],
        port=opts["port"],
        tagger=opts["tagger"],
        taggers=_pairs(opts["interrogators"], "interrogator"),
        model=opts["model"],
        models=list(opts["checkpoints"]),
        device=opts["device"],
        dtype=opts["dtype"],
        a1111_dir=opts["a1111_dir"],
        comfyui_dir=opts["comfyui_dir"],
        lora_dirs=list(opts["lora_dirs"]),
        embeddings_dirs=list(opts["embeddings_dirs"]),
        vae=opts["vae"],
        allow_pickle=opts["allow_pickle"],
        api_auth=opts["api_auth"],
        queue_size=opts["queue_size"],
        tag_batch=opts["tag_batch"],
        jobs_dir=opts["jobs_dir"],
        limits=ServerLimits(
            max_body_bytes=int(opts["max_body_mb"] * 1024 * 1024),
            max_pixels=opts["max_pixels"],
            max_images=opts["max_images"],
            max_steps=opts["max_steps"],
            max_size=opts["max_size"],
            max_batch=opts["max_batch"],
        ),
        caption={
            "interrogate_deepbooru_score_threshold": opts["caption_threshold"],
            "deepbooru_sort_alpha": opts["caption_sort"] == "alpha",
            "deepbooru_use_spaces": opts["caption_spaces"],
            "deepbooru_escape": opts["caption_escape"],
            "interrogate_return_ranks": opts["caption_ranks"],
        },
    )
    if not settings.tagger and not settings.model and not settings.taggers:
        raise CommandError("give a --tagger, a --model or both: a server without models has nothing to serve.")
    settings.check()
    from ..server.run import serve

    serve(settings, log_level=opts["log_level"], echo=lambda m: click.echo(m, err=True))


def _with_config(ctx: click.Context, opts: dict) -> dict:
    """``serve --config FILE``: the file's values for every option not given on the command line."""
    from pathlib import Path

    from ..config import read_config
    from .config import build_default_map

    path = Path(ctx.params.get("config_file") or "")
    if not path.is_file():
        raise CommandError(f"config file {str(path)!r} does not exist.")
    group = ctx.parent.command if ctx.parent is not None else None
    if group is None:
        return opts
    defaults = build_default_map(group, ctx.parent, path, read_config(path)).get("serve", {})
    out = dict(opts)
    for param in ctx.command.params:
        if param.name in defaults and param.name in out:
            source = ctx.get_parameter_source(param.name)
            if source is not None and source.name in ("DEFAULT", "DEFAULT_MAP"):
                out[param.name] = param.type_cast_value(ctx, defaults[param.name])
    return out
