"""AUTOMATIC1111's ``/sdapi/v1`` routes, with A1111's request and response shapes.

Existing clients (webuiapi, SillyTavern, Open WebUI, the seed tutorial's ``requests`` code) work
unchanged: every A1111 field is accepted, a field at its neutral default passes, a feature tagloop
lacks set to something else is a 422 naming it (never a silently different image), unknown keys
are ignored. Beyond A1111, ``/interrogate`` takes per-request thresholds, filters, scores and sort.
"""

from __future__ import annotations

import random
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from .errors import ApiError, NotFound
from .images import decode_image, png_base64
from .worker import Job, wait_for

router = APIRouter(prefix="/sdapi/v1", tags=["A1111"])

#: a JSON object body (every key optional, unknown keys ignored, as A1111 reads them)
JsonBody = Annotated[dict[str, Any], Body()]

Json = dict[str, Any]


def _state(request: Request):
    return request.app.state.tagloop


# -- interrogate ------------------------------------------------------------------------------------


def tag_options_from_body(body: Json, state, *, a1111_default: bool) -> Any:
    """TagOptions from a request's ``threshold`` (a number or ``"auto"``), ``general_threshold``,
    ``character_threshold``, ``mcut`` and ``max_tags``; no threshold given: A1111's caption
    threshold option when ``a1111_default``, else the adaptive one."""
    from ..tagger.run import make_tag_options

    fields: dict[str, Any] = {"workers": 1}
    threshold = body.get("threshold")
    if threshold is None and a1111_default:
        threshold = state.caption_options()["interrogate_deepbooru_score_threshold"]
    if isinstance(threshold, str):
        if threshold.strip().lower() != "auto":
            try:
                threshold = float(threshold)
            except ValueError:
                raise ApiError(f'`threshold` must be a number in 0..1 or "auto", not {threshold!r}.', 422) from None
        else:
            threshold = None
    fields["threshold"] = threshold
    for key in ("general_threshold", "character_threshold", "max_tags", "mcut"):
        if body.get(key) is not None:
            fields[key] = body[key]
    fields["max_pixels"] = state.settings.limits.max_pixels
    try:
        return make_tag_options(**fields)
    except InputError as e:
        raise ApiError(str(e), 422) from None


def filter_tags(tags: list, filters: Any) -> list:
    """Per-request ``filters``: a list of blocklist entries (tagloop's filter syntax) or an object of
    filter settings (``block``, ``replace``, ``style``, ``overlap``, ``always_first``, ``max_tags``).
    Files on the server are not read from a request."""
    if not filters:
        return tags
    from ..filters.chain import FilterSettings, apply_filters

    if isinstance(filters, str):
        filters = [filters]
    if isinstance(filters, list):
        fields: dict[str, Any] = {"block": tuple(str(f) for f in filters), "overlap": False, "keep_rating": True}
    elif isinstance(filters, dict):
        allowed = {"block", "replace", "style", "overlap", "always_first", "max_tags", "keep_rating"}
        unknown = sorted(set(filters) - allowed)
        if unknown:
            raise ApiError(f"`filters` has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}.", 422)
        style = filters.get("style")
        if style is not None and ("/" in str(style) or "\\" in str(style)):
            raise ApiError("`filters.style` must be a built-in style name; files on the server are not read from a request.", 422)
        fields = {"overlap": False, "keep_rating": True, **filters}
    else:
        raise ApiError("`filters` must be a list of blocklist entries or an object of filter settings.", 422)
    try:
        settings = FilterSettings(**fields)
        kept, _log = apply_filters(tags, settings)
    except (TypeError, ValueError) as e:
        raise ApiError(f"`filters` cannot be used: {e}", 422) from None
    return kept


async def tag_images(request: Request, tagger, images: list, names: list[str], options: list) -> list:
    """Prepare images in a thread, queue one tag job, await its results (one TagResult per image)."""
    state = _state(request)
    job = await run_in_threadpool(state.tag_job, tagger, images, names, options)
    return await wait_for(job, state.worker, request)


