"""tagloop's own routes (``/tagloop/v1``) and the web page at ``/``.

- ``POST /tagloop/v1/tag``: one image (JSON ``image``) or several (JSON ``images``, or multipart
  files) -> the JSON ``tagloop tag --format json`` writes (a list for several), edge density and
  the band the adaptive threshold chose included.
- ``POST /tagloop/v1/prompt``: tags (a ``"tag, tag"`` string, a list, or a tag result) and prompt
  settings -> the JSON ``tagloop prompt --format json`` writes.
- ``POST /tagloop/v1/reproduce``: a source image and loop settings -> ``{"id": ...}`` at once; the
  job runs on the worker. ``GET /tagloop/v1/jobs/{id}``: status, progress and, when done, the
  report (``report.json``); ``GET /tagloop/v1/jobs/{id}/report.html`` and the files it links.
- ``GET /tagloop/v1/status``: the models, the queue and its counters, the limits.

Requests never name files on the server: presets, styles and negative presets are built-in names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from .errors import ApiError, NotFound
from .images import decode_image, open_image
from .routes_a1111 import _check_limits, _step_hook, tag_images, tag_options_from_body
from .state import ReproduceJob
from .worker import Job, JobStopped

router = APIRouter(prefix="/tagloop/v1", tags=["tagloop"])

#: a JSON object body (every key optional, unknown keys ignored, as A1111 reads them)
JsonBody = Annotated[dict[str, Any], Body()]

Json = dict[str, Any]

#: prompt settings a request may set (no file paths: names of built-in presets and styles only)
PROMPT_FIELDS = {
    "preset",
    "negative_preset",
    "style",
    "quality_tags",
    "trigger_words",
    "negative_extra",
    "emphasis",
    "emphasis_range",
    "weights",
    "budget",
    "use_spaces",
    "escape",
    "block",
    "replace",
    "keep_rating",
    "overlap",
    "always_first",
    "category_order",
    "max_tags",
    "prompt_style",
}
NAME_FIELDS = ("preset", "negative_preset", "style")
#: generation settings a reproduce request may set
GENERATION_FIELDS = {"steps", "cfg_scale", "width", "height", "sampler", "schedule_type", "clip_skip", "emphasis_mode"}
LOOP_FIELDS = {"variants", "refine", "seed", "img2img", "denoise", "prompt", "negative_prompt"}
TAG_FIELDS = {"threshold", "general_threshold", "character_threshold", "mcut"}


def _state(request: Request):
    return request.app.state.tagloop


def _prompt_settings(body: Json) -> Json:
    out = {k: body[k] for k in PROMPT_FIELDS if body.get(k) is not None}
    for key in NAME_FIELDS:
        value = out.get(key)
        if value is not None and ("/" in str(value) or "\\" in str(value) or str(value).endswith((".toml", ".txt"))):
            raise ApiError(f"`{key}` must be a built-in name; files on the server are not read from a request.", 422)
    if out.get("prompt_style") == "llm":  # the model path is a server file: not settable from a request
        raise ApiError('`prompt_style` "llm" is not served: this server has no language model; use "sentence" or "tags".', 422)
    for key in ("quality_tags", "trigger_words", "negative_extra", "block", "replace", "always_first", "category_order"):
        if isinstance(out.get(key), str):
            out[key] = [x.strip() for x in out[key].split(",") if x.strip()]
    return out


# -- tag --------------------------------------------------------------------------------------------


@router.post("/tag")
async def tag(request: Request) -> Any:
    """Tag one image or several (JSON ``image``/``images`` as base64, or multipart files)."""
    state = _state(request)
    limits = state.settings.limits
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=limits.max_images + 1, max_fields=100)
        files = [v for k, v in form.multi_items() if hasattr(v, "read")]
        body: Json = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        for key in ("threshold", "general_threshold", "character_threshold", "max_tags"):
            if key in body and body[key] != "auto":
                try:
                    body[key] = int(body[key]) if key == "max_tags" else float(body[key])
                except ValueError:
                    raise ApiError(f"`{key}` must be a number, not {body[key]!r}.", 422) from None
        if "mcut" in body:
            body["mcut"] = body["mcut"].lower() in ("1", "true", "yes", "on")
        if not files:
            raise NotFound("Image not found: send the images as multipart files.")
        if len(files) > limits.max_images:
            raise ApiError(f"{len(files)} images are over the server's `max_images` limit of {limits.max_images}.", 413)
        raw = [await f.read() for f in files]
        names = [f.filename or f"image{i}" for i, f in enumerate(files)]
        many = len(files) > 1
        images = [await run_in_threadpool(open_image, data, limits.max_pixels, n) for data, n in zip(raw, names)]
    else:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError("the request body must be JSON (or multipart files).", 422) from None
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object.", 422)
        if body.get("images") is not None:
            values = body["images"]
            if not isinstance(values, list) or not values:
                raise ApiError("`images` must be a non-empty list of base64 images.", 422)
            many = True
        elif body.get("image"):
            values, many = [body["image"]], False
        else:
            raise NotFound("Image not found: send `image` (or `images`) base64-encoded.")
        if len(values) > limits.max_images:
            raise ApiError(f"{len(values)} images are over the server's `max_images` limit of {limits.max_images}.", 413)
        names = [str(n) for n in body.get("names") or []] or [f"image{i}" if many else "image" for i in range(len(values))]
        if len(names) != len(values):
            raise ApiError("`names` must have one name per image.", 422)
        images = []
        for i, v in enumerate(values):
            images.append(await run_in_threadpool(decode_image, v, limits.max_pixels, f"images[{i}]" if many else "image"))
    tagger = state.tagger_for(body.get("model") or None)
    options = tag_options_from_body(body, state, a1111_default=False)
    results = await tag_images(request, tagger, images, names, [options] * len(images))
    out = [r.to_json() for r in results]
    return out if many else out[0]


# -- prompt -----------------------------------------------------------------------------------------


@router.post("/prompt")
async def prompt(request: Request, body: JsonBody) -> Json:
    """Compose a prompt from ``tags`` (a string, a list of names or ``[name, score]``, or a tag
    result object as ``/tag`` answers) with prompt settings -> ``tagloop prompt``'s JSON."""
    from ..api import compose_prompt
    from ..tagger.result import TagResult

    tags = body.get("tags", body.get("result"))
    if tags is None:
        raise ApiError('send `tags`: a "tag, tag" string, a list of tags, or a tag result from /tagloop/v1/tag.', 422)
    if isinstance(tags, dict):
        try:
            tags = TagResult.from_json(tags)
        except (KeyError, TypeError, ValueError) as e:
            raise ApiError(f"`tags` is not a tag result ({e}).", 422) from None
    elif not isinstance(tags, (str, list)):
        raise ApiError("`tags` must be a string, a list or a tag result object.", 422)
    settings = _prompt_settings(body)
    try:
        composed = await run_in_threadpool(lambda: compose_prompt(tags, **settings))
    except (TypeError, ValueError) as e:
        raise ApiError(f"the prompt settings cannot be used: {e}", 422) from None
    return composed.to_json()


