"""Admin for triggers: list, create and edit with the kind's details inline,
enable/disable, and a delete that says what happens to pending outbox rows."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from outbox.models import OutboxEntry
from picloud.admin_access import AppFilter, AppScopedAdmin, allowed_app_ids, scope
from picloud.domain.authz import Capability
from triggers.kinds import TriggerKind
from triggers.models import (
    DeadLetterTriggerDetails,
    KvTriggerDetails,
    Trigger,
    check_same_app_source,
)

# Kinds that have an event source today; the others exist in the schema only.
EDITABLE_KINDS = [TriggerKind.KV, TriggerKind.DEAD_LETTER]


class DetailsFormSet(forms.BaseInlineFormSet):
    """The details of one kind: required for that kind, refused for others."""

    kind: str = ""
    required = False

    def clean(self):
        super().clean()
        filled = [f for f in self.forms if f.has_changed() and not self._should_delete_form(f)]
        existing = [f for f in self.forms if f.instance.pk and not self._should_delete_form(f)]
        trigger_kind = self.instance.kind
        label = TriggerKind(self.kind).label
        if trigger_kind == self.kind:
            if self.required and not (filled or existing):
                raise ValidationError(
                    f"A {label} trigger needs its details: fill in the section below."
                )
        elif filled:
            raise ValidationError(
                f"Only {label} triggers have these details; clear them or choose kind {label!r}."
            )


class KvDetailsFormSet(DetailsFormSet):
    kind = TriggerKind.KV
    required = True


class DeadLetterDetailsFormSet(DetailsFormSet):
    kind = TriggerKind.DEAD_LETTER

    def clean(self):
        super().clean()
        # The details form's own model validation cannot see the trigger (a
        # primary-key inline gets its parent only when saved); the formset can.
        for form in self.forms:
            source = form.cleaned_data.get("source_trigger") if form.is_valid() else None
            try:
                check_same_app_source(self.instance, source)
            except ValidationError as e:
                form.add_error(None, e)


class KvDetailsForm(forms.ModelForm):
    ops = forms.MultipleChoiceField(
        choices=KvTriggerDetails._meta.get_field("ops").base_field.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="the KV operations that fire the trigger",
    )

    class Meta:
        model = KvTriggerDetails
        fields = ["collection", "ops"]
        widgets = {"collection": forms.TextInput(attrs={"size": 40})}


class KvDetailsInline(admin.StackedInline):
    model = KvTriggerDetails
    form = KvDetailsForm
    formset = KvDetailsFormSet
    max_num = min_num = 0
    extra = 1
    can_delete = False
    verbose_name = verbose_name_plural = "KV trigger details (kind: KV write)"

    def get_extra(self, request, obj=None, **kwargs):
        return 0 if obj is not None and hasattr(obj, "kv_details") else 1

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

    def get_extra(self, request, obj=None, **kwargs):
        return 0 if obj is not None and hasattr(obj, "dead_letter_details") else 1

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
        ]

    def clean(self):
        cleaned = super().clean()
        app, script = cleaned.get("app"), cleaned.get("script")
        if app and script and script.app_id != app.pk:
            self.add_error(
                "script",
                f"Script {script.name!r} belongs to app {script.app.slug!r}; choose a "
                f"script of app {app.slug!r}.",
            )
        return cleaned


@admin.register(Trigger)
class TriggerAdmin(AppScopedAdmin):
    app_capability = Capability.AppManageTriggers
    form = TriggerForm
    inlines = [KvDetailsInline, DeadLetterDetailsInline]
    list_display = [
        "name",
        "app",
        "kind",
        "script",
        "pattern",
        "enabled",
        "registered_by_principal",
        "pending",
    ]
    list_filter = [AppFilter, "kind", "enabled"]
    search_fields = ["name", "script__name", "kv_details__collection"]
    list_select_related = ["app", "script", "registered_by_principal__user", "kv_details"]
    readonly_fields = ["registered_by_principal", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["app", "name", "kind", "script", "enabled"]}),
        (
            "Retries (empty: the PICLOUD_TRIGGER_RETRY_* defaults)",
            {
                "fields": ["max_attempts", "retry_base_delay_ms", "retry_max_delay_ms"],
                "classes": ["collapse"],
            },
        ),
        ("Registration", {"fields": ["registered_by_principal", "created_at", "updated_at"]}),
    ]
    actions = ["enable", "disable"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(pending_rows=Count("outbox_entries", distinct=True))
        )

    @admin.display(description="collection / source")
    def pattern(self, obj: Trigger) -> str:
        if obj.kind == TriggerKind.KV and hasattr(obj, "kv_details"):
            return f"{obj.kv_details.collection} ({', '.join(obj.kv_details.ops)})"
        if obj.kind == TriggerKind.DEAD_LETTER and hasattr(obj, "dead_letter_details"):
            return str(obj.dead_letter_details)
        return "—"

    @admin.display(description="pending rows", ordering="pending_rows")
    def pending(self, obj: Trigger) -> int:
        return obj.pending_rows

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
        if not change:
            # The trigger runs as whoever registers it; nobody picks that in a form.
            obj.registered_by_principal = self.principal(request)
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        trigger = form.instance
        if trigger.kind == TriggerKind.DEAD_LETTER:
            # No filters filled in means "any": the row must exist all the same.
            DeadLetterTriggerDetails.objects.get_or_create(trigger=trigger)

    @admin.action(description="Enable selected triggers", permissions=["change"])
    def enable(self, request, queryset):
        n = queryset.filter(enabled=False).update(enabled=True)
        self.message_user(request, f"Enabled {n} trigger(s).", messages.SUCCESS)

    @admin.action(description="Disable selected triggers", permissions=["change"])
    def disable(self, request, queryset):
        n = queryset.filter(enabled=True).update(enabled=False)
        self.message_user(request, f"Disabled {n} trigger(s).", messages.SUCCESS)

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
            m._meta.verbose_name for m in (KvTriggerDetails, DeadLetterTriggerDetails, OutboxEntry)
        }
        # Only dead-letter filters can block (test_admin_same_app checks):
        # Django would list their details rows, which say nothing; name the
        # triggers that filter instead, linked to where their filter changes.
        return deleted, counts, perms_needed - goes_along, blocking_filters(objs) or protected


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


def pending_rows_notice(triggers) -> str:
    rows = OutboxEntry.objects.filter(trigger__in=triggers)
    total = rows.count()
    if not total:
        return "No outbox rows are pending: nothing of this waits to run."
    return (
        f"{total} pending outbox row(s) will be deleted with it and will not run. Dead "
        "letters stay, without their trigger. To let the pending rows run first, disable "
        "the trigger instead and delete it once they are gone."
    )
