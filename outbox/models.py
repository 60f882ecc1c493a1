"""The outbox table (outbox/sql/0001_outbox.sql), mirrored for the ORM and admin."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from outbox.storage.kinds import SourceKind
from picloud.models import App, Principal, Script


class OutboxEntry(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="outbox_entries")
    source_kind = models.CharField(max_length=20, choices=SourceKind.choices)
    trigger = models.ForeignKey(
        "triggers.Trigger",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="outbox_entries",
    )
    script = models.ForeignKey(Script, on_delete=models.CASCADE, related_name="outbox_entries")
    run_as_principal = models.ForeignKey(
        Principal,
        on_delete=models.SET_NULL,
        null=True,
        db_column="run_as_principal",
        related_name="+",
    )
    payload = models.JSONField(default=dict)
    depth = models.IntegerField(default=0)
    attempts = models.IntegerField(default=0)
    due_at = models.DateTimeField(default=timezone.now)
    # The end of the lease of the claim running it; in flight while in the future.
    leased_until = models.DateTimeField(null=True, blank=True)
    reply_to = models.UUIDField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)
    errors = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "outbox"
        verbose_name = "outbox entry"
        verbose_name_plural = "outbox"
        indexes = [models.Index(fields=["due_at"], name="outbox_due_at_idx")]

    def __str__(self) -> str:
        return f"{self.source_kind} {self.id}"


class ScriptCircuit(models.Model):
    """A script's circuit breaker (outbox/sql/0005_circuit_breaker.sql): only
    scripts that failed since their last success have a row."""

    script = models.OneToOneField(
        Script, on_delete=models.CASCADE, primary_key=True, related_name="circuit"
    )
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="+")
    failures = models.IntegerField(default=0)
    opened = models.IntegerField(default=0)
    open_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "script_circuits"
        verbose_name = "circuit breaker"

    def __str__(self) -> str:
        return f"circuit of {self.script_id}"


class PendingScheduledRuns(models.Manager):
    """One-off scheduled runs not started (outbox/scheduled.py)."""

    def get_queryset(self):
        return (
            super()
            .get_queryset()
            .filter(
                source_kind=SourceKind.INVOKE,
                reply_to__isnull=True,
                attempts=0,
                leased_until__isnull=True,
            )
        )


class ScheduledRun(OutboxEntry):
    """The outbox rows that are one-off scheduled runs waiting for their time."""

    objects = PendingScheduledRuns()

    class Meta:
        proxy = True
        verbose_name = "scheduled run"

    def __str__(self) -> str:
        return f"{self.script} at {self.due_at:%Y-%m-%d %H:%M:%S}"


class DeliveryAttempt(models.Model):
    """The delivery log (outbox/sql/0008_delivery_log.sql), for admin's pages:
    SQL writes it and outbox/storage/delivery_reads.py reads it, never this
    model's queries (a partitioned table of millions of rows wants the
    reads shaped for its indexes). It names the pages and their scoping."""

    # Not unique (one row per attempt): nothing looks an attempt up by it.
    outbox_id = models.UUIDField(primary_key=True)
    app = models.ForeignKey(App, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    started_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "delivery_log"
        verbose_name = "delivery attempt"
        verbose_name_plural = "delivery log"

    def __str__(self) -> str:
        return f"attempt of {self.outbox_id}"


class DeliveryDashboard(DeliveryAttempt):
    """Admin's dashboard: what the delivery log's rollups say, as charts."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"

    def __str__(self) -> str:
        return "dashboard"
