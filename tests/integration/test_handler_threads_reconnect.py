"""Handler threads after the server ended their sessions (a restart, a
failover, a terminated backend): a handler's first query reconnects instead
of failing, which would cost its row an attempt (and, after a few such
faults, make a healthy row a dead letter)."""

import asyncio
import threading
import time

import pytest
from django.db import connection

from picloud.runtime.handler_threads import HandlerThreads
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SIZE = 2


def _on_every_thread(pool: HandlerThreads) -> list:
    """Each thread's backend pid, or the error its job raised."""
    barrier = threading.Barrier(SIZE)

    def backend_pid():
        barrier.wait(timeout=10)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    async def jobs():
        start_by = time.monotonic() + 10
        calls = [pool.run(backend_pid, timeout=10, start_by=start_by) for _ in range(SIZE)]
        return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(jobs())


def _alive(pids) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)])
        return cursor.fetchone()[0]


def test_a_handler_after_its_session_was_ended_runs_on_a_new_one():
    pool = HandlerThreads(SIZE)
    try:
        before = _on_every_thread(pool)
        assert all(isinstance(pid, int) for pid in before) and len(set(before)) == SIZE, before
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [before]
            )
        wait_for(lambda: _alive(before) == 0, timeout=10, what="the sessions ended")

        after = _on_every_thread(pool)
        failed = [r for r in after if not isinstance(r, int)]
        assert not failed, f"handlers failed on sessions the server had ended: {failed}"
        assert not set(after) & set(before)
    finally:
        pool.close()
