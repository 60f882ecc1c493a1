"""Admin's delivery log and dashboard: what ran, how it ended, and the
deliveries, failures and backlog of the user's apps over the last day.

Both pages are scoped like every admin page (AppManageTriggers: whoever
sees an app's outbox sees its attempts). They read through
outbox/storage/delivery_reads.py, shaped for the log's indexes: the log is
shown newest first, a page at a time ("older"), and never counted.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from deadletters.models import DeadLetter
from outbox.models import DeliveryAttempt, DeliveryDashboard
from outbox.storage import delivery_reads as reads
from outbox.storage.delivery_log import DISPOSITIONS, OUTCOMES
from outbox.storage.kinds import SourceKind
from picloud.admin_access import CANONICAL_ID, AppScopedAdmin, WrittenBySystem, holds_in
from picloud.domain.authz import Capability
from picloud.models import App
from picloud.svgchart import Line, line_chart
from picloud.text import truncate

_ID = CANONICAL_ID  # an id as links write it (str(uuid))
# The cursor of "older": started_at (ISO), outbox id, attempt.
_CURSOR = re.compile(r"(?P<at>[0-9T:.+\- ]{19,40})~(?P<id>" + _ID.pattern + r")~(?P<n>[0-9]{1,9})")
CHART_APPS = 6  # apps charted one by one on the dashboard (the busiest)
WINDOW = timedelta(hours=24)
SUCCEEDED, FAILED, DUE, AGE = "#2e7d32", "#c62828", "#1565c0", "#ef6c00"


class BadFilter(ValueError):
    """A page parameter that is not one the page offers; says what is allowed."""


class _ReadOnlyPage(WrittenBySystem, AppScopedAdmin):
    app_capability = Capability.AppManageTriggers

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return holds_in(request, self.app_capability)

    def scope(self, request, app_param: str | None) -> frozenset[uuid.UUID] | None:
        """The apps to show: the user's, narrowed to `app_param` when given."""
        allowed = self.allowed_apps(request)
        if app_param is None:
            return allowed
        app_id = _parse_id("app", app_param)
        if allowed is not None and app_id not in allowed:
            return frozenset()  # as if it had no attempts: another app's are not ours to show
        return frozenset({app_id})

    def get_object(self, request, object_id, from_field=None):
        # Pages over many rows, not of one: no object page (history, delete) exists.
        raise Http404("no such page")

    def context(self, request, title: str) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "has_view_permission": True,
        }


def _parse_id(name: str, value: str) -> uuid.UUID:
    if not _ID.fullmatch(value):
        raise BadFilter(
            f"{name} takes an id (like 01234567-89ab-cdef-0123-456789abcdef); "
            f"{truncate(value, 40)!r} is not one"
        )
    return uuid.UUID(value)


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise BadFilter(f"{name} {truncate(value, 40)!r} is not one of: {', '.join(allowed)}")
    return value


def _cursor(value: str | None) -> tuple[datetime, uuid.UUID, int] | None:
    if not value:
        return None
    m = _CURSOR.fullmatch(value)
    try:
        if m is None:
            raise ValueError
        at = datetime.fromisoformat(m["at"])
        if at.tzinfo is None:
            raise ValueError
        # In UTC: PostgreSQL refuses offsets Python takes (+20:00, seconds).
        return at.astimezone(UTC), uuid.UUID(m["id"]), int(m["n"])
    except (ValueError, OverflowError):
        raise BadFilter("before takes the link of the page's 'older' button") from None


FILTER_PARAMS = ("app", "trigger", "q", "result", "outcome", "disposition", "kind")


