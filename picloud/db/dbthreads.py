"""Run database work on a fixed set of threads, so a process holds a bounded
number of PostgreSQL connections however many requests are waiting.

Django gives every thread its own connection. A synchronous invocation
waits for seconds between two short queries; if its request thread held a
connection all that time, 200 waiting requests would hold 200 connections.
Instead the request thread hands each query to one of these threads, whose
connections stay open and are reused.
"""

from __future__ import annotations

import asyncio
import select
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django.db import DatabaseError, InterfaceError, connection

T = TypeVar("T")


class DbThreads:
    def __init__(self, size: int, *, on_connect: Callable[[], None] = lambda: None) -> None:
        """`on_connect` runs on a thread each time its connection is (re)opened."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.on_connect = size, on_connect
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="picloud-db")

    def run(self, fn: Callable[..., T], *args) -> T:
        """Run fn(*args) on one of the threads and return (or raise) its result."""
        return self._pool.submit(self._call, fn, *args).result()

    async def arun(self, fn: Callable[..., T], *args) -> T:
        """Await fn(*args) run on one of the threads (the event loop goes on meanwhile)."""
        return await asyncio.wrap_future(self._pool.submit(self._call, fn, *args))

    def _call(self, fn: Callable[..., T], *args) -> T:
        try:
            if connection.connection is not None and closed_by_server(connection.connection):
                # The server went away since the last job (a restart, a
                # failover): reconnect now rather than fail this job on it.
                connection.close()
            if connection.connection is None:
                connection.ensure_connection()
                self.on_connect()
            return fn(*args)
        except (DatabaseError, InterfaceError):
            # A dropped connection would fail every later job of this thread:
            # drop it, and the next job connects afresh.
            if connection.connection is not None and not connection.is_usable():
                connection.close()
            raise

    def close(self) -> None:
        """Close every thread's connection and stop the threads."""
        # One job per thread: each waits at the barrier until all have
        # started, so every thread runs exactly one and closes its own.
        barrier = threading.Barrier(self.size)

        def close_own() -> None:
            barrier.wait(timeout=10)
            connection.close()

        for future in [self._pool.submit(close_own) for _ in range(self.size)]:
            future.result()
        self._pool.shutdown(wait=True)


def closed_by_server(conn) -> bool:
    """Whether an idle connection has something to read. Between jobs nothing
    is owed to it (no query runs, it does not LISTEN), so that is the
    server's goodbye: its FATAL message, or the end of the stream. One poll
    of the socket, no round trip; a dead host that sent nothing is not seen.
    poll(), not select(): select() refuses descriptors past 1023."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except Exception:  # no socket left (psycopg: "the connection is lost")
        return True
