"""The TriggerRepo contract: what every trigger store guarantees.

Two implementations: ``PgTriggerRepo`` (PostgreSQL, pg_repository.py) and
``MemoryTriggerRepo`` (memory_repository.py, for tests of logic). One
contract suite (tests/contract) runs against both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from django.core.exceptions import ValidationError

from triggers.kinds import DEAD_LETTER_FILTER_KINDS, TriggerKind
from triggers.matching import validate_collection_pattern, validate_ops


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
class NewTrigger:
    app_id: uuid.UUID
    kind: str
    script_id: uuid.UUID
    name: str
    registered_by_principal: uuid.UUID
    enabled: bool = True
    kv: KvSpec | None = None
    dead_letter: DeadLetterSpec | None = None
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


class DeadLetterSource(Protocol):
    """What dead-letter matching reads of a dead letter."""

    source_kind: str
    trigger_id: uuid.UUID | None


class TriggerNotFound(LookupError):
    pass


class DuplicateTriggerName(ValidationError):
    def __init__(self, name: str):
        super().__init__(
            {"name": f"A trigger named {name!r} already exists in this app; choose another name."}
        )


class ForeignScript(ValidationError):
    def __init__(self, script_id: uuid.UUID):
        super().__init__(
            {
                "script_id": f"No script {script_id} in this app: a trigger runs only a script "
                "of its own app."
            }
        )


class ForeignSourceTrigger(ValidationError):
    def __init__(self, source_trigger_id: uuid.UUID):
        super().__init__(
            {
                "source_trigger_id": f"No trigger {source_trigger_id} in this app: a dead-letter "
                "trigger filters only on a trigger of its own app, or on any (None)."
            }
        )


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
        "max_attempts",
        "retry_base_delay_ms",
        "retry_max_delay_ms",
    }
)


class TriggerRepo(Protocol):
    def create(self, new: NewTrigger) -> TriggerRecord:
        """Store a trigger and its kind's details atomically.

        Raises ValidationError (naming the field and what is allowed) for an
        unknown kind, missing or mismatched details, an invalid collection
        pattern or ops, or out-of-range retry overrides; ForeignScript or
        ForeignSourceTrigger when the script, or the trigger a dead-letter
        filter names, is not of the same app; DuplicateTriggerName when the
        app already has a trigger of that name.
        """

    def get(self, trigger_id: uuid.UUID) -> TriggerRecord | None:
        """The trigger with its details, or None."""

    def update(self, trigger_id: uuid.UUID, **changes: object) -> TriggerRecord:
        """Change the fields named in UPDATABLE, validated as in create.

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

    def list_matching_dead_letter(
        self, app_id: uuid.UUID, dead_letter: DeadLetterSource
    ) -> list[TriggerRecord]:
        """Enabled dead_letter triggers of this app whose filters (None = any)
        accept the dead letter's source kind and trigger, by name."""


def validate_trigger(new: NewTrigger) -> NewTrigger:
    """Check a trigger as both implementations must; returns it with normalized ops."""
    if new.kind not in TriggerKind.values:
        raise ValidationError(
            {"kind": f"Unknown kind {new.kind!r}; allowed: {', '.join(TriggerKind.values)}."}
        )
    if not new.name or not new.name.strip():
        raise ValidationError({"name": "A trigger needs a name."})
    if len(new.name) > 200:
        raise ValidationError({"name": "At most 200 characters."})
    kv, dl = new.kv, new.dead_letter
    if new.kind == TriggerKind.KV:
        if kv is None:
            raise ValidationError({"kv": "A kv trigger needs a collection pattern and ops."})
        validate_collection_pattern(kv.collection)
        validate_ops(kv.ops)
        kv = KvSpec(kv.collection, tuple(kv.ops))
    elif kv is not None:
        raise ValidationError({"kv": f"Only kv triggers have KV details, not {new.kind!r}."})
    if new.kind == TriggerKind.DEAD_LETTER:
        dl = dl or DeadLetterSpec()
        allowed = [k.value for k in DEAD_LETTER_FILTER_KINDS]
        if dl.source_kind is not None and dl.source_kind not in allowed:
            raise ValidationError(
                {
                    "source_kind": f"Unknown source kind {dl.source_kind!r}; allowed: "
                    f"{', '.join(allowed)}, or empty for any."
                }
            )
    elif dl is not None:
        raise ValidationError(
            {
                "dead_letter": f"Only dead_letter triggers have dead-letter filters, not {new.kind!r}."
            }
        )
    if new.max_attempts is not None and not 1 <= new.max_attempts <= 100:
        raise ValidationError({"max_attempts": "Allowed: 1 to 100, or None for the default."})
    for name in ("retry_base_delay_ms", "retry_max_delay_ms"):
        value = getattr(new, name)
        if value is not None and not 1 <= value <= 86_400_000:
            raise ValidationError({name: "Allowed: 1 to 86400000 ms, or None for the default."})
    base, cap = new.retry_base_delay_ms, new.retry_max_delay_ms
    if base is not None and cap is not None and cap < base:
        raise ValidationError({"retry_max_delay_ms": "Must be at least retry_base_delay_ms."})
    return NewTrigger(**{**new.__dict__, "kv": kv, "dead_letter": dl})


def check_references(
    new: NewTrigger,
    script_app: Callable[[uuid.UUID], uuid.UUID | None] | None,
    get: Callable[[uuid.UUID], TriggerRecord | None],
) -> None:
    """The script, and the trigger a dead-letter filter names (if any), are of
    the trigger's own app. `script_app` gives a script's app (None: no such
    script; itself None: scripts are not checked), `get` a trigger."""
    if script_app is not None and script_app(new.script_id) != new.app_id:
        raise ForeignScript(new.script_id)
    source_id = new.dead_letter.source_trigger_id if new.dead_letter else None
    if source_id is None:
        return
    source = get(source_id)
    if source is None or source.app_id != new.app_id:
        raise ForeignSourceTrigger(source_id)


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
