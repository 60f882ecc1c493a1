"""Run callables under a wall-clock limit, in a helper thread.

Python cannot stop a thread from outside, so a callable that overruns its
time is abandoned: the caller gets a timeout at once, the helper thread
finishes (or not) on its own and then exits. Each calling thread keeps one
helper and reuses it, so the helper's database connection is reused across
executions instead of opened per call; an abandoned helper is replaced.

``run_each`` hands a whole batch to the helper in one go and reads results
as they come: one thread hand-off per batch instead of one per callable,
while each callable still gets its own time limit.

An abandoned helper keeps its thread and database connection (and any
transaction its callable left open) until the callable returns. At most
MAX_HUNG_HELPERS of them per process: past that, ``run_each`` raises
SandboxFull and nothing new starts until one ends (the dispatcher turns that
into a retryable failure, so the rows come back with backoff).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections

from picloud.db.dbthreads import closed_by_server

# Helpers still running a callable that overran its time. Each holds a
# thread and its database connection (with any transaction it left open)
# until the callable returns; past this many in one process, no further
# callable starts until one of them ends.
MAX_HUNG_HELPERS = 8


class SandboxTimeout(Exception):
    pass


class SandboxFull(Exception):
    """Too many handlers overran their time and still run in this process."""

    def __init__(self, hung: int) -> None:
        super().__init__(
            f"{hung} handler(s) in this worker process still run past their timeout "
            f"(at most {MAX_HUNG_HELPERS}); not starting another until one ends"
        )


class _Batch:
    def __init__(self, fns: Sequence[Callable[[], Any]]) -> None:
        self.fns = fns
        self.cancelled = False  # set by the caller; the helper stops before the next callable


_STOPPED = object()  # the helper's answer to a cancelled batch: nothing more comes


def drop_closed_connections() -> None:
    """Before a job: drop a connection the server closed while it sat idle
    (a restart, a failover, a terminated session), so the job's first query
    reconnects instead of failing, which would cost its row an attempt."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and closed_by_server(conn.connection):
            conn.close()


def drop_broken_connections() -> None:
    """After a query failed, drop a connection that no longer works (say,
    PostgreSQL restarted) so the next callable reconnects instead of failing."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred and not conn.is_usable():
            conn.close()


class _Helper:
    # SimpleQueue (implemented in C) hands work over and results back. The
    # results of an abandoned helper land in its own queue, which nobody
    # reads any more.
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="picloud-handler", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            while (batch := self.jobs.get()) is not None:
                for fn in batch.fns:
                    if batch.cancelled:
                        self.results.put((True, _STOPPED))
                        break
                    drop_closed_connections()
                    try:
                        outcome = (True, fn())
                    except BaseException as exc:  # handed to the caller, which decides
                        outcome = (False, exc)
                    drop_broken_connections()
                    self.results.put(outcome)
        finally:
            connections.close_all()  # this thread's own connections, rolling back what it left
            with _hung_lock:
                _hung.discard(self)

    def stop(self) -> None:
        self.jobs.put(None)


_local = threading.local()
_hung: set[_Helper] = set()
_hung_lock = threading.Lock()


def hung_helpers() -> int:
    """How many abandoned helpers still run a callable that overran its time."""
    with _hung_lock:
        return sum(h.thread.is_alive() for h in _hung)


def _helper() -> _Helper:
    helper: _Helper | None = getattr(_local, "helper", None)
    if helper is None or not helper.thread.is_alive():
        helper = _local.helper = _Helper()
    return helper


def _abandon(helper: _Helper) -> None:
    # It ends after its running callable returns; a fresh helper serves the next call.
    with _hung_lock:
        if helper.thread.is_alive():
            _hung.add(helper)
    helper.stop()
    if getattr(_local, "helper", None) is helper:
        _local.helper = None


class BatchRun:
    """Run callables in order on the helper; iterate for (True, result) or
    (False, exception) of each.

    ``next()`` raises SandboxTimeout when the running callable overruns
    `timeout` seconds; none of the rest then run. ``cancel()`` asks the helper
    to run no further callable: iteration still yields the results of those
    that ran (so the caller can settle them), then ends.
    """

    def __init__(self, fns: Sequence[Callable[[], Any]], timeout: float) -> None:
        if fns and (hung := hung_helpers()) >= MAX_HUNG_HELPERS:
            raise SandboxFull(hung)
        self.timeout = timeout
        self.expected = len(fns)
        self.received = 0
        self.finished = self.expected == 0
        self.helper = _helper()
        self.batch = _Batch(fns)
        if not self.finished:
            self.helper.jobs.put(self.batch)

    def __iter__(self) -> BatchRun:
        return self

    def __next__(self) -> tuple[bool, Any]:
        if self.finished:
            raise StopIteration
        try:
            ok, value = self.helper.results.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            raise SandboxTimeout(self.timeout) from None
        if value is _STOPPED:
            self.finished = True
            raise StopIteration
        self.received += 1
        self.finished = self.received == self.expected
        return ok, value

    def cancel(self) -> None:
        self.batch.cancelled = True

    def close(self) -> None:
        """Stop without waiting; a result may still come for the running
        callable, so this helper is not reused."""
        if not self.finished:
            self.finished = True
            self.batch.cancelled = True
            _abandon(self.helper)


def run_each(fns: Sequence[Callable[[], Any]], timeout: float) -> BatchRun:
    return BatchRun(fns, timeout)


def run_with_timeout(fn: Callable[[], Any], timeout: float) -> Any:
    """fn()'s result or exception; SandboxTimeout if it runs past `timeout` seconds."""
    ok, value = next(run_each([fn], timeout))
    if not ok:
        raise value
    return value


def stop_helper(wait: float = 5.0) -> None:
    """Let the calling thread's helper exit, closing its database connections.

    Worker threads call this when they end; `wait` bounds how long to wait for
    the helper (seconds).
    """
    helper = getattr(_local, "helper", None)
    if helper is not None:
        helper.stop()
        _local.helper = None
        helper.thread.join(wait)
