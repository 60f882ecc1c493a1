"""Admin for dead letters (list, detail, replay/ignore behind a confirmation)
and abandoned executions (read-only). The unresolved badge is in
deadletters/context_processors.py."""

from __future__ import annotations

import json
from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import ValidationError
from django.db.models import F
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from deadletters.models import AbandonedExecution, DeadLetter, Resolution
from deadletters.resolve import MAX_NOTE_CHARS, postgres_resolver
from outbox.admin_log import attempts_url
from picloud.admin_access import AppFilter, AppScopedAdmin, IdFilter, WrittenBySystem, scope
from picloud.db.search import matching, words_of
from picloud.db.storable import clean_text
from picloud.domain.authz import Capability
from picloud.text import truncate
from triggers.models import Trigger


def pretty(value) -> str:
    return format_html("<pre class='picloud-json'>{}</pre>", json.dumps(value, indent=2))


class ResolutionFilter(admin.SimpleListFilter):
    title = "resolution"
    parameter_name = "resolution"

    def lookups(self, request, model_admin):
        return [("unresolved", "Unresolved"), *Resolution.choices]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "unresolved":
            return queryset.filter(resolution__isnull=True)
        if value in Resolution.values:
            return queryset.filter(resolution=value)
        return queryset


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"
    AGES = {
        "1h": ("Less than an hour", timedelta(hours=1)),
        "1d": ("Less than a day", timedelta(days=1)),
        "7d": ("Less than a week", timedelta(days=7)),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in self.AGES.items()] + [
            ("older", "A week or older")
        ]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() in self.AGES:
            return queryset.filter(created_at__gte=now - self.AGES[self.value()][1])
        if self.value() == "older":
            return queryset.filter(created_at__lt=now - timedelta(days=7))
        return queryset


class TriggerFilter(IdFilter):
    """By originating trigger: only triggers of apps this page may show."""

    title = "trigger"
    parameter_name = "trigger"
    id_path = "trigger__pk"

    def lookups(self, request, model_admin):
        triggers = scope(
            Trigger.objects.select_related("app"), model_admin.allowed_apps(request), "app"
        )
        return [(str(t.pk), str(t)) for t in triggers]


