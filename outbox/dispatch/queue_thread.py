"""Run the queue batcher in a dispatcher host: make batches for queue
triggers whenever messages arrive (LISTEN picloud_queue), a batch of this
process settles (its trigger has room again), a waiting partial batch or a
delayed message falls due, or at least every MAX_IDLE seconds; in a thread
with a connection of its own, so batching never holds up the engine.

Every worker process of every cluster runs one; each trigger is filled by
one of them at a time (queue_fill_batches locks it), so max_concurrency
holds across them all.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import connections
from django.utils import timezone

from triggers import queue_batches

logger = logging.getLogger("picloud.queues")

CHANNEL = "picloud_queue"  # picloud/sql/0005_topics_and_queues.sql sends on it
MAX_IDLE = 1.0  # seconds between looks when nothing wakes the batcher
ORPHANS_EVERY = 10.0  # seconds between sweeps for batches whose row is gone
ERROR_DELAY = 1.0  # seconds after a failed round


class QueueThread:
    def __init__(self, stopping: threading.Event, *, max_idle: float = MAX_IDLE) -> None:
        self.stopping, self.max_idle = stopping, max_idle
        self.woken = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="picloud-queues", daemon=True)

    def wake(self, _payload: str = "") -> None:
        self.woken.set()

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.woken.set()
        self.thread.join(timeout)

    def _loop(self) -> None:
        swept_at = float("-inf")
        while not self.stopping.is_set():
            # Cleared before looking: a wake while filling makes another round.
            self.woken.clear()
            wait = self.max_idle
            try:
                report = queue_batches.fill()
                if report.next_at is not None:
                    due_in = (report.next_at - timezone.now()).total_seconds()
                    wait = min(wait, max(due_in, 0.001))
                if time.monotonic() - swept_at >= ORPHANS_EVERY:
                    queue_batches.release_orphans()
                    swept_at = time.monotonic()
            except Exception:
                logger.exception("queue batcher failed; retrying in %.0fs", ERROR_DELAY)
                connections.close_all()
                wait = ERROR_DELAY
            self.woken.wait(wait)
        connections.close_all()  # this thread's own
