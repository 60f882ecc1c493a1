"""Run blocking Python handlers for the event loop on a fixed number of threads.

The engine keeps a hundred executions in flight on one event loop; a plain
(``def``) handler would block that loop, so it runs here and its result is
handed back to the loop. ``size`` threads take jobs in order. Python cannot
stop a thread, so a handler that overruns its time is abandoned: its thread
finishes the call (or not) on its own and then exits, and a fresh thread
takes its place, so the pool keeps ``size`` threads that can work. At most
``max_hung`` (MAX_HUNG_HELPERS) abandoned threads get a replacement; past
that ``saturated()`` may say so, and the engine stops claiming until one ends.

Built for many short handlers: a job costs no asyncio task, future or timer.
Finished jobs are handed to the loop in batches (one wake-up of the loop for
whatever finished meanwhile), and time limits are enforced by ``expire()``,
which the loop calls often (the engine: at least every EXPIRE_EVERY).

Each thread keeps its Django database connection between jobs (handlers
that use ``ctx.kv`` reuse it) and closes it when the thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from django.db import connections

from picloud.runtime.sandbox import (
    MAX_HUNG_HELPERS,
    SandboxTimeout,
    drop_broken_connections,
    drop_closed_connections,
)

EXPIRE_EVERY = 0.05  # seconds: how late a time limit may be noticed, at most

# A job's states; its lock guards every change, so exactly one of the
# worker (finished) and expire() (withdrawn, timed out) settles it.
_WAITING, _RUNNING, _SETTLED = 0, 1, 2

Done = Callable[[Any, BaseException | None], None]  # done(result, error), on the loop


class NotStarted(Exception):
    """No thread was free to start the handler before its start-by time."""


class StillRunning(Exception):
    """Stopping while the handler runs: its outcome will never be known here."""


class _Job:
    __slots__ = ("done", "fn", "lock", "start_by", "started_at", "state", "timeout", "worker")

    def __init__(self, fn: Callable[[], Any], timeout: float, start_by: float, done: Done):
        self.fn, self.timeout, self.start_by, self.done = fn, timeout, start_by, done
        self.state = _WAITING
        self.started_at = 0.0
        self.worker: _Worker | None = None
        self.lock = threading.Lock()

    def deadline(self) -> float:
        return self.start_by if self.state == _WAITING else self.started_at + self.timeout


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
                    if job.state != _WAITING:
                        continue  # withdrawn meanwhile
                    job.state, job.started_at, job.worker = _RUNNING, time.monotonic(), self
                drop_closed_connections()
                try:
                    result, error = job.fn(), None
                except BaseException as exc:  # handed to the loop, which decides
                    result, error = None, exc
                drop_broken_connections()
                with job.lock:
                    if job.state != _RUNNING:
                        continue  # timed out meanwhile: nobody waits for this
                    job.state = _SETTLED
                self.pool.finished(job, result, error)
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
        self._loop: asyncio.AbstractEventLoop | None = None
        # Jobs submitted and not yet handed back: touched on the loop only.
        self._live: set[_Job] = set()
        # Finished jobs on their way to the loop, and whether a wake-up of
        # the loop is already on its way for them.
        self._results: deque[tuple[_Job, Any, BaseException | None]] = deque()
        self._wake_pending = False
        for _ in range(size):
            self._spawn()

    # -- on the event loop --------------------------------------------------

    def submit(self, fn: Callable[[], Any], *, timeout: float, start_by: float, done: Done) -> _Job:
        """Run fn() on a thread; done(result, error) is called on the loop.

        error is fn's exception, SandboxTimeout when it ran past `timeout`
        seconds from its start (its thread is then abandoned), or NotStarted
        when no thread started it by `start_by` (time.monotonic()): the
        caller hands its row back rather than run it on a lease that could
        end mid-run.
        """
        self._loop = asyncio.get_running_loop()  # one loop at a time: the latest caller's
        job = _Job(fn, timeout, start_by, done)
        self._live.add(job)
        self.jobs.put(job)
        return job

    def withdraw(self, job: _Job) -> bool:
        """Take back a job no thread has started (done is not called); False
        once it started or was handed back."""
        with job.lock:
            if job.state != _WAITING:
                return False
            job.state = _SETTLED
        self._live.discard(job)
        return True

    async def run(
        self,
        fn: Callable[[], Any],
        *,
        timeout: float,
        start_by: float,
        on_cancel_running: Callable[[], None] = lambda: None,
    ) -> Any:
        """submit() for one caller that awaits the result. Cancelling the
        caller withdraws a job not yet started; one already running runs on
        (nothing can stop it), and `on_cancel_running` is called."""
        future = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if not future.done():
                future.set_exception(error) if error else future.set_result(result)

        job = self.submit(fn, timeout=timeout, start_by=start_by, done=done)
        try:
            return await self.wait(future)
        except asyncio.CancelledError:
            if not self.withdraw(job):
                on_cancel_running()  # it runs on; its result is dropped
            raise

    async def wait(self, future: asyncio.Future) -> Any:
        """Await `future`, enforcing the jobs' time limits meanwhile (for a
        caller that is not the engine, whose loop calls expire() itself)."""
        while not future.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXPIRE_EVERY):
                    await asyncio.shield(future)
            self.expire()
        return future.result()

    @property
    def live(self) -> int:
        """Jobs submitted and not yet handed back."""
        return len(self._live)

    def expire(self, now: float | None = None) -> None:
        """Hand back every job past its time: NotStarted for one still
        waiting at its start-by time, SandboxTimeout for one running past its
        timeout (its thread abandoned)."""
        now = time.monotonic() if now is None else now
        for job in [j for j in self._live if j.deadline() <= now]:
            with job.lock:
                state = job.state
                if state == _SETTLED or job.deadline() > now:
                    continue
                job.state = _SETTLED
            if state == _RUNNING:
                self._abandon(job.worker)
                self._hand_back(job, None, SandboxTimeout(job.timeout))
            else:
                self._hand_back(job, None, NotStarted())

    def withdraw_all(self) -> None:
        """Stopping: every job not started is handed back (NotStarted); a
        running one is reported StillRunning: its thread runs on (nothing can
        stop it), so its row must not be handed to another process, which
        would run it a second time alongside."""
        for job in list(self._live):
            with job.lock:
                if job.state == _SETTLED:
                    continue
                running = job.state == _RUNNING
                job.state = _SETTLED
            self._hand_back(job, None, StillRunning() if running else NotStarted())

    def _hand_back(self, job: _Job, result: Any, error: BaseException | None) -> None:
        if job in self._live:
            self._live.discard(job)
            job.done(result, error)

    def _deliver(self) -> None:
        self._wake_pending = False
        while self._results:
            job, result, error = self._results.popleft()
            self._hand_back(job, result, error)

    # -- on the threads -----------------------------------------------------

    def finished(self, job: _Job, result: Any, error: BaseException | None) -> None:
        self._results.append((job, result, error))
        with self._lock:
            if self._wake_pending:
                return  # the loop will take this one with the others
            self._wake_pending = True
        # The loop may be gone (its engine stopped while a handler still
        # ran): then nobody waits for the answer.
        with contextlib.suppress(RuntimeError, AttributeError):
            self._loop.call_soon_threadsafe(self._deliver)  # type: ignore[union-attr]

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

    # -- anywhere -----------------------------------------------------------

    def hung(self) -> int:
        """Abandoned threads still running a handler that overran its time."""
        with self._lock:
            return sum(w.thread.is_alive() for w in self._hung)

    def saturated(self) -> bool:
        """True when no thread can start a handler until an abandoned one ends."""
        with self._lock:
            return len(self._workers) - len(self._hung) <= 0

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
