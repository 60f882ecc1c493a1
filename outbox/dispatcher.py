"""The dispatcher: claim due outbox rows, run them, and settle each outcome.

One ``Dispatcher.run_once`` claims a batch, executes its rows one after the
other outside any transaction, and settles them: successes are deleted in
one statement at the end of the batch; retryable failures are rescheduled
with backoff; the last failure moves the row into a dead letter (one
transaction: delete the row, insert the dead letter, enqueue dead-letter
triggers). It reaches the database only through repositories, so its unit
tests run on the in-memory ones. The loop, threads and wake-ups live in
outbox/worker.py; the django-q2 wiring in outbox/hosting.py.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from django.utils import timezone

from deadletters.models import Resolution
from deadletters.repository import (
    AlreadyResolved,
    DeadLetterNotFound,
    DeadLetterRepo,
    NewDeadLetter,
)
from outbox.backoff import policy_for, retry_delay
from outbox.metrics import Counters
from outbox.repository import OutboxRepo, OutboxRow
from picloud.config import SandboxCeiling, TriggerConfig
from picloud.execution import Failure, Outcome, RowExecutor
from triggers.fanout import FanOut
from triggers.kinds import SourceKind
from triggers.repository import TriggerRecord, TriggerRepo

logger = logging.getLogger("picloud.dispatcher")

# Successes are acknowledged with the next claim, which a loop makes at
# least once a second (outbox/worker.py MAX_IDLE); with a lease shorter than
# this, acknowledge at once rather than risk the lease running out first.
DEFER_ACKS_MIN_LEASE = 10.0  # seconds


class ReplySink(Protocol):
    """Where the outcome of a synchronous invocation (a reply_to row) goes."""

    def deliver(self, row: OutboxRow, outcome: Outcome) -> None:
        """Answer the row's caller, or record that nobody was left to answer."""


@dataclass
class BatchReport:
    claimed: int = 0
    executed: int = 0
    released: int = 0
    execution_seconds: float = 0.0
    outcomes: list[tuple[uuid.UUID, Outcome]] = field(default_factory=list)


