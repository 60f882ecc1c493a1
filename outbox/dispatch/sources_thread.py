"""Write the rows that time and queues make, in a dispatcher host: cron
ticks every TICK_EVERY seconds, and queue triggers' batches whenever
messages arrive (LISTEN picloud_queue), a batch of this process settles (its
trigger has room again), a waiting partial batch or a delayed message falls
due, or at least every MAX_IDLE seconds. Beside them, the housekeeping the
admin's pages read: a sample of the backlog each minute, and the delivery
log's day partitions each hour. One thread with a connection of its
own, so neither holds up the engine's claims and settles, and a process
keeps a fixed number of connections.

Every worker process of every cluster runs one. The cron ticker lets one at
a time do the work (triggers/cron.py); each queue trigger is filled by one
process at a time (queue_fill_trigger locks it), so max_concurrency holds
across them all. Ticks are written LOOKAHEAD ahead of their time, so a run
that comes late by a few seconds (a long catch-up, a slow fill) still writes
each tick before it is due.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import connection, connections
from django.utils import timezone

from outbox.dispatch.metrics import CRON_MISSED, Counters
from outbox.storage.pg_delivery_log import PgDeliveryLog
from picloud.config import DeliveryLogConfig, PoolerConfig
from triggers import queue_batches
from triggers.cron import TICK_EVERY, CronTicker

logger = logging.getLogger("picloud.sources")

QUEUE_CHANNEL = "picloud_queue"  # picloud/sql/0005_topics_and_queues.sql sends on it
MAX_IDLE = 1.0  # seconds between looks at the queues when nothing wakes the thread
ORPHANS_EVERY = 10.0  # seconds between sweeps for batches whose row is gone
ERROR_DELAY = 1.0  # seconds before the queues are looked at again after an error
SAMPLE_EVERY = 60.0  # seconds between samples of the backlog (one per minute is kept)
# Seconds between rounds of the delivery log's partitions (days made ahead,
# expired days dropped); the first round runs at start.
PARTITIONS_EVERY = 3600.0


def _prepare_connection() -> None:
    """This thread's writes commit without waiting for the WAL flush (once
    per connection): a commit PostgreSQL loses in a crash takes a batch's
    row and its messages' hold together (the messages stay visible), or a
    tick with its key and watermark (the next pass writes it again). Not
    through a transaction-mode pooler (see worker.prepare_connection)."""
    if not PoolerConfig.current().session_state_kept:
        return
    raw = connection.connection
    if raw is not None and getattr(connection, "picloud_prepared", None) is raw:
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    connection.picloud_prepared = connection.connection


class SourcesThread:
    def __init__(
        self,
        stopping: threading.Event,
        counters: Counters,
        *,
        ticker: CronTicker | None = None,
        delivery_log: PgDeliveryLog | None = None,
        every: float = TICK_EVERY,
        max_idle: float = MAX_IDLE,
    ) -> None:
        self.stopping, self.every, self.max_idle = stopping, every, max_idle
        self.counters = counters  # flushed with the engine's
        self.ticker = ticker or CronTicker()
        self.delivery_log = delivery_log or PgDeliveryLog()
        self.woken = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="picloud-sources", daemon=True)

    def wake(self, _payload: str = "") -> None:
        """Look at the queues now (a send committed, a batch settled)."""
        self.woken.set()

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.woken.set()
        self.thread.join(timeout)

    def _loop(self) -> None:
        next_tick = time.monotonic()  # at once: ticks owed since the last run first
        swept_at = sampled_at = partitioned_at = float("-inf")
        while not self.stopping.is_set():
            # Cleared before looking: a wake while working makes another round.
            self.woken.clear()
            self._guarded("preparing the connection", _prepare_connection)
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + self.every
            wait = self._fill()
            if time.monotonic() - swept_at >= ORPHANS_EVERY:
                self._guarded("releasing orphaned queue batches", queue_batches.release_orphans)
                swept_at = time.monotonic()
            if time.monotonic() - sampled_at >= SAMPLE_EVERY:
                self._guarded("sampling the backlog", self.delivery_log.sample_backlog)
                sampled_at = time.monotonic()
            if time.monotonic() - partitioned_at >= PARTITIONS_EVERY:
                self._guarded("keeping the delivery log's partitions", self._partitions)
                partitioned_at = time.monotonic()
            self.woken.wait(max(0.0, min(wait, next_tick - time.monotonic())))
        connections.close_all()  # this thread's own

    def _partitions(self) -> None:
        config = DeliveryLogConfig.current()
        made = self.delivery_log.make_partitions()
        dropped = self.delivery_log.drop_expired(
            config.retention_days, config.failure_retention_days
        )
        if made or dropped:
            logger.info(
                "delivery log: partitions made %s, dropped %s",
                ", ".join(made) or "none",
                ", ".join(dropped) or "none",
            )

    def _tick(self) -> None:
        report = self._guarded("cron ticker", self.ticker.run_once)
        if report is None:
            return
        self.counters.add({CRON_MISSED[policy]: n for policy, n in report.missed_by.items() if n})
        if report.written or report.missed:
            logger.info(
                "cron: %d ticks written, %d missed by catch-up policies",
                report.written,
                report.missed,
            )

    def _fill(self) -> float:
        """Make the batches queue triggers have room for; seconds until the
        next known reason to look again."""
        report = self._guarded("queue batcher", queue_batches.fill)
        if report is None:
            return ERROR_DELAY
        if report.next_at is None:
            return self.max_idle
        due_in = (report.next_at - timezone.now()).total_seconds()
        return min(self.max_idle, max(due_in, 0.001))

    @staticmethod
    def _guarded(what: str, work):
        try:
            return work()
        except Exception:
            # A fresh connection next time. Ticks are written ahead and
            # queue messages wait where they are: the next round catches up.
            logger.exception("%s failed; retrying", what)
            connections.close_all()
            return None
