"""CircuitRepo in memory, for fast dispatcher tests; held to the same contract."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from django.utils import timezone

from outbox.storage.circuits import (
    OPEN,
    PROBING,
    CircuitState,
    ScriptOutcomes,
    cooldown,
)
from picloud.config import CircuitConfig
from picloud.db.storable import bounded_error


class MemoryCircuitRepo:
    def __init__(self, clock: Callable[[], datetime] = timezone.now) -> None:
        self.clock = clock
        self.circuits: dict[uuid.UUID, CircuitState] = {}
        self._lock = threading.Lock()

    def record(self, outcomes: Sequence[ScriptOutcomes], config: CircuitConfig) -> None:
        with self._lock:
            now = self.clock()
            for seen in outcomes:
                c = self.circuits.get(seen.script_id)
                if c is None:
                    if not seen.failures:
                        continue  # a success, and the script never failed
                    c = CircuitState(seen.script_id, seen.app_id, 0, 0, None, None)
                if seen.succeeded:
                    c = replace(c, failures=0, opened=0, open_until=None)
                if seen.failures:
                    probe_failed = c.open_until is not None and c.open_until <= now
                    opens = probe_failed or (
                        c.open_until is None
                        and c.failures + seen.failures >= config.failure_threshold
                    )
                    c = replace(
                        c,
                        failures=c.failures + seen.failures,
                        last_error=bounded_error(seen.last_error or ""),
                    )
                    if opens:
                        c = replace(
                            c, opened=c.opened + 1, open_until=now + cooldown(c.opened + 1, config)
                        )
                self.circuits[seen.script_id] = c

    def get(self, script_id: uuid.UUID) -> CircuitState | None:
        return self.circuits.get(script_id)

    def close(self, script_ids: Sequence[uuid.UUID]) -> int:
        closed = 0
        with self._lock:
            for script_id in script_ids:
                c = self.circuits.get(script_id)
                if c is not None:
                    closed += c.open_until is not None
                    self.circuits[script_id] = replace(c, failures=0, opened=0, open_until=None)
        return closed

    def counts(self) -> dict[str, int]:
        now = self.clock()
        states = [c.state(now) for c in self.circuits.values()]
        return {OPEN: states.count(OPEN), PROBING: states.count(PROBING)}

    def dirty(self) -> set[uuid.UUID]:
        return {s for s, c in self.circuits.items() if c.failures or c.open_until is not None}

    def script_cap(self, script_id: uuid.UUID, cap: int | None, now: datetime) -> int | None:
        """The script's cap as the claim sees it: 0 while open, 1 while probing."""
        c = self.circuits.get(script_id)
        if c is None or c.open_until is None:
            return cap
        return 0 if c.open_until > now else min(cap or 1, 1)
