"""Per-app access in Django admin: the one place that decides what a staff user sees.

Every admin page of an app-owned model derives from ``AppScopedAdmin`` and
names the capability it needs (``app_capability``) and the path from its
model to the owning app (``app_path``). From those two, this module scopes
list pages, change pages, actions (they run on the scoped queryset), list
filters (``AppFilter`` lists only reachable apps; every filter taking an id
derives from ``IdFilter``), foreign-key choices,
autocomplete (it searches the scoped queryset) and direct URLs (an object of
another app is a 404, as if it did not exist). Superusers see everything.

Django's model permissions (auth_permission) are not consulted: roles in
apps are the authority, so an operator never has to keep two systems in step.
"""

from __future__ import annotations

import re
import uuid

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ERROR_FLAG
from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from picloud.admin_counts import ScaledChangeList
from picloud.domain.authz import Capability, _AppCapability, role_satisfies
from picloud.models import App, AppMembership, Script, principal_for
from picloud.text import truncate

ALL = None  # "every app": what allowed_app_ids returns for superusers


def allowed_app_ids(
    request: HttpRequest, capability: type[_AppCapability]
) -> frozenset[uuid.UUID] | None:
    """Apps where the request's user holds `capability`; ALL (None) for superusers.

    Read once per request and capability (pages ask many times).
    """
    user = request.user
    if not (user.is_active and user.is_staff):
        return frozenset()
    if user.is_superuser:
        return ALL
    cache = request.__dict__.setdefault("_picloud_allowed_apps", {})
    if capability not in cache:
        roles = AppMembership.objects.filter(principal=principal_for(user)).values_list(
            "app_id", "role"
        )
        cache[capability] = frozenset(
            app_id for app_id, role in roles if role_satisfies(role, capability(app_id))
        )
    return cache[capability]


def holds_in(
    request: HttpRequest, capability: type[_AppCapability], app_id: uuid.UUID | None = None
) -> bool:
    """Whether the request's user holds `capability` in app `app_id`; with
    no app, in any app (whether the page may offer it at all)."""
    ids = allowed_app_ids(request, capability)
    if app_id is None:
        return ids is ALL or bool(ids)
    return ids is ALL or app_id in ids


def scope(queryset: QuerySet, app_ids: frozenset[uuid.UUID] | None, app_path: str) -> QuerySet:
    return queryset if app_ids is ALL else queryset.filter(**{f"{app_path}__in": app_ids})


# An id as the filters' links write it (str(uuid)). Anything else — other
# spellings uuid.UUID would take, such as non-ASCII digits, included — is
# refused rather than guessed at.
CANONICAL_ID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def parse_id(title: str, value: str) -> uuid.UUID:
    """`value` as an id, or IncorrectLookupParameters naming the filter."""
    if not CANONICAL_ID.fullmatch(value):
        raise IncorrectLookupParameters(
            f"The {title} filter takes an id from its list (like "
            f"01234567-89ab-cdef-0123-456789abcdef); {truncate(value, 40)!r} is not one."
        )
    return uuid.UUID(value)


class IdFilter(admin.SimpleListFilter):
    """A list filter whose value is a row's id (an app's, a trigger's).

    A value that is not an id is an invalid lookup, which Django's changelist
    answers as it does an unknown parameter: a redirect to the unfiltered
    list with ``?e=1`` (AppScopedAdmin adds a message saying why) — never a
    500. A well-formed id of a row the page may not show, or of no row,
    filters everything out: the page's queryset is scoped before any filter.
    """

    id_path: str = ""  # ORM path from the listed model to the id

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.id_path: parse_id(self.title, value)})


class AppFilter(IdFilter):
    """Filter by app, offering only the apps this page may show."""

    title = "app"
    parameter_name = "app"

    def lookups(self, request, model_admin):
        ids = model_admin.allowed_apps(request)
        return [(str(a.pk), a.slug) for a in scope(App.objects.all(), ids, "id")]

    def __init__(self, request, params, model, model_admin):
        self.id_path = f"{model_admin.app_path}__pk"
        super().__init__(request, params, model, model_admin)