@router.post("/interrogate")
async def interrogate(request: Request, body: JsonBody) -> Json:
    """A1111's interrogate: ``{image, model}`` -> ``{"caption": "tag, tag"}`` formatted as A1111
    formats DeepDanbooru output (its options); ``threshold``, ``general_threshold``,
    ``character_threshold``, ``filters``, ``scores`` and ``sort`` per request, beyond A1111."""
    from .a1111_schema import format_deepbooru_caption

    state = _state(request)
    if not body.get("image"):
        raise NotFound("Image not found: send the image base64-encoded in `image`.")
    model = body.get("model", "clip")
    if model == "clip":
        raise NotFound(
            'Model not found: tagloop has no CLIP interrogator; ask for `model` "deepdanbooru" (the server\'s tagger).'
        )
    tagger = state.tagger_for(str(model), a1111=True)
    options = tag_options_from_body(body, state, a1111_default=True)
    image = await run_in_threadpool(decode_image, body["image"], state.settings.limits.max_pixels, "image")
    (result,) = await tag_images(request, tagger, [image], ["image"], [options])
    if result.error:
        raise ApiError(f"`image` cannot be tagged: {result.error}.", 422)
    tags = filter_tags(result.tags, body.get("filters"))
    caption_opts = state.caption_options()
    caption_opts["interrogate_deepbooru_score_threshold"] = 0.0  # the tagger applied the thresholds
    if body.get("scores") is not None:
        caption_opts["interrogate_return_ranks"] = bool(body["scores"])
    sort = body.get("sort")
    if sort is not None:
        if sort not in ("alpha", "score"):
            raise ApiError(f'`sort` must be "alpha" or "score", not {sort!r}.', 422)
        caption_opts["deepbooru_sort_alpha"] = sort == "alpha"
    caption = format_deepbooru_caption([(t.name, t.score) for t in tags], caption_opts)
    return {"caption": caption}


# -- txt2img / img2img ------------------------------------------------------------------------------


def _check_limits(fields: Json, limits) -> None:
    steps = fields.get("steps")
    if steps is not None and steps > limits.max_steps:
        raise ApiError(f"`steps` {steps} is over the server's `max_steps` limit of {limits.max_steps}.", 422)
    for key in ("width", "height"):
        v = fields.get(key)
        if v is not None and v > limits.max_size:
            raise ApiError(f"`{key}` {v} is over the server's `max_size` limit of {limits.max_size}.", 422)
    n = int(fields.get("batch_size") or 1) * int(fields.get("batch_count") or 1)
    if n > limits.max_batch:
        raise ApiError(f"`batch_size` x `n_iter` = {n} images is over the server's `max_batch` limit of {limits.max_batch}.", 422)
    scale = fields.get("hires_scale")
    if scale and fields.get("width") and fields.get("height"):
        if max(fields["width"], fields["height"]) * scale > limits.max_size * 2:
            raise ApiError(f"`hr_scale` {scale} makes images over twice the server's `max_size` of {limits.max_size}.", 422)


async def generate(request: Request, body: Json, *, img2img: bool) -> Json:
    """txt2img and img2img: parse as A1111, queue on the worker, answer ``images``, ``parameters``, ``info``."""
    from ..generator.settings import MAX_SEED, check_settings, make_settings, with_family_defaults
    from .a1111_schema import build_info, parse_generation_request

    state = _state(request)
    gen = state.generator()
    req = parse_generation_request(body, img2img=img2img, family_defaults=gen.family, options=state.options)
    fields = dict(req.fields)
    limits = state.settings.limits
    _check_limits(fields, limits)
    if img2img:
        fields["init_image"] = await run_in_threadpool(decode_image, fields.get("init_image"), limits.max_pixels, "init_images")
        if fields.get("mask_image") is not None:
            fields["mask_image"] = await run_in_threadpool(decode_image, fields["mask_image"], limits.max_pixels, "mask")
    if fields.get("control"):
        import dataclasses

        fields["control"] = [
            dataclasses.replace(
                u,
                image=await run_in_threadpool(
                    decode_image, u.image, limits.max_pixels, f"alwayson_scripts.controlnet.args[{i}].image", None
                ),
            )
            for i, u in enumerate(fields["control"])
        ]
    if fields.get("seed") is None or int(fields.get("seed", -1)) == -1:
        fields["seed"] = random.randint(0, MAX_SEED)  # fixed now, so the info and the images agree
    try:
        settings = make_settings(None, **fields)
        check_settings(settings, gen.family)
    except InputError as e:
        raise ApiError(str(e), 422) from None
    init_size = settings.init_image.size if settings.init_image is not None else None
    resolved = with_family_defaults(settings, gen.family, init_size)
    _check_limits({"width": resolved.width, "height": resolved.height, "steps": resolved.steps}, limits)
    timestamp = time.strftime("%Y%m%d%H%M%S")

    def run(job: Job):
        gen.step_hook = _step_hook(job)
        try:
            return gen.generate(settings)
        finally:
            gen.step_hook = None

    job = state.worker.submit(Job("img2img" if img2img else "txt2img", run, name="img2img" if img2img else "txt2img"))
    images = await wait_for(job, state.worker, request)
    cp = state.current_checkpoint
    info = build_info(
        req,
        images,
        settings=resolved,
        model_name=cp.name if cp else gen.source.name,
        model_hash=cp.hash if cp else None,
        job_timestamp=timestamp,
    )
    encoded = await run_in_threadpool(lambda: [png_base64(im.image, im.infotext) for im in images]) if req.send_images else []
    return {"images": encoded, "parameters": req.parameters, "info": info}


