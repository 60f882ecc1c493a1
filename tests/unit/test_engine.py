"""The engine on in-memory repositories: many rows in flight on one event
loop, outcomes settled by the production Dispatcher, stopping hands back."""

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from deadletters.memory_repository import MemoryDeadLetterRepo
from outbox.dispatch.dispatcher import Dispatcher
from outbox.dispatch.engine import Engine
from outbox.dispatch.metrics import Counters
from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import DispatcherConfig, RetryPolicy, SandboxCeiling, TriggerConfig
from picloud.runtime.async_execution import STILL_RUNNING
from picloud.runtime.execution import Failure, Prepared, Success
from triggers.memory_repository import MemoryTriggerRepo

APP, SCRIPT, PRINCIPAL = (uuid.uuid4() for _ in range(3))
CEILING = SandboxCeiling(timeout_ms=5_000)


class InlineDb:
    """The engine's database thread, for repositories that need none."""

    async def arun(self, fn, *args):
        return fn(*args)


class Store:
    def __init__(self):
        self.totals = {}

    def add(self, increments):
        for name, n in increments.items():
            self.totals[name] = self.totals.get(name, 0) + n


class Runner:
    """Stands in for running scripts: each row waits on `gate` (so tests
    hold many in flight), then returns the outcome its payload asks for."""

    def __init__(self):
        self.gate = asyncio.Event()
        self.inside = self.most = 0
        self.started = []

        class Threads:  # no plain handlers here
            live = 0
            saturated = staticmethod(lambda: False)
            expire = withdraw_all = staticmethod(lambda *now: None)

        self.threads = Threads()

    def start(self, prepared, *, start_by, on_outcome):
        return asyncio.create_task(self._run(prepared, on_outcome))

    async def _run(self, prepared, on_outcome):
        row = prepared.row
        self.started.append(row.id)
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            if row.payload.get("not_started"):
                on_outcome(None)
                return
            if not row.payload.get("fast"):
                await self.gate.wait()
        except asyncio.CancelledError:
            # A plain handler's thread runs on when the engine stops.
            on_outcome(STILL_RUNNING if row.payload.get("thread") else None)
            raise
        finally:
            self.inside -= 1
        if row.payload.get("fail"):
            on_outcome(Failure("boom", retryable=True))
        else:
            on_outcome(Success(row.payload.get("n")))


@pytest.fixture
def world():
    clock = lambda: datetime.now(UTC)  # noqa: E731
    outbox = MemoryOutboxRepo(clock)
    dispatcher = Dispatcher(
        outbox=outbox,
        triggers=MemoryTriggerRepo(),
        dead_letters=MemoryDeadLetterRepo(clock),
        replies=None,
        counters=Counters(),
        config=TriggerConfig(retry=RetryPolicy(max_attempts=3, base_delay_ms=60_000, jitter=0.0)),
        ceiling=CEILING,
        clock=clock,
        rand=lambda: 0.0,
    )

    class World:
        pass

    w = World()
    w.outbox, w.dispatcher, w.runner, w.store = outbox, dispatcher, Runner(), Store()
    w.stopping = threading.Event()

    def engine(**config):
        return Engine(
            dispatcher=dispatcher,
            runner=w.runner,
            db=InlineDb(),
            counters=dispatcher.counters,
            counter_store=w.store,
            stopping=w.stopping,
            config=DispatcherConfig(**{"shutdown_grace_ms": 2_000, **config}),
            ceiling=CEILING,
            prepare_rows=lambda rows, _ceiling: [Prepared(r, None, None) for r in rows],
        )

    w.engine = engine
    return w


def enqueue(world, n, **payload):
    return [
        world.outbox.insert(NewOutboxRow(APP, "kv", SCRIPT, PRINCIPAL, {"n": i, **payload}))
        for i in range(n)
    ]


async def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_rows_run_side_by_side_up_to_max_in_flight_and_no_further(world):
    enqueue(world, 250)
    engine = world.engine(max_in_flight=100, max_batch=30)

    async def main():
        task = asyncio.create_task(engine.main())
        await until(lambda: world.runner.inside == 100)
        await asyncio.sleep(0.05)  # given the chance, it must not start more
        assert world.runner.inside == 100 and engine.in_flight == 100
        world.runner.gate.set()
        await until(lambda: not world.outbox.rows and not world.dispatcher.pending_acks)
        world.stopping.set()
        engine.wake()
        await task

    asyncio.run(main())
    assert world.runner.most == 100
    assert len(set(world.runner.started)) == 250
    assert world.store.totals["dispatched"] == 250 and world.store.totals["succeeded"] == 250


def test_failures_are_rescheduled_by_the_dispatcher(world):
    (row,) = enqueue(world, 1, fail=True, fast=True)
    engine = world.engine()

    async def main():
        task = asyncio.create_task(engine.main())
        await until(lambda: world.outbox.get(row.id).last_error == "boom")
        world.stopping.set()
        engine.wake()
        await task

    asyncio.run(main())
    kept = world.outbox.get(row.id)
    assert kept.attempts == 1 and kept.errors == ("boom",)


def test_a_row_no_thread_could_start_goes_back_uncounted(world):
    (row,) = enqueue(world, 1, not_started=True)
    engine = world.engine()

    async def main():
        task = asyncio.create_task(engine.main())
        await until(lambda: world.runner.started)
        world.stopping.set()
        engine.wake()
        await task

    asyncio.run(main())
    back = world.outbox.get(row.id)
    assert back is not None and back.attempts == 0 and back.errors == ()


def test_stopping_settles_what_finishes_in_the_grace_and_hands_back_the_rest(world):
    fast = enqueue(world, 3, fast=True)
    slow = enqueue(world, 5)
    engine = world.engine(shutdown_grace_ms=200)

    async def main():
        task = asyncio.create_task(engine.main())
        await until(lambda: world.runner.inside == 5)
        world.stopping.set()
        engine.wake()
        await task

    asyncio.run(main())
    assert all(world.outbox.get(r.id) is None for r in fast), "finished rows are acknowledged"
    for r in slow:
        back = world.outbox.get(r.id)
        assert back is not None and back.attempts == 0, "cut off at the grace: handed back"


def test_rows_that_finish_within_the_grace_are_settled_not_handed_back(world):
    rows = enqueue(world, 5)
    engine = world.engine(shutdown_grace_ms=5_000)

    async def main():
        task = asyncio.create_task(engine.main())
        await until(lambda: world.runner.inside == 5)
        world.stopping.set()
        engine.wake()
        await asyncio.sleep(0.05)  # stopping has begun; the rows are still running
        world.runner.gate.set()
        await task

    asyncio.run(main())
    assert all(world.outbox.get(r.id) is None for r in rows), "finished in the grace: acknowledged"


def test_a_handler_still_running_in_its_thread_at_the_end_keeps_its_lease(world):
    (row,) = enqueue(world, 1, thread=True)
    engine = world.engine(shutdown_grace_ms=100)

    async def main():
        task = asyncio.create_task(engine.main())
        await until(lambda: world.runner.inside == 1)
        world.stopping.set()
        engine.wake()
        await task

    asyncio.run(main())
    kept = world.outbox.get(row.id)
    assert kept.attempts == 1 and world.outbox.leased_until[row.id] > datetime.now(UTC), (
        "not handed back: another process would run it beside the thread still running it"
    )
