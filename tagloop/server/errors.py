"""The one place where errors become HTTP status codes and A1111's error body.

A1111 answers ``{"error": <class name>, "detail": <message>, "body": ..., "errors": ...}``; so does
tagloop, with a 4xx for anything the request got wrong (A1111 answers a bad base64 image with a
500) and a 5xx only for the server's own faults.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, GPUUnavailableError, InputError, ModelFileError, ModelNotFoundError, TagloopError


class ApiError(TagloopError):
    """An error with its HTTP status (and headers, such as ``Retry-After``)."""

    http_status = 400

    def __init__(self, message: str, status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.http_status = status
        self.headers = dict(headers or {})


class NotFound(ApiError):
    http_status = 404


class PayloadTooLarge(ApiError):
    http_status = 413


class Unavailable(ApiError):
    """The queue is full or the server is stopping: try again later (503, ``Retry-After``)."""

    http_status = 503


class Cancelled(TagloopError):
    """The client went away or asked to stop; nothing is answered."""


def status_for(error: BaseException) -> int:
    """The HTTP status of an error: the one mapping of tagloop's error family to HTTP."""
    from ..tagger.preprocess import ImageDecodeError

    status = getattr(error, "http_status", None)
    if isinstance(status, int):
        return status
    if isinstance(error, ImageDecodeError):
        return 422 if "pixels" not in str(error) else 413
    if isinstance(error, ModelNotFoundError):
        return 404
    if isinstance(error, InputError):
        return 422
    if isinstance(error, (ModelFileError, ConfigError, GPUUnavailableError)):
        return 500
    if isinstance(error, TagloopError):
        return 400
    return 500


def error_body(error: BaseException, status: int) -> dict[str, Any]:
    """A1111's error shape; a 500 from a bug says so without leaking a traceback."""
    if isinstance(error, TagloopError):
        detail = str(error)
    elif status >= 500:
        detail = f"internal error ({type(error).__name__}); the server log has the details."
    else:
        detail = str(error)
    return {"error": type(error).__name__, "detail": detail, "body": "", "errors": detail}
