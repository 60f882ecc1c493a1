"""Platform core: apps (tenants), principals, memberships and scripts.

The tables are created by explicit SQL (picloud/sql/*.sql, loaded by the
migrations); these models mirror that SQL so the ORM, admin and other Django
apps can use them. Change the SQL first, then the model, and keep
``makemigrations --check`` clean.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from picloud.authz import Role


class App(models.Model):
    """A tenant: owns a KV store, scripts, triggers and their event history."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "apps"
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Principal(models.Model):
    """The identity that acts: one per Django user, created automatically.

    A principal is active exactly when its user is; that is read from the user
    rather than copied, so it can never disagree.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="principal"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "principals"

    def __str__(self) -> str:
        return self.user.get_username()

    @property
    def is_active(self) -> bool:
        return self.user.is_active

    @property
    def is_superuser(self) -> bool:
        return self.user.is_active and self.user.is_superuser


class AppMembership(models.Model):
    """A principal's role in one app (at most one role per app)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="memberships")
    principal = models.ForeignKey(Principal, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=[(r.value, r.name) for r in Role])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "app_memberships"
        constraints = [
            models.UniqueConstraint(
                fields=["app", "principal"], name="app_memberships_app_principal_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.principal} is {self.role} of {self.app}"


class Script(models.Model):
    """Code an app can run; its runtime (python handler or webhook) comes later."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="scripts")
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "scripts"
        constraints = [
            models.UniqueConstraint(fields=["app", "name"], name="scripts_app_name_key"),
        ]

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"


def principal_for(user) -> Principal:
    """The principal of a Django user, created on first use if the signal missed it."""
    principal, _ = Principal.objects.get_or_create(user=user)
    return principal
