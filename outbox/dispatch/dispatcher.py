"""The dispatcher: claim due outbox rows, run them, and settle each outcome.

One ``Dispatcher.run_once`` claims a batch, executes its rows one after the
other outside any transaction, and settles them: successes are deleted in
one statement at the end of the batch; retryable failures are rescheduled
with backoff; the last failure moves the row into a dead letter (one
transaction: delete the row, insert the dead letter, enqueue dead-letter
triggers). It reaches the database only through repositories, so its unit
tests run on the in-memory ones. The loop, threads and wake-ups live in
outbox/dispatch/worker.py; the django-q2 wiring in outbox/hosting.py.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from django.db import DataError
from django.utils import timezone

from deadletters.models import Resolution
from deadletters.repository import (
    AlreadyResolved,
    DeadLetterNotFound,
    DeadLetterRepo,
    NewDeadLetter,
)
from outbox.dispatch.attempts import Ran, acked_of, attempt_of
from outbox.dispatch.backoff import policy_for, retry_delay
from outbox.dispatch.metrics import (
    CLAIM_SECONDS,
    CRON_LATENESS_SECONDS,
    CRON_OVERLAP_DROPPED,
    EXECUTION_SECONDS,
    START_LATENCY_SECONDS,
    Counters,
)
from outbox.dispatch.queue_settle import QueueSettler
from outbox.storage.circuits import CircuitRepo, summarize
from outbox.storage.delivery_log import Acked, DeliveryLog, Rollups
from outbox.storage.kinds import SourceKind
from outbox.storage.repository import OutboxRepo, OutboxRow
from picloud.config import CircuitConfig, DeliveryLogConfig, SandboxCeiling, TriggerConfig
from picloud.runtime.execution import Failure, Outcome, RowExecutor
from picloud.runtime.sandbox import SandboxFull
from triggers.cron import Overlaps
from triggers.fanout import FanOut
from triggers.queue_batches import BatchStore, PgBatchStore
from triggers.repository import TriggerRecord, TriggerRepo

logger = logging.getLogger("picloud.dispatcher")
# Seconds a cron tick waits before looking again whether the trigger's
# previous tick is done (overlap policy buffer_one).
OVERLAP_WAIT = 1.0

# Successes are acknowledged with the next claim, which a loop makes at
# least once a second (outbox/dispatch/worker.py MAX_IDLE); with a lease shorter than
# this, acknowledge at once rather than risk the lease running out first.
DEFER_ACKS_MIN_LEASE = 10.0  # seconds
# How much sooner than the database a dispatcher takes its claim to have run
# out: it measures the lease from when the claim returned, the database from
# when it ran.
LEASE_CLOCK_MARGIN = 1.0  # seconds
# How often a dispatcher reads which scripts' circuits have failures: a
# success of a script that failed in another process within this time may
# not reset its count (the next failure then counts on from it).
CIRCUIT_SYNC_EVERY = 1.0  # seconds


class ReplySink(Protocol):
    """Where the outcome of a synchronous invocation (a reply_to row) goes."""

    def deliver(self, row: OutboxRow, outcome: Outcome) -> None:
        """Answer the row's caller, or record that nobody was left to answer."""


@dataclass(frozen=True)
class Claim:
    rows: list[OutboxRow]  # to run (a lost invocation is settled, not returned)
    claimed: int  # rows the statement took
    lease_ends_at: float  # when our hold on them ends, on the dispatcher's monotonic clock


