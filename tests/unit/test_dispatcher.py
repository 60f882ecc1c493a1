"""Dispatcher logic on the in-memory repositories: no database."""

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from deadletters.memory_repository import MemoryDeadLetterRepo
from outbox.dispatch.attempts import Ran
from outbox.dispatch.dispatcher import Dispatcher, iter_batches
from outbox.dispatch.metrics import Counters
from outbox.storage.circuits import ScriptOutcomes
from outbox.storage.memory_circuits import MemoryCircuitRepo
from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import (
    CircuitConfig,
    RetryPolicy,
    SandboxCeiling,
    TriggerConfig,
    WebhookConfig,
)
from picloud.runtime.execution import Failure, RowExecutor, Success
from triggers.memory_repository import MemoryTriggerRepo
from triggers.repository import DeadLetterSpec, KvSpec, NewTrigger

APP, SCRIPT, DL_SCRIPT, PRINCIPAL = (uuid.uuid4() for _ in range(4))
POLICY = RetryPolicy(max_attempts=4, base_delay_ms=1000, max_delay_ms=5000, jitter=0.0)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


class FakeScripts:
    """Stands in for running a script (the network, the handler): outcomes
    by script id; records what ran. The dispatcher reaches it through a real
    RowExecutor, so batching, the handler thread and time limits are the
    production ones."""

    def __init__(self):
        self.outcomes = {}
        self.ran = []

    def __call__(self, row, **_limits):
        self.ran.append(row)
        outcome = self.outcomes.get(row.script_id, Success("ok"))
        return outcome(row) if callable(outcome) else outcome


class Replies:
    def __init__(self):
        self.delivered = []

    def deliver(self, row, outcome):
        self.delivered.append((row.id, outcome))


@pytest.fixture
def world():
    clock = Clock()
    outbox, triggers = MemoryOutboxRepo(clock), MemoryTriggerRepo()
    dead_letters = MemoryDeadLetterRepo(clock)
    executor, replies, counters = FakeScripts(), Replies(), Counters()
    ceiling = SandboxCeiling(timeout_ms=1000)
    dispatcher = Dispatcher(
        outbox=outbox,
        triggers=triggers,
        dead_letters=dead_letters,
        executor=RowExecutor(ceiling, WebhookConfig(), run_row=executor),
        replies=replies,
        counters=counters,
        config=TriggerConfig(retry=POLICY),
        ceiling=ceiling,
        clock=clock,
        rand=lambda: 0.0,
    )

    class World:
        pass

    w = World()
    w.__dict__.update(locals())
    return w


def _enqueue(world, script=SCRIPT, **kw):
    return world.outbox.insert(
        NewOutboxRow(APP, kw.pop("source_kind", "kv"), script, PRINCIPAL, {"n": 1}, **kw)
    )


def _drain(world, rounds=20):
    """Run batches, moving the clock past each backoff, until nothing is left."""
    for _ in range(rounds):
        list(iter_batches(world.dispatcher, limit=10))
        next_due = world.outbox.next_due_at()
        if next_due is None:
            return
        world.clock.now = max(world.clock.now, next_due)
    raise AssertionError("outbox did not drain")


def test_success_deletes_the_row_with_the_next_claim(world):
    row = _enqueue(world)
    report = world.dispatcher.run_once(limit=10)
    assert (report.claimed, report.executed) == (1, 1)
    assert world.outbox.get(row.id) is not None, "acknowledged with the next claim"
    world.dispatcher.run_once(limit=10)
    assert world.outbox.get(row.id) is None


def test_each_claim_statement_is_timed_into_the_claim_histogram(world):
    ticks = iter([10.0, 10.003])  # the monotonic clock before and after the statement
    world.dispatcher.monotonic = lambda: next(ticks, 10.003)
    _enqueue(world)
    world.dispatcher.claim(limit=10)
    counts = world.counters.take()
    assert counts["claim_seconds_count"] == 1
    assert counts["claim_seconds_sum_us"] == 3000
    assert counts["claim_seconds_le_0.0025"] == 0
    assert counts["claim_seconds_le_0.005"] == counts["claim_seconds_le_1"] == 1
    world.dispatcher.claim(limit=10)  # an empty claim is a claim too
    assert world.counters.take()["claim_seconds_count"] == 1


