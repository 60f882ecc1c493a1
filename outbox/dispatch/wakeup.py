"""Wake idle dispatch loops when rows arrive (LISTEN/NOTIFY), not on a polling beat."""

from __future__ import annotations

import threading

CHANNEL = "picloud_outbox"  # outbox/sql/0002_notify.sql sends on it


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