def _step_hook(job: Job):
    """The generator's per-step hook: progress for ``/progress``; True asks it to stop (interrupt)."""

    def hook(step: int, steps: int, overall: float | None = None) -> bool:
        job.set_progress(step, steps, overall)
        return job.stopping

    return hook


@router.post("/txt2img")
async def txt2img(request: Request, body: JsonBody) -> Json:
    return await generate(request, body, img2img=False)


@router.post("/img2img")
async def img2img(request: Request, body: JsonBody) -> Json:
    return await generate(request, body, img2img=True)


# -- png-info, upscaling ----------------------------------------------------------------------------


@router.post("/png-info")
async def png_info(request: Request, body: JsonBody) -> Json:
    """``{image}`` -> ``{"info": infotext or "", "items": {other chunks}, "parameters": {parsed}}``."""
    from ..a1111.infotext import parse_infotext, read_image_metadata
    from .images import image_bytes, open_image

    state = _state(request)
    if not body.get("image"):
        raise NotFound("Image not found: send the image base64-encoded in `image`.")
    data = image_bytes(body["image"])

    def read():
        img = open_image(data, state.settings.limits.max_pixels, mode=None)
        import io

        from PIL import Image

        raw = Image.open(io.BytesIO(data))
        meta = read_image_metadata(raw)
        items = {k: v for k, v in raw.info.items() if isinstance(v, str) and k != "parameters"}
        del img
        text = meta.infotext or ""
        return {"info": text, "items": items, "parameters": dict(parse_infotext(text)) if text else {}}

    return await run_in_threadpool(read)


def _extras_images(body: Json, images: list, max_pixels: int) -> list:
    """A1111's Extras upscale step over ``images`` (model-free upscalers; face restorers refused)."""
    from ..generator.upscale import upscale

    for key in ("gfpgan_visibility", "codeformer_visibility"):
        if body.get(key) not in (None, 0, 0.0):
            raise ApiError(f"`{key}` needs a face restorer, which tagloop does not have; set it to 0.", 422)
    resize_mode = body.get("resize_mode", 0) or 0
    kwargs: dict[str, Any] = dict(
        upscaler=body.get("upscaler_1") or "None",
        upscaler_2=body.get("upscaler_2") or None,
        upscaler_2_visibility=float(body.get("extras_upscaler_2_visibility", 0) or 0),
        max_pixels=max_pixels,
    )
    if resize_mode == 1:
        kwargs.update(width=int(body.get("upscaling_resize_w", 512)), height=int(body.get("upscaling_resize_h", 512)))
        kwargs["crop"] = bool(body.get("upscaling_crop", True))
    elif resize_mode == 0:
        kwargs["scale"] = float(body.get("upscaling_resize", 2) or 2)
    else:
        raise ApiError(f"`resize_mode` must be 0 (scale) or 1 (to a size) for extras, not {resize_mode!r}.", 422)
    return [upscale(im, **kwargs) for im in images]


