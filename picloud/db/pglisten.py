"""One thread, one LISTEN connection: each notification goes to its channel's callback.

The thread reconnects after any connection error, forever, until told to
stop. Notifications sent while it was disconnected are lost, so ``on_connect``
runs after every (re)connect: the owner re-checks whatever it may have missed.

Without a connection to listen on (``connect`` is None: the database goes
through a transaction-mode pooler and no direct URL is set) the thread
polls instead: it runs ``on_connect`` every PICLOUD_LISTEN_POLL_MS, the same
"look for yourself" the owner does after a reconnect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import psycopg

from picloud.config import PoolerConfig

logger = logging.getLogger("picloud.listen")

RECONNECT_DELAY = (0.1, 5.0)  # seconds: first and longest wait between reconnects


class Listener(threading.Thread):
    def __init__(
        self,
        channel: str,
        *,
        what: str,  # what the notifications announce, for the log
        connect: Callable[[], psycopg.Connection] | None,  # None: poll instead
        on_notify: Callable[[str], None],
        on_connect: Callable[[], None],
        stop: threading.Event,
        poll: float = 0.5,  # seconds between checks of `stop` while nothing arrives
        # More channels on the same connection, each with its own callback.
        also: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        super().__init__(name=f"picloud-listen-{channel}", daemon=True)
        self.channel, self.connect, self.stop, self.poll = channel, connect, stop, poll
        self.on_notify, self.on_connect, self.what = on_notify, on_connect, what
        self.callbacks = {channel: on_notify, **(also or {})}
        self.connected = threading.Event()

    def run(self) -> None:
        if self.connect is None:
            self._poll()
            return
        delay = RECONNECT_DELAY[0]
        while not self.stop.is_set():
            try:
                with self.connect() as conn:
                    # The channels are our constants, never user input.
                    for channel in self.callbacks:
                        conn.execute(f"LISTEN {channel}")
                    if not self.connected.is_set():
                        logger.info("listening for %s on %s", self.what, self.channel)
                    self.connected.set()
                    delay = RECONNECT_DELAY[0]
                    self.on_connect()
                    while not self.stop.is_set():
                        for note in conn.notifies(timeout=self.poll, stop_after=1):
                            self.callbacks.get(note.channel, self.on_notify)(note.payload)
            except psycopg.Error as exc:
                self.connected.clear()
                logger.warning(
                    "listener on %s lost its connection (%s); retrying in %.1fs",
                    self.channel,
                    exc,
                    delay,
                )
                self.stop.wait(delay)
                delay = min(delay * 2, RECONNECT_DELAY[1])

    def _poll(self) -> None:
        every_ms = PoolerConfig.current().poll_ms
        # The same words as when listening (what start-up waits for), then why not.
        logger.info(
            "listening for %s by polling every %d ms (LISTEN is off: PICLOUD_DATABASE_POOLER="
            "transaction and no PICLOUD_LISTEN_DATABASE_URL)",
            self.what,
            every_ms,
        )
        self.connected.set()
        while not self.stop.is_set():
            self.on_connect()
            self.stop.wait(every_ms / 1000)
