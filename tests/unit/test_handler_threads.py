"""HandlerThreads: plain handlers for the event loop, on a fixed set of threads."""

import asyncio
import threading
import time

import pytest

from picloud.runtime.handler_threads import HandlerThreads, NotStarted, StillRunning
from picloud.runtime.sandbox import SandboxTimeout
from tests.helpers import wait_for

FAR = 60.0  # seconds: a start-by time that never passes in these tests


@pytest.fixture
def pool():
    threads = HandlerThreads(2, max_hung=1)
    yield threads
    threads.close()


async def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def later(seconds=FAR):
    return time.monotonic() + seconds


def test_results_and_exceptions_come_back(pool):
    async def main():
        def boom():
            raise ValueError("x")

        assert await pool.run(lambda: 7, timeout=5, start_by=later()) == 7
        with pytest.raises(ValueError, match="x"):
            await pool.run(boom, timeout=5, start_by=later())

    asyncio.run(main())


def test_handlers_run_side_by_side_up_to_the_size(pool):
    inside, most, lock = 0, 0, threading.Lock()
    both_in = threading.Barrier(2, timeout=5)

    def handler():
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        both_in.wait()  # fails unless two run at once
        with lock:
            inside -= 1

    async def main():
        await asyncio.gather(*(pool.run(handler, timeout=5, start_by=later()) for _ in range(6)))

    asyncio.run(main())
    assert most == 2


def test_an_overrun_times_out_and_its_thread_is_replaced(pool):
    release = threading.Event()

    async def main():
        started = time.monotonic()
        with pytest.raises(SandboxTimeout):
            await pool.run(lambda: release.wait(10), timeout=0.2, start_by=later())
        assert time.monotonic() - started < 5
        assert pool.hung() == 1
        # Two threads can still work side by side: the hung one was replaced.
        both = threading.Barrier(2, timeout=5)
        await asyncio.gather(*(pool.run(both.wait, timeout=5, start_by=later()) for _ in range(2)))

    asyncio.run(main())
    release.set()
    wait_for(lambda: pool.hung() == 0, timeout=10, what="the abandoned thread to end")


def test_the_timeout_counts_from_the_start_not_from_the_queue():
    pool = HandlerThreads(1)
    gate = threading.Event()

    async def main():
        first = asyncio.create_task(pool.run(lambda: gate.wait(5), timeout=5, start_by=later()))
        second = asyncio.create_task(pool.run(lambda: "ran", timeout=0.5, start_by=later()))
        await asyncio.sleep(0.8)  # the second waits in the queue longer than its timeout
        gate.set()
        assert await first is True
        assert await second == "ran"

    try:
        asyncio.run(main())
    finally:
        pool.close()


def test_a_job_no_thread_starts_by_its_start_by_time_is_not_started():
    pool = HandlerThreads(1)
    gate, taken, ran = threading.Event(), threading.Event(), []

    def occupy():
        taken.set()
        return gate.wait(5)

    async def main():
        busy = asyncio.create_task(pool.run(occupy, timeout=5, start_by=later()))
        await until(taken.is_set)  # it holds the only thread
        with pytest.raises(NotStarted):
            await pool.run(lambda: ran.append(1), timeout=5, start_by=later(0.2))
        gate.set()
        await busy
        assert await pool.run(lambda: "next", timeout=5, start_by=later()) == "next"

    try:
        asyncio.run(main())
    finally:
        pool.close()
    assert ran == [], "a withdrawn job never runs"


def test_past_the_hung_limit_no_thread_is_replaced_and_the_pool_says_saturated():
    pool = HandlerThreads(1, max_hung=1)
    release = threading.Event()

    async def main():
        for _ in range(2):
            with pytest.raises(SandboxTimeout):
                await pool.run(lambda: release.wait(10), timeout=0.1, start_by=later())
        assert pool.saturated()

    try:
        asyncio.run(main())
        release.set()
        wait_for(lambda: not pool.saturated(), timeout=10, what="a hung thread to end")
        assert asyncio.run(pool.run(lambda: "again", timeout=5, start_by=later())) == "again"
    finally:
        pool.close()


def test_cancelling_the_waiter_withdraws_a_job_not_yet_started():
    pool = HandlerThreads(1)
    gate, taken, ran = threading.Event(), threading.Event(), []

    def occupy():
        taken.set()
        return gate.wait(5)

    async def main():
        busy = asyncio.create_task(pool.run(occupy, timeout=5, start_by=later()))
        await until(taken.is_set)
        queued = asyncio.create_task(pool.run(lambda: ran.append(1), timeout=5, start_by=later()))
        await asyncio.sleep(0)  # it queues its job
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        gate.set()
        await busy
        assert await pool.run(lambda: "after", timeout=5, start_by=later()) == "after"

    try:
        asyncio.run(main())
    finally:
        pool.close()
    assert ran == []


def test_stopping_hands_back_waiting_jobs_and_reports_running_ones_as_still_running():
    pool = HandlerThreads(1)
    gate, taken = threading.Event(), threading.Event()
    told = {}

    def occupy():
        taken.set()
        return gate.wait(5)

    async def main():
        pool.submit(occupy, timeout=5, start_by=later(), done=lambda r, e: told.update(run=e))
        await until(taken.is_set)
        pool.submit(
            lambda: None, timeout=5, start_by=later(), done=lambda r, e: told.update(wait=e)
        )
        pool.withdraw_all()

    try:
        asyncio.run(main())
    finally:
        gate.set()
        pool.close()
    assert isinstance(told["run"], StillRunning), (
        "it runs on: its row must not go to another process"
    )
    assert isinstance(told["wait"], NotStarted)
