"""Admin for triggers: list, create and edit with the kind's details inline,
enable/disable, and a delete that says what happens to pending outbox rows.

The forms validate with the rules of triggers/rules.py (through the models'
full_clean, and the formsets for what spans the trigger and its details);
every write then goes through PgTriggerRepo, the one write path the Python
API and the demo use too.
"""

from __future__ import annotations

from dataclasses import replace

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from outbox.storage.kinds import SourceKind
from picloud.admin_access import AppFilter, AppScopedAdmin, allowed_app_ids, scope
from picloud.admin_counts import FIGURE_EXACT_UP_TO, figure
from picloud.db.sqlexec import fetch_all
from picloud.db.sqlfiles import load_queries
from picloud.domain.authz import Capability
from picloud.models import Queue
from triggers import cron, rules
from triggers.admin_health import TriggerHealthColumns, attach_health
from triggers.kinds import TriggerKind
from triggers.matching import EMPTY_PATTERN, NO_OPS, NUL_IN_PATTERN, PATTERN_TOO_LONG
from triggers.models import (
    CronTick,
    CronTriggerDetails,
    DeadLetterTriggerDetails,
    EmailTriggerDetails,
    KvTriggerDetails,
    PubsubTriggerDetails,
    QueueTriggerDetails,
    Trigger,
    check_queue_details,
    check_source,
)
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import (
    CronSpec,
    DeadLetterSpec,
    EmailSpec,
    KvSpec,
    NewTrigger,
    PubsubSpec,
    QueueSpec,
    TriggerRepo,
)
from triggers.schedule import Schedule, ScheduleError

Q = load_queries("triggers", "admin.sql")

EDITABLE_KINDS = rules.CREATABLE_KINDS
# The trigger's form fields the repository takes under another name.
REPOSITORY_FIELDS = {"script": "script_id"}
# Fields of the form the repository does not write (save_related does).
LOGGING_FIELDS = {"log_failures_only"}


class DetailsFormSet(forms.BaseInlineFormSet):
    """The details of one kind: required for that kind (rules.check_details),
    refused for others."""

    details: str = ""  # a value of rules.DETAILS: "kv", "cron", "pubsub", "queue", "dead_letter"

    def clean(self):
        super().clean()
        filled = [f for f in self.forms if f.has_changed() and not self._should_delete_form(f)]
        kind = self.instance.kind
        if rules.DETAILS.get(kind) == self.details:
            stored = [f for f in self.initial_forms if not self._should_delete_form(f)]
            present = bool(filled or stored)
        else:
            # A details row that knows its trigger (editing) refuses itself in
            # the models' clean; on a new trigger only the formset knows the kind.
            present = any(f.instance.trigger_id is None for f in filled)
        try:
            rules.check_details(kind, self.details, present)
        except ValidationError as e:
            raise ValidationError(e.messages) from e


class KvDetailsFormSet(DetailsFormSet):
    details = "kv"


class DeadLetterDetailsFormSet(DetailsFormSet):
    details = "dead_letter"

    def clean(self):
        super().clean()
        # A details row that knows its trigger (editing) checks its source in
        # the models' clean; a new trigger's row gets it only when saved (a
        # primary-key inline), so the formset checks those.
        for form in self.forms:
            if not form.is_valid() or form.instance.trigger_id is not None:
                continue
            source = form.cleaned_data.get("source_trigger")
            try:
                check_source(self.instance, source)
            except ValidationError as e:
                form.add_error(None, e)


class KvDetailsForm(forms.ModelForm):
    ops = forms.MultipleChoiceField(
        choices=KvTriggerDetails._meta.get_field("ops").base_field.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="the KV operations that fire the trigger",
        error_messages={"required": NO_OPS},
    )

    class Meta:
        model = KvTriggerDetails
        fields = ["collection", "ops"]
        widgets = {"collection": forms.TextInput(attrs={"size": 40})}
        # The form's own checks run first: they say what the rules say.
        error_messages = {
            "collection": {
                "required": EMPTY_PATTERN,
                "max_length": PATTERN_TOO_LONG,
                "null_characters_not_allowed": NUL_IN_PATTERN,
            }
        }