@router.post("/extra-single-image")
async def extra_single_image(request: Request, body: JsonBody) -> Json:
    """A1111's extras upscaling with the model-free upscalers (Lanczos, Nearest)."""
    state = _state(request)
    if not body.get("image"):
        raise NotFound("Image not found: send the image base64-encoded in `image`.")
    img = await run_in_threadpool(decode_image, body["image"], state.settings.limits.max_pixels, "image")
    out, info = await run_in_threadpool(_extras, body, [img], ["image"], state)
    return {"html_info": info, "image": out[0]}


@router.post("/extra-batch-images")
async def extra_batch_images(request: Request, body: JsonBody) -> Json:
    state = _state(request)
    items = body.get("imageList") or []
    if not isinstance(items, list) or not items:
        raise NotFound("Image not found: send `imageList` as a list of {data, name}.")
    if len(items) > state.settings.limits.max_images:
        raise ApiError(
            f"`imageList` has {len(items)} images, over the server's `max_images` limit of {state.settings.limits.max_images}.",
            413,
        )
    images = []
    for i, item in enumerate(items):
        data = item.get("data") if isinstance(item, dict) else None
        images.append(await run_in_threadpool(decode_image, data, state.settings.limits.max_pixels, f"imageList[{i}].data"))
    names = [str(item.get("name") or f"image{i}") for i, item in enumerate(items)]
    out, info = await run_in_threadpool(_extras, body, images, names, state)
    return {"html_info": info, "images": out}


def _extras(body: Json, images: list, names: list[str], state) -> tuple[list[str], str]:
    """Upscaled images as A1111's Extras answers: PNGs keeping the source's text, plus the
    ``postprocessing`` line, and ``html_info`` with that line."""
    import base64
    import html

    from ..generator.upscale import extras_png_bytes

    results = _extras_images(body, images, state.settings.limits.max_pixels)
    encoded = [base64.b64encode(extras_png_bytes(im)).decode("ascii") for im in results]
    lines = [html.escape(str(im.info.get("postprocessing", ""))) for im in results]
    return encoded, "".join(f"<p>{line}</p>" for line in lines)


# -- listings, options, progress --------------------------------------------------------------------


@router.get("/samplers")
def samplers() -> list:
    from .a1111_schema import samplers_listing

    return samplers_listing()


@router.get("/schedulers")
def schedulers() -> list:
    from .a1111_schema import schedulers_listing

    return schedulers_listing()


@router.get("/sd-models")
def sd_models(request: Request) -> list:
    return [cp.to_json() for cp in _state(request).checkpoints]


@router.post("/refresh-checkpoints")
def refresh_checkpoints(request: Request) -> None:
    state = _state(request)
    current = state.current_checkpoint
    state.checkpoints = state._list_checkpoints()
    if current is not None:
        state.current_checkpoint = next((c for c in state.checkpoints if c.spec == current.spec), current)
    return None


@router.get("/upscalers")
def upscalers() -> list:
    from ..generator.upscale import list_upscalers

    return list_upscalers()


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list:
    return [{"name": "Latent"}]


@router.get("/sd-vae")
def sd_vae(request: Request) -> list:
    s = _state(request).settings
    return [{"model_name": str(s.vae).rsplit("/", 1)[-1], "filename": str(s.vae)}] if s.vae else []


@router.get("/loras")
def loras(request: Request) -> list:
    from ..generator.locate import list_named_files, search_dirs

    s = _state(request).settings
    dirs = search_dirs("lora", s.lora_dirs, s.a1111_dir, s.comfyui_dir)
    return [
        {"name": name, "alias": name, "path": str(path), "metadata": {}}
        for name, path in list_named_files(dirs, (".safetensors", ".pt", ".ckpt")).items()
    ]


@router.get("/embeddings")
def embeddings(request: Request) -> Json:
    from ..generator.locate import list_named_files, search_dirs

    s = _state(request).settings
    dirs = search_dirs("embedding", s.embeddings_dirs, s.a1111_dir, s.comfyui_dir)
    found = list_named_files(dirs, (".safetensors", ".pt", ".bin"))
    loaded = {
        name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None} for name in found
    }
    return {"loaded": loaded, "skipped": {}}


