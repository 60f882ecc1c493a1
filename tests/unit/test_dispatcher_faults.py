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
from django.db import DataError

from deadletters.memory_repository import MemoryDeadLetterRepo
from outbox.dispatch.dispatcher import Dispatcher
from outbox.dispatch.metrics import Counters
from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import RetryPolicy, SandboxCeiling, TriggerConfig, WebhookConfig
from picloud.runtime.execution import Failure, RowExecutor, Success
from picloud.runtime.sandbox import SandboxFull
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

    def claim_due(self, limit, lease, *, ack=(), log=(), after_app=None):
        self._check()
        return super().claim_due(limit, lease, ack=ack, log=log, after_app=after_app)

    def delete(self, row_ids, *, log=()):
        self._check()
        return super().delete(row_ids, log=log)

    def release(self, row_ids):
        self._check()
        return super().release(row_ids)

    def reschedule(self, row_id, due_at, error, *, attempt=None):
        self._check()
        if self.ascii_only and not (error.isascii() and error.isprintable()):
            raise ValueError("the database refused the error text")
        return super().reschedule(row_id, due_at, error, attempt=attempt)


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


def test_while_hung_handlers_fill_the_process_nothing_is_claimed_or_counted(world, monkeypatch):
    """Rows nobody can run wait untouched: no attempt used, no dead letter."""
    clock, outbox, dispatcher = world
    rows = _enqueue(outbox, 5)
    scripts = CountingScripts(lambda row: Success(None))
    dispatcher.executor = executor_for(scripts)
    monkeypatch.setattr(dispatcher.executor, "saturated", lambda: True)
    for _ in range(10):  # far more than max_attempts
        report = dispatcher.run_once(limit=10)
        assert report.saturated and report.claimed == 0
    assert all(outbox.get(r.id).attempts == 0 for r in rows)
    assert not dispatcher.dead_letters.rows
    monkeypatch.undo()
    _drain(clock, outbox, dispatcher)
    assert scripts.runs == Counter({r.id: 1 for r in rows})


def test_a_batch_the_full_sandbox_refuses_is_handed_back_uncounted(world, monkeypatch):
    """The cap can be reached between the look and the start: the claimed
    rows go back with their attempt given back."""
    clock, outbox, dispatcher = world
    rows = _enqueue(outbox, 3)
    dispatcher.executor = executor_for(CountingScripts(lambda row: Success(None)))

    def full(rows):
        raise SandboxFull(8)

    monkeypatch.setattr(dispatcher.executor, "run_batch", full)
    report = dispatcher.run_once(limit=10)
    assert (report.saturated, report.executed, report.released) == (True, 0, 3)
    assert all(outbox.get(r.id).attempts == 0 for r in rows)
    assert all(outbox.get(r.id).due_at <= clock.now for r in rows)


def test_an_outcome_whose_lease_ran_out_is_not_settled_by_its_old_claimer(world):
    """After an outage longer than the lease another claimer may own the row:
    the old outcome is dropped (the row runs again), never settled over it —
    so one row never yields two dead letters."""
    clock, outbox, dispatcher = world
    dispatcher.config = TriggerConfig(retry=RetryPolicy(1, 1000, 1000, 0.0))  # one attempt
    (_row,) = _enqueue(outbox, 1)
    elapsed = [0.0]
    dispatcher.monotonic = lambda: elapsed[0]

    def fail_and_lose_the_database(row):
        outbox.down = True
        return Failure("boom", retryable=True)

    dispatcher.executor = executor_for(CountingScripts(fail_and_lose_the_database))
    with pytest.raises(DatabaseGone):
        dispatcher.run_once(limit=10)
    assert len(dispatcher.backlog) == 1

    # The outage outlasts the lease; another dispatcher takes the row and gives up.
    outbox.down = False
    elapsed[0] += dispatcher.lease + 1
    clock.advance(dispatcher.lease + 1)
    other = Dispatcher(
        outbox=outbox,
        triggers=dispatcher.triggers,
        dead_letters=dispatcher.dead_letters,
        replies=Replies(),
        executor=executor_for(CountingScripts(lambda row: Failure("again", retryable=True))),
        config=dispatcher.config,
        ceiling=CEILING,
        clock=clock,
        rand=lambda: 0.0,
    )
    other.run_once(limit=10)
    assert len(dispatcher.dead_letters.rows) == 1

    dispatcher.settle_backlog()  # the first claimer is back
    assert dispatcher.backlog == []
    assert len(dispatcher.dead_letters.rows) == 1, "one row, one dead letter"


def test_a_transient_error_keeps_the_outcome_instead_of_rewriting_it(world):
    """Only a value the database refuses takes the plain-text path; a lost
    connection keeps the outcome as it is for the backlog."""
    _clock, outbox, dispatcher = world
    (row,) = _enqueue(outbox, 1)
    dispatcher.executor = executor_for(
        CountingScripts(lambda row: Failure("x\u00e9", retryable=True))
    )
    calls = []
    original = outbox.reschedule

    def reschedule(row_id, due_at, error, *, attempt=None):
        calls.append(error)
        if len(calls) == 1:
            raise DatabaseGone("connection lost")
        return original(row_id, due_at, error, attempt=attempt)

    outbox.reschedule = reschedule
    with pytest.raises(DatabaseGone):
        dispatcher.run_once(limit=10)
    assert calls == ["x\u00e9"], "no plain-text retry for a lost connection"
    dispatcher.settle_backlog()
    assert outbox.get(row.id).last_error == "x\u00e9", "settled later, unchanged"


def test_a_reply_stored_as_plain_text_is_logged_as_what_the_caller_was_told(world):
    """A result the database refuses reaches the caller as a 502; the
    delivery log and the counts say the same, not the success that ran."""
    _clock, outbox, dispatcher = world
    log = outbox.delivery_log
    dispatcher.delivery_log = log

    class RefusingReplies(Replies):
        def deliver(self, row, outcome):
            if outcome.ok:
                raise DataError("the database refused the result")
            super().deliver(row, outcome)

    dispatcher.replies = RefusingReplies()
    row = outbox.insert(NewOutboxRow(APP, "invoke", SCRIPT, PRINCIPAL, {}, reply_to=uuid.uuid4()))
    dispatcher.executor = executor_for(CountingScripts(lambda r: Success({"big": "\x00"})))
    dispatcher.run_once(limit=10)
    dispatcher.flush_acks()
    [attempt] = log.attempts
    assert (attempt.outbox_id, attempt.outcome, attempt.status_code) == (row.id, "error", 502)
    assert "could not be stored" in attempt.detail
    assert dispatcher.rollups.minutes[(APP, int(attempt.started_at.timestamp() // 60))] == [0, 1]