# -- reproduce jobs ---------------------------------------------------------------------------------


@router.post("/reproduce", status_code=202)
async def reproduce(request: Request, body: JsonBody) -> Json:
    """Queue the loop for one image; answers ``{"id", "status"}`` at once (poll ``/jobs/{id}``)."""
    state = _state(request)
    limits = state.settings.limits
    if not body.get("image"):
        raise NotFound("Image not found: send the source image base64-encoded in `image`.")
    image = await run_in_threadpool(decode_image, body["image"], limits.max_pixels, "image")
    loop = {k: body[k] for k in LOOP_FIELDS if body.get(k) is not None}
    gen_fields = {k: body[k] for k in GENERATION_FIELDS if body.get(k) is not None}
    tag_fields = {k: body[k] for k in TAG_FIELDS if body.get(k) is not None}
    if isinstance(tag_fields.get("threshold"), str):
        tag_fields["threshold"] = tag_options_from_body(body, state, a1111_default=False).threshold
    variants = int(loop.get("variants", 4))
    rounds = int(loop.get("refine", 0)) + 1
    if variants * rounds > limits.max_variants:
        raise ApiError(
            f"`variants` x (`refine` + 1) = {variants * rounds} images is over the server's `max_variants` limit of "
            f"{limits.max_variants}.",
            422,
        )
    _check_limits(gen_fields, limits)
    settings = {**_prompt_settings(body), **gen_fields, **tag_fields}
    tagger = state.tagger_for(body.get("model") or None)
    gen = state.generator()
    holder: dict[str, Any] = {}

    def run(job: Job):
        from ..api import reproduce as run_reproduce

        progress = _step_hook(job)

        def hook(step: int, steps: int, overall: float | None = None) -> bool:
            if progress(step, steps, overall):
                raise JobStopped()  # cancelled: the whole loop stops, not just this image
            return False

        gen.step_hook = hook
        try:
            result = run_reproduce(image, tagger=tagger, generator=gen, out_dir=holder["folder"], **loop, **settings)
        finally:
            gen.step_hook = None
        holder["rjob"].result = result
        return result

    job = Job("reproduce", run, name="reproduce")
    folder = state.jobs_dir() / job.id
    holder["folder"] = folder
    rjob = ReproduceJob(job, folder / "image", request={k: v for k, v in body.items() if k != "image"})
    holder["rjob"] = rjob
    # every setting is checked before the job is queued, as the command line checks before any work
    await run_in_threadpool(_check_reproduce, tagger, gen, loop, settings)
    state.worker.submit(job)
    state.remember(rjob)
    return {"id": job.id, "status": job.state}