class KvDetailsInline(admin.StackedInline):
    model = KvTriggerDetails
    form = KvDetailsForm
    formset = KvDetailsFormSet
    max_num = min_num = 0
    extra = 1
    can_delete = False
    verbose_name = verbose_name_plural = "KV trigger details (kind: KV write)"

    def get_extra(self, request, obj=None, **kwargs):
        # One details row per trigger: a blank form only until it has one
        # (the one-to-one's related name, kv_details, cron_details...).
        related = self.model._meta.get_field("trigger").remote_field.related_name
        return 0 if obj is not None and hasattr(obj, related) else 1

    def get_max_num(self, request, obj=None, **kwargs):
        return 1

    # Access follows the parent trigger's page.
    def has_view_permission(self, request, obj=None):
        return True

    has_add_permission = has_change_permission = has_view_permission


class DeadLetterDetailsInline(KvDetailsInline):
    model = DeadLetterTriggerDetails
    fk_name = "trigger"
    form = forms.ModelForm
    formset = DeadLetterDetailsFormSet
    fields = ["source_kind", "source_trigger"]
    verbose_name = verbose_name_plural = "Dead-letter trigger details (kind: Dead letter)"

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "source_trigger":
            # Only triggers of the apps this user manages, and never another
            # dead-letter trigger (their failures make no dead letters).
            ids = allowed_app_ids(request, TriggerAdmin.app_capability)
            triggers = Trigger.objects.exclude(kind=TriggerKind.DEAD_LETTER)
            kwargs["queryset"] = scope(triggers.select_related("app"), ids, "app")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        if obj is not None:
            # The app is fixed once created: only its triggers. On a new
            # trigger the app is chosen in the same form, so the formset's
            # clean() refuses another app's trigger instead.
            field = formset.form.base_fields["source_trigger"]
            field.queryset = field.queryset.filter(app=obj.app)
        return formset


class CronDetailsFormSet(DetailsFormSet):
    details = "cron"


class CronDetailsForm(forms.ModelForm):
    class Meta:
        model = CronTriggerDetails
        fields = [
            "schedule",
            "timezone",
            "paused",
            "catchup",
            "catchup_window_s",
            "overlap",
            "payload",
        ]
        widgets = {
            "schedule": forms.TextInput(attrs={"size": 30}),
            "payload": forms.Textarea(attrs={"rows": 3, "cols": 60}),
        }


class CronDetailsInline(KvDetailsInline):
    model = CronTriggerDetails
    form = CronDetailsForm
    formset = CronDetailsFormSet
    readonly_fields = ["next_fires", "missed_ticks"]
    verbose_name = verbose_name_plural = "Cron trigger details (kind: Cron)"

    @admin.display(description="next five fires")
    def next_fires(self, details: CronTriggerDetails) -> str:
        if details.pk is None:
            return "shown once saved"
        if details.paused:
            return "paused"
        try:
            schedule = Schedule.parse(details.schedule, details.timezone)
        except ScheduleError as e:
            return str(e)
        zone = schedule.zone
        return format_html_join(
            "",
            "<div>{} ({}) — {} UTC</div>",
            (
                (
                    f"{t.astimezone(zone):%Y-%m-%d %H:%M:%S}",
                    details.timezone,
                    f"{t:%Y-%m-%d %H:%M:%S}",
                )
                for t in schedule.next_fires(timezone.now(), 5)
            ),
        )


def _rule_says(rule, field: str, value: str) -> str:
    """What `rule` says of `value`, keyed by `field`: a form field's own
    checks (required, NUL) run before the model's and must say the same."""
    try:
        rule(value)
    except ValidationError as e:
        return e.message_dict[field][0]
    raise AssertionError(f"{value!r} passes {rule.__name__}")


