"""Admin for the platform core: apps, memberships, scripts and API tokens;
topics and queues are in admin_messaging.py, received mail in admin_email.py,
the KV store in admin_kv.py."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from outbox import admin_log  # noqa: F401  (registers its pages)
from outbox.models import OutboxEntry
from picloud import admin_email, admin_kv, admin_messaging  # noqa: F401  (register their pages)
from picloud.admin_access import (
    ALL,
    AppFilter,
    AppScopedAdmin,
    ListedLookupsOnly,
    MissingIs404,
    allowed_app_ids,
    scope,
)
from picloud.admin_counts import EXACT_UP_TO, Counted, count_or_estimate
from picloud.config import ConcurrencyConfig
from picloud.domain import tokens
from picloud.domain.authz import Capability, Scope, has_capability
from picloud.domain.scripts import registered_names
from picloud.models import (
    ApiToken,
    App,
    AppMembership,
    PlatformSettings,
    Principal,
    Runtime,
    Script,
    principal_for,
)


class ShowsLoad:
    """Read-only "in flight" and "backlog" beside a cap (rows of the outbox),
    each counted by the outbox's app or script indexes up to EXACT_UP_TO
    rows, and past that the planner's estimate: an app's backlog can be
    hundreds of thousands of rows, too many to count for a page."""

    def _load(self, obj) -> tuple[Counted, Counted] | None:
        if obj is None or obj._state.adding:
            return None
        if not hasattr(obj, "_picloud_load"):  # both columns, counted once
            rows = (
                OutboxEntry.objects.filter(app_id=obj.pk)
                if isinstance(obj, App)
                else OutboxEntry.objects.filter(app_id=obj.app_id, script_id=obj.pk)
            )
            now = timezone.now()
            obj._picloud_load = (
                count_or_estimate(rows.filter(leased_until__gt=now), EXACT_UP_TO),
                count_or_estimate(rows.filter(due_at__lte=now), EXACT_UP_TO),
            )
        return obj._picloud_load

    @admin.display(description="in flight")
    def in_flight(self, obj):
        load = self._load(obj)
        return "—" if load is None else load[0].display()

    @admin.display(description="backlog (rows due)")
    def backlog(self, obj):
        load = self._load(obj)
        return "—" if load is None else load[1].display()


def platform_app_cap() -> int:
    """The cap of apps without one of their own: the platform setting, else
    PICLOUD_APP_MAX_CONCURRENCY."""
    row = PlatformSettings.objects.filter(pk=1).first()
    if row is not None and row.app_max_concurrency is not None:
        return row.app_max_concurrency
    return ConcurrencyConfig.current().app_max_concurrency


@admin.register(App)
class AppAdmin(ShowsLoad, AppScopedAdmin):
    """Members see their apps; app admins rename them and set their cap (up
    to the platform's); superusers add and delete, and set any cap."""

    app_capability = Capability.AppRead
    app_path = "id"
    list_display = ["slug", "name", "max_concurrency", "created_at"]
    search_fields = ["slug", "name"]

    def app_id_of(self, obj):
        return obj.pk

    def has_change_permission(self, request, obj=None):
        ids = allowed_app_ids(request, Capability.AppManageMembers)
        return ids is ALL or (bool(ids) if obj is None else obj.pk in ids)

    def has_add_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def get_readonly_fields(self, request, obj=None):
        # A slug is in URLs and API paths: fixed once the app exists.
        if obj is None:
            return ["created_at"]
        return ["slug", "in_flight", "backlog", "created_at"]

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if request.user.is_superuser:
            return form
        ceiling = platform_app_cap()

        class AtMostThePlatformCap(form):
            # The platform cap keeps one app (its endpoint hanging, say) from
            # holding more than its share of every tenant's slots: an app's
            # admins may lower their app's cap, not lift it past that.
            def clean_max_concurrency(self):
                value = self.cleaned_data.get("max_concurrency")
                if value is not None and value > ceiling:
                    raise ValidationError(
                        f"{value} is more than the platform's cap of {ceiling} executions "
                        f"per app: allowed is 1 to {ceiling} (a superuser may set more)."
                    )
                return value

        return AtMostThePlatformCap


class MembershipForm(forms.ModelForm):
    """Names the member by username: a select of every platform user would
    show an app's admins the names of everybody else's users."""

    username = forms.CharField(max_length=150, help_text="the user who gets the role")

    class Meta:
        model = AppMembership
        fields = ["app", "role"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:  # (a new row has its uuid pk already)
            self.fields["username"].initial = self.instance.principal.user.get_username()

    def clean_username(self):

        name = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise ValidationError(f"There is no user named {name!r}.")
        self.instance.principal = principal_for(user)
        return name

    def clean(self):
        # (app, principal) is unique, but the principal is not a form field,
        # so Django's own unique check skips it: check here, saying who.
        cleaned = super().clean()
        app = cleaned.get("app") or (self.instance.app if self.instance.app_id else None)
        if app is not None and self.instance.principal_id is not None:
            others = AppMembership.objects.filter(app=app, principal_id=self.instance.principal_id)
            if others.exclude(pk=self.instance.pk).exists():
                self.add_error(
                    "username", "This user already has a role in this app; change that one."
                )
        return cleaned


@admin.register(AppMembership)
class AppMembershipAdmin(AppScopedAdmin):
    app_capability = Capability.AppManageMembers
    form = MembershipForm
    fields = ["app", "username", "role"]
    list_display = ["principal", "app", "role", "created_at"]
    list_filter = [AppFilter, "role"]
    search_fields = ["principal__user__username", "app__slug"]
    list_select_related = ["principal__user", "app"]


class ScriptForm(forms.ModelForm):
    handler = forms.ChoiceField(
        required=False,
        help_text="a handler registered by an installed Django app (python runtime)",
    )

    class Meta:
        model = Script
        fields = ["app", "name", "enabled", "runtime", "handler", "webhook_url", "max_concurrency"]

    # Apps whose caps the user may set (ALL: every app); set by ScriptAdmin.get_form.
    cap_apps: frozenset | None = frozenset()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Chosen from the registry, never typed: a form picks no code path.
        names = sorted(registered_names())
        self.fields["handler"].choices = [("", "—")] + [(n, n) for n in names]

    def clean(self):
        cleaned = super().clean()
        # On the add page anyone who may add scripts sees the field; the cap
        # of a script is its app's admins' to set (a forged POST included).
        app = cleaned.get("app") or (self.instance.app if self.instance.app_id else None)
        if (
            "max_concurrency" in self.fields
            and cleaned.get("max_concurrency") is not None
            and self.cap_apps is not ALL
            and (app is None or app.pk not in self.cap_apps)
        ):
            self.add_error("max_concurrency", "Only an admin of the script's app may set its cap.")
        return cleaned


@admin.register(Script)
class ScriptAdmin(ShowsLoad, AppScopedAdmin):
    """Developers manage scripts; a script's cap is its app's admins' to set."""

    app_capability = Capability.ScriptManage
    form = ScriptForm
    list_display = [
        "name",
        "app",
        "runtime",
        "handler",
        "webhook_url",
        "enabled",
        "max_concurrency",
    ]
    list_filter = [AppFilter, "runtime", "enabled"]
    search_fields = ["name", "handler", "webhook_url"]
    list_select_related = ["app"]
    ordering = ["app__slug", "name"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        fields = ["app", "in_flight", "backlog"]
        cap_apps = allowed_app_ids(request, Capability.AppManageConcurrency)
        if cap_apps is not ALL and obj.app_id not in cap_apps:
            fields.insert(1, "max_concurrency")  # shown, and a posted value is ignored
        return fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        cap_apps = allowed_app_ids(request, Capability.AppManageConcurrency)
        return type(form.__name__, (form,), {"cap_apps": cap_apps})

    def save_model(self, request, obj, form, change):
        new_secret = obj.runtime == Runtime.WEBHOOK and not obj.secret
        super().save_model(request, obj, form, change)
        if new_secret:
            # Shown this once; it signs every delivery (docs/webhooks.md).
            self.message_user(
                request,
                f"Webhook signing secret for {obj} (shown once, store it now): {obj.secret}",
                messages.WARNING,
            )


class ApiTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s.value, s.value) for s in Scope],
        widget=forms.CheckboxSelectMultiple,
        help_text="what the token may do, within what your roles allow",
    )

    class Meta:
        model = ApiToken
        fields = ["name", "scopes", "app", "expires_at"]

    holder: Principal | None = None  # who the token is for; set by ApiTokenAdmin.get_form

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.holder is not None and not has_capability(
            self.holder, Capability.PlatformManageApps()
        ):
            # Offer only scopes the user may hold (tokens.check_holder's rule).
            field = self.fields["scopes"]
            field.choices = [c for c in field.choices if c[0] != Scope.PlatformAdmin.value]

    def clean(self):
        cleaned = super().clean()
        if self.holder is not None and "scopes" in cleaned:
            try:
                tokens.check_holder(self.holder, cleaned["scopes"])
            except ValidationError as exc:
                self.add_error("scopes", exc)
        return cleaned

    def clean_expires_at(self):
        value = self.cleaned_data["expires_at"]
        if value <= timezone.now():
            raise ValidationError("Choose a time in the future.")
        if value > timezone.now() + tokens.MAX_LIFETIME:
            raise ValidationError(f"At most {tokens.MAX_LIFETIME.days} days from now.")
        return value