class Dispatcher:
    def __init__(
        self,
        *,
        outbox: OutboxRepo,
        triggers: TriggerRepo,
        dead_letters: DeadLetterRepo,
        replies: ReplySink,
        atomic: Callable[[], AbstractContextManager] = nullcontext,
        # Runs one row; an executor with run_batch(rows) runs a batch at once.
        execute: Callable[[OutboxRow], Outcome] | None = None,
        counters: Counters | None = None,
        config: TriggerConfig | None = None,
        ceiling: SandboxCeiling | None = None,
        lease_margin: float = 30.0,  # seconds a claim's lease outlasts the sandbox timeout
        # Seconds after which a batch hands its unstarted rows back, so slow
        # rows claimed together do not queue behind each other while other
        # loops sit idle (None: run the whole batch).
        max_batch_seconds: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = timezone.now,
        rand: Callable[[], float] = random.random,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.outbox, self.triggers, self.dead_letters = outbox, triggers, dead_letters
        self.config = config or TriggerConfig.from_env()
        self.fan_out = FanOut(triggers, outbox, dead_letters, self.config)
        ceiling = ceiling or SandboxCeiling.from_env()
        self.atomic = atomic
        self.execute = execute or RowExecutor(ceiling)
        self.replies = replies
        self.counters = counters or Counters()
        self.timeout = ceiling.timeout_ms / 1000
        # The lease must outlast one execution, or another claimer could take
        # a row that is still running.
        self.lease = self.timeout + lease_margin
        self.clock, self.rand, self.should_stop = clock, rand, should_stop
        self.max_batch_seconds, self.monotonic = max_batch_seconds, monotonic
        self.pending_acks: list[uuid.UUID] = []
        self.tally: dict[str, int] = {}

    def run_once(self, limit: int) -> BatchReport:
        """Claim up to `limit` due rows and settle every one of them."""
        report = BatchReport()
        # The per-row counters are tallied here and added once per batch.
        self.tally = {"dispatched": 0, "succeeded": 0}
        acks, self.pending_acks = self.pending_acks, []
        rows = self.outbox.claim_due(limit, self.lease, ack=acks)
        report.claimed = len(rows)
        claimed_at = self.monotonic()
        done: list[uuid.UUID] = []
        unsettled = {r.id: r for r in rows}
        for row in [r for r in rows if _lost_invocation(r)]:
            # A sync invocation gets one attempt; this one's worker was lost.
            lost = Failure(
                "the worker running this invocation was lost", retryable=False, status=504
            )
            self._record(report, row, lost, done, unsettled)
        runnable = [r for r in rows if r.id in unsettled]
        run = self._start(runnable)
        cancelled = False
        try:
            for row in runnable:
                if not cancelled and (
                    self.should_stop()
                    or self._lease_too_short(claimed_at)
                    or self._overdue(claimed_at)
                ):
                    # Run nothing more; still settle what already ran.
                    run.cancel()
                    cancelled = True
                started = self.monotonic()
                outcome = next(run, None)
                if outcome is None:
                    break
                report.execution_seconds += self.monotonic() - started
                self._record(report, row, outcome, done, unsettled)
        finally:
            run.close()
            self.counters.add(self.tally)
            if unsettled:
                # Hand back what did not run rather than let the leases run out.
                report.released = self.outbox.release(list(unsettled))
            if self.should_stop() or self.lease < DEFER_ACKS_MIN_LEASE:
                self.outbox.delete(done)
            else:
                # Acknowledge with the next claim: one statement fewer per
                # batch, and an idle loop gets back to waiting sooner. Loops
                # claim again within a second even when idle, far inside the
                # lease; whoever stops claiming calls flush_acks().
                self.pending_acks = done
        return report

    def _record(self, report, row, outcome, done, unsettled) -> None:
        self.tally["dispatched"] += 1
        report.executed += 1
        report.outcomes.append((row.id, outcome))
        del unsettled[row.id]
        if self._settle(row, outcome):
            done.append(row.id)

    def _start(self, rows: list[OutboxRow]):
        run_batch = getattr(self.execute, "run_batch", None)
        return run_batch(rows) if run_batch else _CallEach(rows, self._call)

    def _call(self, row: OutboxRow) -> Outcome:
        try:
            return self.execute(row)
        except Exception as exc:  # execute_row does not raise for scripts; this is ours
            logger.exception("executing outbox row %s failed", row.id)
            return Failure(f"dispatcher error: {type(exc).__name__}: {exc}", retryable=True)

    def flush_acks(self) -> None:
        """Acknowledge successes still waiting for the next claim."""
        acks, self.pending_acks = self.pending_acks, []
        self.outbox.delete(acks)

    def _lease_too_short(self, claimed_at: float) -> bool:
        # Would the next row, if it ran to the timeout, outlive the claim?
        return self.monotonic() - claimed_at + self.timeout > self.lease

    def _overdue(self, claimed_at: float) -> bool:
        limit = self.max_batch_seconds
        return limit is not None and self.monotonic() - claimed_at >= limit

    def _settle(self, row: OutboxRow, outcome: Outcome) -> bool:
        """Record the outcome; True when the row is done and may be deleted."""
        if outcome.ok:
            self.tally["succeeded"] += 1
        elif outcome.unauthorized:
            self.counters.inc("authorization_failures")
        if row.reply_to is not None:
            # No retry, no dead letter: the caller is told the outcome.
            self.replies.deliver(row, outcome)
            return True
        if outcome.ok:
            if row.source_kind == SourceKind.DEAD_LETTER:
                self._resolve_handled(row, Resolution.HANDLED_BY_SCRIPT, note="")
            return True
        assert isinstance(outcome, Failure)
        policy = policy_for(self._trigger(row), self.config.retry)
        if outcome.retryable and row.attempts < policy.max_attempts:
            delay = retry_delay(row.attempts, policy, self.rand)
            self.outbox.reschedule(row.id, self.clock() + timedelta(seconds=delay), outcome.error)
            self.counters.inc("retried")
            return False
        self._give_up(row, outcome)
        return False

    def _give_up(self, row: OutboxRow, outcome: Failure) -> None:
        with self.atomic():
            self.outbox.delete([row.id])
            if row.source_kind == SourceKind.DEAD_LETTER:
                # Never a dead letter about a dead-letter handler.
                self._resolve_handled(row, Resolution.HANDLER_FAILED, note=outcome.error)
                return
            self.fan_out.record_dead_letter(
                NewDeadLetter(
                    app_id=row.app_id,
                    source_kind=row.source_kind,
                    script_id=row.script_id,
                    trigger_id=row.trigger_id,
                    run_as_principal=row.run_as_principal,
                    outbox_id=row.id,
                    payload=row.payload,
                    last_error=outcome.error,
                    errors=(*row.errors, outcome.error),
                    attempts=row.attempts,
                    depth=row.depth,
                )
            )
        self.counters.inc("dead_lettered")

    def _resolve_handled(self, row: OutboxRow, resolution: str, note: str) -> None:
        dead_letter_id = row.payload.get("dead_letter_id")
        if not dead_letter_id:
            return
        # An operator (or another handler) may have settled it first; theirs stands.
        with suppress(AlreadyResolved, DeadLetterNotFound):
            self.dead_letters.resolve(uuid.UUID(dead_letter_id), resolution, by=None, note=note)

    def _trigger(self, row: OutboxRow) -> TriggerRecord | None:
        return self.triggers.get(row.trigger_id) if row.trigger_id else None


class _CallEach:
    """The batch protocol (next, cancel, close) over a one-row executor."""

    def __init__(self, rows: list[OutboxRow], call: Callable[[OutboxRow], Outcome]) -> None:
        self.rows, self.call, self.cancelled = iter(rows), call, False

    def __iter__(self):
        return self

    def __next__(self) -> Outcome:
        if self.cancelled:
            raise StopIteration
        return self.call(next(self.rows))

    def cancel(self) -> None:
        self.cancelled = True

    def close(self) -> None:
        self.cancelled = True


def _lost_invocation(row: OutboxRow) -> bool:
    return row.reply_to is not None and row.attempts > 1


def iter_batches(dispatcher: Dispatcher, limit: int) -> Iterator[BatchReport]:
    """Run batches until one comes back empty (tests and benchmarks)."""
    while (report := dispatcher.run_once(limit)).claimed:
        yield report