def ruled_pattern_field(model, field: str, rule) -> forms.CharField:
    """A pattern's form field whose messages are the rule's. Not the
    model's max_length: the rule says how long a pattern may be, in its words."""
    return forms.CharField(
        widget=forms.TextInput(attrs={"size": 40}),
        help_text=model._meta.get_field(field).help_text,
        error_messages={
            "required": _rule_says(rule, field, ""),
            "null_characters_not_allowed": _rule_says(rule, field, "\x00"),
        },
    )


class PubsubDetailsFormSet(DetailsFormSet):
    details = "pubsub"


class PubsubDetailsForm(forms.ModelForm):
    topic = ruled_pattern_field(PubsubTriggerDetails, "topic", rules.check_topic)

    class Meta:
        model = PubsubTriggerDetails
        fields = ["topic"]


class PubsubDetailsInline(KvDetailsInline):
    model = PubsubTriggerDetails
    form = PubsubDetailsForm
    formset = PubsubDetailsFormSet
    verbose_name = verbose_name_plural = "Pub/sub trigger details (kind: Pub/sub)"


class EmailDetailsFormSet(DetailsFormSet):
    details = "email"


class EmailDetailsForm(forms.ModelForm):
    local_part = ruled_pattern_field(EmailTriggerDetails, "local_part", rules.check_local_part)

    class Meta:
        model = EmailTriggerDetails
        fields = ["local_part"]


class EmailDetailsInline(KvDetailsInline):
    model = EmailTriggerDetails
    form = EmailDetailsForm
    formset = EmailDetailsFormSet
    verbose_name = verbose_name_plural = "Email trigger details (kind: Email)"


class QueueDetailsFormSet(DetailsFormSet):
    details = "queue"

    def clean(self):
        super().clean()
        # As for dead-letter details: a row that knows its trigger (editing)
        # checks its queue and settings in the models' clean; a new trigger's
        # row gets its trigger only when saved, so the formset checks those.
        for form in self.forms:
            if not form.has_changed() or form.instance.trigger_id is not None:
                continue
            if not form.is_valid() or self.instance.app_id is None:
                continue
            try:
                check_queue_details(self.instance, form.instance)
            except ValidationError as e:
                form.add_error(None, e)


class QueueDetailsForm(forms.ModelForm):
    class Meta:
        model = QueueTriggerDetails
        fields = ["queue", "batch_size", "max_batch_wait_ms", "max_concurrency", "max_receives"]
        # The form's own checks run first: they say what the rules say.
        error_messages = {"queue": {"required": rules.QUEUE_DETAILS_NEEDED}}

    def validate_unique(self):
        """Nothing: a details row's one unique column besides its trigger is
        its queue, and the rules check that (check_queue_details, naming the
        trigger that consumes it) where Django would say a bare "already
        exists"."""


class QueueChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Queue) -> str:
        consumer = getattr(obj, "consumer", None)
        taken = f" (consumed by {consumer.trigger.name})" if consumer is not None else ""
        return f"{obj}{taken}"


class QueueDetailsInline(KvDetailsInline):
    model = QueueTriggerDetails
    fk_name = "trigger"
    form = QueueDetailsForm
    formset = QueueDetailsFormSet
    verbose_name = verbose_name_plural = "Queue trigger details (kind: Queue)"

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "queue":
            # Queues of the apps whose triggers this user manages; one already
            # consumed is offered (and says by whom) so that choosing it gets
            # the rule's message rather than a bare "not a valid choice".
            ids = allowed_app_ids(request, TriggerAdmin.app_capability)
            queues = Queue.objects.select_related("app", "consumer__trigger")
            kwargs["queryset"] = scope(queues, ids, "app")
            kwargs["form_class"] = QueueChoiceField
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        if obj is not None:
            # The app is fixed once created: only its queues. On a new
            # trigger the formset's clean() refuses another app's queue.
            field = formset.form.base_fields["queue"]
            field.queryset = field.queryset.filter(app=obj.app)
        return formset


