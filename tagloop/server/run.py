"""Running a server: uvicorn with tagloop's shutdown (SIGTERM finishes the job in flight, answers
queued requests 503, exits within seconds), in the foreground or in a thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator

from .settings import ServerSettings

#: seconds the job in flight may take to finish after SIGTERM before it is interrupted
GRACE_SECONDS = 10.0

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _server_class():
    import uvicorn

    class TagloopServer(uvicorn.Server):
        """uvicorn, but a stop first closes tagloop's queue (waiting requests get 503 at once) and
        interrupts the job in flight if it has not finished after :data:`GRACE_SECONDS`."""

        state: Any = None
        grace: float = GRACE_SECONDS

        def handle_exit(self, sig, frame) -> None:
            self.begin_shutdown()
            super().handle_exit(sig, frame)

        def begin_shutdown(self) -> None:
            state = self.state
            if state is None or state.worker.closed:
                return
            state.worker.close()

            def interrupt_late() -> None:
                if not state.worker.join(self.grace):
                    state.worker.interrupt()

            threading.Thread(target=interrupt_late, name="tagloop-grace", daemon=True).start()

    return TagloopServer


def _build(settings: ServerSettings, log_level: str, state: Any = None):
    import uvicorn

    from .app import create_app
    from .state import ServerState

    state = state or ServerState(settings)
    app = create_app(state=state)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(GRACE_SECONDS + 5),
        # longer than Retry-After: a client that waits and resends on its kept-alive connection finds it open
        timeout_keep_alive=state.worker.retry_after + 25,
        limit_concurrency=max(64, settings.queue_size * 4),
    )
    server = _server_class()(config)
    server.state = state
    return server, state


def serve(settings: ServerSettings, *, log_level: str = "info", echo: Callable[[str], None] = print) -> None:
    """Serve in the foreground until SIGTERM or Ctrl-C."""
    from .app import _require_fastapi

    _require_fastapi()
    settings.check()
    if settings.host not in LOOPBACK and not settings.api_auth:
        echo(
            f"warning: listening on {settings.host} without `api_auth`: anyone who can reach this machine can use "
            "the server; set `api_auth` to user:password."
        )
    server, state = _build(settings, log_level)
    taggers = ", ".join(state.tagger_names()) or "none"
    model = state.current_checkpoint.title if state.current_checkpoint else "none"
    echo(f"tagloop serve: taggers {taggers}; model {model}; http://{settings.host}:{settings.port}/ (API docs at /docs)")
    server.run()


@contextlib.contextmanager
def serve_in_thread(settings: ServerSettings, *, state: Any = None, port: int = 0, log_level: str = "warning") -> Iterator[Any]:
    """A server on loopback in a background thread (``port`` 0: a free one): ``with serve_in_thread(s) as srv: srv.url``.

    ``srv.state`` is its :class:`~tagloop.server.state.ServerState`; leaving the block stops it the
    way SIGTERM does.
    """
    import dataclasses

    settings = dataclasses.replace(settings, host="127.0.0.1", port=port)
    server, state = _build(settings, log_level, state)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # uvicorn < 0.29
    thread = threading.Thread(target=server.run, name="tagloop-serve", daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    handle = _Handle(f"http://127.0.0.1:{port}", state, server, thread)
    try:
        yield handle
    finally:
        handle.stop()


class _Handle:
    def __init__(self, url: str, state: Any, server: Any, thread: threading.Thread) -> None:
        self.url = url
        self.state = state
        self.server = server
        self.thread = thread

    def stop(self, timeout: float = 30.0) -> None:
        self.server.begin_shutdown()
        self.server.should_exit = True
        self.thread.join(timeout)