def refuse_nul(query: dict[str, list[str]]) -> None:
    """PostgreSQL text cannot hold NUL: a filter value with one would fail
    the list's query, so it is an invalid lookup like any other."""
    for name, values in query.items():
        if any("\x00" in v for v in (name, *values)):
            raise IncorrectLookupParameters(
                f"The list's parameter {truncate(name, 40)!r} holds a NUL character; "
                "filter values cannot contain one."
            )


# What the lookups of Django's own field filters end in (`kind__exact`,
# `revoked_at__gte`, `enabled__isnull`, a related filter's `app__id__exact`).
FIELD_FILTER_SUFFIXES = frozenset({"", "exact", "isnull", "gte", "lt", "id__exact"})


class ListedLookupsOnly:
    """A list accepts only the parameters its own filters write.

    Django admin otherwise accepts any lookup on the model's own fields in
    the URL: ``?secret__startswith=whsec_a`` reveals a webhook secret one
    character at a time by counting rows, and ``?name__regex=(`` or
    ``?created_at__year=99999999999`` are 500s. Anything else is refused
    (Django answers 400)."""

    def lookup_allowed(self, lookup, value, request=None):
        names = {self.date_hierarchy} - {None}
        filters = self.get_list_filter(request) if request is not None else self.list_filter
        for item in filters:
            if isinstance(item, type) and issubclass(item, admin.SimpleListFilter):
                names.add(item.parameter_name)
            elif isinstance(item, list | tuple):
                names.add(item[0])
            else:
                names.add(item)
        field, _, suffix = lookup.partition("__")
        return field in names and suffix in FIELD_FILTER_SUFFIXES


class MissingIs404:
    """An object outside the page's queryset (another app's, another user's,
    or none at all) is a 404: Django's default redirect with a message would
    tell "not yours" from "does not exist"."""

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("no such object")
        return obj


class AppScopedAdmin(ScaledChangeList, ListedLookupsOnly, MissingIs404, admin.ModelAdmin):
    """A ModelAdmin whose every page is limited to the apps where the user
    holds ``app_capability``. Subclasses narrow further (read-only pages
    return False from has_add/change/delete_permission). Its lists count
    exactly only up to admin_counts.EXACT_UP_TO rows, and estimate past it."""

    app_capability: type[_AppCapability] = Capability.AppManageTriggers
    app_path = "app"  # ORM path from this model to its App

    def allowed_apps(self, request) -> frozenset[uuid.UUID] | None:
        return allowed_app_ids(request, self.app_capability)

    def get_queryset(self, request):
        return scope(super().get_queryset(request), self.allowed_apps(request), self.app_path)

    def get_changelist_instance(self, request):
        """Django redirects an invalid lookup to the bare list with ``?e=1``
        and says nothing; the message tells the operator which parameter was
        wrong and what it takes."""
        try:
            refuse_nul(dict(request.GET.lists()))
            return super().get_changelist_instance(request)
        except IncorrectLookupParameters as e:
            if ERROR_FLAG not in request.GET:
                messages.error(request, str(e) or "Invalid filter parameters; showing all rows.")
            raise

    def app_id_of(self, obj) -> uuid.UUID | None:
        for part in self.app_path.split("__")[:-1]:
            obj = getattr(obj, part, None)
        last = self.app_path.split("__")[-1]
        return getattr(obj, f"{last}_id", None) if obj is not None else None

    def _may(self, request, obj=None) -> bool:
        return holds_in(request, self.app_capability, None if obj is None else self.app_id_of(obj))

    def has_module_permission(self, request):
        return self._may(request)

    def has_view_permission(self, request, obj=None):
        return self._may(request, obj)

    def has_add_permission(self, request):
        return self._may(request)

    def has_change_permission(self, request, obj=None):
        return self._may(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._may(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        ids = self.allowed_apps(request)
        model = db_field.related_model
        if model is App:
            kwargs["queryset"] = scope(App.objects.all(), ids, "id")
        elif model is Script:
            kwargs["queryset"] = scope(Script.objects.select_related("app"), ids, "app")
        elif hasattr(model, "app"):
            kwargs["queryset"] = scope(model._default_manager.all(), ids, "app")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def principal(self, request):
        return principal_for(request.user)


class WrittenBySystem:
    """For rows PiCloud writes itself (outbox, dead letters, abandoned
    executions): nobody adds or deletes them by hand in admin."""

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
