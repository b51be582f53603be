"""The WD14 tagger extension's routes (``/tagger/v1``), which its users' scripts call.

``POST /tagger/v1/interrogate {image, model, threshold=0.35}`` answers as toriato's extension does:
``{"caption": {rating: confidence, ..., tag: confidence, ...}}``, the four ratings first, then every
tag with confidence >= threshold, highest first, names as the model spells them (underscores).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool

from .errors import ApiError, NotFound
from .images import decode_image

router = APIRouter(prefix="/tagger/v1", tags=["WD14 tagger extension"])

#: a JSON object body (every key optional, unknown keys ignored, as A1111 reads them)
JsonBody = Annotated[dict[str, Any], Body()]

#: the extension's default threshold
DEFAULT_THRESHOLD = 0.35


@router.get("/interrogators")
def interrogators(request: Request) -> dict[str, Any]:
    return {"models": request.app.state.tagloop.tagger_names()}


@router.post("/interrogate")
async def interrogate(request: Request, body: JsonBody) -> dict[str, Any]:
    from ..tagger.run import make_tag_options
    from .routes_a1111 import tag_images

    state = request.app.state.tagloop
    if not body.get("image"):
        raise NotFound("Image not found: send the image base64-encoded in `image`.")
    tagger = state.tagger_for(body.get("model") or None)
    threshold = body.get("threshold", DEFAULT_THRESHOLD)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise ApiError(f"`threshold` must be a number in 0..1, not {threshold!r}.", 422)
    options = make_tag_options(threshold=float(threshold), workers=1, max_pixels=state.settings.limits.max_pixels)
    image = await run_in_threadpool(decode_image, body["image"], state.settings.limits.max_pixels, "image")
    (result,) = await tag_images(request, tagger, [image], ["image"], [options])
    if result.error:
        raise ApiError(f"`image` cannot be tagged: {result.error}.", 422)
    caption: dict[str, float] = {name: round(float(p), 6) for name, p in result.rating.items()}
    for t in result.tags:
        caption.setdefault(t.name, round(float(t.score), 6))
    return {"caption": caption}


@router.post("/unload-interrogators")
def unload_interrogators() -> dict[str, Any]:
    """tagloop keeps its taggers loaded (that is the point of a server); nothing is unloaded."""
    return {"success": True}