def _empty(path: str):
    def listing() -> list:
        return []

    listing.__name__ = path.replace("-", "_")
    router.add_api_route(f"/{path}", listing, methods=["GET"])


for _path in ("hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles", "scripts-info", "extensions"):
    _empty(_path)


@router.get("/scripts")
def scripts() -> Json:
    return {"txt2img": [], "img2img": []}


@router.get("/cmd-flags")
def cmd_flags(request: Request) -> Json:
    s = _state(request).settings
    return {
        "listen": s.host not in ("127.0.0.1", "localhost", "::1"),
        "port": s.port,
        "api": True,
        "api_auth": "<set>" if s.api_auth else None,
        "nowebui": False,
        "ckpt": s.model,
        "lora_dir": str(s.lora_dirs[0]) if s.lora_dirs else None,
        "embeddings_dir": str(s.embeddings_dirs[0]) if s.embeddings_dirs else None,
        "data_dir": str(s.a1111_dir) if s.a1111_dir else None,
    }


@router.get("/options")
def get_options(request: Request) -> Json:
    return _state(request).get_options()


@router.post("/options")
async def set_options(request: Request, body: JsonBody) -> None:
    """Store every key sent; act on those tagloop understands (``sd_model_checkpoint`` switches models)."""
    await run_in_threadpool(_state(request).set_options, body)
    return None


@router.get("/progress")
def progress(request: Request, skip_current_image: bool = False) -> Json:
    """A1111's progress: 0/0 when idle; the running job's step while it samples."""
    state = _state(request)
    snap = state.worker.snapshot()
    running = snap["running"]
    job = running[0] if running else None
    job_count = snap["queued"] + len(running)
    prog = 0.0
    eta = 0.0
    if job is not None:
        prog = float(job.progress)
        if prog > 0 and job.started:
            elapsed = time.time() - job.started
            eta = elapsed / prog - elapsed
    return {
        "progress": round(prog, 4) if job_count else 0.0,
        "eta_relative": round(eta, 3),
        "state": {
            "skipped": False,
            "interrupted": bool(job is not None and job.stopping),
            "stopping_generation": False,
            "job": job.name if job is not None else "",
            "job_count": job_count,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)) if job is not None else "0",
            "job_no": 0,
            "sampling_step": job.step if job is not None else 0,
            "sampling_steps": job.steps if job is not None else 0,
        },
        "current_image": None,
        "textinfo": None,
    }


@router.post("/interrupt")
def interrupt(request: Request) -> None:
    _state(request).worker.interrupt()
    return None


@router.post("/skip")
def skip(request: Request) -> None:
    _state(request).worker.interrupt()
    return None


@router.get("/memory")
def memory() -> Json:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out: Json = {"ram": {"used": rss}, "cuda": {}}
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        out["cuda"] = {"system": {"free": free, "total": total, "used": total - free}}
    return out


# -- sd-webui-controlnet's listing routes -----------------------------------------------------------

controlnet_router = APIRouter(prefix="/controlnet", tags=["sd-webui-controlnet"])


@controlnet_router.get("/version")
def controlnet_version() -> Json:
    return {"version": 2}


@controlnet_router.get("/model_list")
def controlnet_model_list(request: Request, update: bool = True) -> Json:
    """ControlNet files in the server's ControlNet folders, named as the extension lists them (``name [hash]``)."""
    from ..a1111.hashes import legacy_model_hash
    from ..generator.control import CONTROL_EXTS
    from ..generator.locate import list_named_files, search_dirs

    s = _state(request).settings
    dirs = search_dirs("controlnet", s.controlnet_dirs, s.a1111_dir, s.comfyui_dir)
    names = []
    for name, path in list_named_files(dirs, CONTROL_EXTS).items():
        try:
            names.append(f"{name} [{legacy_model_hash(path)}]")
        except OSError:
            names.append(name)
    return {"model_list": sorted(names)}


@controlnet_router.get("/module_list")
def controlnet_module_list(alias_names: bool = False) -> Json:
    """The preprocessors tagloop runs itself (others need annotator weights)."""
    from ..generator.control import MODULES

    return {"module_list": list(MODULES)}