def test_flush_acks_deletes_successes_at_once(world):
    row = _enqueue(world)
    world.dispatcher.run_once(limit=10)
    world.dispatcher.flush_acks()
    assert world.outbox.get(row.id) is None


def test_a_short_lease_acknowledges_at_once(world):
    world.dispatcher.lease = 5.0  # a loop might not claim again before it ends
    row = _enqueue(world)
    world.dispatcher.run_once(limit=10)
    assert world.outbox.get(row.id) is None
    assert world.counters.take()["succeeded"] == 1


def test_retryable_failures_back_off_exponentially_then_dead_letter(world):
    world.executor.outcomes[SCRIPT] = lambda row: Failure(f"boom {row.attempts}", retryable=True)
    row = _enqueue(world)
    delays = []
    for _ in range(POLICY.max_attempts - 1):
        before = world.clock.now
        world.dispatcher.run_once(limit=10)
        due = world.outbox.get(row.id).due_at
        delays.append((due - before).total_seconds())
        world.clock.now = due
    assert delays == [1.0, 2.0, 4.0], "base * 2**(n-1)"
    world.dispatcher.run_once(limit=10)
    assert world.outbox.get(row.id) is None
    (letter,) = world.dead_letters.rows.values()
    assert letter.errors == ("boom 1", "boom 2", "boom 3", "boom 4")
    assert letter.last_error == "boom 4" and letter.attempts == 4 and letter.outbox_id == row.id
    assert len(world.executor.ran) == POLICY.max_attempts
    counts = world.counters.take()
    assert (counts["retried"], counts["dead_lettered"], counts["dispatched"]) == (3, 1, 4)


def test_retry_after_delays_the_retry_up_to_the_policy_s_max_delay(world):
    world.dispatcher.config = TriggerConfig(retry=RetryPolicy(10, 1000, 60_000, 0.0))
    delays = []
    for asked in (30.0, 0.5, 10_000.0):
        world.executor.outcomes[SCRIPT] = Failure("busy", retryable=True, retry_after=asked)
        row = _enqueue(world)
        before = world.clock.now
        world.dispatcher.run_once(limit=10)
        delays.append((world.outbox.get(row.id).due_at - before).total_seconds())
        world.outbox.delete([row.id])
    # Not sooner than asked; never sooner than the backoff; never past the max delay.
    assert delays == [30.0, 1.0, 60.0]


def test_delays_are_capped(world):
    world.executor.outcomes[SCRIPT] = Failure("boom", retryable=True)
    world.dispatcher.config = TriggerConfig(retry=RetryPolicy(10, 1000, 3000, 0.0))
    row = _enqueue(world)
    delays = []
    for _ in range(5):
        before = world.clock.now
        world.dispatcher.run_once(limit=10)
        world.clock.now = world.outbox.get(row.id).due_at
        delays.append((world.clock.now - before).total_seconds())
    assert delays == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_permanent_failure_is_a_dead_letter_at_once(world):
    world.executor.outcomes[SCRIPT] = Failure("nope", retryable=False)
    _enqueue(world)
    world.dispatcher.run_once(limit=10)
    assert len(world.dead_letters.rows) == 1 and len(world.executor.ran) == 1


def test_an_unauthorized_row_is_counted_and_dead_lettered(world):
    world.executor.outcomes[SCRIPT] = Failure("unauthorized", retryable=False, unauthorized=True)
    _enqueue(world)
    world.dispatcher.run_once(limit=10)
    assert world.counters.take()["authorization_failures"] == 1
    assert len(world.dead_letters.rows) == 1