class TriggerForm(forms.ModelForm):
    kind = forms.ChoiceField(choices=[(k.value, k.label) for k in EDITABLE_KINDS])

    class Meta:
        model = Trigger
        fields = [
            "app",
            "name",
            "kind",
            "script",
            "enabled",
            "max_attempts",
            "retry_base_delay_ms",
            "retry_max_delay_ms",
            "log_failures_only",
        ]
        # The form's own checks run first: they say what the rules say.
        error_messages = {
            "name": {"required": rules.NAME_REQUIRED, "max_length": rules.NAME_TOO_LONG}
        }

    def clean(self):
        cleaned = super().clean()
        # A rule spanning two fields of the trigger that the model's clean
        # leaves to the repository: on the form, it is an error on the field.
        kind = cleaned.get("kind", self.instance.kind)
        try:
            rules.check_no_attempts_for_queue(kind, cleaned.get("max_attempts"))
        except ValidationError as e:
            self.add_error(None, e)
        return cleaned


@admin.register(Trigger)
class TriggerAdmin(TriggerHealthColumns, AppScopedAdmin):
    app_capability = Capability.AppManageTriggers
    repository: TriggerRepo = PgTriggerRepo()  # every write of this page goes through it
    form = TriggerForm
    inlines = [
        KvDetailsInline,
        CronDetailsInline,
        PubsubDetailsInline,
        QueueDetailsInline,
        EmailDetailsInline,
        DeadLetterDetailsInline,
    ]
    list_display = [
        "name",
        "app",
        "kind",
        "script",
        "pattern",
        "enabled",
        "registered_by_principal",
        "pending",
        "last_fire",
        "last_success",
        "last_failure",
        "success_rate",
        "p95",
        "circuit",
    ]
    list_filter = [AppFilter, "kind", "enabled"]
    search_fields = [
        "name",
        "script__name",
        "kv_details__collection",
        "pubsub_details__topic",
        "queue_details__queue__name",
        "email_details__local_part",
    ]
    list_select_related = [
        "app",
        "script__app",
        "registered_by_principal__user",
        "kv_details",
        "cron_details",
        "pubsub_details",
        "queue_details__queue",
        "email_details",
        "dead_letter_details",
    ]
    readonly_fields = ["registered_by_principal", "created_at", "updated_at", "recent_attempts"]
    fieldsets = [
        (None, {"fields": ["app", "name", "kind", "script", "enabled"]}),
        (
            "Retries (empty: the PICLOUD_TRIGGER_RETRY_* defaults)",
            {
                "fields": ["max_attempts", "retry_base_delay_ms", "retry_max_delay_ms"],
                "classes": ["collapse"],
            },
        ),
        ("Delivery log", {"fields": ["log_failures_only", "recent_attempts"]}),
        ("Registration", {"fields": ["registered_by_principal", "created_at", "updated_at"]}),
    ]
    actions = ["enable", "disable", "pause", "resume", "run_now"]

    def get_queryset(self, request):
        # A cron trigger's latest tick: one descent of cron_ticks' primary key.
        last = CronTick.objects.filter(trigger=OuterRef("pk")).order_by("-scheduled_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_tick_at=Subquery(last.values("scheduled_at")[:1]),
                last_tick_row=Subquery(last.values("outbox_id")[:1]),
            )
        )

    def get_changelist_instance(self, request):
        cl = super().get_changelist_instance(request)
        # The page's triggers only, a few queries for all of them: counting
        # every trigger's rows over the whole outbox took seconds at
        # 1,000,000 rows. (The template iterates the same, now cached, rows.)
        triggers = list(cl.result_list)
        pending = pending_rows([t.pk for t in triggers])
        fates = last_tick_fates(triggers)
        for trigger in triggers:
            trigger.pending_count = pending[trigger.pk]
            trigger.last_tick_fate = fates.get(trigger.pk)
        attach_health(triggers)
        return cl

    @admin.display(description="collection / topic / queue / mail / source")
    def pattern(self, obj: Trigger) -> str:
        if obj.kind == TriggerKind.KV and hasattr(obj, "kv_details"):
            return f"{obj.kv_details.collection} ({', '.join(obj.kv_details.ops)})"
        if obj.kind == TriggerKind.PUBSUB and hasattr(obj, "pubsub_details"):
            return str(obj.pubsub_details)
        if obj.kind == TriggerKind.QUEUE and hasattr(obj, "queue_details"):
            return str(obj.queue_details)
        if obj.kind == TriggerKind.EMAIL and hasattr(obj, "email_details"):
            return str(obj.email_details)
        if obj.kind == TriggerKind.DEAD_LETTER and hasattr(obj, "dead_letter_details"):
            return str(obj.dead_letter_details)
        if obj.kind == TriggerKind.CRON and hasattr(obj, "cron_details"):
            paused = ", paused" if obj.cron_details.paused else ""
            return f"{obj.cron_details}{paused}"
        return "—"

    @admin.display(description="last fire")
    def last_fire(self, obj: Trigger) -> str:
        """A cron trigger's latest tick written and what became of it."""
        at = getattr(obj, "last_tick_at", None)
        if at is None:
            return "—"
        fate = getattr(obj, "last_tick_fate", None) or last_tick_fates([obj]).get(obj.pk)
        return f"{at:%Y-%m-%d %H:%M:%S} UTC: {fate}"

    @admin.display(description="pending rows")
    def pending(self, obj: Trigger) -> int | str:
        # Not sortable: sorting by it would count every trigger's rows.
        count = getattr(obj, "pending_count", None)
        if count is None:
            count = pending_rows([obj.pk])[obj.pk]
        return count.display()

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        if obj is not None:
            # The app is fixed once created; scripts come from it.
            script_field = form.base_fields.get("script")
            if script_field is not None:
                script_field.queryset = script_field.queryset.filter(app=obj.app)
        return form

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "app", "kind"] if obj is not None else fields

    def save_model(self, request, obj, form, change):
        """Nothing yet: the trigger and its details are one write through
        the repository, once the inlines are known (save_related)."""

    def save_related(self, request, form, formsets, change):
        trigger = form.instance
        details = details_changes(formsets)
        if change:
            names = [
                REPOSITORY_FIELDS.get(f, f) for f in form.changed_data if f not in LOGGING_FIELDS
            ]
            changes = {name: getattr(trigger, name) for name in names}
            record = self.repository.update(trigger.pk, **changes, **details)
        else:
            record = self.repository.create(
                NewTrigger(
                    app_id=trigger.app_id,
                    kind=trigger.kind,
                    script_id=trigger.script_id,
                    name=trigger.name,
                    # The trigger runs as whoever registers it; nobody picks that in a form.
                    registered_by_principal=self.principal(request).pk,
                    enabled=trigger.enabled,
                    max_attempts=trigger.max_attempts,
                    retry_base_delay_ms=trigger.retry_base_delay_ms,
                    retry_max_delay_ms=trigger.retry_max_delay_ms,
                    **details,
                )
            )
        # How much of it the delivery log keeps is not the dispatcher's
        # concern (no rule, nothing in TriggerRecord): written beside it, in
        # the page's transaction.
        Trigger.objects.filter(pk=record.id).update(log_failures_only=trigger.log_failures_only)
        # Django goes on with this object (the log entry, the redirect, the
        # message): make it the stored trigger.
        trigger.pk = record.id
        trigger.refresh_from_db()
        trigger._state.adding = False

    @admin.action(description="Enable selected triggers", permissions=["change"])
    def enable(self, request, queryset):
        n = self._set_enabled(queryset, True)
        self.message_user(request, f"Enabled {n} trigger(s).", messages.SUCCESS)

    @admin.action(description="Disable selected triggers", permissions=["change"])
    def disable(self, request, queryset):
        n = self._set_enabled(queryset, False)
        self.message_user(request, f"Disabled {n} trigger(s).", messages.SUCCESS)

    @admin.action(description="Pause selected cron triggers", permissions=["change"])
    def pause(self, request, queryset):
        n = self._set_paused(queryset, True)
        self.message_user(request, f"Paused {n} cron trigger(s).", messages.SUCCESS)

    @admin.action(description="Resume selected cron triggers", permissions=["change"])
    def resume(self, request, queryset):
        n = self._set_paused(queryset, False)
        self.message_user(
            request,
            f"Resumed {n} cron trigger(s): they tick from now on (the paused time is not caught up).",
            messages.SUCCESS,
        )

    @admin.action(description="Run selected cron triggers now", permissions=["change"])
    def run_now(self, request, queryset):
        ran = [t for t in queryset.filter(kind=TriggerKind.CRON) if cron.run_now(t.pk)]
        skipped = queryset.count() - len(ran)
        note = f"; {skipped} not run (not cron, or disabled)" if skipped else ""
        self.message_user(
            request,
            f"Queued an extra tick for {len(ran)} cron trigger(s), due now{note}.",
            messages.SUCCESS if ran else messages.WARNING,
        )

    @transaction.atomic
    def _set_paused(self, queryset, paused: bool) -> int:
        details = CronTriggerDetails.objects.filter(
            trigger__in=queryset, paused=not paused
        ).select_for_update()
        for d in details:
            self.repository.update(d.trigger_id, cron=replace(d.as_spec(), paused=paused))
        return len(details)

    @transaction.atomic
    def _set_enabled(self, queryset, enabled: bool) -> int:
        ids = list(queryset.filter(enabled=not enabled).values_list("pk", flat=True))
        for trigger_id in ids:
            self.repository.update(trigger_id, enabled=enabled)
        return len(ids)

    def delete_model(self, request, obj):
        self.repository.delete(obj.pk)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        # Dead-letter triggers first: the repository refuses to delete a
        # trigger while another's filter names it (get_deleted_objects has
        # made sure those are deleted along).
        for trigger in sorted(queryset, key=lambda t: t.kind != TriggerKind.DEAD_LETTER):
            self.repository.delete(trigger.pk)

    # Deleting: say what happens to the trigger's pending outbox rows. Both
    # delete pages (one trigger, or the bulk action) ask get_deleted_objects;
    # the notice travels on the request to the templates in
    # triggers/templates/admin/triggers/trigger/.

    def get_deleted_objects(self, objs, request):
        objs = list(objs)
        request.picloud_pending_notice = pending_rows_notice(objs)
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # A trigger's details and pending rows go with it (the notice says
        # so); nobody deletes those on their own pages, so their admins say
        # no to deleting, which must not block deleting the trigger.
        goes_along = {
            m._meta.verbose_name
            for m in (
                KvTriggerDetails,
                CronTriggerDetails,
                CronTick,
                PubsubTriggerDetails,
                QueueTriggerDetails,
                EmailTriggerDetails,
                DeadLetterTriggerDetails,
                OutboxEntry,
            )
        }
        # Only dead-letter filters can block (test_admin_same_app checks):
        # Django would list their details rows, which say nothing; name the
        # triggers that filter instead, linked to where their filter changes.
        return deleted, counts, perms_needed - goes_along, blocking_filters(objs) or protected


