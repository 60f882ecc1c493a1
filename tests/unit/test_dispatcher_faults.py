"""When a statement that settles outcomes fails, nothing that ran is lost or run again.

Rows run through the same batch path production uses (RowExecutor.run_batch:
a helper thread runs the batch ahead of the settling loop), with the outcome
of each row decided by the test (RowExecutor's run_row), on in-memory repositories that fail on
demand the way PostgreSQL does (a refused value, or a connection gone).
"""

import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest

from deadletters.memory_repository import MemoryDeadLetterRepo
from outbox.dispatch.dispatcher import Dispatcher
from outbox.dispatch.metrics import Counters
from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import RetryPolicy, SandboxCeiling, TriggerConfig, WebhookConfig
from picloud.runtime.execution import Failure, RowExecutor, Success
from tests.unit.test_dispatcher import Clock, Replies
from triggers.memory_repository import MemoryTriggerRepo

APP, SCRIPT, PRINCIPAL = (uuid.uuid4() for _ in range(3))
CEILING = SandboxCeiling(timeout_ms=5_000)


class DatabaseGone(Exception):
    """What a statement raises while the database is unreachable."""


class FaultyOutbox(MemoryOutboxRepo):
    """Fails every statement while `down`; refuses errors that are not
    printable ASCII when `ascii_only` (as PostgreSQL refuses NUL: a value it
    cannot store)."""

    def __init__(self, clock):
        super().__init__(clock)
        self.down = False
        self.ascii_only = False

    def _check(self):
        if self.down:
            raise DatabaseGone("connection lost")

    def claim_due(self, limit, lease, *, ack=()):
        self._check()
        return super().claim_due(limit, lease, ack=ack)

    def delete(self, row_ids):
        self._check()
        return super().delete(row_ids)

    def release(self, row_ids):
        self._check()
        return super().release(row_ids)

    def reschedule(self, row_id, due_at, error):
        self._check()
        if self.ascii_only and not (error.isascii() and error.isprintable()):
            raise ValueError("the database refused the error text")
        return super().reschedule(row_id, due_at, error)


class CountingScripts:
    """Stands in for running a script: `outcome(row)` decides each result;
    counts executions per row. Reached through a real RowExecutor."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.runs = Counter()
        self.lock = threading.Lock()

    def __call__(self, row, **_limits):
        with self.lock:
            self.runs[row.id] += 1
        return self.outcome(row)


def executor_for(scripts):
    return RowExecutor(CEILING, WebhookConfig(), run_row=scripts)


@pytest.fixture
def world():
    clock = Clock()
    outbox = FaultyOutbox(clock)
    dispatcher = Dispatcher(
        outbox=outbox,
        triggers=MemoryTriggerRepo(),
        dead_letters=MemoryDeadLetterRepo(clock),
        replies=Replies(),
        counters=Counters(),
        config=TriggerConfig(retry=RetryPolicy(3, 1000, 1000, 0.0)),
        ceiling=CEILING,
        clock=clock,
        rand=lambda: 0.0,
    )
    return clock, outbox, dispatcher


def _enqueue(outbox, n):
    return [outbox.insert(NewOutboxRow(APP, "kv", SCRIPT, PRINCIPAL, {"n": i})) for i in range(n)]


def _drain(clock, outbox, dispatcher, rounds=20):
    for _ in range(rounds):
        while dispatcher.run_once(limit=10).claimed:
            pass
        dispatcher.flush_acks()
        next_due = outbox.next_due_at()
        if next_due is None:
            return
        clock.now = max(clock.now, next_due)
    raise AssertionError("the outbox did not drain")


def test_outcomes_survive_a_settling_statement_that_fails(world):
    clock, outbox, dispatcher = world
    rows = _enqueue(outbox, 6)
    first = rows[0].id

    def outcome(row):
        if row.id == first and row.attempts == 1:
            outbox.down = True  # the database goes away while this batch runs
            return Failure("first attempt failed", retryable=True)
        return Success(None)

    executor = CountingScripts(outcome)
    dispatcher.executor = executor_for(executor)
    with pytest.raises(DatabaseGone):
        dispatcher.run_once(limit=10)

    outbox.down = False
    clock.advance(dispatcher.lease + 1)  # every lease of that claim has run out
    _drain(clock, outbox, dispatcher)

    assert outbox.rows == {}
    expected = Counter({r.id: 1 for r in rows}) + Counter({first: 1})
    assert executor.runs == expected, "each row ran once, the failed one once more"


def test_acknowledgements_survive_a_claim_that_fails(world):
    clock, outbox, dispatcher = world
    rows = _enqueue(outbox, 3)
    executor = CountingScripts(lambda row: Success(None))
    dispatcher.executor = executor_for(executor)
    dispatcher.run_once(limit=10)
    assert dispatcher.pending_acks, "successes wait for the next claim"

    outbox.down = True
    with pytest.raises(DatabaseGone):
        dispatcher.run_once(limit=10)
    outbox.down = False
    clock.advance(dispatcher.lease + 1)
    _drain(clock, outbox, dispatcher)

    assert outbox.rows == {}
    assert executor.runs == Counter({r.id: 1 for r in rows}), "no success ran twice"


def test_acknowledgements_survive_a_flush_that_fails(world):
    clock, outbox, dispatcher = world
    rows = _enqueue(outbox, 2)
    executor = CountingScripts(lambda row: Success(None))
    dispatcher.executor = executor_for(executor)
    dispatcher.run_once(limit=10)
    outbox.down = True
    with pytest.raises(DatabaseGone):
        dispatcher.flush_acks()
    outbox.down = False
    dispatcher.flush_acks()
    clock.advance(dispatcher.lease + 1)
    assert dispatcher.run_once(limit=10).claimed == 0
    assert outbox.rows == {}
    assert executor.runs == Counter({r.id: 1 for r in rows})


def test_a_row_whose_error_the_database_refuses_is_stored_escaped(world):
    clock, outbox, dispatcher = world
    outbox.ascii_only = True
    poison, *clean = _enqueue(outbox, 4)

    def outcome(row):
        if row.id == poison.id:
            return Failure("endpoint said: caf\u00e9\x01\n", retryable=True)
        return Success(None)

    executor = CountingScripts(outcome)
    dispatcher.executor = executor_for(executor)
    report = dispatcher.run_once(limit=10)  # does not raise
    assert report.executed == 4
    stored = outbox.get(poison.id)
    assert stored.last_error.startswith("endpoint said: caf\\xe9\\x01\\n")
    assert "stored as escaped text" in stored.last_error
    assert stored.due_at == clock.now + timedelta(seconds=1), "rescheduled with backoff"
    dispatcher.flush_acks()
    assert set(outbox.rows) == {poison.id}, "its neighbours were acknowledged"
    assert executor.runs == Counter({r.id: 1 for r in [poison, *clean]})
