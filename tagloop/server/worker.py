"""One worker thread that owns the models: a bounded queue, run in submission order.

Every piece of model work (tagging, generation, a reproduce job) is a :class:`Job` with one
:class:`concurrent.futures.Future`, so each request is answered exactly once: with its result, its
error, 503 when the queue is full or the server stops, or not at all when its client went away
(a queued job is dropped, a running one is told to stop at its next step).

Tag jobs of the same tagger that wait next to each other run as one forward pass (up to
``tag_batch`` images), each image thresholded by its own request's options. Host work (base64,
decoding, the edge density, preprocessing) happens in the request's thread, before the job is
queued, so it runs in parallel with the model.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Hashable

from .errors import Cancelled, Unavailable


class JobStopped(BaseException):
    """Raised inside a long job's work (a reproduce run) when it is cancelled, so that no stage that
    records one variant's failure and goes on can swallow it (like ``KeyboardInterrupt``)."""


class Job:
    """One request's work for the worker.

    ``fn(job)`` runs it (not for batched jobs, whose ``payload`` the batch runner reads); ``size`` is
    how many images it adds to a batch. ``stop`` is set when the client goes away or asks to
    interrupt; long work checks it (``job.stopping``) and ends early.
    """

    def __init__(
        self,
        kind: str,
        fn: Callable[[Job], Any] | None = None,
        *,
        batch_key: Hashable | None = None,
        payload: Any = None,
        size: int = 1,
        name: str = "",
    ) -> None:
        self.id = uuid.uuid4().hex
        self.kind = kind
        self.fn = fn
        self.batch_key = batch_key
        self.payload = payload
        self.size = max(1, int(size))
        self.name = name or kind
        self.future: Future = Future()
        self.stop = threading.Event()
        self.state = "queued"  # queued, running, done, failed, cancelled
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.step = 0
        self.steps = 0
        self.progress = 0.0
        self.text = ""

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    def set_progress(self, step: int, steps: int, overall: float | None = None) -> None:
        self.step, self.steps = int(step), int(steps)
        self.progress = float(overall) if overall is not None else (step / steps if steps else 0.0)


class Worker:
    """The queue and its one thread. ``run_batch(jobs)`` runs a list of batched jobs and returns one
    result (or exception instance) per job, in order."""

    def __init__(
        self,
        queue_size: int = 64,
        tag_batch: int = 32,
        run_batch: Callable[[list[Job]], list[Any]] | None = None,
        retry_after: int = 5,
    ) -> None:
        self.queue_size = int(queue_size)
        self.tag_batch = int(tag_batch)
        self.run_batch = run_batch
        self.retry_after = int(retry_after)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._current: list[Job] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = {"jobs": 0, "batches": 0, "batched_jobs": 0, "batched_images": 0, "rejected": 0, "cancelled": 0}

    # -- the client side ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tagloop-worker", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``, or raise :class:`Unavailable` (503) when the queue is full or closing."""
        with self._cond:
            if self._closed:
                self.stats["rejected"] += 1
                raise Unavailable("the server is stopping; send the request again once it is back.", headers=self._retry())
            if len(self._queue) >= self.queue_size:
                self.stats["rejected"] += 1
                raise Unavailable(
                    f"the queue is full ({len(self._queue)} requests waiting, `queue_size` {self.queue_size}); "
                    "retry after a few seconds.",
                    headers=self._retry(),
                )
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, or ask it to stop if it runs."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                job.state = "cancelled"
                self.stats["cancelled"] += 1
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(Cancelled("the client went away"))
                return
        job.stop.set()

    def interrupt(self) -> int:
        """A1111's ``/interrupt``: the running job stops at its next step; returns how many were told."""
        with self._cond:
            running = list(self._current)
        for job in running:
            job.stop.set()
        return len(running)

    def close(self) -> int:
        """Stop accepting work and answer every queued job 503; the running one finishes."""
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            job.state = "cancelled"
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(
                    Unavailable("the server is stopping; send the request again once it is back.", headers=self._retry())
                )
        return len(waiting)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def snapshot(self) -> dict[str, Any]:
        """Queue length and the running jobs (for ``/sdapi/v1/progress`` and ``/tagloop/v1/status``)."""
        with self._cond:
            return {"queued": len(self._queue), "running": list(self._current), "closed": self._closed, **self.stats}

    def _retry(self) -> dict[str, str]:
        # a new connection for the retry: no resend can meet a kept-alive connection the server is closing
        return {"Retry-After": str(self.retry_after), "Connection": "close"}

    # -- the worker side ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                first = self._queue.popleft()
                batch = [first]
                if first.batch_key is not None and self.run_batch is not None:
                    images = first.size
                    while (
                        self._queue
                        and self._queue[0].batch_key == first.batch_key
                        and images + self._queue[0].size <= self.tag_batch
                    ):
                        images += self._queue[0].size
                        batch.append(self._queue.popleft())
                batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
                self._current = batch
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._current = []

    def _run(self, batch: list[Job]) -> None:
        now = time.time()
        for job in batch:
            job.state, job.started = "running", now
        self.stats["jobs"] += len(batch)
        if not batch:
            return
        if batch[0].batch_key is not None and self.run_batch is not None:
            self.stats["batches"] += 1
            self.stats["batched_jobs"] += len(batch)
            self.stats["batched_images"] += sum(j.size for j in batch)
            try:
                results = self.run_batch(batch)
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
                results = [e] * len(batch)
            for job, result in zip(batch, results):
                self._finish(job, result)
            return
        job = batch[0]
        try:
            result = job.fn(job) if job.fn is not None else None
        except BaseException as e:  # noqa: BLE001 - the request gets the error, the worker goes on
            result = e
        self._finish(job, result)

    @staticmethod
    def _finish(job: Job, result: Any) -> None:
        job.finished = time.time()
        if isinstance(result, JobStopped):
            result = Cancelled("the job was cancelled")
        if isinstance(result, BaseException):
            job.state = "cancelled" if isinstance(result, Cancelled) else "failed"
            job.future.set_exception(result)
        else:
            job.state = "done"
            job.future.set_result(result)


async def wait_for(job: Job, worker: Worker, request: Any | None = None, poll: float = 0.25) -> Any:
    """Await ``job`` from a request handler; a client that disconnects cancels it (:class:`Cancelled`)."""
    fut = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({fut}, timeout=poll)
        if done:
            return fut.result()
        if request is not None and await request.is_disconnected():
            worker.cancel(job)
            raise Cancelled("the client went away")