Spec = KvSpec | CronSpec | PubsubSpec | QueueSpec | EmailSpec | DeadLetterSpec


def details_changes(formsets) -> dict[str, Spec]:
    """The details the inlines add or change, as the repository takes them.

    save(commit=False) writes nothing; it also records what changed for
    the admin's history."""
    changes: dict[str, Spec] = {}
    for formset in formsets:
        for details in formset.save(commit=False):
            if isinstance(details, KvTriggerDetails):
                changes["kv"] = KvSpec(details.collection, tuple(details.ops))
            elif isinstance(details, CronTriggerDetails):
                changes["cron"] = details.as_spec()
            elif isinstance(details, PubsubTriggerDetails):
                changes["pubsub"] = PubsubSpec(details.topic)
            elif isinstance(details, QueueTriggerDetails):
                changes["queue"] = details.as_spec()
            elif isinstance(details, EmailTriggerDetails):
                changes["email"] = EmailSpec(details.local_part)
            elif isinstance(details, DeadLetterTriggerDetails):
                changes["dead_letter"] = DeadLetterSpec(
                    details.source_kind, details.source_trigger_id
                )
    return changes


def blocking_filters(triggers: list[Trigger]) -> list[str]:
    """Links to the dead-letter triggers whose filter names one of `triggers`
    and that are not deleted with them. Always of the same app
    (dead_letter_trigger_details_source_same_app_fkey), so the user who may
    delete the trigger may change them too."""
    filters = (
        DeadLetterTriggerDetails.objects.filter(source_trigger__in=triggers)
        .exclude(trigger__in=triggers)
        .select_related("trigger__app", "source_trigger__app")
        .order_by("trigger__name")
    )
    return [
        format_html(
            'Dead-letter trigger <a href="{}">{}</a> filters on {}: change its filter or '
            "delete it first.",
            reverse("admin:triggers_trigger_change", args=[d.trigger_id]),
            d.trigger,
            d.source_trigger,
        )
        for d in filters
    ]