@admin.register(ApiToken)
class ApiTokenAdmin(ListedLookupsOnly, MissingIs404, admin.ModelAdmin):
    """Everyone manages their own tokens; superusers see all of them. A token
    is shown once, right after it is created."""

    form = ApiTokenForm
    list_display = [
        "name",
        "principal",
        "shown_prefix",
        "scopes",
        "app",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix"]
    list_select_related = ["principal__user", "app"]
    actions = ["revoke"]
    readonly_fields = ["principal", "shown_prefix", "created_at", "revoked_at"]

    def _staff(self, request) -> bool:
        return request.user.is_active and request.user.is_staff

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(principal__user=request.user)

    def has_module_permission(self, request):
        return self._staff(request)

    def _owns(self, request, obj) -> bool:
        if not self._staff(request):
            return False
        return obj is None or request.user.is_superuser or obj.principal.user_id == request.user.pk

    def has_view_permission(self, request, obj=None):
        return self._owns(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._owns(request, obj)

    def has_add_permission(self, request):
        return self._staff(request)

    def has_change_permission(self, request, obj=None):
        # Tokens are not edited (revoke and create anew); the action needs this.
        return obj is None and self._staff(request)

    def get_changeform_initial_data(self, request):
        return {"expires_at": timezone.now() + tokens.DEFAULT_LIFETIME}

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        # The form checks the holder's rules itself, so a refused scope is a
        # message on the form, not an error from save_model.
        return type(form.__name__, (form,), {"holder": principal_for(request.user)})

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "app":
            ids = allowed_app_ids(request, Capability.AppRead)
            kwargs["queryset"] = scope(App.objects.all(), ids, "id")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="token")
    def shown_prefix(self, obj):
        return f"{obj.prefix}…" if obj.prefix else "—"

    def save_model(self, request, obj, form, change):
        obj.principal = principal_for(request.user)
        raw = tokens.issue(obj)
        self.message_user(
            request,
            f"API token {obj.name!r} (shown once, copy it now): {raw}",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {n} token(s).", messages.SUCCESS)


@admin.register(PlatformSettings)
class PlatformSettingsAdmin(admin.ModelAdmin):
    """The platform's settings, one row: superusers only."""

    fields = ["app_max_concurrency", "env_default", "updated_at"]
    readonly_fields = ["env_default", "updated_at"]

    def _superuser(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_module_permission(self, request):
        return self._superuser(request)

    def has_view_permission(self, request, obj=None):
        return self._superuser(request)

    def has_change_permission(self, request, obj=None):
        return self._superuser(request)

    def has_add_permission(self, request):
        return False  # the migration made the row; changelist_view makes it again if gone

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        # One row: the list is its change page.
        if not self._superuser(request):
            raise PermissionDenied
        row, _ = PlatformSettings.objects.get_or_create(pk=1)
        return HttpResponseRedirect(reverse("admin:picloud_platformsettings_change", args=[row.pk]))

    @admin.display(description="PICLOUD_APP_MAX_CONCURRENCY (used when the cap is empty)")
    def env_default(self, obj):
        return ConcurrencyConfig.current().app_max_concurrency
