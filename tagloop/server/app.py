"""The FastAPI application: middleware (auth, body size), the error mapping, and the routers.

Routes are thin: they parse the request, prepare images in their own thread, queue the model work
on the one worker (:mod:`tagloop.server.worker`) and shape the answer. FastAPI is imported here
only, so ``import tagloop.server`` and the rest of tagloop never need it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
from typing import Any

from ..errors import TagloopError
from .errors import error_body, status_for
from .settings import ServerSettings
from .state import ServerState


def _require_fastapi():
    try:
        import fastapi  # noqa: F401
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError(
            'the server needs FastAPI and uvicorn, which are an optional extra: pip install "tagloop[server]".'
        ) from None


class LimitsMiddleware:
    """HTTP basic auth on every route (when set) and the request body cap, before any route runs."""

    def __init__(self, app, auth: dict[str, str], max_body: int) -> None:
        self.app = app
        self.auth = auth
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.auth and not self._authorised(headers.get("authorization", "")):
            return await _send_json(
                send, 401, {"detail": "Incorrect username or password"}, {"WWW-Authenticate": 'Basic realm="tagloop"'}
            )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _send_json(send, 413, _too_large(self.max_body))
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            received = 0
            too_large = False

            async def limited_receive():
                nonlocal received, too_large
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        too_large = True
                        raise _BodyTooLarge()
                return message

            started = False

            async def tracking_send(message):
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                await send(message)

            try:
                return await self.app(scope, limited_receive, tracking_send)
            except _BodyTooLarge:
                if not started:
                    return await _send_json(send, 413, _too_large(self.max_body))
                return None
        return await self.app(scope, receive, send)

    def _authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        expected = self.auth.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> dict[str, Any]:
    msg = f"the request body is over the server's `max_body_bytes` limit of {limit:,} bytes; send fewer or smaller images."
    return {"error": "PayloadTooLarge", "detail": msg, "body": "", "errors": msg}


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def create_app(settings: ServerSettings | None = None, *, state: ServerState | None = None):
    """The ASGI app of one server (its models loaded now; the generator on its first image request)."""
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from .. import __version__
    from . import routes_a1111, routes_tagger, routes_tagloop
    from .errors import Cancelled

    if state is None:
        state = ServerState(settings or ServerSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = FastAPI(
        lifespan=lifespan,
        title="tagloop",
        version=__version__,
        description="AUTOMATIC1111-compatible API, the WD14 tagger extension's routes, and tagloop's own loop.",
    )
    app.state.tagloop = state

    @app.exception_handler(TagloopError)
    async def tagloop_error(request: Request, exc: TagloopError):
        if isinstance(exc, Cancelled):
            return JSONResponse({"detail": "cancelled"}, status_code=499)
        status = status_for(exc)
        return JSONResponse(error_body(exc, status), status_code=status, headers=getattr(exc, "headers", None) or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"`{where}`: {err.get('msg', 'invalid')}")
        msg = "the request body is not valid: " + "; ".join(parts) + "."
        return JSONResponse({"error": "RequestValidationError", "detail": msg, "body": "", "errors": msg}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # pragma: no cover - a bug, said without a traceback
        import logging

        logging.getLogger("tagloop.server").exception("error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body(exc, 500), status_code=500)

    app.include_router(routes_a1111.router)
    app.include_router(routes_a1111.controlnet_router)
    app.include_router(routes_tagger.router)
    app.include_router(routes_tagloop.router)
    routes_tagloop.mount_page(app)

    s = state.settings
    app.add_middleware(LimitsMiddleware, auth=s.auth_pairs(), max_body=s.limits.max_body_bytes)
    return app


def get_state(request) -> ServerState:
    return request.app.state.tagloop
