"""The delivery log's contract: one record per attempt, and the rollups.

The table and its partitions are outbox/sql/0008_delivery_log.sql. The
dispatcher builds an ``Attempt`` for every row it settles and hands them to
the statement that settles the row (a success's to the claim that
acknowledges it); ``DeliveryLog`` is what writes the others and keeps the
partitions. Implementations: pg_delivery_log.py and the in-memory one below.
"""

from __future__ import annotations

import bisect
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from picloud.db.storable import storable_text

DETAIL_CHARS = 4_096  # of an answer or error, as logged
EVENT_KEY_CHARS = 512
PARTITIONS_AHEAD = 7  # days of partitions made ahead of today

OUTCOMES = ("success", "error", "timeout", "unauthorized", "lost")
DISPOSITIONS = ("done", "retry", "dead_letter", "given_up")

# Upper bounds (ms) of the duration buckets of trigger_hours.durations; the
# last bucket counts everything slower. A p95 read off them is "at most the
# bucket's bound".
DURATION_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000)


@dataclass(frozen=True)
class Attempt:
    outbox_id: uuid.UUID
    app_id: uuid.UUID
    trigger_id: uuid.UUID | None
    script_id: uuid.UUID
    source_kind: str
    attempt: int
    started_at: datetime
    duration_ms: int
    outcome: str
    disposition: str
    status_code: int | None = None
    event_key: str | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome != "success"


class Acked(NamedTuple):
    """What the dispatcher measured of an attempt whose row it acknowledges;
    everything else comes from the row as it is deleted (delivery_log_ack)."""

    started: float  # epoch seconds
    ms: int
    outcome: str = "success"
    status: int | None = None
    detail: str = ""


def ack_params(ids: Sequence[uuid.UUID], acked: Sequence[Acked]) -> dict[str, Any]:
    """The arrays delivery_log_ack takes. Written as array literals (a
    claim's worth of floats and ints is one join, not a value each); the
    rarely needed ones are NULL when every attempt is a plain success."""
    plain = all(a.outcome == "success" and a.status is None and not a.detail for a in acked)
    return {
        "ack": "{" + ",".join(map(str, ids)) + "}",
        "started": "{" + ",".join(repr(a.started) for a in acked) + "}",
        "ms": "{" + ",".join(str(a.ms) for a in acked) + "}",
        "outcomes": None if plain else [a.outcome for a in acked],
        "statuses": None if plain else [a.status for a in acked],
        "details": None if plain else [a.detail for a in acked],
    }


def event_key(source_kind: str, payload: Any) -> str | None:
    """What an event was about: delivery_log_event_key (0008_delivery_log.sql)
    in Python, for the in-memory log; a contract test holds them together."""
    if not isinstance(payload, dict):
        return None
    key: Any = None
    if source_kind == "kv":
        collection, name = payload.get("collection"), payload.get("key")
        if collection is not None and name is not None:
            key = f"{_as_text(collection)}/{_as_text(name)}"
    else:
        field_name = {"pubsub": "topic", "email": "message_id", "dead_letter": "dead_letter_id"}
        if source_kind in field_name and payload.get(field_name[source_kind]) is not None:
            key = _as_text(payload[field_name[source_kind]])
    return key[:EVENT_KEY_CHARS] if key else None


def _as_text(value: Any) -> str:
    """A JSON value as PostgreSQL's ->> gives it."""
    if isinstance(value, str):
        return value
    if value is True or value is False:
        return "true" if value else "false"
    return json.dumps(value, separators=(", ", ": "))


def attempt_of_row(row: Any, acked: Acked, disposition: str) -> Attempt:
    """The whole log entry of an attempt of outbox row `row` (an OutboxRow):
    what delivery_log_ack and delivery_log_write store of it."""
    return Attempt(
        outbox_id=row.id,
        app_id=row.app_id,
        trigger_id=row.trigger_id,
        script_id=row.script_id,
        source_kind=row.source_kind,
        attempt=row.attempts,
        started_at=datetime.fromtimestamp(acked.started, UTC),
        duration_ms=acked.ms,
        outcome=acked.outcome,
        disposition=disposition,
        status_code=acked.status,
        event_key=event_key(row.source_kind, row.payload),
        detail=acked.detail,
    )


def storable_detail(text: str) -> str:
    """The first DETAIL_CHARS of an answer or error, fit for PostgreSQL."""
    return storable_text(text, DETAIL_CHARS)


def to_json(attempts: Sequence[Attempt]) -> str | None:
    """The batch as the one JSON parameter delivery_log_write takes (None: empty)."""
    if not attempts:
        return None
    return json.dumps(
        [
            {
                "outbox_id": str(a.outbox_id),
                "app_id": str(a.app_id),
                "trigger_id": str(a.trigger_id) if a.trigger_id else None,
                "script_id": str(a.script_id),
                "source_kind": a.source_kind,
                "attempt": a.attempt,
                "started_at": a.started_at.isoformat(),
                "duration_ms": a.duration_ms,
                "outcome": a.outcome,
                "disposition": a.disposition,
                "status_code": a.status_code,
                "event_key": a.event_key,
                "detail": a.detail,
            }
            for a in attempts
        ]
    )


