"""Admin for the outbox: a read-only view of the backlog, "run now", the
scripts' circuit breakers with "close now", and pending one-off scheduled
runs with "cancel"."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import F
from django.utils import timezone

from outbox import scheduled
from outbox.models import OutboxEntry, ScheduledRun, ScriptCircuit
from outbox.storage.circuits import CircuitState
from outbox.storage.pg_circuits import PgCircuitRepo
from outbox.storage.pg_repository import PgOutboxRepo
from picloud.admin_access import AppFilter, AppScopedAdmin, WrittenBySystem
from picloud.admin_counts import FIGURE_EXACT_UP_TO, figure
from picloud.db.search import matching, words_of
from picloud.db.sqlexec import fetch_all
from picloud.db.sqlfiles import load_queries
from picloud.domain.authz import Capability
from picloud.text import truncate

Q = load_queries("outbox", "admin.sql")

BACKLOG_APPS = 20  # apps the backlog above the outbox list shows, longest waiting first


class DueFilter(admin.SimpleListFilter):
    title = "due"
    parameter_name = "due"

    def lookups(self, request, model_admin):
        return [("now", "Due now"), ("later", "Waiting (retry, lease or schedule)")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "now":
            return queryset.filter(due_at__lte=now)
        if self.value() == "later":
            return queryset.filter(due_at__gt=now)
        return queryset


@admin.register(OutboxEntry)
class OutboxEntryAdmin(WrittenBySystem, AppScopedAdmin):
    app_capability = Capability.AppManageTriggers
    list_display = [
        "created_at",
        "app",
        "source_kind",
        "trigger",
        "script",
        "due_at",
        "attempts",
        "short_error",
        "sync",
    ]
    list_filter = [AppFilter, DueFilter, "source_kind"]
    # A trigger and a script name their app: theirs too, or a query per row.
    list_select_related = ["app", "trigger__app", "script__app"]
    search_fields = ["last_error"]  # searched by get_search_results
    search_help_text = (
        "words that start words of the last error (time 503 finds “TimeoutError … HTTP 503”)"
    )
    ordering = ["due_at"]
    actions = ["run_now"]
    readonly_fields = [
        "id",
        "app",
        "source_kind",
        "trigger",
        "script",
        "run_as_principal",
        "payload",
        "depth",
        "attempts",
        "due_at",
        "reply_to",
        "last_error",
        "errors",
        "created_at",
    ]

    # The dispatcher owns these rows; operators look, and may hurry one along.
    def has_change_permission(self, request, obj=None):
        # For the action only: the change page shows the row read-only.
        return obj is None and super().has_change_permission(request)

    @admin.display(description="last error")
    def short_error(self, obj):
        return truncate(obj.last_error or "", 80)

    def get_search_results(self, request, queryset, search_term):
        """The rows whose last error's words start with each word of the
        search: an index search (outbox_error_words_idx, which holds only
        rows with an error, hence the first filter), where Django's
        substring search read the whole outbox."""
        with_error = queryset.filter(last_error__isnull=False) if search_term.strip() else queryset
        return matching(with_error, words_of("search_words", F("last_error")), search_term), False

    @admin.display(description="sync", boolean=True)
    def sync(self, obj):
        return obj.reply_to is not None

    @admin.action(description="Run selected rows now", permissions=["change"])
    def run_now(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        changed = PgOutboxRepo().run_now(ids)
        skipped = len(ids) - changed
        message = f"{changed} row(s) are due now."
        if skipped:
            message += f" {skipped} were already due or are running right now, and were left alone."
        self.message_user(request, message, messages.SUCCESS)

    def changelist_view(self, request, extra_context=None):
        apps, backlog = backlog_by_app(self.allowed_apps(request))
        extra_context = {
            **(extra_context or {}),
            "backlog": backlog,
            "backlog_more_apps": apps - len(backlog),
            "now": timezone.now(),
        }
        return super().changelist_view(request, extra_context)


def backlog_by_app(app_ids) -> tuple[int, list[dict]]:
    """How many of `app_ids` (None: every app) have rows, and the backlog of
    the BACKLOG_APPS of them whose oldest due row has waited longest: their
    rows and due rows (Counted: exact up to FIGURE_EXACT_UP_TO, else the
    planner's estimate) and when the oldest due row became due."""
    now = timezone.now()
    rows = fetch_all(
        Q["backlog_by_app"],
        {
            "app_ids": None if app_ids is None else list(app_ids),
            "top": BACKLOG_APPS,
            "cap": FIGURE_EXACT_UP_TO + 1,
        },
    )
    backlog = []
    for row in rows:
        of_app = OutboxEntry.objects.filter(app_id=row["app_id"])
        backlog.append(
            {
                "app__slug": row["slug"],
                "total": figure(row["total"], of_app),
                "due": figure(row["due"], of_app.filter(due_at__lte=now)),
                "oldest_due": row["oldest_due"],
            }
        )
    return (rows[0]["apps"] if rows else 0), backlog


class CircuitStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Open"), ("probing", "Probing"), ("closed", "Closed")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "open":
            return queryset.filter(open_until__gt=now)
        if self.value() == "probing":
            return queryset.filter(open_until__lte=now)
        if self.value() == "closed":
            return queryset.filter(open_until__isnull=True)
        return queryset


@admin.register(ScriptCircuit)
class ScriptCircuitAdmin(WrittenBySystem, AppScopedAdmin):
    """Scripts whose endpoint failed since its last success. The dispatcher
    writes these; the app's admins (who manage its triggers) may close one
    now, and its rows are claimed again at once."""

    app_capability = Capability.AppManageTriggers
    list_display = ["script", "app", "state", "failures", "open_until", "short_error", "updated_at"]
    list_filter = [AppFilter, CircuitStateFilter]
    list_select_related = ["app", "script__app"]
    ordering = ["-updated_at"]
    actions = ["close_now"]
    readonly_fields = [
        "script",
        "app",
        "failures",
        "opened",
        "open_until",
        "last_error",
        "updated_at",
    ]

    def has_change_permission(self, request, obj=None):
        # For the action only: the change page shows the circuit read-only.
        return obj is None and super().has_change_permission(request)

    @admin.display(description="state")
    def state(self, obj):
        now = timezone.now()
        state = CircuitState(
            obj.script_id, obj.app_id, obj.failures, obj.opened, obj.open_until, obj.last_error
        ).state(now)
        if state == "open":
            return f"open until {timezone.localtime(obj.open_until):%H:%M:%S}"
        return state

    @admin.display(description="last error")
    def short_error(self, obj):
        return truncate(obj.last_error or "", 80)

    @admin.action(description="Close selected circuits now", permissions=["change"])
    def close_now(self, request, queryset):
        ids = list(queryset.values_list("script_id", flat=True))
        closed = PgCircuitRepo().close(ids)
        self.message_user(
            request,
            f"{closed} circuit(s) closed: their scripts' rows are claimed again.",
            messages.SUCCESS,
        )


@admin.register(ScheduledRun)
class ScheduledRunAdmin(WrittenBySystem, AppScopedAdmin):
    """One-off scheduled runs that have not started, for whoever may invoke
    the app's scripts (who may schedule them too); cancelling goes through
    outbox.scheduled.cancel, the Python API's path."""

    app_capability = Capability.ScriptInvoke
    list_display = ["due_at", "app", "script", "run_as_principal", "short_payload", "created_at"]
    list_filter = [AppFilter]
    list_select_related = ["app", "script__app", "run_as_principal__user"]
    ordering = ["due_at"]
    actions = ["cancel"]
    readonly_fields = ["id", "app", "script", "run_as_principal", "payload", "due_at", "created_at"]
    fields = readonly_fields

    def has_change_permission(self, request, obj=None):
        # For the action only: the change page shows the run read-only.
        return obj is None and super().has_change_permission(request)

    @admin.display(description="payload")
    def short_payload(self, obj):
        return truncate(str(obj.payload), 80)

    @admin.action(description="Cancel selected scheduled runs", permissions=["change"])
    def cancel(self, request, queryset):
        principal = self.principal(request)
        cancelled = gone = 0
        for run_id in queryset.values_list("id", flat=True):
            try:
                scheduled.cancel(run_id, principal=principal)
                cancelled += 1
            except scheduled.ScheduledRunNotFound:
                gone += 1  # started meanwhile, or cancelled by someone else
        note = f" {gone} had started or were gone already." if gone else ""
        self.message_user(
            request, f"Cancelled {cancelled} scheduled run(s).{note}", messages.SUCCESS
        )
