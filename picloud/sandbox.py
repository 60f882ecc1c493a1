"""Run a callable under a wall-clock limit, in a helper thread.

Python cannot stop a thread from outside, so a handler that overruns its
time is abandoned: the caller gets a timeout at once, the helper thread
finishes (or not) on its own and then exits. Each calling thread keeps one
helper and reuses it, so a helper's database connection is reused across
executions instead of opened per call; an abandoned helper is replaced.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections


class SandboxTimeout(Exception):
    pass


@dataclass
class _Job:
    fn: Callable[[], Any]
    done: threading.Event
    result: Any = None
    error: BaseException | None = None


class _Helper:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="picloud-handler", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                try:
                    job.result = job.fn()
                except BaseException as exc:  # handed to the caller, which decides
                    job.error = exc
                finally:
                    _drop_broken_connections()
                    job.done.set()
        finally:
            connections.close_all()  # this thread's own connections

    def stop(self) -> None:
        self.jobs.put(None)


def _drop_broken_connections() -> None:
    """After a query failed, drop a connection that no longer works (say,
    PostgreSQL restarted) so the next handler reconnects instead of failing."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred and not conn.is_usable():
            conn.close()


_local = threading.local()


def run_with_timeout(fn: Callable[[], Any], timeout: float) -> Any:
    """fn()'s result or exception; SandboxTimeout if it runs past `timeout` seconds."""
    helper: _Helper | None = getattr(_local, "helper", None)
    if helper is None or not helper.thread.is_alive():
        helper = _local.helper = _Helper()
    job = _Job(fn, threading.Event())
    helper.jobs.put(job)
    if not job.done.wait(timeout):
        # Abandon this helper: it ends after the overrunning call returns.
        helper.stop()
        _local.helper = None
        raise SandboxTimeout(timeout)
    if job.error is not None:
        raise job.error
    return job.result


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