def test_per_trigger_max_attempts_overrides_the_default(world):
    trigger = world.triggers.create(
        NewTrigger(APP, "kv", SCRIPT, "t", PRINCIPAL, kv=KvSpec("*"), max_attempts=2)
    )
    world.executor.outcomes[SCRIPT] = Failure("boom", retryable=True)
    _enqueue(world, trigger_id=trigger.id)
    _drain(world)
    assert len(world.executor.ran) == 2
    assert len(world.dead_letters.rows) == 1


def test_a_reply_to_row_gets_one_attempt_and_no_dead_letter(world):
    world.executor.outcomes[SCRIPT] = Failure("boom", retryable=True)
    row = _enqueue(world, reply_to=uuid.uuid4())
    _drain(world)
    assert len(world.executor.ran) == 1
    assert world.outbox.get(row.id) is None and not world.dead_letters.rows
    assert world.replies.delivered == [(row.id, Failure("boom", retryable=True))]


def test_a_reply_to_row_whose_worker_was_lost_is_not_run_again(world):
    row = _enqueue(world, reply_to=uuid.uuid4())
    world.outbox.claim_due(limit=1, lease=1)  # a worker claims it, then dies
    world.clock.advance(2)
    world.dispatcher.run_once(limit=10)
    assert world.executor.ran == []
    ((row_id, outcome),) = world.replies.delivered
    assert row_id == row.id and not outcome.ok and outcome.status == 504


def _dead_letter_trigger(world, **spec):
    return world.triggers.create(
        NewTrigger(
            APP,
            "dead_letter",
            DL_SCRIPT,
            f"dl-{uuid.uuid4()}",
            PRINCIPAL,
            dead_letter=DeadLetterSpec(**spec),
        )
    )


def test_a_dead_letter_fans_out_and_a_succeeding_handler_resolves_it(world):
    _dead_letter_trigger(world)
    world.executor.outcomes[SCRIPT] = Failure("nope", retryable=False)
    _enqueue(world)
    _drain(world)
    (letter,) = world.dead_letters.rows.values()
    handler_rows = [r for r in world.executor.ran if r.script_id == DL_SCRIPT]
    assert len(handler_rows) == 1
    assert handler_rows[0].payload["dead_letter_id"] == str(letter.id)
    assert handler_rows[0].source_kind == "dead_letter"
    assert letter.resolution == "handled_by_script" and letter.resolved_by is None


def test_a_failing_handler_resolves_handler_failed_and_writes_no_dead_letter(world):
    _dead_letter_trigger(world, source_kind="kv")
    world.executor.outcomes[SCRIPT] = Failure("nope", retryable=False)
    world.executor.outcomes[DL_SCRIPT] = Failure("handler broke", retryable=True)
    _enqueue(world)
    _drain(world)
    (letter,) = world.dead_letters.rows.values()
    assert letter.resolution == "handler_failed" and "handler broke" in letter.note
    handler_runs = [r for r in world.executor.ran if r.script_id == DL_SCRIPT]
    assert len(handler_runs) == POLICY.max_attempts, "the handler is retried like any row"
    assert world.outbox.rows == {}


def test_filters_decide_which_dead_letter_triggers_fire(world):
    _dead_letter_trigger(world, source_kind="invoke")
    world.executor.outcomes[SCRIPT] = Failure("nope", retryable=False)
    _enqueue(world)
    _drain(world)
    assert [r.script_id for r in world.executor.ran] == [SCRIPT]
    assert next(iter(world.dead_letters.rows.values())).resolution is None


class Lockstep:
    """Rows that run only as fast as the dispatcher's loop looks at them: each
    call of `step()` (the loop's should_stop, once per row) lets one more row
    finish, so the handler thread can never be more than a row or two ahead
    — as with slow handlers in production. Once `stopping`, rows finish at
    once (the one running when the loop stops must not hang)."""

    def __init__(self):
        self.permits = threading.Semaphore(0)
        self.steps = 0
        self.stopping = False
        self.ran = []

    def step(self) -> None:
        self.steps += 1
        self.permits.release()

    def run(self, row):
        deadline = time.monotonic() + 5
        while not self.permits.acquire(timeout=0.01) and not self.stopping:
            assert time.monotonic() < deadline, "the loop never let this row finish"
        self.ran.append(row.id)
        return Success(None)


