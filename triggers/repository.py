"""The TriggerRepo contract: what every trigger store guarantees.

Two implementations: ``PgTriggerRepo`` (PostgreSQL, pg_repository.py) and
``MemoryTriggerRepo`` (memory_repository.py, for tests of logic). One
contract suite (tests/contract) runs against both. ``PgTriggerRepo`` is the
one write path: the Python API, the demo and admin all write through it.
Both check writes with ``validate_trigger`` (the rules of triggers/rules.py,
whose errors they raise).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from django.core.exceptions import ValidationError

from triggers import rules
from triggers.kinds import TriggerKind
from triggers.rules import Ref


@dataclass(frozen=True)
class KvSpec:
    """A KV trigger's details: the collection pattern and the ops it fires on."""

    collection: str
    ops: tuple[str, ...] = ("insert", "update", "delete")


@dataclass(frozen=True)
class DeadLetterSpec:
    """A dead-letter trigger's filters on the dead letter's source; None = any."""

    source_kind: str | None = None
    source_trigger_id: uuid.UUID | None = None


@dataclass(frozen=True)
class CronSpec:
    """A cron trigger's details (docs/triggers.md, "Cron triggers")."""

    schedule: str
    timezone: str = "UTC"
    catchup: str = "latest"  # skip | latest | all
    catchup_window_s: int = 21_600  # 6 hours
    overlap: str = "skip"  # skip | buffer_one | allow
    paused: bool = False
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PubsubSpec:
    """A pub/sub trigger's details: the topic pattern it subscribes to."""

    topic: str


@dataclass(frozen=True)
class EmailSpec:
    """An email trigger's details: the recipient local parts it fires for
    (docs/email.md, "Routing")."""

    local_part: str


@dataclass(frozen=True)
class QueueSpec:
    """A queue trigger's details (docs/messaging.md, "Queue triggers")."""

    queue_id: uuid.UUID
    batch_size: int = 10
    max_batch_wait_ms: int = 0
    max_concurrency: int = 5  # batches in the outbox at once
    max_receives: int = 5  # receives of a message before its dead letter


@dataclass(frozen=True)
class NewTrigger:
    app_id: uuid.UUID
    kind: str
    script_id: uuid.UUID
    name: str
    registered_by_principal: uuid.UUID
    enabled: bool = True
    kv: KvSpec | None = None
    dead_letter: DeadLetterSpec | None = None
    cron: CronSpec | None = None
    pubsub: PubsubSpec | None = None
    queue: QueueSpec | None = None
    email: EmailSpec | None = None
    max_attempts: int | None = None
    retry_base_delay_ms: int | None = None
    retry_max_delay_ms: int | None = None


@dataclass(frozen=True)
class TriggerRecord:
    id: uuid.UUID
    app_id: uuid.UUID
    kind: str
    script_id: uuid.UUID
    name: str
    enabled: bool
    registered_by_principal: uuid.UUID
    kv: KvSpec | None
    dead_letter: DeadLetterSpec | None
    max_attempts: int | None
    retry_base_delay_ms: int | None
    retry_max_delay_ms: int | None
    created_at: datetime = field(compare=False)
    updated_at: datetime = field(compare=False)
    cron: CronSpec | None = None
    pubsub: PubsubSpec | None = None
    queue: QueueSpec | None = None
    email: EmailSpec | None = None


class DeadLetterSource(Protocol):
    """What dead-letter matching reads of a dead letter."""

    source_kind: str
    trigger_id: uuid.UUID | None


class TriggerNotFound(LookupError):
    pass


class TriggerInUse(ValidationError):
    """Deleting a trigger that other dead-letter triggers' filters name."""

    def __init__(self, filtering: list[str]):
        super().__init__(
            f"Dead-letter trigger(s) {', '.join(map(repr, filtering))} filter on this trigger; "
            "change their filter or delete them first."
        )


UPDATABLE = frozenset(
    {
        "name",
        "enabled",
        "script_id",
        "kv",
        "dead_letter",
        "cron",
        "pubsub",
        "queue",
        "email",
        "max_attempts",
        "retry_base_delay_ms",
        "retry_max_delay_ms",
    }
)


