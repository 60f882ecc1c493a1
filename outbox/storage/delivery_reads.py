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

# What the result filter takes (outcome and disposition take
# delivery_log.OUTCOMES and DISPOSITIONS).
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


# Filters no index serves (outcome, disposition, source) examine at most
# this many of the newest attempts per page, across the apps in scope (at
# least WINDOW_MIN per app): a rare value costs a bounded walk per page,
# not a scan of millions of rows, and "older" goes on from where it stopped.
WINDOW = 20_000
WINDOW_MIN = 500


@dataclass(frozen=True)
class AttemptsPage:
    rows: list[dict[str, Any]]
    # The cursor of the next page ("older"), None when nothing older is left.
    older: tuple[datetime, uuid.UUID, int] | None
    # True when filters no index serves limited the attempts looked at.
    windowed: bool = False


def _key(row: dict[str, Any]) -> tuple[datetime, uuid.UUID, int]:
    return row["started_at"], row["outbox_id"], row["attempt"]


def attempts(f: AttemptFilter, limit: int = PAGE) -> AttemptsPage:
    """A page of attempts matching `f`, newest first."""
    if f.apps is not None and not f.apps:
        return AttemptsPage([], None)
    where, post, params = ["TRUE"], ["TRUE"], {"limit": limit + 1}
    failed = {"succeeded": False, "failed": True}.get(f.result or "")
    # The partition key: what an outcome or a disposition implies of it
    # reads only that half of the log.
    if f.outcome is not None:
        failed = f.outcome != "success" if failed is None else failed
    if f.disposition in ("retry", "dead_letter", "given_up"):
        failed = True if failed is None else failed
    if failed is not None:
        where.append("d.failed = %(failed)s")
        params["failed"] = failed
    for name in ("outcome", "disposition", "source_kind"):
        value = getattr(f, name)
        if value is not None:
            post.append(f"d.{name} = %({name})s")
            params[name] = value
    if f.before is not None:
        where.append("(d.started_at, d.outbox_id, d.attempt) < (%(b_at)s, %(b_id)s, %(b_n)s)")
        params.update(b_at=f.before[0], b_id=f.before[1], b_n=f.before[2])
    params["apps"] = None if f.apps is None else list(f.apps)
    direct = f.outbox_id is not None or f.trigger_id is not None
    if f.outbox_id is not None:
        where.append("d.outbox_id = %(outbox_id)s")
        params["outbox_id"] = f.outbox_id
    if f.trigger_id is not None:
        where.append("d.trigger_id = %(trigger_id)s")
        params["trigger_id"] = f.trigger_id
    if direct:
        # One row's attempts, or one trigger's: their own indexes, then the scope.
        where.append("(%(apps)s::uuid[] IS NULL OR d.app_id = ANY (%(apps)s::uuid[]))")
    if f.event_key is not None:
        where.append("d.event_key = %(event_key)s")
        params["event_key"] = f.event_key
    windowed = len(post) > 1 and f.outbox_id is None and f.event_key is None
    name = ("attempts_direct" if direct else "attempts_per_app") + ("_window" if windowed else "")
    if windowed:
        apps = 1 if direct else _app_count() if f.apps is None else len(f.apps)
        params["window"] = max(WINDOW_MIN, WINDOW // max(1, apps))
    else:
        where.extend(post[1:])
    sql = Q[name].replace("/*where*/ TRUE", " AND ".join(where))
    rows = fetch_all(sql.replace("/*post*/ TRUE", " AND ".join(post)), params)
    if not windowed:
        page = rows[:limit]
        return AttemptsPage(page, _key(page[-1]) if len(rows) > limit else None)
    # A row marked `window_end` closes its app's window (more may be older).
    ends = [_key(r) for r in rows if r["window_end"]]
    end = max(ends) if ends else None
    matched = sorted((r for r in rows if r["matches"]), key=_key, reverse=True)
    if end is not None:
        # Older than the newest window's end was not looked at in every app:
        # those rows come on the next page, from that end on.
        matched = [r for r in matched if _key(r) >= end]
    page = matched[:limit]
    older = _key(page[-1]) if len(matched) > limit else end
    return AttemptsPage(page, older, windowed=True)


def _app_count() -> int:
    return fetch_all("SELECT count(*) AS n FROM apps")[0]["n"]


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
