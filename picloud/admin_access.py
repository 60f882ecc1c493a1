"""Per-app access in Django admin: the one place that decides what a staff user sees.

Every admin page of an app-owned model derives from ``AppScopedAdmin`` and
names the capability it needs (``app_capability``) and the path from its
model to the owning app (``app_path``). From those two, this module scopes
list pages, change pages, actions (they run on the scoped queryset), list
filters (``AppFilter`` lists only reachable apps), foreign-key choices,
autocomplete (it searches the scoped queryset) and direct URLs (an object of
another app is a 404, as if it did not exist). Superusers see everything.

Django's model permissions (auth_permission) are not consulted: roles in
apps are the authority, so an operator never has to keep two systems in step.
"""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from picloud.authz import Capability, _AppCapability, role_satisfies
from picloud.models import App, AppMembership, Script, principal_for

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


def scope(queryset: QuerySet, app_ids: frozenset[uuid.UUID] | None, app_path: str) -> QuerySet:
    return queryset if app_ids is ALL else queryset.filter(**{f"{app_path}__in": app_ids})


class AppFilter(admin.SimpleListFilter):
    """Filter by app, offering only the apps this page may show."""

    title = "app"
    parameter_name = "app"

    def lookups(self, request, model_admin):
        ids = model_admin.allowed_apps(request)
        return [(str(a.pk), a.slug) for a in scope(App.objects.all(), ids, "id")]

    def __init__(self, request, params, model, model_admin):
        self.app_path = model_admin.app_path
        super().__init__(request, params, model, model_admin)

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{f"{self.app_path}__pk": self.value()})
        return queryset


class MissingIs404:
    """An object outside the page's queryset (another app's, another user's,
    or none at all) is a 404: Django's default redirect with a message would
    tell "not yours" from "does not exist"."""

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("no such object")
        return obj


class AppScopedAdmin(MissingIs404, admin.ModelAdmin):
    """A ModelAdmin whose every page is limited to the apps where the user
    holds ``app_capability``. Subclasses narrow further (read-only pages
    return False from has_add/change/delete_permission)."""

    app_capability: type[_AppCapability] = Capability.AppManageTriggers
    app_path = "app"  # ORM path from this model to its App

    def allowed_apps(self, request) -> frozenset[uuid.UUID] | None:
        return allowed_app_ids(request, self.app_capability)

    def get_queryset(self, request):
        return scope(super().get_queryset(request), self.allowed_apps(request), self.app_path)

    def app_id_of(self, obj) -> uuid.UUID | None:
        for part in self.app_path.split("__")[:-1]:
            obj = getattr(obj, part, None)
        last = self.app_path.split("__")[-1]
        return getattr(obj, f"{last}_id", None) if obj is not None else None

    def _may(self, request, obj=None) -> bool:
        ids = self.allowed_apps(request)
        if obj is None:
            return ids is ALL or bool(ids)
        return ids is ALL or self.app_id_of(obj) in ids

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
