"""Demo data for `make run`: a superuser, a demo app and its admin membership."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction

from picloud.authz import Role
from picloud.models import App, AppMembership, principal_for

DEMO_USERNAME = "admin"
DEMO_APP_SLUG = "demo"


@dataclass(frozen=True)
class DemoCredentials:
    username: str
    password: str
    app_slug: str


@transaction.atomic
def load_demo(password: str | None = None) -> DemoCredentials:
    """Create (or refresh) the demo data; idempotent.

    The superuser's password is set anew on every call (a fresh random one
    unless given) so the credentials printed by `make run` always work.
    """
    password = password or secrets.token_urlsafe(12)
    User = get_user_model()
    user, _ = User.objects.get_or_create(
        username=DEMO_USERNAME, defaults={"email": "admin@picloud.invalid"}
    )
    user.is_staff = user.is_superuser = user.is_active = True
    user.set_password(password)
    user.save()
    app, _ = App.objects.get_or_create(slug=DEMO_APP_SLUG, defaults={"name": "Demo app"})
    AppMembership.objects.update_or_create(
        app=app, principal=principal_for(user), defaults={"role": Role.AppAdmin.value}
    )
    return DemoCredentials(username=user.get_username(), password=password, app_slug=app.slug)
