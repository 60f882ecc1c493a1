"""Dispatcher counters: counted in memory, flushed to a shared store about once a second."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Protocol

from outbox.storage.kinds import SourceKind

COUNTERS = (
    "dispatched",
    "succeeded",
    "retried",
    "dead_lettered",
    "authorization_failures",
    "abandoned",
)


@dataclass(frozen=True)
class Histogram:
    """A histogram kept as plain counters, so it adds up across processes
    like the others: one counter per bucket (cumulative: observations at or
    below its bound), the observation count, and their sum in whole
    microseconds (the shared store holds integers).

    The stored names are part of the metrics' contract (docs/dispatcher.md):
    ``<name>_count``, ``<name>_sum_us`` and ``<name>_le_<bound>``.
    """

    name: str
    buckets: tuple[float, ...]  # upper bounds in seconds, ascending

    @property
    def count(self) -> str:
        return f"{self.name}_count"

    @property
    def sum_us(self) -> str:
        return f"{self.name}_sum_us"

    def bucket(self, bound: float) -> str:
        return f"{self.name}_le_{bound:g}"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.count, self.sum_us, *(self.bucket(b) for b in self.buckets))

    def increments(self, seconds: float) -> dict[str, int]:
        """The counter increments one observation of `seconds` makes."""
        seconds = max(seconds, 0.0)
        found = {self.count: 1, self.sum_us: round(seconds * 1_000_000)}
        found.update({self.bucket(b): 1 for b in self.buckets if seconds <= b})
        return found


# How long each claim statement took (Dispatcher.claim). A claim is a few
# milliseconds when healthy (docs/dispatcher.md); the upper buckets catch a
# database under strain.
CLAIM_SECONDS = Histogram(
    "claim_seconds", (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
)
# How late each cron tick's first run started after its scheduled time
# (triggers/cron.py writes ticks ahead; docs/triggers.md, "Precision").
CRON_LATENESS_SECONDS = Histogram(
    "cron_tick_lateness_seconds", (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
)
# How long each execution ran, and how late it started after its row was
# due (a fresh event's insert, a retry's backoff, a cron tick's time), per
# source kind: the histograms behind picloud_execution_seconds and
# picloud_start_latency_seconds.
EXECUTION_SECONDS = {
    kind: Histogram(
        f"execution_seconds_{kind}",
        (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    )
    for kind in SourceKind.values
}
START_LATENCY_SECONDS = {
    kind: Histogram(
        f"start_latency_seconds_{kind}",
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
    )
    for kind in SourceKind.values
}
# Ticks given up by each catch-up policy (triggers/ticks.py).
CRON_MISSED = {policy: f"cron_missed_{policy}" for policy in ("skip", "latest", "all")}
# Ticks not run because the trigger's previous tick still ran (overlap policies).
CRON_OVERLAP_DROPPED = "cron_overlap_dropped"
KNOWN = (
    *COUNTERS,
    *CLAIM_SECONDS.names,
    *CRON_LATENESS_SECONDS.names,
    *(name for h in EXECUTION_SECONDS.values() for name in h.names),
    *(name for h in START_LATENCY_SECONDS.values() for name in h.names),
    *CRON_MISSED.values(),
    CRON_OVERLAP_DROPPED,
)


_KNOWN_NAMES = frozenset(KNOWN)


class CounterStore(Protocol):
    def add(self, increments: dict[str, int]) -> None:
        """Add each increment to the shared total of that name."""

    def read(self) -> dict[str, int]:
        """The shared totals."""


class Counters:
    """Thread-safe increments, handed to a CounterStore in one write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = dict.fromkeys(KNOWN, 0)
        # Per histogram, per slot: [observations, their sum in microseconds].
        self._slots: dict[Histogram, list[list[int]]] = {}

    def inc(self, name: str, n: int = 1) -> None:
        if name not in self._pending:
            raise KeyError(f"unknown counter {name!r}; known: {', '.join(KNOWN)}")
        with self._lock:
            self._pending[name] += n

    def add(self, increments: dict[str, int]) -> None:
        """Several increments under one lock (the dispatcher adds a batch's)."""
        unknown = increments.keys() - _KNOWN_NAMES
        if unknown:
            raise KeyError(f"unknown counters {sorted(unknown)}; known: {', '.join(KNOWN)}")
        with self._lock:
            for name, n in increments.items():
                self._pending[name] += n

    def observe(self, histogram: Histogram, seconds: float) -> None:
        """Count one observation of `seconds` in `histogram`.

        The dispatcher observes two histograms per row it settles, so this
        is on its hot path: an observation lands in one slot (the first
        bucket it fits, or past the last) and take() makes the stored,
        cumulative bucket counters of them (Histogram.increments, once per
        slot and flush instead of once per bucket and row)."""
        seconds = max(seconds, 0.0)
        slot = bisect.bisect_left(histogram.buckets, seconds)
        with self._lock:
            slots = self._slots.get(histogram)
            if slots is None:
                unknown = set(histogram.names) - _KNOWN_NAMES
                if unknown:
                    raise KeyError(f"unknown counters {sorted(unknown)}; known: {', '.join(KNOWN)}")
                slots = self._slots[histogram] = [[0, 0] for _ in histogram.buckets] + [[0, 0]]
            slots[slot][0] += 1
            slots[slot][1] += round(seconds * 1_000_000)

    def take(self) -> dict[str, int]:
        """The increments since the last take, reset to zero."""
        with self._lock:
            taken, self._pending = self._pending, dict.fromkeys(KNOWN, 0)
            histograms, self._slots = self._slots, {}
        for histogram, slots in histograms.items():
            for slot, (n, sum_us) in enumerate(slots):
                if not n:
                    continue
                taken[histogram.count] += n
                taken[histogram.sum_us] += sum_us
                for bound in histogram.buckets[slot:]:
                    taken[histogram.bucket(bound)] += n
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