def _assert_handed_back(world, rows, report, ran):
    """Rows that ran were settled once; the rest came back unstarted and uncounted."""
    assert report.executed == len(ran) == len(set(ran))
    assert report.executed + report.released == len(rows)
    world.dispatcher.flush_acks()
    left = [world.outbox.get(r.id) for r in rows if world.outbox.get(r.id)]
    assert {r.id for r in left}.isdisjoint(ran), "a row that ran is acknowledged"
    assert len(left) == report.released
    assert all(r.attempts == 0 and r.due_at <= world.clock.now for r in left)


def test_stopping_releases_the_rest_of_the_batch_uncounted(world):
    rows = [_enqueue(world) for _ in range(5)]
    lockstep = Lockstep()

    def should_stop():
        lockstep.step()
        lockstep.stopping = lockstep.steps >= 3  # before the third row's outcome
        return lockstep.stopping

    world.dispatcher.should_stop = should_stop
    world.executor.outcomes[SCRIPT] = lockstep.run
    report = world.dispatcher.run_once(limit=10)
    # Two rows ran before the stop; the third may have been running then.
    assert 2 <= report.executed <= 3, report
    _assert_handed_back(world, rows, report, lockstep.ran)


def test_a_batch_running_long_hands_its_unstarted_rows_back(world):
    # Slow rows claimed together would otherwise wait for each other while
    # other loops sit idle.
    rows = [_enqueue(world) for _ in range(5)]
    lockstep = Lockstep()
    world.dispatcher.should_stop = lambda: lockstep.step() or False
    world.dispatcher.max_batch_seconds = 0.25

    def clock():
        elapsed = 0.1 * len(lockstep.ran)  # each row takes 100 ms of the loop's clock
        # Past the hand-back point the loop stops waiting for rows: the one
        # running then must finish at once rather than wait for a step.
        lockstep.stopping = elapsed >= 0.25
        return elapsed

    world.dispatcher.monotonic = clock
    world.executor.outcomes[SCRIPT] = lockstep.run
    report = world.dispatcher.run_once(limit=10)
    # Rows start until 250 ms have passed: three, or four if one was already running.
    assert 3 <= report.executed <= 4, report
    _assert_handed_back(world, rows, report, lockstep.ran)


def test_the_lease_outlasts_the_sandbox_timeout(world):
    assert world.dispatcher.lease >= world.dispatcher.timeout + 30


def test_an_error_inside_the_dispatcher_becomes_a_retryable_failure(world):
    def broken(row, **_limits):
        raise RuntimeError("bug")

    world.dispatcher.executor.run_row = broken
    row = _enqueue(world)
    world.dispatcher.run_once(limit=10)
    assert "dispatcher error: RuntimeError: bug" in world.outbox.get(row.id).last_error


def test_a_full_batch_is_acknowledged_with_the_next_claim(world):
    rows = [_enqueue(world) for _ in range(2)]
    world.dispatcher.run_once(limit=2)
    assert all(world.outbox.get(r.id) for r in rows), "kept until the next claim"
    assert all(world.outbox.get(r.id).due_at > world.clock.now for r in rows), "but leased"
    report = world.dispatcher.run_once(limit=2)
    assert report.claimed == 0
    assert not any(world.outbox.get(r.id) for r in rows)


def test_flush_acks_acknowledges_what_waits(world):
    rows = [_enqueue(world) for _ in range(2)]
    world.dispatcher.run_once(limit=2)
    world.dispatcher.flush_acks()
    assert not any(world.outbox.get(r.id) for r in rows)


