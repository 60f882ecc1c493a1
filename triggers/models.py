"""Layout E triggers: a parent row per trigger, a child row per kind's details.

The tables come from triggers/sql/0001_triggers.sql; these models mirror it.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models

from picloud.models import App, Principal, Script
from triggers.kinds import DEAD_LETTER_FILTER_KINDS, KvOp, TriggerKind
from triggers.matching import MAX_COLLECTION_LENGTH, validate_collection_pattern, validate_ops


class Trigger(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="triggers")
    kind = models.CharField(max_length=20, choices=TriggerKind.choices)
    # RESTRICT: a script cannot be deleted while triggers point at it, unless
    # its app (and so the triggers) goes too.
    script = models.ForeignKey(Script, on_delete=models.RESTRICT, related_name="triggers")
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    registered_by_principal = models.ForeignKey(
        Principal,
        on_delete=models.RESTRICT,
        db_column="registered_by_principal",
        related_name="registered_triggers",
    )
    max_attempts = models.IntegerField(null=True, blank=True)
    retry_base_delay_ms = models.IntegerField(null=True, blank=True)
    retry_max_delay_ms = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "triggers"
        ordering = ["app", "name"]
        constraints = [
            models.UniqueConstraint(fields=["app", "name"], name="triggers_app_name_key"),
        ]

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"

    def clean(self) -> None:
        super().clean()
        if self.script_id and self.app_id and self.script.app_id != self.app_id:
            raise ValidationError({"script": "Choose a script of the trigger's own app."})
        if self.max_attempts is not None and not 1 <= self.max_attempts <= 100:
            raise ValidationError({"max_attempts": "Allowed: 1 to 100, or empty for the default."})
        base, cap = self.retry_base_delay_ms, self.retry_max_delay_ms
        for field, value in (("retry_base_delay_ms", base), ("retry_max_delay_ms", cap)):
            if value is not None and not 1 <= value <= 86_400_000:
                raise ValidationError(
                    {field: "Allowed: 1 to 86400000 ms, or empty for the default."}
                )
        if base is not None and cap is not None and cap < base:
            raise ValidationError({"retry_max_delay_ms": "Must be at least the base delay."})


class KvTriggerDetails(models.Model):
    trigger = models.OneToOneField(
        Trigger, on_delete=models.CASCADE, primary_key=True, related_name="kv_details"
    )
    collection = models.TextField(
        validators=[validate_collection_pattern],
        help_text="'*', 'prefix:*' or an exact collection name",
        max_length=MAX_COLLECTION_LENGTH,
    )
    ops = ArrayField(
        models.CharField(max_length=10, choices=KvOp.choices),
        validators=[validate_ops],
        default=list,
    )

    class Meta:
        db_table = "kv_trigger_details"
        verbose_name_plural = "KV trigger details"

    def __str__(self) -> str:
        return f"{self.collection} on {', '.join(self.ops)}"


class DeadLetterTriggerDetails(models.Model):
    trigger = models.OneToOneField(
        Trigger, on_delete=models.CASCADE, primary_key=True, related_name="dead_letter_details"
    )
    # The trigger's app, copied from it on save (so nobody fills it in: blank):
    # the composite foreign keys of triggers/sql/0002_dead_letter_source_same_app.sql
    # need it on the row to hold the source trigger to that app. A key of its
    # own to apps would add nothing, as (trigger_id, app_id) must match the trigger.
    app = models.ForeignKey(
        App,
        on_delete=models.CASCADE,
        related_name="+",
        editable=False,
        blank=True,
        db_constraint=False,
    )
    source_kind = models.CharField(
        max_length=20,
        choices=[(k.value, k.label) for k in DEAD_LETTER_FILTER_KINDS],
        null=True,
        blank=True,
        help_text="only dead letters from this source; empty for any",
    )
    source_trigger = models.ForeignKey(
        Trigger,
        on_delete=models.RESTRICT,
        null=True,
        blank=True,
        related_name="+",
        help_text="only dead letters of this trigger (of the same app); empty for any",
    )

    class Meta:
        db_table = "dead_letter_trigger_details"
        verbose_name_plural = "dead-letter trigger details"

    def __str__(self) -> str:
        return f"source {self.source_kind or 'any'}, trigger {self.source_trigger_id or 'any'}"

    def save(self, *args, **kwargs):
        self.app_id = self.trigger.app_id
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        if self.trigger_id is not None:
            check_same_app_source(self.trigger, self.source_trigger)


def check_same_app_source(owner: Trigger, source: Trigger | None) -> None:
    """A dead-letter filter names a trigger of its own trigger's app, or none.

    Shared by full_clean and the admin's inline formset (which sees the owning
    trigger before the details row does)."""
    if source is None or owner.app_id is None or source.app_id == owner.app_id:
        return
    raise ValidationError(
        {
            "source_trigger": f"Trigger {source} belongs to another app; choose a trigger "
            f"of app {owner.app.slug!r}, or leave it empty for any."
        }
    )