class TriggerRepo(Protocol):
    def create(self, new: NewTrigger) -> TriggerRecord:
        """Store a trigger and its kind's details atomically.

        Raises ValidationError (naming the field and what is allowed) for a
        kind that is unknown, a blank or too long
        name, missing or mismatched details, an invalid collection pattern
        or ops, out-of-range retry overrides, or a dead-letter filter naming
        a dead-letter trigger; rules.ForeignScript or
        rules.ForeignSourceTrigger when the script, or the trigger a
        dead-letter filter names, is not of the same app;
        rules.DuplicateTriggerName when the app already has a trigger of
        that name.
        """

    def get(self, trigger_id: uuid.UUID) -> TriggerRecord | None:
        """The trigger with its details, or None."""

    def update(self, trigger_id: uuid.UUID, **changes: object) -> TriggerRecord:
        """Change the fields named in UPDATABLE, validated as in create by
        the rules that read them (validate_trigger's `changed`).

        The kind and app never change. Raises TriggerNotFound, ValidationError,
        DuplicateTriggerName, or TypeError for a field outside UPDATABLE.
        """

    def delete(self, trigger_id: uuid.UUID) -> bool:
        """Delete the trigger and its details; False if there was none.

        Raises TriggerInUse, naming them, while other dead-letter triggers'
        filters name it (deleting it would silently widen them to any).
        """

    def list_for_app(self, app_id: uuid.UUID, *, kind: str | None = None) -> list[TriggerRecord]:
        """The app's triggers (enabled or not), by name."""

    def list_matching_kv(self, app_id: uuid.UUID, collection: str, op: str) -> list[TriggerRecord]:
        """Enabled kv triggers of this app whose pattern matches `collection`
        (triggers.matching.collection_matches) and whose ops include `op`, by name."""

    def list_matching_pubsub(self, app_id: uuid.UUID, topic: str) -> list[TriggerRecord]:
        """Enabled pubsub triggers of this app whose pattern matches `topic`
        (the rule of collection_matches), by name."""

    def list_matching_email(self, app_id: uuid.UUID, local_part: str) -> list[TriggerRecord]:
        """Enabled email triggers of this app whose pattern matches
        `local_part` (a recipient's, lower-cased and without its +tag; the
        rule of collection_matches), by name."""

    def list_matching_dead_letter(
        self, app_id: uuid.UUID, dead_letter: DeadLetterSource
    ) -> list[TriggerRecord]:
        """Enabled dead_letter triggers of this app whose filters (None = any)
        accept the dead letter's source kind and trigger, by name."""


@dataclass(frozen=True)
class Facts:
    """What the rules read of rows other than the trigger being written;
    each store gathers them its own way before it checks a write."""

    app_slug: str
    name_taken: bool  # another trigger of the app has the name
    script: Ref | None  # the trigger's script; None: no such script
    source: Ref | None  # the trigger its dead-letter filter names; None: none, or no such
    queue: Ref | None = None  # a queue trigger's queue; None: none, or no such
    queue_consumer: str | None = None  # the other trigger consuming that queue, if any


def validate_trigger(
    new: NewTrigger, facts: Facts, changed: frozenset[str] | None = None
) -> NewTrigger:
    """Check `new` against the rules of triggers/rules.py, stopping at the
    first broken one; returns it normalized (ops a tuple; a dead-letter
    trigger's filters "any" when none are given).

    `changed`: on an update, the fields it changes. Only the rules that read
    them run, so a rule added later never stops, say, disabling a trigger
    stored before it. None (a create): every rule.
    """

    def touches(*fields: str) -> bool:
        return changed is None or not changed.isdisjoint(fields)

    if changed is None:
        rules.check_kind(new.kind)
    if touches("name"):
        rules.check_name(new.name)
        rules.check_name_free(new.name, taken=facts.name_taken)
    if touches("script_id"):
        rules.check_script(new.script_id, facts.script, new.app_id, facts.app_slug)
    if touches("max_attempts"):
        rules.check_max_attempts(new.max_attempts)
        rules.check_no_attempts_for_queue(new.kind, new.max_attempts)
    delays = ("retry_base_delay_ms", "retry_max_delay_ms")
    if touches(*delays):
        for name in delays:
            rules.check_delay(name, getattr(new, name))
        rules.check_delay_order(new.retry_base_delay_ms, new.retry_max_delay_ms)
    kv, dl = new.kv, new.dead_letter
    if touches(*rules.DETAILS.values()):
        for details in rules.DETAILS.values():
            rules.check_details(new.kind, details, getattr(new, details) is not None)
    if new.cron is not None and touches("cron"):
        rules.check_cron(new.cron)
    if new.pubsub is not None and touches("pubsub"):
        rules.check_topic(new.pubsub.topic)
    if new.email is not None and touches("email"):
        rules.check_local_part(new.email.local_part)
    if new.queue is not None and touches("queue"):
        rules.check_queue(new.queue, facts.queue, facts.queue_consumer, new.app_id, facts.app_slug)
    if kv is not None and touches("kv"):
        rules.check_collection(kv.collection)
        rules.check_ops(kv.ops)
        kv = KvSpec(kv.collection, tuple(kv.ops))
    if new.kind == TriggerKind.DEAD_LETTER:
        dl = dl or DeadLetterSpec()
        if touches("dead_letter"):
            rules.check_source_kind(dl.source_kind)
            rules.check_source(dl.source_trigger_id, facts.source, new.app_id, facts.app_slug)
    return replace(new, kv=kv, dead_letter=dl)


def check_update_fields(changes: dict) -> None:
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise TypeError(
            f"cannot update {', '.join(sorted(unknown))}; updatable: {', '.join(sorted(UPDATABLE))}"
        )


def as_new(record: TriggerRecord, changes: dict) -> NewTrigger:
    """The record with `changes` applied, as a NewTrigger to validate."""
    check_update_fields(changes)
    fields = {f: getattr(record, f) for f in NewTrigger.__dataclass_fields__}
    return NewTrigger(**{**fields, **changes})