@admin.register(DeadLetter)
class DeadLetterAdmin(WrittenBySystem, AppScopedAdmin):
    app_capability = Capability.AppDeadLetterManage
    list_display = [
        "created_at",
        "app",
        "source_kind",
        "trigger",
        "script",
        "attempts",
        "short_error",
        "resolution",
        "resolved_by",
    ]
    list_filter = [ResolutionFilter, AppFilter, "source_kind", TriggerFilter, AgeFilter]
    search_fields = ["last_error", "errors", "note"]  # searched by get_search_results
    search_help_text = (
        "words that start words of any attempt's error or the note "
        "(time 503 finds “TimeoutError … HTTP 503”)"
    )
    # A trigger and a script name their app: theirs too, or a query per row.
    list_select_related = ["app", "trigger__app", "script__app", "resolved_by__user"]
    date_hierarchy = None
    actions = ["replay", "ignore"]
    fieldsets = [
        (None, {"fields": ["app", "source_kind", "trigger", "script", "run_as_principal"]}),
        (
            "What failed",
            {"fields": ["pretty_payload", "attempts", "attempts_logged", "depth", "all_errors"]},
        ),
        ("Resolution", {"fields": ["resolution", "resolved_at", "resolved_by", "note"]}),
        ("Identifiers", {"fields": ["id", "outbox_id", "cause_outbox_id", "created_at"]}),
    ]
    readonly_fields = [
        "app",
        "source_kind",
        "trigger",
        "script",
        "run_as_principal",
        "pretty_payload",
        "attempts",
        "attempts_logged",
        "depth",
        "all_errors",
        "resolution",
        "resolved_at",
        "resolved_by",
        "note",
        "id",
        "outbox_id",
        "cause_outbox_id",
        "created_at",
    ]

    def get_search_results(self, request, queryset, search_term):
        """The letters whose words (dead_letter_words: every attempt's error
        and the note) start with each word of the search: an index search
        (dead_letters_words_idx), where Django's substring search read every
        letter, seconds at 1,000,000 of them."""
        words = words_of("dead_letter_words", F("last_error"), F("note"), F("errors"))
        return matching(queryset, words, search_term), False

    # Changed only by the resolutions below; GC (not a button) deletes them.
    def has_change_permission(self, request, obj=None):
        # Needed for the actions; a resolved letter is never changeable.
        return super().has_change_permission(request, obj) and (
            obj is None or obj.resolution is None
        )

    @admin.display(description="delivery log")
    def attempts_logged(self, obj):
        """The attempts of the row that became this letter (the delivery log
        keeps failures PICLOUD_DELIVERY_LOG_FAILURE_RETENTION_DAYS)."""
        if obj.outbox_id is None:
            return "—"
        return format_html(
            '<a href="{}" id="dead-letter-attempts">the attempts of outbox row {}</a>',
            attempts_url(outbox_id=obj.outbox_id),
            obj.outbox_id,
        )

    @admin.display(description="payload")
    def pretty_payload(self, obj):
        return pretty(obj.payload)

    @admin.display(description="every attempt's error")
    def all_errors(self, obj):
        errors = obj.errors or [obj.last_error]
        return format_html(
            "<ol class='picloud-errors'>{}</ol>",
            format_html("".join("<li><pre>{}</pre></li>" for _ in errors), *errors),
        )

    @admin.display(description="last error")
    def short_error(self, obj):
        return truncate(obj.last_error, 80)

    @admin.action(description="Replay selected dead letters…", permissions=["change"])
    def replay(self, request, queryset):
        return self._resolve(request, queryset, "replay")

    @admin.action(description="Ignore selected dead letters…", permissions=["change"])
    def ignore(self, request, queryset):
        return self._resolve(request, queryset, "ignore")

    def _resolve(self, request, queryset, verb: str):
        """First a confirmation page that states the count; then do it. A
        note that cannot be stored brings the page back, saying why."""
        unresolved = queryset.filter(resolution__isnull=True)
        count, resolved = unresolved.count(), queryset.filter(resolution__isnull=False).count()
        note = request.POST.get("note", "").strip()
        note_error = ""
        if request.POST.get("confirm") == "yes":
            try:
                self._resolve_confirmed(request, unresolved, verb, note)
            except ValidationError as exc:
                note_error = " ".join(exc.messages)
            else:
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{verb.capitalize()} dead letters",
            "opts": self.model._meta,
            "verb": verb,
            "count": count,
            "already_resolved": resolved,
            "note": clean_text(note)[0],  # shown back for editing, NUL made visible
            "note_error": note_error,
            "max_note_chars": MAX_NOTE_CHARS,
            "select_across": request.POST.get("select_across") == "1",
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "filters": request.GET.urlencode(),
        }
        return TemplateResponse(
            request, "admin/deadletters/deadletter/confirm_resolution.html", context
        )

    def _resolve_confirmed(self, request, unresolved, verb: str, note: str) -> None:
        ids = list(unresolved.values_list("id", flat=True))
        if not ids:
            self.message_user(
                request,
                f"Nothing to {verb}: the selected dead letters are already resolved.",
                messages.WARNING,
            )
            return
        resolver, by = postgres_resolver(), self.principal(request).pk
        if verb == "replay":
            report = resolver.replay_all(ids, by)
        else:
            report = resolver.ignore_all(ids, by, note)  # ValidationError for a bad note
        self._report(request, verb, report)

    def _report(self, request, verb: str, report) -> None:
        past = "replayed" if verb == "replay" else "ignored"
        level = messages.SUCCESS if not report.refused else messages.WARNING
        self.message_user(
            request, report.summary(f"{len(report.done)} dead letter(s) {past}"), level
        )


class StatusFilter(admin.SimpleListFilter):
    """By the answer's status: a class offered (2xx…), or one code in the
    URL. Django's own filter on the column would offer every code found,
    found by a DISTINCT over the whole table at each page load."""

    title = "status"
    parameter_name = "status_code"
    CLASSES = {"2xx": (200, 300), "3xx": (300, 400), "4xx": (400, 500), "5xx": (500, 600)}

    def lookups(self, request, model_admin):
        return [(name, name) for name in self.CLASSES]

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        if value in self.CLASSES:
            low, high = self.CLASSES[value]
            return queryset.filter(status_code__gte=low, status_code__lt=high)
        if value.isascii() and value.isdigit() and len(value) == 3:
            return queryset.filter(status_code=int(value))
        raise IncorrectLookupParameters(
            f"The status filter takes a class ({', '.join(self.CLASSES)}) or a "
            f"three-digit code; {truncate(value, 40)!r} is neither."
        )


@admin.register(AbandonedExecution)
class AbandonedExecutionAdmin(WrittenBySystem, AppScopedAdmin):
    app_capability = Capability.AppDeadLetterManage
    list_display = ["created_at", "app", "status_code", "script_id", "outbox_id", "summary"]
    list_filter = [AppFilter, StatusFilter]
    search_fields = ["result_summary", "outbox_id", "inbox_id"]
    list_select_related = ["app"]
    readonly_fields = [
        "app",
        "outbox_id",
        "script_id",
        "inbox_id",
        "status_code",
        "result_summary",
        "created_at",
    ]

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="result summary")
    def summary(self, obj):
        return truncate(obj.result_summary or "", 100)
