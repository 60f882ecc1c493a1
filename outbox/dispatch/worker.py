"""Dispatch loops in threads: claim while there is work, sleep until woken.

A ``DispatcherHost`` runs in one process: one LISTEN thread, N loop threads
(each with its own database connection and dispatcher) and a thread that
flushes counters. Stopping it lets each loop finish its running row, hands
claimed-but-unstarted rows back, and waits up to the shutdown grace.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime

from django.db import DatabaseError, InterfaceError, connection, connections, transaction
from django.utils import timezone

from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
from outbox.dispatch.dispatcher import BatchReport, Dispatcher
from outbox.dispatch.metrics import Counters, CounterStore
from outbox.dispatch.replies import InboxReplySink
from outbox.dispatch.wakeup import CHANNEL, Wakeup
from outbox.storage.pg_repository import PgCounterStore, PgOutboxRepo, PgReplyInbox
from picloud.config import DispatcherConfig
from picloud.db.pgconn import connect
from picloud.db.pglisten import Listener
from picloud.runtime.sandbox import stop_helper
from triggers.pg_repository import PgTriggerRepo

logger = logging.getLogger("picloud.dispatcher")

MAX_IDLE = 1.0  # seconds an idle loop sleeps at most before looking again
TARGET_BATCH_SECONDS = 0.05  # size batches so one takes about this long
# A batch that has run this long hands its unstarted rows back for idle loops
# (the size above is a guess from past rows; this bounds a wrong guess).
HAND_BACK_AFTER = 0.1  # seconds
FLUSH_EVERY = 1.0  # seconds between counter flushes
SATURATED_WAIT = 1.0  # seconds between looks while hung handlers fill the process
DB_RETRY_DELAY = (0.2, 5.0)  # seconds: first and longest wait after a database error
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while others wait (default 0.005)


class AdaptiveBatch:
    """Big batches for fast handlers (fewer commits), small ones for slow
    handlers (so one loop does not sit on rows others could run)."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.per_row: float | None = None  # seconds, moving average

    def limit(self) -> int:
        if self.per_row is None or self.per_row <= 0:
            return self.max_batch
        return max(1, min(self.max_batch, int(TARGET_BATCH_SECONDS / self.per_row)))

    def observe(self, report: BatchReport) -> None:
        if report.executed:
            sample = report.execution_seconds / report.executed
            if self.per_row is None or sample > self.per_row:
                # Slow down at once: rows claimed beyond what one loop can run
                # soon wait while other loops idle.
                self.per_row = sample
            else:
                # Speed up gradually: one fast batch may be a fluke.
                self.per_row = 0.8 * self.per_row + 0.2 * sample


def idle_timeout(next_due: datetime | None, now: datetime) -> float:
    """Sleep until the next row is due, but never longer than MAX_IDLE."""
    if next_due is None:
        return MAX_IDLE
    return min(MAX_IDLE, max(0.0, (next_due - now).total_seconds()))


