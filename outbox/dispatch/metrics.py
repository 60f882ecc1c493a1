"""Dispatcher counters: counted in memory, flushed to a shared store about once a second."""

from __future__ import annotations

import threading
from typing import Protocol

COUNTERS = (
    "dispatched",
    "succeeded",
    "retried",
    "dead_lettered",
    "authorization_failures",
    "abandoned",
)


class CounterStore(Protocol):
    def add(self, increments: dict[str, int]) -> None:
        """Add each increment to the shared total of that name."""

    def read(self) -> dict[str, int]:
        """The shared totals."""


class Counters:
    """Thread-safe increments, handed to a CounterStore in one write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = dict.fromkeys(COUNTERS, 0)

    def inc(self, name: str, n: int = 1) -> None:
        if name not in self._pending:
            raise KeyError(f"unknown counter {name!r}; known: {', '.join(COUNTERS)}")
        with self._lock:
            self._pending[name] += n

    def add(self, increments: dict[str, int]) -> None:
        """Several increments under one lock (the dispatcher adds a batch's)."""
        unknown = set(increments) - set(self._pending)
        if unknown:
            raise KeyError(f"unknown counters {sorted(unknown)}; known: {', '.join(COUNTERS)}")
        with self._lock:
            for name, n in increments.items():
                self._pending[name] += n

    def take(self) -> dict[str, int]:
        """The increments since the last take, reset to zero."""
        with self._lock:
            taken, self._pending = self._pending, dict.fromkeys(COUNTERS, 0)
        return taken

    def flush(self, store: CounterStore) -> None:
        taken = self.take()
        try:
            store.add(taken)
        except Exception:
            # Keep the counts for the next flush rather than lose them.
            for name, n in taken.items():
                self.inc(name, n)
            raise
