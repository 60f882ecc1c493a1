"""One LISTEN connection per process that wakes the request waiting on each inbox.

The dispatcher notifies channel ``picloud_reply`` with the inbox id when it
delivers a reply (outbox/sql/queries.sql, inbox_deliver). Waiters register
their inbox id here and sleep on an event; the listener thread sets it. After
a (re)connect every waiter is woken once to look for itself, since
notifications sent while nobody listened are gone (the replies are not: they
wait in their inbox rows).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import psycopg

from picloud.db.pglisten import Listener

CHANNEL = "picloud_reply"


class ReplyHub:
    # `connect` None: nobody listens, every waiter looks for itself every
    # PICLOUD_LISTEN_POLL_MS (picloud/db/pglisten.py).
    def __init__(self, connect: Callable[[], psycopg.Connection] | None) -> None:
        self._waiters: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.listener = Listener(
            CHANNEL,
            what="replies",
            connect=connect,
            on_notify=self._notified,
            on_connect=self._wake_all,
            stop=self._stop,
        )

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self._stop.set()
        self.listener.join(2.0)

    def register(self, inbox_id: uuid.UUID) -> threading.Event:
        """An event set when a reply for `inbox_id` may have arrived. Register
        before the inbox is committed, so no notification can come too early."""
        event = threading.Event()
        with self._lock:
            self._waiters[str(inbox_id)] = event
        return event

    def unregister(self, inbox_id: uuid.UUID) -> None:
        with self._lock:
            self._waiters.pop(str(inbox_id), None)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def _notified(self, payload: str) -> None:
        with self._lock:
            event = self._waiters.get(payload)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = list(self._waiters.values())
        for event in events:
            event.set()
