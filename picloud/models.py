"""Platform core: apps (tenants), principals, memberships and scripts.

The tables are created by explicit SQL (picloud/sql/*.sql, loaded by the
migrations); these models mirror that SQL so the ORM, admin and other Django
apps can use them. Change the SQL first, then the model, and keep
``makemigrations --check`` clean.
"""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from picloud.domain.roles import Role, Scope
from picloud.domain.scripts import Runtime, validate_runtime_fields

# The largest cap admin accepts (PICLOUD_APP_MAX_CONCURRENCY's range too).
MAX_CONCURRENCY_LIMIT = 100_000


def concurrency_field(help_text: str) -> models.IntegerField:
    """A nullable cap on executions in flight (CHECK > 0 in the SQL)."""
    return models.IntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_CONCURRENCY_LIMIT)],
        help_text=help_text,
    )


class App(models.Model):
    """A tenant: owns a KV store, scripts, triggers and their event history."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    max_concurrency = concurrency_field(
        "executions of this app in flight at most (empty: the platform's cap)"
    )
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
    """Code an app can run: a registered Python handler or a webhook."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="scripts")
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    runtime = models.CharField(max_length=10, choices=Runtime.choices, default=Runtime.PYTHON)
    handler = models.CharField(
        max_length=200, blank=True, help_text="registered handler name (python runtime)"
    )
    webhook_url = models.CharField(
        max_length=2000, blank=True, help_text="HTTPS endpoint (webhook runtime)"
    )
    # Never shown after creation and never logged; see docs/webhooks.md.
    secret = models.CharField(max_length=200, blank=True, editable=False)
    max_concurrency = concurrency_field(
        "executions of this script in flight at most (empty: only the app's cap)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "scripts"
        constraints = [
            models.UniqueConstraint(fields=["app", "name"], name="scripts_app_name_key"),
        ]

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"

    def save(self, *args, **kwargs) -> None:
        if self.runtime == Runtime.WEBHOOK and not self.secret:
            self.secret = new_webhook_secret()
        # Saving through the ORM checks the runtime too, not only admin forms.
        validate_runtime_fields(self)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        validate_runtime_fields(self)


def new_webhook_secret() -> str:

    return "whsec_" + secrets.token_urlsafe(32)


class KvEntry(models.Model):
    """One key's JSON value in an app's collection; writes go through picloud.kv."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="kv_entries")
    collection = models.TextField()
    key = models.TextField()
    value = models.JSONField()
    version = models.BigIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "kv_entries"
        verbose_name = "KV entry"
        verbose_name_plural = "KV entries"
        constraints = [
            models.UniqueConstraint(
                fields=["app", "collection", "key"], name="kv_entries_app_collection_key_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.app}:{self.collection}/{self.key}"


class ApiToken(models.Model):
    """A principal's credential for the HTTP API: some scopes, maybe one app, an expiry.

    Only a hash of the token is stored; picloud.domain.tokens creates, checks and
    revokes them.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    principal = models.ForeignKey(Principal, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=200, help_text="what the token is for")
    prefix = models.CharField(max_length=16, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = ArrayField(models.TextField(choices=[(s.value, s.value) for s in Scope]))
    app = models.ForeignKey(
        App,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_tokens",
        help_text="limit the token to this app (empty: every app the principal's roles reach)",
    )
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "api_tokens"
        verbose_name = "API token"
        indexes = [models.Index(fields=["principal"], name="api_tokens_principal_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class PlatformSettings(models.Model):
    """Settings superusers change at run time: one row (id 1), made by the migration."""

    id = models.SmallIntegerField(primary_key=True, default=1, editable=False)
    app_max_concurrency = concurrency_field(
        "executions of one app in flight at most, for apps without a cap of their own "
        "(empty: PICLOUD_APP_MAX_CONCURRENCY)"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "platform_settings"
        verbose_name = "platform settings"
        verbose_name_plural = "platform settings"

    def __str__(self) -> str:
        return "platform settings"


def principal_for(user) -> Principal:
    """The principal of a Django user, created on first use if the signal missed it."""
    principal, _ = Principal.objects.get_or_create(user=user)
    return principal


class Topic(models.Model):
    """A topic an app publishes to (picloud.messaging.topics)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="topics")
    name = models.TextField(
        max_length=200, help_text="ASCII letters, digits and _ . : - ; e.g. orders:created"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "topics"
        ordering = ["app", "name"]
        constraints = [models.UniqueConstraint(fields=["app", "name"], name="topics_app_name_key")]

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"


class Queue(models.Model):
    """A queue of an app (picloud.messaging.queues)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="queues")
    name = models.TextField(
        max_length=200, help_text="ASCII letters, digits and _ . : - ; e.g. emails"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "queues"
        ordering = ["app", "name"]
        constraints = [
            models.UniqueConstraint(fields=["app", "name"], name="queues_app_name_key"),
            models.UniqueConstraint(fields=["id", "app"], name="queues_id_app_key"),
        ]

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"


class QueueMessage(models.Model):
    """A message on a queue; sent, received and acknowledged through
    picloud.messaging.queues."""

    id = models.BigAutoField(primary_key=True)
    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="messages")
    body = models.JSONField()
    sent_at = models.DateTimeField(auto_now_add=True)
    vt = models.DateTimeField(help_text="visible from")
    receive_count = models.IntegerField(default=0)
    depth = models.IntegerField(default=0)
    batch_id = models.UUIDField(null=True, blank=True, help_text="the queue trigger's batch")

    class Meta:
        db_table = "queue_messages"

    def __str__(self) -> str:
        return f"{self.queue} #{self.id}"


class InboundEmail(models.Model):
    """A message the SMTP receiver accepted for an app, as it arrived
    (picloud.mail.inbound; docs/email.md)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="inbound_emails")
    received_at = models.DateTimeField(auto_now_add=True)
    mail_from = models.TextField(help_text="the envelope sender (MAIL FROM); empty for a bounce")
    rcpt_to = ArrayField(models.TextField(), help_text="this app's recipients (RCPT TO)")
    subject = models.TextField(default="", blank=True)
    from_header = models.TextField(default="", blank=True)
    message_id = models.TextField(null=True, blank=True)
    size = models.IntegerField(help_text="bytes")
    fired = models.JSONField(default=list, help_text="the triggers it fired, as they were then")
    peer = models.TextField(default="", blank=True, help_text="the SMTP client's address")
    raw = models.BinaryField()

    class Meta:
        db_table = "inbound_emails"
        ordering = ["-received_at"]
        # Its indexes are picloud/sql/0006_email.sql's (their names are
        # longer than Django lets a model declare).

    def __str__(self) -> str:
        return f"{self.subject or '(no subject)'} from {self.from_header or self.mail_from or '?'}"


class EmailSendCount(models.Model):
    """Mail an app's scripts sent in one clock hour (PICLOUD_EMAIL_SEND_PER_HOUR)."""

    pk = models.CompositePrimaryKey("app_id", "hour")
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    sent = models.IntegerField()

    class Meta:
        db_table = "email_send_counts"
        indexes = [models.Index(fields=["hour"], name="email_send_counts_hour_idx")]

    def __str__(self) -> str:
        return f"{self.sent} sent at {self.hour:%Y-%m-%d %H}h"