@dataclass
class BatchReport:
    claimed: int = 0
    executed: int = 0
    released: int = 0
    # True when nothing was claimed (or what was claimed was handed back)
    # because too many handlers hang in this process: the caller should wait.
    saturated: bool = False
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
        # Runs a batch: run_batch(rows) -> outcomes in order (RowExecutor).
        executor: RowExecutor | None = None,
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
        # Each script's circuit breaker; None: none (every circuit closed).
        circuits: CircuitRepo | None = None,
        circuit_config: CircuitConfig | None = None,
        # Cron triggers' overlap policies (triggers.cron.overlaps); None: every tick runs.
        overlaps: Callable[[Sequence[OutboxRow]], Overlaps] | None = None,
        # Where queue batches are settled message by message (None: PostgreSQL's),
        # and who to tell when one was (the batcher: its trigger has room again).
        batches: BatchStore | None = None,
        on_batch_settled: Callable[[], None] = lambda: None,
        # Where attempts are logged and counted (None: nowhere; nor when
        # PICLOUD_DELIVERY_LOG is off).
        delivery_log: DeliveryLog | None = None,
        log_config: DeliveryLogConfig | None = None,
    ) -> None:
        self.outbox, self.triggers, self.dead_letters = outbox, triggers, dead_letters
        self.config = config or TriggerConfig.current()
        self.fan_out = FanOut(triggers, outbox, dead_letters, self.config)
        ceiling = ceiling or SandboxCeiling.current()
        self.atomic = atomic
        self.executor = executor or RowExecutor(ceiling)
        self.replies = replies
        self.counters = counters or Counters()
        self.timeout = ceiling.timeout_ms / 1000
        # The lease must outlast one execution, or another claimer could take
        # a row that is still running.
        self.lease = self.timeout + lease_margin
        self.clock, self.rand, self.should_stop = clock, rand, should_stop
        self.max_batch_seconds, self.monotonic = max_batch_seconds, monotonic
        # Successes not yet deleted, and outcomes not yet settled because a
        # statement failed: both survive until a statement records them.
        self.pending_acks: list[uuid.UUID] = []
        self.backlog: list[Ran] = []
        # The delivery log: attempts of successes not yet acknowledged (they
        # are written by the statement that acknowledges them), and what
        # was settled since the rollups were last flushed.
        enabled = (log_config or DeliveryLogConfig.current()).enabled
        self.delivery_log = delivery_log if enabled else None
        self.pending_log: list[Acked] = []
        self.rollups = Rollups()
        self.lease_ends_at = 0.0
        self.settle_error: Exception | None = None
        self.tally: dict[str, int] = {}
        self.circuits = circuits
        self.circuit_config = circuit_config or CircuitConfig.current()
        # (script, app, healthy or None, error) of outcomes seen since the
        # circuits were last told.
        self.observed: list[tuple[uuid.UUID, uuid.UUID, bool | None, str | None]] = []
        # Scripts whose circuit a success would change, as last read.
        self._dirty: set[uuid.UUID] = set()
        self._dirty_read_at = float("-inf")
        self.claim_cursor: uuid.UUID | None = None  # the app of the last row claimed
        self.overlaps = overlaps
        self.queue_settler = QueueSettler(
            triggers=triggers,
            fan_out=self.fan_out,
            store=batches or PgBatchStore(),
            config=self.config,
            atomic=atomic,
            rand=rand,
            settled=on_batch_settled,
        )

    def claim(self, limit: int) -> Claim:
        """Claim up to `limit` due rows to run (the engine's half of run_once).

        Settles the backlog first and acknowledges waiting successes with
        the claim. A synchronous invocation found claimed again (its worker
        was lost) is settled here and not returned: it gets one attempt.
        Raises when a statement fails; what ran stays kept (see run_once).
        """
        self.tally = {"dispatched": 0, "succeeded": 0}
        self.settle_backlog()
        started = self.monotonic()
        rows = self.outbox.claim_due(
            limit,
            self.lease,
            ack=self.pending_acks,
            log=self.pending_log,
            after_app=self.claim_cursor,
        )
        self.counters.observe(CLAIM_SECONDS, self.monotonic() - started)
        # Only once the statement that deleted (and logged) them committed.
        self.pending_acks, self.pending_log = [], []
        if rows:  # the next claim starts at the app after it (fair turns)
            self.claim_cursor = rows[-1].app_id
        # Our claim holds the rows until then (less a margin for the clocks
        # of this process and the database); past it, another claimer may own them.
        self.lease_ends_at = self.monotonic() + self.lease - LEASE_CLOCK_MARGIN
        runnable = []
        for row in rows:
            if _lost_invocation(row):
                # A sync invocation gets one attempt; this one's worker was lost.
                lost = Failure(
                    "the worker running this invocation was lost",
                    retryable=False,
                    status=504,
                    lost=True,
                )
                self._settle_or_keep(Ran(row, lost, self.lease_ends_at))
            else:
                runnable.append(row)
        if self.overlaps is not None and runnable:
            runnable = self._apply_overlaps(runnable)
        observe_ticks(self.counters, runnable)  # the ticks that run now
        if self.settle_error is not None and runnable:
            # Settling a lost invocation failed: the database is in trouble,
            # so run nothing; the rest go back unstarted (or after their lease).
            with suppress(Exception):
                self.hand_back([r.id for r in runnable])
        self._end_tally()
        return Claim(rows=runnable, claimed=len(rows), lease_ends_at=self.lease_ends_at)

    def _apply_overlaps(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Cron ticks whose trigger's previous tick is still in the outbox:
        dropped ones are deleted unrun, waiting ones go back due in
        OVERLAP_WAIT, their attempt uncounted."""
        said = self.overlaps(rows)  # type: ignore[misc]
        if not (said.drop or said.wait):
            return rows
        if said.drop:
            # Gone at once: left leased until the next claim, another
            # process would count them as running and drop the next tick too.
            self.outbox.delete(list(said.drop))
        if said.wait:
            self.outbox.release(list(said.wait), delay=OVERLAP_WAIT)
        self.counters.inc(CRON_OVERLAP_DROPPED, len(said.drop))
        return [r for r in rows if r.id not in said.drop and r.id not in said.wait]

    def settle(self, ran: Sequence[Ran]) -> None:
        """Settle the outcomes of rows that ran (attempts.Ran: the row, its
        outcome, when its lease ends on the monotonic clock, when it started
        and for how long). Successes wait for the next claim (or
        flush_acks). Raises the first settling error after keeping every
        outcome it could not record in the backlog."""
        self.tally = {"dispatched": 0, "succeeded": 0}
        if self.circuits is not None:
            # The circuits first: a failed probe must reopen its circuit
            # before its reschedule ends its lease, or another claim could
            # take a second probe in between.
            self.observed.extend(_observation(r.row, r.outcome) for r in ran)
            self._tell_circuits()
        for r in ran:
            self._settle_or_keep(r, observe=False)
        self._end_tally()

    def _end_tally(self) -> None:
        self._tell_circuits()
        self.counters.add(self.tally)
        self.tally = {"dispatched": 0, "succeeded": 0}
        if self.settle_error is not None:
            error, self.settle_error = self.settle_error, None
            raise error

    def run_once(self, limit: int) -> BatchReport:
        """Claim up to `limit` due rows, run them one after the other in
        this thread's handler helper, and settle every one of them (the
        synchronous drain: tests, benchmarks and tools; worker processes run
        the engine of outbox/dispatch/engine.py on the same claim and settle).

        A row that ran is settled once, whatever fails: when a settling
        statement raises (the database went away), the outcomes of every row
        that already ran wait in ``backlog`` and are settled before the next
        claim (or dropped, the row to run again, if the outage outlasts its
        lease), and successes stay in ``pending_acks`` until a statement that
        deletes them commits. The exception is re-raised so the caller can
        reconnect and back off. While hung handlers fill the process, nothing
        is claimed (``report.saturated``).
        """
        report = BatchReport()
        self.settle_backlog()
        if self.executor.saturated():
            # Claiming now would only count attempts for rows nobody can run:
            # they wait, untouched, until a hung handler ends.
            self.flush_acks()
            report.saturated = True
            return report
        claim = self.claim(limit)
        report.claimed = claim.claimed
        report.executed = claim.claimed - len(claim.rows)
        claimed_at = self.monotonic()
        unsettled = {r.id: r for r in claim.rows}
        runnable = claim.rows
        try:
            run = self.executor.run_batch(runnable)
        except SandboxFull:  # the cap was reached since we looked: none of them started
            report.saturated = True
            run = _NothingRan()
        cancelled = False
        try:
            for row in runnable:
                if not cancelled and (
                    self.backlog
                    or self.should_stop()
                    or self._lease_too_short(claimed_at)
                    or self._overdue(claimed_at)
                ):
                    # Run nothing more; still settle (or keep) what already ran.
                    run.cancel()
                    cancelled = True
                started, started_at = self.monotonic(), self.clock().timestamp()
                outcome = next(run, None)
                if outcome is None:
                    break
                seconds = self.monotonic() - started
                report.execution_seconds += seconds
                report.executed += 1
                report.outcomes.append((row.id, outcome))
                del unsettled[row.id]
                self._settle_or_keep(Ran(row, outcome, self.lease_ends_at, started_at, seconds))
        finally:
            run.close()
            self._tell_circuits()
            self.counters.add(self.tally)
            self.tally = {"dispatched": 0, "succeeded": 0}
            self._hand_back(report, unsettled)
        if self.settle_error is not None:
            error, self.settle_error = self.settle_error, None
            raise error
        if self.should_stop() or self.lease < DEFER_ACKS_MIN_LEASE:
            self.flush_acks()
        # Otherwise acknowledge with the next claim: one statement fewer per
        # batch, and an idle loop gets back to waiting sooner. Loops claim
        # again within a second even when idle, far inside the lease; whoever
        # stops claiming calls flush_acks().
        return report

    def _settle_or_keep(self, ran: Ran, *, observe: bool = True) -> None:
        self.tally["dispatched"] += 1
        if observe and self.circuits is not None:
            self.observed.append(_observation(ran.row, ran.outcome))
        if self.backlog:
            # A settling statement failed in this batch: keep the outcome for
            # the next attempt instead of running into the same failure.
            self.backlog.append(ran)
            return
        try:
            self._settled(*self._settle_one(ran))
        except Exception as exc:
            logger.warning("could not settle outbox row %s (%s); kept for later", ran.row.id, exc)
            self.backlog.append(ran)
            self.settle_error = exc

    def _settled(self, ran: Ran, ack: bool) -> None:
        """Record what settling a row left to do: its acknowledgement (and
        its attempt's log entry, written with it), and the counts. `ran` is
        the outcome as recorded (_settle_one's), which the log and the
        counts must agree with."""
        if self.delivery_log is not None:
            acked = acked_of(ran)
            if ack:
                self.pending_log.append(acked)
            row = ran.row
            self.rollups.add(
                row.app_id, row.trigger_id, acked.started, acked.ms, acked.outcome != "success"
            )
        if ack:
            self.pending_acks.append(ran.row.id)
        self._count(ran)

    def hand_back(self, row_ids: Sequence[uuid.UUID]) -> int:
        """Give back claimed rows that did not start: due now, attempt uncounted."""
        return self.outbox.release(row_ids) if row_ids else 0

    def _hand_back(self, report: BatchReport, unsettled: dict) -> None:
        """Give back claimed rows that did not run rather than let their leases run out."""
        if not unsettled:
            return
        try:
            report.released = self.hand_back(list(unsettled))
        except Exception as exc:
            # They never ran: after the lease they are due again, nothing lost.
            logger.warning("could not hand back %d unstarted rows (%s)", len(unsettled), exc)
            if self.settle_error is None:
                self.settle_error = exc

    def settle_backlog(self) -> None:
        """Settle outcomes a failed statement left waiting; raises (keeping
        the rest) while the database still fails."""
        while self.backlog:
            ran = self.backlog[0]
            row = ran.row
            if self.monotonic() >= ran.lease_ends_at:
                # Another claimer may own the row by now: settling it would
                # move or dead-letter a row running elsewhere. It runs again
                # (at-least-once), as after a crash.
                logger.warning(
                    "outbox row %s: its lease ran out before its outcome could be "
                    "recorded; it will run again",
                    row.id,
                )
            else:
                self._settled(*self._settle_one(ran))
            self.backlog.pop(0)

    def _settle_one(self, ran: Ran) -> tuple[Ran, bool]:
        """_settle, and if that raises, once more with the outcome reduced to
        plain ASCII text: a row whose own data the database refuses must not
        hold up the rows behind it. Raises when even that fails. Returns
        the outcome as recorded (what the log and the counts say) and
        whether the row is acknowledged."""
        try:
            return self._settle(ran)
        except (DataError, ValueError) as exc:
            # The database refused a value of this row's; anything else (a
            # lost connection, a deadlock) goes to the backlog as it is.
            logger.warning(
                "settling outbox row %s failed (%s); retrying as plain text", ran.row.id, exc
            )
            return self._settle(ran._replace(outcome=_plain(ran.row, ran.outcome, exc)))

    def _tell_circuits(self) -> None:
        """Record what this batch saw of each script's health. Advisory: a
        failure here is logged, not raised (the outcomes are settled anyway).

        Failures are always recorded. A success only matters to a script
        whose circuit has failures or is not closed; which those are is read
        at most once per CIRCUIT_SYNC_EVERY (and a script this process saw
        fail counts at once), so a batch of successes costs no statement."""
        if self.circuits is None or not self.observed:
            return
        observed, self.observed = self.observed, []
        try:
            seen = summarize(observed)
            if any(not o.failures for o in seen):
                now = self.monotonic()
                if now - self._dirty_read_at >= CIRCUIT_SYNC_EVERY:
                    self._dirty = self.circuits.dirty()
                    self._dirty_read_at = now
            news = [o for o in seen if o.failures or o.script_id in self._dirty]
            if news:
                self.circuits.record(news, self.circuit_config)
            for o in news:
                if o.failures:
                    self._dirty.add(o.script_id)
                else:
                    self._dirty.discard(o.script_id)  # a success reset it
        except Exception as exc:
            logger.warning("could not record circuit breaker outcomes (%s)", exc)

    def _count(self, ran: Ran) -> None:
        """Count a settled outcome (once, however many tries settling took)."""
        outcome = ran.outcome
        if outcome.ok:
            self.tally["succeeded"] += 1
        elif outcome.unauthorized:
            self.counters.inc("authorization_failures")
        if ran.started is not None:
            kind = ran.row.source_kind
            self.counters.observe(EXECUTION_SECONDS[kind], ran.seconds)
            # From when the row was due (the claim returns that) to its start.
            late = ran.started - ran.row.due_at.timestamp()
            self.counters.observe(START_LATENCY_SECONDS[kind], late)

    def flush_rollups(self) -> None:
        """Add what was settled since the last flush to the shared rollups;
        kept for the next flush when the statement fails."""
        if self.delivery_log is None or not self.rollups:
            return
        taken = self.rollups.take()
        try:
            self.delivery_log.add_rollups(taken)
        except Exception:
            self.rollups.merge(taken)
            raise

    def flush_acks(self) -> None:
        """Settle any backlog and acknowledge successes still waiting for the
        next claim; what a failing statement could not settle stays kept."""
        self.settle_backlog()
        if self.pending_acks:
            self.outbox.delete(self.pending_acks, log=self.pending_log)
            self.pending_acks, self.pending_log = [], []

    def _lease_too_short(self, claimed_at: float) -> bool:
        # Would the next row, if it ran to the timeout, outlive the claim?
        return self.monotonic() - claimed_at + self.timeout > self.lease

    def _overdue(self, claimed_at: float) -> bool:
        limit = self.max_batch_seconds
        return limit is not None and self.monotonic() - claimed_at >= limit

    def _settle(self, ran: Ran) -> tuple[Ran, bool]:
        """Record the outcome: (the outcome as recorded, True when the row
        is done and may be deleted — its attempt is then logged by the
        statement that deletes it). Any other row has its attempt logged
        here, in the transaction that records its outcome."""
        row, outcome = ran.row, ran.outcome
        if row.reply_to is not None:
            # No retry, no dead letter: the caller is told the outcome.
            self.replies.deliver(row, outcome)
            return ran, True
        if row.source_kind == SourceKind.QUEUE:
            return self._settle_batch(ran), False
        if outcome.ok:
            if row.source_kind == SourceKind.DEAD_LETTER:
                self._resolve_handled(row, Resolution.HANDLED_BY_SCRIPT, note="")
            return ran, True
        assert isinstance(outcome, Failure)
        policy = policy_for(self._trigger(row), self.config.retry)
        if outcome.retryable and row.attempts < policy.max_attempts:
            delay = retry_delay(row.attempts, policy, self.rand)
            if outcome.retry_after is not None:
                # The endpoint said when to come back: not sooner, and not
                # later than the policy's longest delay.
                delay = max(delay, min(outcome.retry_after, policy.max_delay_ms / 1000))
            with self.atomic():
                due_at = self.clock() + timedelta(seconds=delay)
                # Only our claim's attempt: settled again after its COMMIT's
                # answer was lost, the row matches nothing and no second
                # entry is logged.
                if self.outbox.reschedule(row.id, due_at, outcome.error, attempt=row.attempts):
                    self._log(ran, "retry")
            self.counters.inc("retried")
            return ran, False
        self._give_up(ran)
        return ran, False

    def _settle_batch(self, ran: Ran) -> Ran:
        """A queue batch, settled message by message; its attempt is logged
        in the settle's own transaction, as what became of its messages: a
        batch that succeeded but left messages to retry or dead letters (a
        malformed or partial report) is logged as failed."""
        recorded = ran

        def log(dead: int, retried: int) -> None:
            nonlocal recorded
            if ran.outcome.ok and (dead or retried):
                recorded = ran._replace(
                    outcome=Failure(
                        f"the batch ran, but {retried} message(s) are to be retried and "
                        f"{dead} became dead letters (the handler reported them failed, "
                        "or its report was not understood)",
                        retryable=bool(retried),
                    )
                )
            self._log(recorded, "dead_letter" if dead else "retry" if retried else "done")

        dead = self.queue_settler.settle(ran.row, ran.outcome, log=log)
        if dead:
            self.counters.inc("dead_lettered", dead)
        return recorded

    def _log(self, ran: Ran, disposition: str) -> None:
        """Log the attempt now (in the caller's transaction)."""
        if self.delivery_log is not None:
            self.delivery_log.write([attempt_of(ran, disposition)])

    def _give_up(self, ran: Ran) -> None:
        row, outcome = ran.row, ran.outcome
        assert isinstance(outcome, Failure)
        with self.atomic():
            if not self.outbox.delete([row.id]):
                # Already settled (a retried statement that had committed):
                # one row, one dead letter, one log entry.
                return
            if row.source_kind == SourceKind.DEAD_LETTER:
                # Never a dead letter about a dead-letter handler.
                self._resolve_handled(row, Resolution.HANDLER_FAILED, note=outcome.error)
                self._log(ran, "given_up")
                return
            self._log(ran, "dead_letter")
            self.fan_out.dead_letter(
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


class _NothingRan:
    """The batch protocol (next, cancel, close) for a batch that never started."""

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


def _plain(row: OutboxRow, outcome: Outcome, exc: Exception) -> Outcome:
    """The outcome with its text in printable ASCII only (escaped, not lost)."""
    why = f"{type(exc).__name__} while recording the outcome"
    if outcome.ok and row.reply_to is None:
        return outcome  # nothing of it goes into SQL: try again as it is
    if outcome.ok:
        # Only a reply carries a result into SQL; the caller learns it was lost.
        return Failure(f"the result could not be stored ({why})", retryable=False, status=502)
    assert isinstance(outcome, Failure)
    # unicode_escape writes NUL, control characters, surrogates and all
    # non-ASCII as backslash escapes: printable ASCII only.
    text = outcome.error.encode("unicode_escape").decode("ascii")
    return replace(outcome, error=f"{text} [stored as escaped text after {why}]")


def _health(outcome: Outcome) -> bool | None:
    """What an outcome says of its endpoint's health, for the circuit breaker:
    True for a success, False for a failure that may pass on retry (an error,
    a timeout, a 5xx), None when it says nothing (refused before running, a
    worker lost, a failure retrying cannot fix)."""
    if outcome.ok:
        return True
    if outcome.unauthorized or outcome.lost or not outcome.retryable:
        return None
    return False


def _observation(row: OutboxRow, outcome: Outcome):
    """What the circuit breaker learns from one outcome."""
    return row.script_id, row.app_id, _health(outcome), None if outcome.ok else outcome.error


def observe_ticks(counters: Counters, rows: Sequence[OutboxRow]) -> None:
    """Count how late each cron tick's first run starts (run-now ticks are
    due when clicked and not counted)."""
    now = None
    for row in rows:
        if row.source_kind != SourceKind.CRON or row.attempts != 1:
            continue
        payload = row.payload if isinstance(row.payload, dict) else {}
        scheduled = payload.get("scheduled_at")
        if payload.get("run_now") or not isinstance(scheduled, str):
            continue
        try:
            at = datetime.fromisoformat(scheduled)
        except ValueError:
            continue
        now = now or timezone.now()
        counters.observe(CRON_LATENESS_SECONDS, (now - at).total_seconds())


def _lost_invocation(row: OutboxRow) -> bool:
    return row.reply_to is not None and row.attempts > 1


def iter_batches(dispatcher: Dispatcher, limit: int) -> Iterator[BatchReport]:
    """Run batches until one comes back empty (tests and benchmarks)."""
    while (report := dispatcher.run_once(limit)).claimed:
        yield report