def _check_reproduce(tagger, gen, loop: Json, settings: Json) -> None:
    from ..api import _loop_parts
    from ..generator.settings import make_settings
    from ..pipeline.reproduce import ReproduceSettings

    try:
        _t, _opts, prompt_settings, gen_fields, rest, *_ = _loop_parts(tagger, None, None, "auto", dict(settings))
        ReproduceSettings(**{**rest, **loop}).check()
        gen.prepare(make_settings(None, **gen_fields, prompt="x"))
    except (TypeError, ValueError) as e:
        raise ApiError(f"the reproduce settings cannot be used: {e}", 422) from None
    except InputError as e:
        raise ApiError(str(e), 422) from None


def _job(request: Request, job_id: str) -> ReproduceJob:
    rjob = _state(request).jobs.get(job_id)
    if rjob is None:
        raise NotFound(f"no job {job_id!r} on this server (finished jobs are kept for the last `keep_jobs` ones).")
    return rjob


@router.get("/jobs/{job_id}")
def job_status(request: Request, job_id: str) -> Json:
    rjob = _job(request, job_id)
    job = rjob.job
    out: Json = {
        "id": job.id,
        "status": job.state,
        "progress": round(job.progress, 4) if job.state == "running" else (1.0 if job.state == "done" else 0.0),
        "sampling_step": job.step,
        "sampling_steps": job.steps,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "result": None,
        "error": None,
    }
    if job.state == "done" and rjob.result is not None:
        out["result"] = rjob.result.report
        out["report_html"] = f"/tagloop/v1/jobs/{job.id}/report.html"
    elif job.state in ("failed", "cancelled") and job.future.done():
        exc = job.future.exception()
        out["error"] = str(exc) if exc is not None else None
    return out


@router.delete("/jobs/{job_id}")
def cancel_job(request: Request, job_id: str) -> Json:
    """Cancel a reproduce job: a waiting one never runs, a running one stops at its next sampling step
    (what it finished stays in its folder). A finished job is left as it is."""
    rjob = _job(request, job_id)
    if rjob.job.state in ("queued", "running"):
        _state(request).worker.cancel(rjob.job)
    return {"id": rjob.job.id, "status": rjob.job.state}


@router.get("/jobs/{job_id}/{path:path}")
def job_file(request: Request, job_id: str, path: str):
    """``report.html`` and the files it links (``source.png``, ``variants/...``), from the job's folder."""
    rjob = _job(request, job_id)
    if rjob.job.state != "done":
        raise ApiError(f"job {job_id} is {rjob.job.state}; its report is there once it is done.", 409)
    root = rjob.folder.resolve()
    target = (root / path).resolve()
    if root not in target.parents and target != root or not target.is_file():
        raise NotFound(f"job {job_id} has no file {path!r}.")
    media = "text/html; charset=utf-8" if target.suffix == ".html" else None
    return FileResponse(target, media_type=media)


# -- status -----------------------------------------------------------------------------------------


@router.get("/status")
def status(request: Request) -> Json:
    state = _state(request)
    snap = state.worker.snapshot()
    cp = state.current_checkpoint
    return {
        "taggers": state.tagger_names(),
        "model": cp.title if cp else None,
        "queue": {
            "waiting": snap["queued"],
            "running": [j.name for j in snap["running"]],
            "size": state.settings.queue_size,
            "closed": snap["closed"],
        },
        "counters": {k: snap[k] for k in ("jobs", "batches", "batched_jobs", "batched_images", "rejected", "cancelled")},
        "tag_batch": state.settings.tag_batch,
        "limits": vars(state.settings.limits),
        "uptime": round(time.time() - state.started, 1),
    }


# -- the web page -----------------------------------------------------------------------------------

STATIC = Path(__file__).parent / "static"


def mount_page(app) -> None:
    """``/`` serves the page; ``/static/...`` its script and style (shipped in the package)."""
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        index = STATIC / "index.html"
        if not index.is_file():
            return HTMLResponse("<!doctype html><title>tagloop</title><p>tagloop server</p>")
        return HTMLResponse(index.read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
