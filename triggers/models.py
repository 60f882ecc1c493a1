"""Layout E triggers: a parent row per trigger, a child row per kind's details.

The tables come from triggers/sql/0001_triggers.sql; these models mirror it.
They are for reading and for admin's forms: triggers are written through
``PgTriggerRepo`` (admin too). ``full_clean`` checks the rules of
triggers/rules.py, with their messages, on the models' field names.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import NON_FIELD_ERRORS
from django.db import models
from django.utils.timezone import now

from picloud.models import App, Principal, Queue, Script
from triggers import rules
from triggers.kinds import DEAD_LETTER_FILTER_KINDS, KvOp, TriggerKind
from triggers.matching import MAX_COLLECTION_LENGTH, validate_collection_pattern, validate_ops
from triggers.repository import CronSpec, QueueSpec
from triggers.ticks import Catchup, Overlap

# The rules name fields as the repository does; these are the models' names.
# A details row is the whole of "kv" or "dead_letter".
MODEL_FIELDS = {
    "script_id": "script",
    "source_trigger_id": "source_trigger",
    "kv": NON_FIELD_ERRORS,
    "cron": NON_FIELD_ERRORS,
    "dead_letter": NON_FIELD_ERRORS,
    "pubsub": NON_FIELD_ERRORS,
    "queue": NON_FIELD_ERRORS,
    "queue_id": "queue",
    "email": NON_FIELD_ERRORS,
}


class RuledFields(models.Model):
    """A model some of whose fields the rules check in place of Django's
    generic field checks (blank, length, choices), so that full_clean says
    what the repository says."""

    class Meta:
        abstract = True

    def field_rules(self) -> dict[str, Callable[[Any], None]]:
        """Field name -> the rule that checks its value."""
        return {}

    def clean_fields(self, exclude=None):
        exclude = set(exclude or ())
        ruled = {f: rule for f, rule in self.field_rules().items() if f not in exclude}
        errors = rules.Errors(MODEL_FIELDS)
        with errors.check():
            super().clean_fields(exclude=exclude | set(ruled))
        for field, rule in ruled.items():
            with errors.check():
                rule(getattr(self, field))
        errors.raise_any()


class Trigger(RuledFields):
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
    log_failures_only = models.BooleanField(
        default=False,
        help_text=(
            "Keep only failed attempts in the delivery log (for very hot "
            "triggers); successes are still counted in its health figures."
        ),
    )
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

    def field_rules(self):
        # The kind never changes: only a new trigger's is the rules' to check.
        kind = {"kind": rules.check_kind} if self._state.adding else {}
        return {"name": rules.check_name, **kind}

    def clean(self) -> None:
        super().clean()
        errors = rules.Errors(MODEL_FIELDS)
        if self.app_id is not None and self.name and self.name.strip():
            with errors.check():
                rules.check_name_free(self.name, taken=self._name_taken())
        # A script that does not exist is the foreign key's to report.
        script = Script.objects.filter(pk=self.script_id).first() if self.script_id else None
        if self.app_id is not None and script is not None:
            with errors.check():
                ref = rules.Ref(script.app_id, script.name)
                rules.check_script(script.pk, ref, self.app_id, self.app.slug)
        with errors.check():
            rules.check_max_attempts(self.max_attempts)
        for field in ("retry_base_delay_ms", "retry_max_delay_ms"):
            with errors.check():
                rules.check_delay(field, getattr(self, field))
        if not errors.has("retry_base_delay_ms") and not errors.has("retry_max_delay_ms"):
            with errors.check():
                rules.check_delay_order(self.retry_base_delay_ms, self.retry_max_delay_ms)
        errors.raise_any()

    def validate_constraints(self, exclude=None):
        # clean() checks the unique (app, name) with the rules' message, on
        # the name field; Django's would repeat it in its own words, and
        # skips it when app is not on the form (admin's change page).
        super().validate_constraints(exclude={*(exclude or ()), "name"})

    def _name_taken(self) -> bool:
        others = Trigger.objects.filter(app_id=self.app_id, name=self.name)
        if not self._state.adding:
            others = others.exclude(pk=self.pk)
        return others.exists()

    def as_ref(self) -> rules.Ref:
        return rules.Ref(self.app_id, str(self), self.kind)


class KvTriggerDetails(RuledFields):
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

    def field_rules(self):
        return {"collection": rules.check_collection, "ops": rules.check_ops}

    def clean(self) -> None:
        super().clean()
        if self.trigger_id is not None:
            check_details_of(self.trigger, "kv")


class SameAppDetails(RuledFields):
    """Details that name another row of the trigger's own app (a source
    trigger, a queue): they carry the trigger's app, copied from it on save
    (so nobody fills it in: blank), for the composite foreign keys of
    triggers/sql/ that hold the named row to that app. A key of its own to
    apps would add nothing, as (trigger_id, app_id) must match the trigger."""

    app = models.ForeignKey(
        App,
        on_delete=models.CASCADE,
        related_name="+",
        editable=False,
        blank=True,
        db_constraint=False,
    )

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        self.app_id = self.trigger.app_id
        super().save(*args, **kwargs)


class DeadLetterTriggerDetails(SameAppDetails):
    trigger = models.OneToOneField(
        Trigger, on_delete=models.CASCADE, primary_key=True, related_name="dead_letter_details"
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

    def field_rules(self):
        return {"source_kind": rules.check_source_kind}

    def clean(self) -> None:
        super().clean()
        if self.trigger_id is None:
            return
        errors = rules.Errors()
        with errors.check():
            check_details_of(self.trigger, "dead_letter")
        with errors.check():
            check_source(self.trigger, self.source_trigger)
        errors.raise_any()


class CronTriggerDetails(RuledFields):
    """A cron trigger's schedule and policies (docs/triggers.md, "Cron triggers")."""

    trigger = models.OneToOneField(
        Trigger, on_delete=models.CASCADE, primary_key=True, related_name="cron_details"
    )
    schedule = models.TextField(
        max_length=200,
        help_text="5 cron fields (minute hour day-of-month month day-of-week), 6 with "
        "seconds first, or @hourly, @daily, @weekly, @monthly, @yearly",
    )
    timezone = models.CharField(
        max_length=64, default="UTC", help_text="IANA name, e.g. Europe/Paris"
    )
    catchup = models.CharField(
        max_length=10,
        choices=[(c.value, c.value) for c in Catchup],
        default=Catchup.LATEST.value,
        help_text="ticks missed while no cluster ran: none (skip), the most recent (latest), "
        "or all (at most 100), within the window",
    )
    catchup_window_s = models.IntegerField(
        default=21_600, help_text="seconds; missed ticks older than this never fire"
    )
    overlap = models.CharField(
        max_length=10,
        choices=[(o.value, o.value) for o in Overlap],
        default=Overlap.SKIP.value,
        help_text="when the previous tick still runs or retries: drop this one (skip), "
        "run it after (buffer_one), or run both (allow)",
    )
    paused = models.BooleanField(default=False)
    payload = models.JSONField(default=dict, blank=True, help_text="merged into every tick's event")
    watermark = models.DateTimeField(default=now, editable=False)
    next_tick_at = models.DateTimeField(null=True, blank=True, editable=False)
    missed_ticks = models.BigIntegerField(default=0, editable=False)

    class Meta:
        db_table = "cron_trigger_details"
        verbose_name_plural = "cron trigger details"

    def __str__(self) -> str:
        return f"{self.schedule} ({self.timezone})"

    def clean(self) -> None:
        super().clean()
        errors = rules.Errors(MODEL_FIELDS)
        if self.trigger_id is not None:
            with errors.check():
                check_details_of(self.trigger, "cron")
        with errors.check():
            rules.check_cron(self.as_spec())
        errors.raise_any()

    def as_spec(self) -> CronSpec:
        return CronSpec(
            schedule=self.schedule,
            timezone=self.timezone,
            catchup=self.catchup,
            catchup_window_s=self.catchup_window_s,
            overlap=self.overlap,
            paused=self.paused,
            payload=self.payload,
        )