def pending_rows(trigger_ids: list) -> dict:
    """Each trigger's pending outbox rows (a Counted): exact up to
    FIGURE_EXACT_UP_TO, else the planner's estimate."""
    counted = fetch_all(Q["pending_rows"], {"ids": trigger_ids, "cap": FIGURE_EXACT_UP_TO + 1})
    return {
        row["trigger_id"]: figure(
            row["pending"], OutboxEntry.objects.filter(trigger_id=row["trigger_id"])
        )
        for row in counted
    }


def last_tick_fates(triggers) -> dict:
    """What became of each cron trigger's latest tick (annotated by
    TriggerAdmin.get_queryset): due, running or retrying, failed or done.
    Two queries for all of them, each by index (the outbox's primary key,
    dead_letters_outbox_id_idx); none when no tick is past."""
    now = timezone.now()
    ticked = [t for t in triggers if getattr(t, "last_tick_at", None) is not None]
    past = [t.last_tick_row for t in ticked if t.last_tick_at <= now]
    running = set(OutboxEntry.objects.filter(pk__in=past).values_list("pk", flat=True))
    failed = set(DeadLetter.objects.filter(outbox_id__in=past).values_list("outbox_id", flat=True))
    fates = {}
    for trigger in ticked:
        row = trigger.last_tick_row
        if trigger.last_tick_at > now:
            fates[trigger.pk] = "due"
        elif row in running:
            fates[trigger.pk] = "running or retrying"
        elif row in failed:
            fates[trigger.pk] = "failed (dead letter)"
        else:
            fates[trigger.pk] = "done"
    return fates


def pending_rows_notice(triggers) -> str:
    rows = OutboxEntry.objects.filter(trigger__in=triggers)
    total = rows.count()
    if not total:
        return "No outbox rows are pending: nothing of this waits to run."
    notice = (
        f"{total} pending outbox row(s) will be deleted with it and will not run. Dead "
        "letters stay, without their trigger. To let the pending rows run first, disable "
        "the trigger instead and delete it once they are gone."
    )
    # A queue trigger's rows are batches: their messages are not lost with
    # them (triggers.queue_batches.release_orphans gives them back).
    if rows.filter(source_kind=SourceKind.QUEUE).exists():
        notice += (
            " The messages of a queue trigger's batches stay on their queue and become "
            "visible again, for whichever trigger consumes it next."
        )
    return notice
