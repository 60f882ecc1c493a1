"""Run blocking Python handlers for the event loop on a fixed number of threads.

The engine keeps a hundred executions in flight on one event loop; a plain
(``def``) handler would block that loop, so it runs here instead and the
loop awaits its result. ``size`` threads take jobs in order. Python cannot
stop a thread, so a handler that overruns its time is abandoned: its thread
finishes the call (or not) on its own and then exits, and a fresh thread
takes its place, so the pool keeps ``size`` threads that can work. At most
MAX_HUNG_HELPERS abandoned threads per process (they hold their database
connections until their call returns); past that no thread is replaced and
``saturated()`` says so, and the engine stops claiming until one ends.

Each thread keeps its Django database connection between jobs (handlers
that use ``ctx.kv`` reuse it) and closes it when the thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from picloud.runtime.sandbox import MAX_HUNG_HELPERS, SandboxTimeout, drop_broken_connections

_WAITING, _RUNNING, _WITHDRAWN = "waiting", "running", "withdrawn"


class NotStarted(Exception):
    """No thread was free to start the handler before its start-by time."""


class _Job:
    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.loop = fn, loop
        self.started: asyncio.Future[float] = loop.create_future()
        self.done: asyncio.Future[Any] = loop.create_future()
        self.state = _WAITING
        self.worker: _Worker | None = None
        self.lock = threading.Lock()


def _resolve(future: asyncio.Future, value: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the awaiting side gave up (cancelled) meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _tell(job: _Job, future: asyncio.Future, *args: Any) -> None:
    # The loop may be gone (its engine stopped while a handler still ran):
    # then nobody waits for the answer.
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_resolve, future, *args)


class _Worker:
    def __init__(self, pool: HandlerThreads, number: int) -> None:
        self.pool = pool
        self.abandoned = False
        self.thread = threading.Thread(
            target=self._loop, name=f"picloud-handler-{number}", daemon=True
        )
        self.thread.start()

    def _loop(self) -> None:
        try:
            while not self.abandoned and (job := self.pool.jobs.get()) is not None:
                with job.lock:
                    if job.state == _WITHDRAWN:
                        continue
                    job.state, job.worker = _RUNNING, self
                _tell(job, job.started, time.monotonic())
                try:
                    result, error = job.fn(), None
                except BaseException as exc:  # handed to the awaiting side, which decides
                    result, error = None, exc
                drop_broken_connections()
                _tell(job, job.done, result, error)
        finally:
            connections.close_all()  # this thread's own, rolling back what a handler left open
            self.pool.ended(self)


class HandlerThreads:
    def __init__(self, size: int, *, max_hung: int = MAX_HUNG_HELPERS) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.max_hung = size, max_hung
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._numbered = 0
        self._workers: set[_Worker] = set()
        self._hung: set[_Worker] = set()
        self._closed = False
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._numbered += 1
            self._workers.add(_Worker(self, self._numbered))

    def ended(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
            self._hung.discard(worker)
            working = len(self._workers) - len(self._hung)
            replace = not self._closed and worker.abandoned and working < self.size
        if replace:
            # An abandoned thread that finally returned frees a place again.
            self._spawn()

    def hung(self) -> int:
        """Abandoned threads still running a handler that overran its time."""
        with self._lock:
            return sum(w.thread.is_alive() for w in self._hung)

    def saturated(self) -> bool:
        """True when no thread can start a handler until an abandoned one ends."""
        with self._lock:
            working = len(self._workers) - len(self._hung)
        return working <= 0

    async def run(self, fn: Callable[[], Any], *, timeout: float, start_by: float) -> Any:
        """fn()'s result (or exception), run on one of the threads.

        `timeout` (seconds) counts from when a thread starts it; past it,
        SandboxTimeout and the thread is abandoned. NotStarted when no thread
        started it by `start_by` (time.monotonic()): the caller hands the row
        back rather than run it on a lease that could end mid-run. Cancelling
        the awaiting task withdraws a job not yet started; a started one runs
        on (nothing can stop it) and its result is dropped.
        """
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop)
        self.jobs.put(job)
        try:
            async with asyncio.timeout(max(0.0, start_by - time.monotonic())):
                started = await asyncio.shield(job.started)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with job.lock:
                if job.state == _WAITING:
                    job.state = _WITHDRAWN
                    if isinstance(exc, TimeoutError):
                        raise NotStarted() from None
                    raise
            if isinstance(exc, asyncio.CancelledError):
                raise
            started = await job.started  # it started just as the wait ended
        try:
            async with asyncio.timeout(max(0.0, started + timeout - time.monotonic())):
                return await asyncio.shield(job.done)
        except TimeoutError:
            self._abandon(job.worker)
            raise SandboxTimeout(timeout) from None

    def _abandon(self, worker: _Worker | None) -> None:
        if worker is None:
            return
        with self._lock:
            if worker.abandoned or not worker.thread.is_alive():
                return
            worker.abandoned = True
            self._hung.add(worker)
            # Keep `size` threads able to work, unless too many hang already.
            replace = not self._closed and len(self._hung) <= self.max_hung
        if replace:
            self._spawn()

    def close(self, wait: float = 5.0) -> None:
        """Let every thread finish its job and end (abandoned ones are not waited for)."""
        with self._lock:
            self._closed = True
            working = [w for w in self._workers if not w.abandoned]
        for _ in working:
            self.jobs.put(None)
        deadline = time.monotonic() + wait
        for worker in working:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
