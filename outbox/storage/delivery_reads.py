"""What admin reads of the delivery log and its rollups: a page of attempts,
each trigger's health, and the dashboard's series.

Every read takes the apps it may show (None: every app, for superusers)
and is shaped so an index answers it whatever the log's size: attempts are
read newest first, per app, a page at a time (keyset pagination: "older
than this one"), never counted; health and charts come from the rollups.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from outbox.storage.delivery_log import DURATION_BOUNDS_MS, p95_bound
from picloud.db.sqlexec import fetch_all
from picloud.db.sqlfiles import load_queries

Q = load_queries("outbox", "delivery_reads.sql")
PAGE = 50  # attempts per page
HEALTH_WINDOW = timedelta(hours=24)

# The filters a page of attempts takes, and what each may be.
OUTCOMES = ("success", "error", "timeout", "unauthorized", "lost")
DISPOSITIONS = ("done", "retry", "dead_letter", "given_up")
RESULTS = ("succeeded", "failed")


@dataclass(frozen=True)
class AttemptFilter:
    apps: frozenset[uuid.UUID] | None  # the apps to show (None: all)
    trigger_id: uuid.UUID | None = None
    outbox_id: uuid.UUID | None = None
    event_key: str | None = None
    result: str | None = None  # "succeeded" / "failed"
    outcome: str | None = None
    disposition: str | None = None
    source_kind: str | None = None
    # Keyset cursor: only attempts older than this one (started_at, outbox id, attempt).
    before: tuple[datetime, uuid.UUID, int] | None = None


def attempts(f: AttemptFilter, limit: int = PAGE) -> list[dict[str, Any]]:
    """Up to `limit` attempts matching `f`, newest first."""
    where, params = ["TRUE"], {"limit": limit}
    if f.result is not None:
        # The partition key: a filter on it reads only that half of the log.
        where.append("d.failed = %(failed)s")
        params["failed"] = f.result == "failed"
    for name in ("outcome", "disposition", "source_kind"):
        value = getattr(f, name)
        if value is not None:
            where.append(f"d.{name} = %({name})s")
            params[name] = value
    if f.before is not None:
        where.append("(d.started_at, d.outbox_id, d.attempt) < (%(b_at)s, %(b_id)s, %(b_n)s)")
        params.update(b_at=f.before[0], b_id=f.before[1], b_n=f.before[2])
    scoped = f.apps is None or bool(f.apps)
    if not scoped:
        return []
    params["apps"] = None if f.apps is None else list(f.apps)
    if f.outbox_id is not None or f.trigger_id is not None:
        # One row's attempts, or one trigger's: their own indexes, then the scope.
        if f.outbox_id is not None:
            where.append("d.outbox_id = %(outbox_id)s")
            params["outbox_id"] = f.outbox_id
        if f.trigger_id is not None:
            where.append("d.trigger_id = %(trigger_id)s")
            params["trigger_id"] = f.trigger_id
        where.append("(%(apps)s::uuid[] IS NULL OR d.app_id = ANY (%(apps)s::uuid[]))")
        sql = Q["attempts_direct"]
    else:
        if f.event_key is not None:
            where.append("d.event_key = %(event_key)s")
            params["event_key"] = f.event_key
        # Per app, newest first by (app_id, started_at), merged: an ordered
        # index walk per app that stops at the page's end.
        sql = Q["attempts_per_app"]
    return fetch_all(sql.replace("/*where*/ TRUE", " AND ".join(where)), params)


@dataclass(frozen=True)
class Health:
    succeeded: int = 0  # in the last HEALTH_WINDOW
    failed: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    p95_ms: int | None = (
        None  # the bound of the bucket holding the 95th percentile; -1: past the last
    )

    @property
    def success_rate(self) -> float | None:
        total = self.succeeded + self.failed
        return self.succeeded / total if total else None


def trigger_health(trigger_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Health]:
    """Each trigger's health from the rollups (triggers with none are absent)."""
    if not trigger_ids:
        return {}
    since = timezone.now() - HEALTH_WINDOW
    params = {"ids": list(trigger_ids), "since": since}
    last = {r["trigger_id"]: r for r in fetch_all(Q["trigger_last"], params)}
    window: dict[uuid.UUID, list] = {}
    for r in fetch_all(Q["trigger_window"], params):
        zero = [0] * (len(DURATION_BOUNDS_MS) + 1)
        ok, failed, durations = window.get(r["trigger_id"], (0, 0, zero))
        window[r["trigger_id"]] = [
            ok + r["succeeded"],
            failed + r["failed"],
            [a + b for a, b in zip(durations, r["durations"], strict=False)],
        ]
    health = {}
    for trigger_id, r in last.items():
        ok, failed, durations = window.get(trigger_id, (0, 0, []))
        health[trigger_id] = Health(
            succeeded=ok,
            failed=failed,
            last_success_at=r["last_success_at"],
            last_failure_at=r["last_failure_at"],
            p95_ms=p95_bound(durations),
        )
    return health


