"""The CircuitRepo contract: each script's circuit breaker, as the dispatcher
records outcomes and the claim reads it.

A script's circuit is **closed** (its rows are claimed as usual), **open**
until a time (none of its rows is claimed: they wait, no attempt counted),
or **probing** once that time has passed (one row at most in flight; its
outcome closes the circuit or opens it again for twice as long, up to the
max cool-down). PostgreSQL keeps it in ``script_circuits``
(outbox/sql/0005_circuit_breaker.sql); ``PgCircuitRepo`` and
``MemoryCircuitRepo`` implement it and tests/contract holds them to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from picloud.config import CircuitConfig

CLOSED, OPEN, PROBING = "closed", "open", "probing"


@dataclass(frozen=True)
class ScriptOutcomes:
    """What one settling batch saw of one script's executions, in order."""

    script_id: uuid.UUID
    app_id: uuid.UUID
    succeeded: bool  # any execution succeeded
    # Retryable failures after the last success (all of them when none succeeded).
    failures: int
    last_error: str | None = None


@dataclass(frozen=True)
class CircuitState:
    script_id: uuid.UUID
    app_id: uuid.UUID
    failures: int
    opened: int
    open_until: datetime | None
    last_error: str | None

    def state(self, now: datetime) -> str:
        if self.open_until is None:
            return CLOSED
        return OPEN if self.open_until > now else PROBING


def summarize(outcomes: Iterable[tuple[uuid.UUID, uuid.UUID, bool | None, str | None]]):
    """ScriptOutcomes per script from (script_id, app_id, ok, error) in the
    order they happened; ok None for an outcome that says nothing of the
    endpoint's health (a refusal, a failure retrying cannot fix)."""
    seen: dict[uuid.UUID, list] = {}
    for script_id, app_id, ok, error in outcomes:
        if ok is None:
            continue
        entry = seen.setdefault(script_id, [app_id, False, 0, None])
        if ok:
            entry[1], entry[2] = True, 0  # failures before a success no longer count
        else:
            entry[2] += 1
            entry[3] = error
    return [ScriptOutcomes(s, a, ok, n, error) for s, (a, ok, n, error) in seen.items()]


def cooldown(opened: int, config: CircuitConfig) -> timedelta:
    """How long a circuit opened `opened` times in a row stays open."""
    ms = min(config.max_cooldown_ms, config.cooldown_ms * 2 ** min(opened - 1, 40))
    return timedelta(milliseconds=ms)


class CircuitRepo(Protocol):
    def record(self, outcomes: Sequence[ScriptOutcomes], config: CircuitConfig) -> None:
        """Apply one batch's outcomes: a success closes the script's circuit;
        retryable failures then count up and open it at the threshold; a
        failure while it probes opens it again, for twice the last cool-down
        (up to the max). One statement; joins no caller's transaction."""

    def get(self, script_id: uuid.UUID) -> CircuitState | None:
        """The script's circuit, or None when it never failed since its last success."""

    def close(self, script_ids: Sequence[uuid.UUID]) -> int:
        """An operator's "close now": closed, failures forgotten. Returns how
        many were not closed before."""

    def counts(self) -> dict[str, int]:
        """How many circuits are open and probing right now ({OPEN: n, PROBING: m})."""

    def dirty(self) -> set[uuid.UUID]:
        """Scripts whose circuit a success would change: failures counted,
        or not closed. A success of any other script is no news."""