def p95_bound(durations: Sequence[int]) -> int | None:
    """The bound (ms) of the bucket holding the 95th percentile, None when
    nothing was counted; -1 when it lies past the last bound."""
    total = sum(durations)
    if not total:
        return None
    seen = 0
    for i, n in enumerate(durations):
        seen += n
        if seen * 100 >= total * 95:
            return DURATION_BOUNDS_MS[i] if i < len(DURATION_BOUNDS_MS) else -1
    return -1


@dataclass
class Rollups:
    """What a process settled since it last flushed: per app and minute,
    per trigger and hour (outbox/sql/0008_delivery_log.sql)."""

    # (app, minute since the epoch) -> [succeeded, failed]
    minutes: dict[tuple[uuid.UUID, int], list[int]] = field(default_factory=dict)
    # (trigger, hour since the epoch) -> [app, succeeded, failed, last
    # success, last failure (epoch seconds), attempts per duration bucket]
    hours: dict[tuple[uuid.UUID, int], list] = field(default_factory=dict)

    def add(
        self,
        app_id: uuid.UUID,
        trigger_id: uuid.UUID | None,
        started: float,
        ms: int,
        failed: bool,
    ) -> None:
        """Count one attempt (started at `started` epoch seconds, `ms` long)."""
        minute = int(started // 60)
        counts = self.minutes.get((app_id, minute))
        if counts is None:
            counts = self.minutes[(app_id, minute)] = [0, 0]
        counts[failed] += 1
        if trigger_id is None:
            return
        entry = self.hours.get((trigger_id, minute // 60))
        if entry is None:
            entry = [app_id, 0, 0, None, None, [0] * (len(DURATION_BOUNDS_MS) + 1)]
            self.hours[(trigger_id, minute // 60)] = entry
        ended = started + ms / 1000
        if failed:
            entry[2] += 1
            entry[4] = max(entry[4] or ended, ended)
        else:
            entry[1] += 1
            entry[3] = max(entry[3] or ended, ended)
        entry[5][bisect.bisect_left(DURATION_BOUNDS_MS, ms)] += 1

    def merge(self, other: Rollups) -> None:
        """Add `other`'s counts to these."""
        for key, (ok, failed) in other.minutes.items():
            counts = self.minutes.setdefault(key, [0, 0])
            counts[0] += ok
            counts[1] += failed
        for key, (app, ok, failed, last_ok, last_failed, durations) in other.hours.items():
            mine = self.hours.setdefault(key, [app, 0, 0, None, None, [0] * len(durations)])
            mine[1] += ok
            mine[2] += failed
            mine[3] = max(filter(None, (mine[3], last_ok)), default=None)
            mine[4] = max(filter(None, (mine[4], last_failed)), default=None)
            mine[5] = [a + b for a, b in zip(mine[5], durations, strict=True)]

    def __bool__(self) -> bool:
        return bool(self.minutes)

    def take(self) -> Rollups:
        """These rollups, leaving this one empty."""
        taken = Rollups(self.minutes, self.hours)
        self.minutes, self.hours = {}, {}
        return taken


class DeliveryLog(Protocol):
    def write(self, attempts: Sequence[Attempt]) -> int:
        """Log attempts (joins the caller's transaction); a success of a
        trigger set to log failures only is left out. Returns how many were written."""

    def add_rollups(self, rollups: Rollups) -> None:
        """Add a process's counts to the shared rollups."""

    def make_partitions(self, ahead: int = PARTITIONS_AHEAD) -> list[str]:
        """Create the day partitions of yesterday to `ahead` days from
        today that are missing; returns their names."""

    def drop_expired(self, ok_days: int, failed_days: int) -> list[str]:
        """Drop day partitions wholly older than their retention (successes
        `ok_days`, failures `failed_days`); returns their names."""


class MemoryDeliveryLog:
    """The log as lists, for unit tests of the dispatcher."""

    def __init__(self, failures_only: Iterable[uuid.UUID] = ()) -> None:
        self.attempts: list[Attempt] = []
        self.failures_only = set(failures_only)
        self.rollups = Rollups()

    def write(self, attempts: Sequence[Attempt]) -> int:
        kept = [a for a in attempts if a.failed or a.trigger_id not in self.failures_only]
        self.attempts.extend(kept)
        return len(kept)

    def add_rollups(self, rollups: Rollups) -> None:
        self.rollups.merge(rollups)

    def make_partitions(self, ahead: int = PARTITIONS_AHEAD) -> list[str]:
        return []

    def drop_expired(self, ok_days: int, failed_days: int) -> list[str]:
        return []
