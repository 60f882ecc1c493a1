"""One-off scheduled runs: run a script once, at a given time, with a payload.

A scheduled run is an outbox row of source ``invoke`` without a reply inbox,
due at its time: it runs as the principal who scheduled it (re-checked when
it runs), is retried with backoff and ends as a dead letter like any
trigger's row (docs/triggers.md, "One-off scheduled runs"). Its id is the
outbox row's. Scheduling and cancelling take ``ScriptInvoke`` in the
script's app: whoever may invoke a script may schedule it, and cancel what
is scheduled there while it has not started.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from outbox.storage.kinds import SourceKind
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow, payload_size
from picloud.config import SandboxCeiling
from picloud.db.sqlexec import fetch_all, fetch_one, from_json
from picloud.db.sqlfiles import load_queries
from picloud.db.storable import Unstorable, check_json
from picloud.domain.authz import Capability, has_capability, require
from picloud.models import App, Principal, Script

Q = load_queries("outbox")
MAX_AHEAD = timedelta(days=366)  # a run may be scheduled this far ahead at most


class PayloadTooLarge(ValidationError):
    """A payload over PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES."""


class ScheduledRunNotFound(LookupError):
    """No pending scheduled run with this id that the principal may see."""


@dataclass(frozen=True)
class ScheduledRun:
    id: uuid.UUID
    app_id: uuid.UUID
    script_id: uuid.UUID
    run_at: datetime
    payload: Any
    scheduled_by: uuid.UUID | None


def schedule(
    app: App,
    script: Script,
    run_at: datetime,
    payload: Any = None,
    *,
    principal: Principal,
    now: datetime | None = None,
) -> uuid.UUID:
    """Run `script` of `app` once at `run_at` (a time in the past runs at
    once) with `payload`, as `principal`; returns the run's id.

    PermissionDenied unless the principal may invoke scripts in the app;
    ValidationError (keyed by field) for a script of another app or
    disabled, a naive or too distant `run_at`, or a payload that is not
    storable JSON or is over PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES."""
    require(principal, Capability.ScriptInvoke(app.pk))
    stored = Script.objects.filter(pk=script.pk).values("app_id", "enabled").first()
    if stored is None or stored["app_id"] != app.pk:
        raise ValidationError({"script": f"no script {script.pk} in app {app.slug!r}"})
    if not stored["enabled"]:
        raise ValidationError({"script": f"script {script.name!r} is disabled"})
    now = now or timezone.now()
    due_at = check_run_at(run_at, now)
    payload = {} if payload is None else payload
    check_payload(payload)
    row = PgOutboxRepo().insert(
        NewOutboxRow(
            app_id=app.pk,
            source_kind=SourceKind.INVOKE,
            script_id=script.pk,
            run_as_principal=principal.pk,
            payload=payload,
            due_at=due_at,
        )
    )
    return row.id


def cancel(run_id: uuid.UUID, *, principal: Principal, app_id: uuid.UUID | None = None) -> None:
    """Cancel a scheduled run that has not started. ScheduledRunNotFound when
    there is none pending with that id (in `app_id`, when given) in an app
    where the principal may invoke scripts: the same answer whether it
    exists or not."""
    with transaction.atomic():
        row = fetch_one(Q["scheduled_run"], {"id": run_id})
        if (
            row is None
            or (app_id is not None and row["app_id"] != app_id)
            or not has_capability(principal, Capability.ScriptInvoke(row["app_id"]))
        ):
            raise ScheduledRunNotFound(run_id)
        PgOutboxRepo().delete([run_id])


def pending(app: App, *, principal: Principal) -> list[ScheduledRun]:
    """The app's scheduled runs that have not started, soonest first."""
    if not has_capability(principal, Capability.ScriptInvoke(app.pk)):
        raise PermissionDenied(f"principal {principal.pk} lacks ScriptInvoke in app {app.pk}")
    rows = fetch_all(Q["scheduled_runs_of_app"], {"app_id": app.pk})
    return [_run(r) for r in rows]


def check_run_at(run_at: object, now: datetime) -> datetime:
    """When the run is due: `run_at` in UTC, or `now` for a time already past
    (never a time PostgreSQL cannot store: a year-1 time with an offset is
    before year 1 in UTC)."""
    if not isinstance(run_at, datetime) or run_at.tzinfo is None:
        raise ValidationError(
            {"run_at": "a time with its timezone is needed, e.g. 2026-12-01T09:00:00Z"}
        )
    try:
        utc = run_at.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or utc.year < 2:
        return now
    if utc > now + MAX_AHEAD:
        raise ValidationError(
            {"run_at": f"at most {MAX_AHEAD.days} days ahead; got {run_at.isoformat()}"}
        )
    return max(utc, now)


def check_payload(payload: Any) -> None:
    try:
        check_json(payload)
    except Unstorable as exc:
        raise ValidationError({"payload": f"cannot be stored: {exc}"}) from None
    size = payload_size(payload)
    cap = SandboxCeiling.current().max_payload_bytes
    if size > cap:
        raise PayloadTooLarge(
            {"payload": f"{size} bytes, over {cap} (PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES)"}
        )


def _run(row: dict) -> ScheduledRun:
    return ScheduledRun(
        id=row["id"],
        app_id=row["app_id"],
        script_id=row["script_id"],
        run_at=row["due_at"],
        payload=from_json(row["payload"]),
        scheduled_by=row["run_as_principal"],
    )
