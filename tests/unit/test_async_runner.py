"""AsyncRunner: how rows run on the event loop (no database: scripts in memory)."""

import asyncio
import threading
import time
import uuid

import pytest

from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import SandboxCeiling
from picloud.domain.scripts import handler
from picloud.models import App, Script
from picloud.runtime.async_execution import STILL_RUNNING, AsyncRunner
from picloud.runtime.execution import Prepared, Success
from picloud.runtime.handler_threads import HandlerThreads

GATE = threading.Event()
TAKEN = threading.Event()


@handler("tests.runner.block")
def block(event, ctx):
    TAKEN.set()
    GATE.wait(10)
    return "done"


@handler("tests.runner.quick")
def quick(event, ctx):
    return "quick"


def prepared(handler_name):
    app = App(id=uuid.uuid4(), slug="runner", name="Runner")
    script = Script(app=app, name=handler_name, runtime="python", handler=handler_name)
    row = MemoryOutboxRepo().insert(NewOutboxRow(app.id, "kv", uuid.uuid4(), None, {}))
    return Prepared(row, script, None)


@pytest.fixture
def threads():
    GATE.clear()
    TAKEN.clear()
    pool = HandlerThreads(1)
    yield pool
    GATE.set()
    pool.close()


def test_a_plain_row_that_finds_no_thread_soon_goes_back(threads):
    runner = AsyncRunner(
        SandboxCeiling(timeout_ms=5000), threads=threads, post=None, plain_start_wait=0.2
    )
    far = time.monotonic() + 60  # its lease would allow a long wait

    async def main():
        outcomes = []
        runner.start(prepared("tests.runner.block"), start_by=far, on_outcome=outcomes.append)
        while not TAKEN.is_set():
            await asyncio.sleep(0.01)
        started = time.monotonic()
        waited = await runner.run(prepared("tests.runner.quick"), start_by=far)
        assert waited is None, "not started: handed back, not held for the lease"
        assert time.monotonic() - started < 5
        GATE.set()
        while not outcomes:
            await asyncio.sleep(0.01)
            threads.expire()
        assert outcomes == [Success("done")]
        assert await runner.run(prepared("tests.runner.quick"), start_by=far) == Success("quick")

    asyncio.run(main())


@handler("tests.runner.async_block")
async def async_block(event, ctx):
    return await ctx.run_sync(block, event, ctx)


def test_an_async_handler_stopped_while_its_blocking_call_runs_keeps_its_row(threads):
    runner = AsyncRunner(SandboxCeiling(timeout_ms=5000), threads=threads, post=None)

    async def main():
        outcomes = []
        task = runner.start(
            prepared("tests.runner.async_block"),
            start_by=time.monotonic() + 60,
            on_outcome=outcomes.append,
        )
        while not TAKEN.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # the engine stopping past its grace
        with pytest.raises(asyncio.CancelledError):
            await task
        return outcomes

    assert asyncio.run(main()) == [STILL_RUNNING], (
        "its blocking call runs on in a thread: the row must not go to another process"
    )


def test_an_async_handler_stopped_before_any_blocking_call_goes_back(threads):
    runner = AsyncRunner(SandboxCeiling(timeout_ms=5000), threads=threads, post=None)

    async def main():
        outcomes = []
        task = runner.start(
            prepared("tests.runner.sleepy"),
            start_by=time.monotonic() + 60,
            on_outcome=outcomes.append,
        )
        await asyncio.sleep(0)  # one turn: the task runs up to its own sleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return outcomes

    assert asyncio.run(main()) == [None]


@handler("tests.runner.sleepy")
async def sleepy(event, ctx):
    await asyncio.sleep(10)