@admin.register(DeliveryAttempt)
class DeliveryLogAdmin(_ReadOnlyPage):
    """Every attempt, newest first: filter by app, trigger, result, outcome,
    disposition and source; search by outbox id or event key."""

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        params = request.GET
        if any("\x00" in v for v in params.values()):
            return self._refuse(request, BadFilter("filter values cannot hold a NUL character"))
        try:
            f = self._filter(request, params)
        except BadFilter as exc:
            return self._refuse(request, exc)
        page = reads.attempts(f)
        rows, older = page.rows, None
        if page.older is not None:
            at, outbox_id, attempt = page.older
            cursor = f"{at.isoformat()}~{outbox_id}~{attempt}"
            kept = {k: v for k, v in params.items() if k in FILTER_PARAMS and v}
            older = "?" + urlencode({**kept, "before": cursor})
        _link_dead_letters(rows)
        apps = App.objects.order_by("slug")
        allowed = self.allowed_apps(request)
        if allowed is not None:
            apps = apps.filter(id__in=allowed)
        context = {
            **self.context(request, "Delivery log"),
            "rows": rows,
            "older": older,
            "newest": "?" + urlencode({k: v for k, v in params.items() if k in FILTER_PARAMS}),
            "filters": {k: params.get(k, "") for k in FILTER_PARAMS},
            "apps": list(apps.values_list("id", "slug")[:500]),
            "results": reads.RESULTS,
            "outcomes": OUTCOMES,
            "dispositions": DISPOSITIONS,
            "kinds": SourceKind.choices,
            "page_size": reads.PAGE,
            "paged": "before" in params,
            "windowed": page.windowed,
            "window": reads.WINDOW,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/outbox/deliveryattempt/attempts.html", context)

    def _filter(self, request, params) -> reads.AttemptFilter:
        query = params.get("q", "").strip()
        outbox_id = key = None
        if query:
            if _ID.fullmatch(query):
                outbox_id = uuid.UUID(query)
            else:
                key = query[:512]
        trigger = params.get("trigger")
        return reads.AttemptFilter(
            apps=self.scope(request, params.get("app") or None),
            trigger_id=_parse_id("trigger", trigger) if trigger else None,
            outbox_id=outbox_id,
            event_key=key,
            result=_choice("result", params.get("result"), reads.RESULTS),
            outcome=_choice("outcome", params.get("outcome"), OUTCOMES),
            disposition=_choice("disposition", params.get("disposition"), DISPOSITIONS),
            source_kind=_choice("kind", params.get("kind"), tuple(SourceKind.values)),
            before=_cursor(params.get("before")),
        )

    def _refuse(self, request, exc: BadFilter):
        messages.error(request, f"Invalid filter: {exc}. Showing the newest attempts.")
        return HttpResponseRedirect(request.path)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """An outbox row's attempts: the log filtered by its id."""
        if not _ID.fullmatch(object_id):
            raise Http404("no such outbox row")
        return HttpResponseRedirect(attempts_url(outbox_id=object_id))


def _link_dead_letters(rows: list[dict]) -> None:
    """Each attempt that ended in a dead letter links to it (one indexed
    query for the page; the letter may be gone, swept after resolution)."""
    ended = [r["outbox_id"] for r in rows if r["disposition"] == "dead_letter"]
    if not ended:
        return
    letters = dict(DeadLetter.objects.filter(outbox_id__in=ended).values_list("outbox_id", "id"))
    for r in rows:
        letter = letters.get(r["outbox_id"]) if r["disposition"] == "dead_letter" else None
        if letter is not None:
            r["dead_letter_url"] = reverse("admin:deadletters_deadletter_change", args=[letter])


def attempts_url(**filters) -> str:
    """The delivery log filtered (outbox_id=..., trigger=..., result=...)."""
    if "outbox_id" in filters:
        filters["q"] = filters.pop("outbox_id")
    return reverse("admin:outbox_deliveryattempt_changelist") + "?" + urlencode(filters)


@admin.register(DeliveryDashboard)
class DashboardAdmin(_ReadOnlyPage):
    """Deliveries and failures per minute, the backlog and its oldest row,
    and the triggers failing most, over the last 24 hours of the user's apps."""

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            apps = self.scope(request, request.GET.get("app") or None)
        except BadFilter as exc:
            messages.error(request, f"Invalid filter: {exc}. Showing all your apps.")
            return HttpResponseRedirect(request.path)
        since = timezone.now() - WINDOW
        total, ranked = reads.deliveries(apps, since)
        busiest = ranked[:CHART_APPS]
        per_app = reads.app_deliveries([a for a, _, _ in busiest], since)
        queue = reads.backlog(apps, since)
        charts = [
            (
                "Attempts per minute",
                line_chart(
                    "Attempts per minute, all apps shown",
                    total.minutes,
                    [
                        Line("succeeded", SUCCEEDED, total.values["succeeded"]),
                        Line("failed", FAILED, total.values["failed"]),
                    ],
                ),
            ),
            (
                "Backlog: rows due",
                line_chart(
                    "Rows due (backlog)",
                    queue.minutes,
                    [Line("rows due", DUE, queue.values["due"])],
                ),
            ),
            (
                "Oldest due row's age",
                line_chart(
                    "Oldest due row's age",
                    queue.minutes,
                    [Line("oldest due row, seconds", AGE, queue.values["oldest_age_s"])],
                    unit="s",
                ),
            ),
        ]
        app_charts = [
            (
                slug,
                total_n,
                line_chart(
                    f"Attempts per minute of {slug}",
                    per_app[app_id].minutes,
                    [
                        Line("succeeded", SUCCEEDED, per_app[app_id].values["succeeded"]),
                        Line("failed", FAILED, per_app[app_id].values["failed"]),
                    ],
                ),
            )
            for app_id, slug, total_n in busiest
        ]
        failing = reads.failing_triggers(apps, since)
        for row in failing:
            row["attempts_url"] = attempts_url(trigger=row["trigger_id"], result="failed")
            row["trigger_url"] = reverse("admin:triggers_trigger_change", args=[row["trigger_id"]])
        context = {
            **self.context(request, "Dashboard"),
            "charts": charts,
            "app_charts": app_charts,
            "more_apps": len(ranked) - len(busiest),
            "failing": failing,
            "since": since,
            "log_url": reverse("admin:outbox_deliveryattempt_changelist"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/outbox/deliverydashboard/dashboard.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        raise Http404("the dashboard has no entries")
