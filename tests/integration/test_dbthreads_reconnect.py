"""DbThreads after the server drops every connection (a restart, a failover):
each thread sees its connection closed and reconnects before its next job,
instead of failing one job each on a dead connection."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import OperationalError, connection

from picloud.db.dbthreads import DbThreads
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SIZE = 3


def _on_every_thread(pool: DbThreads) -> list:
    """Each thread's backend pid, or the error its job raised: SIZE jobs at
    once, held at a barrier so that each runs on a thread of its own."""
    barrier = threading.Barrier(SIZE)

    def backend_pid():
        barrier.wait(timeout=10)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    def job():
        try:
            return pool.run(backend_pid)
        except OperationalError as exc:
            return exc

    with ThreadPoolExecutor(SIZE) as callers:
        return list(callers.map(lambda _: job(), range(SIZE)))


def _backends_alive(pids) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)])
        return cursor.fetchone()[0]


def test_after_the_server_closed_every_connection_no_job_fails_on_one():
    pool = DbThreads(SIZE)
    try:
        before = _on_every_thread(pool)
        assert all(isinstance(pid, int) for pid in before) and len(set(before)) == SIZE, before
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [before]
            )
        wait_for(lambda: _backends_alive(before) == 0, timeout=10, what="the backends gone")

        after = _on_every_thread(pool)
        failed = [r for r in after if not isinstance(r, int)]
        assert not failed, f"jobs failed on connections the server had closed: {failed}"
        assert not set(after) & set(before), (before, after)
    finally:
        pool.close()
