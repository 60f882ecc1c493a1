"""The engine: keep up to N executions in flight on one event loop per process.

Executions are not threads or connections. Each claimed row runs as an
asyncio task (picloud/runtime/async_execution.py); the engine's database
work — settle what finished, hand back what never started, claim as many
rows as slots are free, check each row's right to run — goes to one
database thread in one hop, so a process holds a fixed number of
PostgreSQL connections whatever its in-flight count. Completions that
arrive while a hop runs wait for the next one: under load, every hop
settles a batch. The Dispatcher decides what each outcome means (ack,
retry with backoff, dead letter, reply) exactly as for the synchronous
drain; the engine only decides when.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import DatabaseError, InterfaceError
from django.utils import timezone

from outbox.dispatch.attempts import Ran
from outbox.dispatch.dispatcher import DEFER_ACKS_MIN_LEASE, Dispatcher
from outbox.dispatch.metrics import Counters, CounterStore
from outbox.storage.repository import OutboxRow
from picloud.config import DispatcherConfig, SandboxCeiling
from picloud.db.dbthreads import DbThreads
from picloud.runtime.async_execution import STILL_RUNNING, AsyncRunner
from picloud.runtime.execution import Failure, Lookups, Outcome, Prepared, prepare
from picloud.runtime.handler_threads import EXPIRE_EVERY

logger = logging.getLogger("picloud.dispatcher")

MAX_IDLE = 1.0  # seconds an idle engine waits at most before looking again
FLUSH_EVERY = 1.0  # seconds between counter flushes
DB_RETRY_DELAY = (0.2, 5.0)  # seconds: first and longest wait after a database error
# seconds: first and longest wait before claiming again when rows are due but
# none could be claimed (caps, or another claimer holding the app)
RECHECK_DUE = (0.005, MAX_IDLE)
# While many rows are in flight, outcomes are gathered for up to GATHER
# seconds (or GATHER_ROWS of them) before a trip to the database: a claim
# costs about the same for one row as for twenty, and a slot waiting 5 ms is
# little beside an execution that took long enough to overlap with others.
GATHER = 0.005
GATHER_ROWS = 16
# Rows claimed ahead of free slots: each starts the moment a running row
# ends, and the trip that claims more runs meanwhile. As many as finish in
# PREFETCH_HORIZON at the recent rate, at most PREFETCH_PERCENT of the slots:
# when rows finish slowly, a row claimed ahead would wait long for a slot
# (behind, say, a 2 s webhook) while another process has slots free, so
# slow turnover claims nothing ahead. Such a row counts as in flight for its
# app's cap while it waits.
PREFETCH_PERCENT = 25
PREFETCH_HORIZON = 0.03  # seconds
# A row claimed ahead that waits longer than this for a slot (the running
# rows all started together and all run long) goes back to the outbox, for a
# process with free slots, and this one claims nothing ahead for a while.
QUEUE_WAIT_MAX = 0.15  # seconds
QUEUE_PAUSE = 1.0  # seconds without claiming ahead after that
RATE_EVERY = 0.1  # seconds between updates of the recent finishing rate
GATE_TTL = 1.0  # seconds a script's and principal's right to run is reused


def idle_timeout(next_due: datetime | None, now: datetime) -> float:
    """Sleep until the next row is due, but never longer than MAX_IDLE."""
    if next_due is None:
        return MAX_IDLE
    return min(MAX_IDLE, max(0.0, (next_due - now).total_seconds()))


@dataclass
class Hop:
    """One trip to the database thread: what to settle, what to hand back, how many to claim."""

    ran: list[Ran] = field(default_factory=list)
    hand_back: list[uuid.UUID] = field(default_factory=list)
    claim: int = 0
    flush_acks: bool = False
    flush_counters: bool = False


@dataclass
class HopResult:
    claimed: list[tuple[OutboxRow, Prepared | Failure]]
    asked: int
    got: int  # rows the claim took (a lost invocation is settled, not run)
    lease_ends_at: float
    idle_for: (
        float  # seconds until the next row is due (0: due now), when the claim came back short
    )


class _Checks:
    """Check claimed rows (prepare), reading each script and principal once
    per GATE_TTL: a revoked role or a disabled script stops new runs within
    that time, and a busy engine does not read the same script every claim."""

    def __init__(self) -> None:
        self.lookups, self.read_at = Lookups(), time.monotonic()

    def __call__(self, rows: list[OutboxRow], ceiling: SandboxCeiling) -> list:
        now = time.monotonic()
        if now - self.read_at >= GATE_TTL:
            self.lookups, self.read_at = Lookups(), now
        return [prepare(row, ceiling=ceiling, lookups=self.lookups) for row in rows]


class Engine:
    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        runner: AsyncRunner,
        db: DbThreads,  # anything with `async arun(fn, *args)`
        counters: Counters,
        counter_store: CounterStore,
        stopping: threading.Event,
        config: DispatcherConfig | None = None,
        ceiling: SandboxCeiling | None = None,
        clock: Callable[[], datetime] = timezone.now,
        # Checks each claimed row before it runs (database reads; tests
        # without a database put their own here).
        prepare_rows: Callable[[list[OutboxRow], SandboxCeiling], list] | None = None,
    ) -> None:
        self.dispatcher, self.runner, self.db = dispatcher, runner, db
        self.prepare_rows = prepare_rows or _Checks()
        self.counters, self.counter_store = counters, counter_store
        self.config = config or DispatcherConfig.current()
        self.ceiling = ceiling or SandboxCeiling.current()
        self.timeout = self.ceiling.timeout_ms / 1000
        self.stopping, self.clock = stopping, clock
        # Executions started and not yet reported (tasks for webhooks and
        # async handlers, jobs on the handler threads for plain ones).
        self.in_flight = 0
        self.tasks: set[asyncio.Task] = set()
        self.ran: list[Ran] = []
        self.not_started: list[uuid.UUID] = []
        self.ran_since = 0.0  # when the oldest outcome in `ran` came in
        # Claimed, checked rows waiting for a free slot (at most `prefetch`).
        # (row, its check, when its lease ends, when it was queued)
        self.queued: collections.deque[tuple[OutboxRow, Prepared, float, float]] = (
            collections.deque()
        )
        self.ahead_paused_until = 0.0
        self.prefetch_max = max(1, self.config.max_in_flight * PREFETCH_PERCENT // 100)
        self.prefetch = 0  # rows to claim ahead now (follows the finishing rate)
        self.finished = 0  # rows finished since the rate was last updated
        self.rate = 0.0  # rows finished per second, smoothed
        self.woken = True  # look once at start: rows may be waiting
        self.changed: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()

    # -- called from other threads ------------------------------------------

    def wake(self) -> None:
        """Rows arrived (NOTIFY) or the engine should stop: look now."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.woken = True
        self.changed.set()  # type: ignore[union-attr]

    # -- the loop -----------------------------------------------------------

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.ready.set()
        try:
            await self._run()
            await self._drain()
        finally:
            await self._last_hop()

    async def _run(self) -> None:
        more = True  # the last claim was full: more rows are probably due
        recheck = RECHECK_DUE[0]
        look_at = 0.0  # monotonic time of the next look when idle
        flush_at = time.monotonic() + FLUSH_EVERY
        delay = DB_RETRY_DELAY[0]
        expire_at = 0.0
        rate_at = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - rate_at >= RATE_EVERY:
                self._follow_rate(now - rate_at)
                rate_at = now
            if self.queued and now - self.queued[0][3] > QUEUE_WAIT_MAX:
                self._hand_back_queued(now)
            if now >= expire_at:
                # Plain handlers' time limits, on this beat however busy the loop.
                self.runner.threads.expire(now)
                expire_at = now + EXPIRE_EVERY
            free = self.running_limit()
            # A finished row freed a slot, maybe of an app at its cap: worth
            # a claim, which rides on the hop that settles it anyway.
            want = free > 0 and (more or self.woken or bool(self.ran) or now >= look_at)
            if want and self.runner.threads.saturated():
                # Every handler thread hangs past its timeout: claim nothing
                # (no attempt is counted for rows nobody can run) until one ends.
                want = False
                look_at = now + MAX_IDLE
            hop = Hop(
                claim=min(free, self.config.max_batch) if want else 0,
                flush_counters=now >= flush_at,
            )
            hop.flush_acks = not hop.claim and now >= look_at
            if self._gathering(now) and not hop.flush_counters:
                await asyncio.sleep(min(GATHER, self.ran_since + GATHER - now))
                continue
            if self.ran or self.not_started or hop.claim or hop.flush_counters or hop.flush_acks:
                hop.ran, self.ran = self.ran, []
                hop.hand_back, self.not_started = self.not_started, []
                self.woken = False
                if hop.flush_counters:
                    flush_at = now + FLUSH_EVERY
                try:
                    result = await self.db.arun(self._hop, hop)
                except Exception as exc:
                    self._database_error(exc, delay)
                    await self._sleep(delay)
                    delay = min(delay * 2, DB_RETRY_DELAY[1])
                    more = True
                    continue
                delay = DB_RETRY_DELAY[0]
                if hop.claim:
                    try:
                        self._start(result)
                    except Exception:
                        # A fault of ours, not a row's: the rows not started
                        # come back when their lease ends.
                        logger.exception("dispatch engine: could not start claimed rows")
                    more = result.got >= result.asked
                    if more or result.got:
                        recheck = RECHECK_DUE[0]
                    else:
                        # Nothing more claimable now: wait for the next row to
                        # come due, a NOTIFY or a finished row. Rows due but
                        # not claimable are at their app's cap or were being
                        # claimed by another process (which holds an app only
                        # for its claim's few milliseconds): look again soon,
                        # then less and less often.
                        wait = result.idle_for
                        if not wait:
                            wait, recheck = recheck, min(recheck * 2, RECHECK_DUE[1])
                        look_at = time.monotonic() + wait
                elif hop.flush_acks:
                    look_at = time.monotonic() + MAX_IDLE
                continue  # something may have finished meanwhile
            timeout = min(look_at, flush_at) - time.monotonic()
            if self.runner.threads.live:
                # Plain handlers' time limits are checked on this beat.
                timeout = min(timeout, EXPIRE_EVERY)
            if self.queued:  # look again when the oldest waited too long
                timeout = min(timeout, self.queued[0][3] + QUEUE_WAIT_MAX - time.monotonic())
            await self._wait(max(0.0, timeout))

    def _hand_back_queued(self, now: float) -> None:
        """Rows claimed ahead wait too long: back to the outbox with them (a
        process with free slots takes them), and claim nothing ahead for a while."""
        self._return_queued()
        self.ahead_paused_until = now + QUEUE_PAUSE

    def _return_queued(self) -> None:
        """Claimed rows that never started go back (their attempts uncounted)."""
        self.not_started.extend(queued[0].id for queued in self.queued)
        self.queued.clear()

    def _follow_rate(self, elapsed: float) -> None:
        """Update the finishing rate, and with it how many rows to claim ahead."""
        self.rate = 0.7 * self.rate + 0.3 * self.finished / elapsed
        self.finished = 0
        self.prefetch = min(self.prefetch_max, int(self.rate * PREFETCH_HORIZON))

    def _gathering(self, now: float) -> bool:
        """Wait a moment for more outcomes before this trip? Only when it
        would settle a few rows and claim a few (the other slots are busy)."""
        return (
            bool(self.ran)
            and len(self.ran) < GATHER_ROWS
            and self.running_limit() < GATHER_ROWS
            and now - self.ran_since < GATHER
            and not (self.woken or self.not_started)
        )

    def _start(self, result: HopResult) -> None:
        lease_ends_at = result.lease_ends_at
        for row, prepared in result.claimed:
            if isinstance(prepared, Failure):
                self.ran.append(Ran(row, prepared, lease_ends_at))
            else:
                self.queued.append((row, prepared, lease_ends_at, time.monotonic()))
        self._fill()

    def _fill(self) -> None:
        """Start claimed rows while slots are free."""
        while self.queued and self.in_flight < self.config.max_in_flight:
            row, prepared, lease_ends_at, _queued_at = self.queued.popleft()
            self.in_flight += 1
            task = self.runner.start(
                prepared,
                # A run that starts later than this could outlive the lease.
                start_by=lease_ends_at - self.timeout,
                on_outcome=self._on_outcome(row, lease_ends_at, time.time(), time.monotonic()),
            )
            if task is not None:
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def _on_outcome(self, row: OutboxRow, lease_ends_at: float, started: float, clock: float):
        """What to do when the row's execution ends; it started at `started`
        (epoch seconds), `clock` on the monotonic clock."""

        def on_outcome(outcome: Outcome | None) -> None:
            self.in_flight -= 1
            self.finished += 1
            if outcome is STILL_RUNNING:
                return  # its lease keeps it from other processes until the handler is surely gone
            if outcome is None:
                # Nothing finished: the row goes back with its attempt uncounted.
                self.not_started.append(row.id)
            else:
                if not self.ran:
                    self.ran_since = time.monotonic()
                seconds = time.monotonic() - clock
                self.ran.append(Ran(row, outcome, lease_ends_at, started, seconds))
            self.changed.set()  # type: ignore[union-attr]
            if not self.stopping.is_set():
                self._fill()  # the freed slot takes a claimed row at once

        return on_outcome

    def _hop(self, hop: Hop) -> HopResult:
        """On the database thread: settle, hand back, claim and prepare."""
        dispatcher = self.dispatcher
        dispatcher.settle(hop.ran)
        if hop.hand_back:
            dispatcher.hand_back(hop.hand_back)
        if hop.flush_counters:
            self._flush_counters()
        if hop.flush_acks or dispatcher.lease < DEFER_ACKS_MIN_LEASE:
            dispatcher.flush_acks()
        if not hop.claim:
            return HopResult([], 0, 0, 0.0, MAX_IDLE)
        claim = dispatcher.claim(hop.claim)
        claimed = list(zip(claim.rows, self.prepare_rows(claim.rows, self.ceiling), strict=True))
        idle_for = 0.0
        if claim.claimed < hop.claim:
            idle_for = idle_timeout(dispatcher.outbox.next_due_at(), self.clock())
        return HopResult(claimed, hop.claim, claim.claimed, claim.lease_ends_at, idle_for)

    def _flush_counters(self) -> None:
        try:
            self.counters.flush(self.counter_store)
            self.dispatcher.flush_rollups()
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("could not flush dispatcher counters (%s); will retry", exc)

    def _database_error(self, exc: Exception, delay: float) -> None:
        # PostgreSQL restarted or the network dropped: the database thread
        # reconnects on its next job. Outcomes that could not be recorded
        # wait in the dispatcher's backlog; unstarted rows return after
        # their lease.
        if isinstance(exc, DatabaseError | InterfaceError):
            logger.warning("dispatch engine: database error (%s); retrying in %.1fs", exc, delay)
        else:
            logger.exception("dispatch engine: unexpected error; retrying in %.1fs", delay)

    async def _wait(self, timeout: float) -> None:
        """Wait until something is worth a hop (a row finished or went
        back, or rows arrived while a slot is free) or `timeout` passes."""
        assert self.changed is not None
        self.changed.clear()  # anything set before this is seen by the check below
        free = self.running_limit() > 0
        if self.ran or self.not_started or (self.woken and free) or self.stopping.is_set():
            await asyncio.sleep(0)  # let the tasks run; the caller hops next
            return
        try:
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        except TimeoutError:
            pass

    def running_limit(self) -> int:
        """Rows a claim may take now: the free slots, plus room in the
        ready queue (claimed rows that start the moment a slot frees, so a
        finished row's slot does not wait for a trip to the database)."""
        ahead = self.prefetch if time.monotonic() >= self.ahead_paused_until else 0
        return self.config.max_in_flight + ahead - self.in_flight - len(self.queued)

    async def _sleep(self, seconds: float) -> None:
        """Wait out a database error, waking early only to stop."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            assert self.changed is not None
            self.changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self.changed.wait()
            except TimeoutError:
                pass

    # -- stopping -----------------------------------------------------------

    async def _drain(self) -> None:
        """Stopping: claim nothing more, let running rows finish within the
        grace, settling as they do; stop the rest and hand them back."""
        deadline = time.monotonic() + self.config.shutdown_grace_ms / 1000
        self._return_queued()  # at once: they never started
        while self.in_flight and (left := deadline - time.monotonic()) > 0:
            await self._settle_now()
            self.runner.threads.expire()
            self.changed.clear()  # type: ignore[union-attr]
            if not (self.ran or self.not_started):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, EXPIRE_EVERY)):
                        await self.changed.wait()  # type: ignore[union-attr]
        if self.in_flight:
            logger.warning(
                "%d executions still running after the shutdown grace; handing their rows back",
                self.in_flight,
            )
            self.runner.threads.withdraw_all()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _settle_now(self) -> None:
        if not (self.ran or self.not_started):
            return
        hop = Hop(ran=self.ran, hand_back=self.not_started)
        self.ran, self.not_started = [], []
        try:
            await self.db.arun(self._hop, hop)
        except Exception as exc:
            self._database_error(exc, 0.0)

    async def _last_hop(self) -> None:
        hop = Hop(ran=self.ran, hand_back=self.not_started, flush_acks=True, flush_counters=True)
        self.ran, self.not_started = [], []
        try:
            await self.db.arun(self._hop, hop)
        except Exception as exc:
            logger.warning(
                "dispatch engine: could not settle on the way out (%s); "
                "those rows run again after their lease",
                exc,
            )