@dataclass(frozen=True)
class Series:
    """Per-minute values over a window, oldest first (None: no sample)."""

    minutes: list[datetime]
    values: dict[str, list[float | None]]


def _minutes(since: datetime, until: datetime) -> list[datetime]:
    start = since.replace(second=0, microsecond=0)
    count = int((until - start).total_seconds() // 60) + 1
    return [start + timedelta(minutes=i) for i in range(count)]


def deliveries(apps: frozenset[uuid.UUID] | None, since: datetime) -> tuple[Series, list]:
    """Attempts succeeded and failed per minute in the apps, summed; and the
    apps ranked by their attempts in the window ([(app_id, slug, total)])."""
    params = {"apps": None if apps is None else list(apps), "since": since}
    rows = fetch_all(Q["minutes_total"], params)
    minutes = _minutes(since, timezone.now())
    index = {m: i for i, m in enumerate(minutes)}
    ok: list[float | None] = [0] * len(minutes)
    failed: list[float | None] = [0] * len(minutes)
    for r in rows:
        i = index.get(r["minute"])
        if i is not None:
            ok[i], failed[i] = r["succeeded"], r["failed"]
    ranked = [(r["app_id"], r["slug"], r["total"]) for r in fetch_all(Q["apps_ranked"], params)]
    return Series(minutes, {"succeeded": ok, "failed": failed}), ranked


def app_deliveries(app_ids: Sequence[uuid.UUID], since: datetime) -> dict[uuid.UUID, Series]:
    """Per app: attempts succeeded and failed per minute."""
    minutes = _minutes(since, timezone.now())
    index = {m: i for i, m in enumerate(minutes)}
    series = {
        a: Series(minutes, {"succeeded": [0] * len(minutes), "failed": [0] * len(minutes)})
        for a in app_ids
    }
    for r in fetch_all(Q["minutes_per_app"], {"apps": list(app_ids), "since": since}):
        i = index.get(r["minute"])
        if i is not None:
            series[r["app_id"]].values["succeeded"][i] = r["succeeded"]
            series[r["app_id"]].values["failed"][i] = r["failed"]
    return series


def backlog(apps: frozenset[uuid.UUID] | None, since: datetime) -> Series:
    """Rows due, and the oldest due row's age in seconds, per sampled minute."""
    params = {"apps": None if apps is None else list(apps), "since": since}
    minutes = _minutes(since, timezone.now())
    index = {m: i for i, m in enumerate(minutes)}
    due: list[float | None] = [None] * len(minutes)
    age: list[float | None] = [None] * len(minutes)
    for r in fetch_all(Q["samples"], params):
        i = index.get(r["minute"])
        if i is not None:
            due[i] = r["due"]
            oldest = r["oldest_due_at"]
            age[i] = max(0.0, (r["minute"] - oldest).total_seconds()) if oldest else 0.0
    return Series(minutes, {"due": due, "oldest_age_s": age})


def failing_triggers(
    apps: frozenset[uuid.UUID] | None, since: datetime, limit: int = 5
) -> list[dict[str, Any]]:
    """The triggers with the most failed attempts in the window."""
    params = {"apps": None if apps is None else list(apps), "since": since, "limit": limit}
    return fetch_all(Q["failing_triggers"], params)
