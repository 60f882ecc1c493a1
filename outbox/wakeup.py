"""Wake idle dispatch loops when rows arrive (LISTEN/NOTIFY), not on a polling beat."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

logger = logging.getLogger("picloud.dispatcher")

CHANNEL = "picloud_outbox"  # outbox/sql/0002_notify.sql sends on it
RECONNECT_DELAY = (0.1, 5.0)  # seconds: first and longest wait between reconnects


class Wakeup:
    """A generation counter loops wait on: no wake-up is lost between a
    loop's empty claim and its wait, because the loop waits for a newer
    generation than the one it saw before claiming.

    A notification wakes one idle loop, not all: for a single new row, one
    claim beats a stampede of empty ones. A loop that finds a full batch
    wakes the next, so a burst still fans out.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.generation = 0

    def notify(self, *, everyone: bool = False) -> None:
        with self._cond:
            self.generation += 1
            if everyone:
                self._cond.notify_all()
            else:
                self._cond.notify(1)

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the generation moves past `seen` or `timeout` seconds pass."""
        with self._cond:
            return self._cond.wait_for(lambda: self.generation != seen, timeout)


class Listener(threading.Thread):
    """Holds one LISTEN connection per process and turns notifications into wake-ups."""

    def __init__(
        self,
        wakeup: Wakeup,
        connect: Callable[[], psycopg.Connection],
        stop: threading.Event,
        poll: float = 0.5,  # seconds between checks of `stop` while nothing arrives
    ) -> None:
        super().__init__(name="picloud-listener", daemon=True)
        self.wakeup, self.connect, self.stop, self.poll = wakeup, connect, stop, poll
        self.connected = threading.Event()

    def run(self) -> None:
        delay = RECONNECT_DELAY[0]
        while not self.stop.is_set():
            try:
                with self.connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not self.connected.is_set():
                        logger.info("listening for outbox rows on %s", CHANNEL)
                    self.connected.set()
                    delay = RECONNECT_DELAY[0]
                    # Rows may have arrived while we were not listening.
                    self.wakeup.notify()
                    while not self.stop.is_set():
                        for _ in conn.notifies(timeout=self.poll, stop_after=1):
                            self.wakeup.notify()
            except psycopg.Error as exc:
                self.connected.clear()
                logger.warning(
                    "outbox listener lost its connection (%s); retrying in %.1fs", exc, delay
                )
                self.stop.wait(delay)
                delay = min(delay * 2, RECONNECT_DELAY[1])
