"""Run the cron ticker in a dispatcher host: every TICK_EVERY seconds, in a
thread with a connection of its own (catching up after downtime can take a
while, and must not hold up the engine's claims and settles).

Every worker process of every cluster runs one; the ticker itself lets one
at a time do the work (triggers/cron.py). Ticks are written LOOKAHEAD ahead
of their time, so a run that comes late by a few seconds still writes each
tick before it is due, and the engine runs it at its second.
"""

from __future__ import annotations

import logging
import threading

from django.db import connections

from outbox.dispatch.metrics import CRON_MISSED, Counters
from triggers.cron import TICK_EVERY, CronTicker

logger = logging.getLogger("picloud.cron")


class CronThread:
    def __init__(
        self,
        stopping: threading.Event,
        counters: Counters,
        *,
        ticker: CronTicker | None = None,
        every: float = TICK_EVERY,
    ) -> None:
        self.stopping, self.every = stopping, every
        self.counters = counters  # flushed with the engine's
        self.ticker = ticker or CronTicker()
        self.thread = threading.Thread(target=self._loop, name="picloud-cron", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _loop(self) -> None:
        # At once on start: ticks owed since the last run are caught up first.
        while not self.stopping.is_set():
            try:
                report = self.ticker.run_once()
                self.counters.add(
                    {CRON_MISSED[policy]: n for policy, n in report.missed_by.items() if n}
                )
                if report.written or report.missed:
                    logger.info(
                        "cron: %d ticks written, %d missed by catch-up policies",
                        report.written,
                        report.missed,
                    )
            except Exception:
                # A fresh connection next time; ticks are written ahead, so
                # the next run still finds them in time.
                logger.exception("cron ticker failed; retrying in %.0fs", self.every)
                connections.close_all()
            self.stopping.wait(self.every)
        connections.close_all()  # this thread's own
