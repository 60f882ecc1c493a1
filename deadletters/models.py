"""Dead letters and abandoned executions (deadletters/sql/*.sql), mirrored for the ORM."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from outbox.storage.kinds import SourceKind
from picloud.models import App, Principal, Script


class Resolution(models.TextChoices):
    """The four ways a dead letter ends (the table's CHECK spells the same)."""

    REPLAYED = "replayed", "Replayed"
    IGNORED = "ignored", "Ignored"
    HANDLED_BY_SCRIPT = "handled_by_script", "Handled by script"
    HANDLER_FAILED = "handler_failed", "Handler failed"


class DeadLetter(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="dead_letters")
    source_kind = models.CharField(max_length=20, choices=SourceKind.choices)
    trigger = models.ForeignKey(
        "triggers.Trigger",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="dead_letters",
    )
    script = models.ForeignKey(
        Script, on_delete=models.SET_NULL, null=True, blank=True, related_name="dead_letters"
    )
    run_as_principal = models.ForeignKey(
        Principal,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_column="run_as_principal",
        related_name="+",
    )
    # The failed row; NULL on a letter of a write stopped by the depth limit,
    # which never had a row. Its cause_outbox_id is the row whose script made
    # that write (NULL for a write made outside scripts).
    outbox_id = models.UUIDField(null=True, blank=True)
    cause_outbox_id = models.UUIDField(null=True, blank=True)
    payload = models.JSONField(default=dict)
    last_error = models.TextField()
    errors = models.JSONField(default=list)
    attempts = models.IntegerField()
    depth = models.IntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    resolution = models.CharField(max_length=20, choices=Resolution.choices, null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        Principal,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_column="resolved_by",
        related_name="+",
    )
    note = models.TextField(blank=True, default="")

    class Meta:
        db_table = "dead_letters"
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["app", "created_at"],
                name="dead_letters_unresolved_idx",
                condition=Q(resolution__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"dead letter {self.id}"


class AbandonedExecution(models.Model):
    """A sync invocation whose caller had already timed out when the result came."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="abandoned_executions")
    outbox_id = models.UUIDField()
    script_id = models.UUIDField(null=True, blank=True)
    inbox_id = models.UUIDField()
    status_code = models.IntegerField()
    result_summary = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "abandoned_executions"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["created_at"], name="idx_abandoned_executions_gc")]

    def __str__(self) -> str:
        return f"abandoned {self.outbox_id} ({self.status_code})"