class DispatcherHost:
    def __init__(
        self,
        *,
        make_dispatcher: Callable[..., Dispatcher],
        connect_listener: Callable,
        counter_store: CounterStore,
        config: DispatcherConfig | None = None,
    ) -> None:
        self.config = config or DispatcherConfig.current()
        self.make_dispatcher = make_dispatcher
        self.counter_store = counter_store
        self.counters = Counters()
        self.wakeup = Wakeup()
        self.stopping = threading.Event()
        self.listener = Listener(
            CHANNEL,
            what="outbox rows",
            connect=connect_listener,
            # Rows may have arrived while nobody listened: look once on connect.
            on_connect=self.wakeup.notify,
            on_notify=lambda _payload: self.wakeup.notify(),
            stop=self.stopping,
        )
        self.loops = [
            threading.Thread(target=self._loop, name=f"picloud-dispatch-{i}", daemon=True)
            for i in range(self.config.concurrency)
        ]
        self.flusher = threading.Thread(
            target=self._flush_loop, name="picloud-counters", daemon=True
        )

    def start(self) -> None:
        # Loops spend most of their time waiting on PostgreSQL; when an answer
        # arrives, the loop must get the GIL back from a handler thread that
        # may be busy. Python's default 5 ms switch interval would make every
        # round trip wait that long behind busy threads (the "convoy effect").
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.listener.start()
        for t in self.loops:
            t.start()
        self.flusher.start()
        logger.info("dispatcher started: %d loops", len(self.loops))

    def stop(self, grace: float | None = None) -> None:
        grace = self.config.shutdown_grace_ms / 1000 if grace is None else grace
        self.stopping.set()
        self.wakeup.notify(everyone=True)
        deadline = time.monotonic() + grace
        for t in self.loops:
            t.join(max(0.0, deadline - time.monotonic()))
        still_running = sum(t.is_alive() for t in self.loops)
        if still_running:
            logger.warning(
                "%d dispatch loops still running after %.1fs; their rows return when the lease ends",
                still_running,
                grace,
            )
        self.flusher.join(2.0)
        self.listener.join(2.0)
        logger.info("dispatcher stopped")

    def _loop(self) -> None:
        dispatcher = self.make_dispatcher(counters=self.counters, should_stop=self.stopping.is_set)
        batch = AdaptiveBatch(self.config.max_batch)
        delay = DB_RETRY_DELAY[0]
        try:
            while not self.stopping.is_set():
                seen = self.wakeup.generation
                try:
                    self.prepare_connection()
                    report = dispatcher.run_once(batch.limit())
                    batch.observe(report)
                    delay = DB_RETRY_DELAY[0]
                    if report.saturated:
                        # Hung handlers hold every slot of this process: look
                        # again later rather than claim rows nobody can run.
                        self.stopping.wait(SATURATED_WAIT)
                        continue
                    if report.claimed:
                        if report.claimed >= batch.limit():
                            # Probably more where that came from: bring in a sibling.
                            self.wakeup.notify()
                        continue
                    timeout = idle_timeout(dispatcher.outbox.next_due_at(), timezone.now())
                except Exception as exc:
                    # PostgreSQL restarted or the network dropped: reconnect
                    # on the next query. Claimed rows that did not run come
                    # back after their lease; outcomes of those that ran wait
                    # in the dispatcher until a statement records them.
                    if isinstance(exc, DatabaseError | InterfaceError):
                        logger.warning(
                            "dispatch loop: database error (%s); retrying in %.1fs", exc, delay
                        )
                    else:
                        logger.exception(
                            "dispatch loop: unexpected error; retrying in %.1fs", delay
                        )
                    connections.close_all()
                    self.stopping.wait(delay)
                    delay = min(delay * 2, DB_RETRY_DELAY[1])
                    continue
                self.wakeup.wait(seen, timeout)
        finally:
            with suppress(DatabaseError, InterfaceError):
                dispatcher.flush_acks()
            stop_helper()
            connections.close_all()

    @staticmethod
    def prepare_connection() -> None:
        """Set up this thread's connection once per (re)connect.

        The dispatcher's own writes (claims, acknowledgements, reschedules,
        dead letters) commit without waiting for the WAL flush: if PostgreSQL
        crashes and loses the last few, those rows simply run again, which
        at-least-once delivery allows anyway. Event sources and scripts write
        on other connections, with the server's durable default.
        """
        if connection.connection is None:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit TO off")

    def _flush_loop(self) -> None:
        try:
            while not self.stopping.wait(FLUSH_EVERY):
                self._flush()
            self._flush()
        finally:
            connections.close_all()

    def _flush(self) -> None:
        try:
            self.counters.flush(self.counter_store)
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("could not flush dispatcher counters (%s); will retry", exc)
            connections.close_all()


def postgres_host(config: DispatcherConfig | None = None) -> DispatcherHost:
    """A host wired to the PostgreSQL repositories."""

    config = config or DispatcherConfig.current()

    def make_dispatcher(*, counters: Counters, **kwargs) -> Dispatcher:
        return Dispatcher(
            outbox=PgOutboxRepo(),
            triggers=PgTriggerRepo(),
            dead_letters=PgDeadLetterRepo(),
            replies=InboxReplySink(PgReplyInbox(), PgAbandonedRepo(), counters),
            atomic=transaction.atomic,
            counters=counters,
            max_batch_seconds=HAND_BACK_AFTER,
            lease_margin=config.lease_margin_ms / 1000,
            **kwargs,
        )

    return DispatcherHost(
        make_dispatcher=make_dispatcher,
        connect_listener=connect,
        counter_store=PgCounterStore(),
        config=config,
    )
