"""Admin for an app's KV store (picloud.kv): browse entries by collection and
key prefix, read their JSON, and change or delete them.

Whoever may read an app's KV store (KvRead: its viewers too) sees its
entries; changing, adding and deleting them need KvWrite. Every write goes
through picloud.kv as the operator's principal, never the ORM: the app's kv
triggers fire, authorization is the API's, and a write is conditional on
the version the page showed, so an entry changed meanwhile (by a script,
say) is refused, not overwritten.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput
from django.http import HttpResponseRedirect
from django.utils.html import format_html

from picloud import kv
from picloud.admin_access import AppFilter, AppScopedAdmin, allowed_app_ids, holds_in, scope
from picloud.domain.authz import Capability
from picloud.models import App, KvEntry
from picloud.text import truncate

SHORT_VALUE_CHARS = 80  # of a value shown in the list
PLACE = ["app", "collection", "key"]  # where an entry is: fixed once it exists
STATE = ["version", "updated_at"]  # what picloud.kv sets


class PrettyJSONField(forms.JSONField):
    """JSON shown indented, to read and edit (Django's is one line)."""

    def prepare_value(self, value):
        if isinstance(value, InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


class KvEntryForm(forms.ModelForm):
    """The value as editable JSON; the version the page showed goes back
    with it, so saving over a newer write is refused."""

    value = PrettyJSONField(
        widget=forms.Textarea(attrs={"rows": 16, "cols": 80, "style": "font-family: monospace"}),
        help_text="JSON (objects, lists, strings, numbers, true/false, null)",
    )
    read_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = KvEntry
        fields = ["app", "collection", "key", "value"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["read_version"] = self.instance.version


@admin.register(KvEntry)
class KvEntryAdmin(AppScopedAdmin):
    app_capability = Capability.KvRead
    write_capability = Capability.KvWrite
    form = KvEntryForm
    list_display = ["collection", "key", "app", "version", "updated_at", "short_value"]
    list_filter = [AppFilter]
    list_select_related = ["app"]
    search_fields = ["collection", "key"]
    search_help_text = "collection/key prefix (e.g. orders/o-1), or a collection or key prefix"
    ordering = ["app__slug", "collection", "key"]

    def writes(self, request, obj=None) -> bool:
        return holds_in(request, self.write_capability, None if obj is None else obj.app_id)

    def has_add_permission(self, request):
        return self.writes(request)

    def has_change_permission(self, request, obj=None):
        return self.writes(request, obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.writes(request, obj) and super().has_delete_permission(request, obj)

    def get_fields(self, request, obj=None):
        # Adding (which needs KvWrite) names the entry; an entry's page shows
        # its place and state, and its value to edit or, read-only, to read.
        shown = PLACE if obj is None else [*PLACE, *STATE]
        if obj is not None and not self.writes(request, obj):
            return [*shown, "pretty_value"]
        return [*shown, "value", "read_version"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        # The entry's place never changes: a new key is a new entry.
        return [f for f in self.get_fields(request, obj) if f not in ("value", "read_version")]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "app":
            # Added only where the user may write, not wherever they read.
            writable = allowed_app_ids(request, self.write_capability)
            field.queryset = scope(App.objects.all(), writable, "id")
        return field

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if "/" in term:
            collection, _, prefix = term.partition("/")
            return queryset.filter(collection=collection, key__startswith=prefix), False
        if term:
            by_collection = queryset.filter(collection__startswith=term)
            return by_collection | queryset.filter(key__startswith=term), False
        return queryset, False

    @admin.display(description="value")
    def short_value(self, obj: KvEntry) -> str:
        return truncate(json.dumps(obj.value, ensure_ascii=False), SHORT_VALUE_CHARS)

    @admin.display(description="value")
    def pretty_value(self, obj: KvEntry):
        return format_html(
            "<pre style='white-space: pre-wrap'>{}</pre>",
            json.dumps(obj.value, indent=2, ensure_ascii=False),
        )

    def save_model(self, request, obj, form, change):
        read = form.cleaned_data.get("read_version") if change else 0
        item = kv.put(
            obj.app,
            obj.collection,
            obj.key,
            form.cleaned_data["value"],
            principal=self.principal(request),
            expected_version=read if read is not None else 0,
        )
        stored = KvEntry.objects.get(app=obj.app, collection=item.collection, key=item.key)
        obj.pk, obj.version, obj.updated_at = stored.pk, item.version, item.updated_at
        obj._state.adding = False

    def delete_model(self, request, obj):
        kv.delete(
            obj.app,
            obj.collection,
            obj.key,
            principal=self.principal(request),
            expected_version=obj.version,
        )

    def delete_queryset(self, request, queryset):
        principal = self.principal(request)
        for obj in queryset.select_related("app"):
            kv.delete(
                obj.app, obj.collection, obj.key, principal=principal, expected_version=obj.version
            )

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as refused:
            # A conflict or a rule of the API's (a bad key, a value it cannot
            # store): said on the page; nothing was written.
            self.message_user(request, " ".join(refused.messages), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
