"""Admin for the outbox: a read-only view of the backlog, and "run now"."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, Min, Q
from django.utils import timezone

from outbox.models import OutboxEntry
from outbox.storage.pg_repository import PgOutboxRepo
from picloud.admin_access import AppFilter, AppScopedAdmin, WrittenBySystem
from picloud.domain.authz import Capability
from picloud.text import truncate


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
    list_select_related = ["app", "trigger", "script"]
    search_fields = ["last_error"]
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
        # The backlog by app, over the apps this user may see.
        now = timezone.now()
        backlog = (
            self.get_queryset(request)
            .values("app__slug")
            .annotate(
                total=Count("id"),
                due=Count("id", filter=Q(due_at__lte=now)),
                oldest_due=Min("due_at", filter=Q(due_at__lte=now)),
            )
            .order_by("-due", "app__slug")
        )
        extra_context = {**(extra_context or {}), "backlog": list(backlog), "now": now}
        return super().changelist_view(request, extra_context)