class PubsubTriggerDetails(RuledFields):
    """The topics a pub/sub trigger subscribes to."""

    trigger = models.OneToOneField(
        Trigger, on_delete=models.CASCADE, primary_key=True, related_name="pubsub_details"
    )
    topic = models.TextField(
        max_length=MAX_COLLECTION_LENGTH,
        help_text="'*', 'prefix:*' (e.g. orders:*) or an exact topic name",
    )

    class Meta:
        db_table = "pubsub_trigger_details"
        verbose_name_plural = "pub/sub trigger details"

    def __str__(self) -> str:
        return f"topic {self.topic}"

    def field_rules(self):
        return {"topic": rules.check_topic}

    def clean(self) -> None:
        super().clean()
        if self.trigger_id is not None:
            check_details_of(self.trigger, "pubsub")


class EmailTriggerDetails(RuledFields):
    """The recipients an email trigger fires for (docs/email.md)."""

    trigger = models.OneToOneField(
        Trigger, on_delete=models.CASCADE, primary_key=True, related_name="email_details"
    )
    local_part = models.TextField(
        max_length=rules.MAX_LOCAL_PART_LENGTH,
        help_text="'*', 'prefix:*' or an exact local part, e.g. orders for "
        "orders@<app>.<domain> (and orders+anything@…)",
    )

    class Meta:
        db_table = "email_trigger_details"
        verbose_name_plural = "email trigger details"

    def __str__(self) -> str:
        return f"mail to {self.local_part}@"

    def field_rules(self):
        return {"local_part": rules.check_local_part}

    def clean(self) -> None:
        super().clean()
        if self.trigger_id is not None:
            check_details_of(self.trigger, "email")