def test_retryable_failures_open_the_script_s_circuit_and_its_rows_then_wait(world):
    circuits = MemoryCircuitRepo(world.clock)
    world.dispatcher.circuits, world.outbox.circuits = circuits, circuits
    world.dispatcher.circuit_config = CircuitConfig(failure_threshold=2, cooldown_ms=60_000)
    world.dispatcher.config = TriggerConfig(retry=RetryPolicy(10, 1000, 1000, 0.0))
    world.executor.outcomes[SCRIPT] = Failure("503", retryable=True)
    rows = [_enqueue(world) for _ in range(2)]
    world.dispatcher.run_once(limit=10)  # both fail: the circuit opens
    assert circuits.get(SCRIPT).state(world.clock.now) == "open"
    world.clock.advance(5)  # their backoff is over, the cool-down is not
    assert world.dispatcher.run_once(limit=10).claimed == 0
    assert [world.outbox.get(r.id).attempts for r in rows] == [1, 1], "waiting costs no attempt"
    world.clock.advance(60)  # the cool-down ended: one row probes, and succeeds
    world.executor.outcomes[SCRIPT] = Success("ok")
    assert world.dispatcher.run_once(limit=10).claimed == 1
    assert circuits.get(SCRIPT).state(world.clock.now) == "closed"
    assert world.dispatcher.run_once(limit=10).claimed == 1, "closed: the rest runs"


def test_failures_that_say_nothing_of_the_endpoint_leave_the_circuit_alone(world):
    circuits = MemoryCircuitRepo(world.clock)
    world.dispatcher.circuits = circuits
    world.dispatcher.circuit_config = CircuitConfig(failure_threshold=1)
    for outcome in (
        Failure("403", retryable=False, status=403),
        Failure("denied", retryable=False, unauthorized=True, status=403),
    ):
        world.executor.outcomes[SCRIPT] = outcome
        _enqueue(world)
        world.dispatcher.run_once(limit=10)
    assert circuits.get(SCRIPT) is None


def test_a_failed_probe_reopens_the_circuit_before_its_row_leaves_its_lease(world):
    circuits = MemoryCircuitRepo(world.clock)
    world.dispatcher.circuits, world.outbox.circuits = circuits, circuits
    world.dispatcher.circuit_config = CircuitConfig(failure_threshold=1, cooldown_ms=1000)
    world.dispatcher.config = TriggerConfig(retry=RetryPolicy(10, 100, 100, 0.0))
    circuits.record([ScriptOutcomes(SCRIPT, APP, False, 1, "503")], world.dispatcher.circuit_config)
    world.clock.advance(2)  # the cool-down is over: the next row probes
    _enqueue(world)
    claim = world.dispatcher.claim(10)
    (probe,) = claim.rows
    seen_at_reschedule = []
    reschedule = world.outbox.reschedule

    def spy(*args, **kwargs):
        seen_at_reschedule.append(circuits.get(SCRIPT).state(world.clock.now))
        return reschedule(*args, **kwargs)

    world.outbox.reschedule = spy
    world.dispatcher.settle([Ran(probe, Failure("503", retryable=True), claim.lease_ends_at)])
    # Once the reschedule ends the probe's lease, a claim must find the
    # circuit open again, not probing (it would take a second probe).
    assert seen_at_reschedule == ["open"]


class TestCronOverlaps:
    """What the dispatcher does with the overlap policies' answer (the
    policies themselves: tests/integration/test_cron_ticker.py)."""

    def test_dropped_ticks_are_deleted_unrun_and_waiting_ones_come_back_later(self, world):
        from triggers.cron import Overlaps

        run, drop, wait = (_enqueue(world, source_kind="cron") for _ in range(3))
        world.dispatcher.overlaps = lambda rows: Overlaps(
            drop=frozenset({drop.id}), wait=frozenset({wait.id})
        )
        claim = world.dispatcher.claim(10)
        assert [r.id for r in claim.rows] == [run.id]
        assert world.counters.take()["cron_overlap_dropped"] == 1
        assert world.outbox.get(drop.id) is None, "deleted at once"
        waiting = world.outbox.get(wait.id)
        assert waiting.attempts == 0, "its claim is not counted"
        assert waiting.due_at == world.clock.now + timedelta(seconds=1)

    def test_no_policy_runs_every_tick(self, world):
        rows = [_enqueue(world, source_kind="cron") for _ in range(3)]
        assert len(world.dispatcher.claim(10).rows) == len(rows)