class QueueTriggerDetails(SameAppDetails):
    """The queue a queue trigger consumes, and how (docs/messaging.md)."""

    trigger = models.OneToOneField(
        Trigger, on_delete=models.CASCADE, primary_key=True, related_name="queue_details"
    )
    queue = models.OneToOneField(
        Queue,
        on_delete=models.RESTRICT,
        related_name="consumer",
        help_text="the queue this trigger consumes (a queue has one consumer trigger)",
    )
    batch_size = models.IntegerField(default=10, help_text="messages per batch, 1 to 100")
    max_batch_wait_ms = models.IntegerField(
        default=0, help_text="ms a partial batch waits for more messages, 0 to 60000"
    )
    max_concurrency = models.IntegerField(
        default=5, help_text="batches waiting or running at once, 1 to 100"
    )
    max_receives = models.IntegerField(
        default=5, help_text="receives of a message before it becomes a dead letter, 1 to 100"
    )

    class Meta:
        db_table = "queue_trigger_details"
        verbose_name_plural = "queue trigger details"

    def __str__(self) -> str:
        return f"queue {self.queue.name}, batches of {self.batch_size}"

    def clean(self) -> None:
        super().clean()
        if self.trigger_id is None:
            return
        errors = rules.Errors(MODEL_FIELDS)
        with errors.check():
            check_details_of(self.trigger, "queue")
        with errors.check():
            check_queue_details(self.trigger, self)
        errors.raise_any()

    def as_spec(self) -> QueueSpec:
        return QueueSpec(
            queue_id=self.queue_id,
            batch_size=self.batch_size,
            max_batch_wait_ms=self.max_batch_wait_ms,
            max_concurrency=self.max_concurrency,
            max_receives=self.max_receives,
        )


class CronTick(models.Model):
    """A tick written as an outbox row (the table's key makes it once only)."""

    pk = models.CompositePrimaryKey("trigger_id", "scheduled_at")
    trigger = models.ForeignKey(Trigger, on_delete=models.CASCADE, related_name="+")
    scheduled_at = models.DateTimeField()
    outbox_id = models.UUIDField(default=uuid.uuid4)
    run_now = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=now)

    class Meta:
        db_table = "cron_ticks"

    def __str__(self) -> str:
        return f"{self.trigger_id} at {self.scheduled_at:%Y-%m-%d %H:%M:%S}"


def check_details_of(owner: Trigger, details: str) -> None:
    """Details ("kv" or "dead_letter") belong to a trigger of their kind."""
    errors = rules.Errors(MODEL_FIELDS)
    with errors.check():
        rules.check_details(owner.kind, details, present=True)
    errors.raise_any()


def check_source(owner: Trigger, source: Trigger | None) -> None:
    """The trigger a dead-letter filter names is of its own trigger's app,
    and not a dead-letter trigger (rules.check_source).

    Shared by full_clean and the admin's inline formset (which sees the
    owning trigger before the details row does)."""
    if source is None or owner.app_id is None:
        return
    errors = rules.Errors(MODEL_FIELDS)
    with errors.check():
        rules.check_source(source.pk, source.as_ref(), owner.app_id, owner.app.slug)
    errors.raise_any()


def check_queue_details(owner: Trigger, details: QueueTriggerDetails) -> None:
    """The queue is of the owner's app and consumed by no other trigger, and
    the settings are in range (rules.check_queue); shared by full_clean and
    the admin's inline formset."""
    if owner.app_id is None:
        return
    queue = Queue.objects.filter(pk=details.queue_id).first() if details.queue_id else None
    consumer = (
        QueueTriggerDetails.objects.filter(queue_id=details.queue_id)
        .exclude(trigger_id=owner.pk)
        .values_list("trigger__name", flat=True)
        .first()
    )
    errors = rules.Errors(MODEL_FIELDS)
    with errors.check():
        rules.check_queue(
            details.as_spec(),
            rules.Ref(queue.app_id, queue.name) if queue else None,
            consumer,
            owner.app_id,
            owner.app.slug,
        )
    errors.raise_any()
