"""TriggerRepo on PostgreSQL: named queries from triggers/sql/queries.sql."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from picloud.db.sqlexec import execute, fetch_all, fetch_one, from_json, to_json
from picloud.db.sqlfiles import load_queries
from triggers import rules
from triggers.kinds import TriggerKind
from triggers.repository import (
    CronSpec,
    DeadLetterSource,
    DeadLetterSpec,
    EmailSpec,
    Facts,
    KvSpec,
    NewTrigger,
    PubsubSpec,
    QueueSpec,
    TriggerInUse,
    TriggerNotFound,
    TriggerRecord,
    as_new,
    validate_trigger,
)
from triggers.rules import DuplicateTriggerName, ForeignScript, ForeignSourceTrigger, Ref

Q = load_queries("triggers")
NAME_CONSTRAINT = "triggers_app_name_key"
SCRIPT_CONSTRAINT = "triggers_script_same_app_fkey"
SOURCE_CONSTRAINT = "dead_letter_trigger_details_source_same_app_fkey"
QUEUE_CONSTRAINT = "queue_trigger_details_queue_same_app_fkey"
QUEUE_CONSUMER_CONSTRAINT = "queue_trigger_details_queue_key"


def _record(row: dict[str, Any]) -> TriggerRecord:
    kv = KvSpec(row["collection"], tuple(row["ops"])) if row["collection"] is not None else None
    dl = (
        DeadLetterSpec(row["dl_source_kind"], row["dl_source_trigger_id"])
        if row["has_dead_letter_details"]
        else None
    )
    cron = (
        CronSpec(
            schedule=row["cron_schedule"],
            timezone=row["cron_timezone"],
            catchup=row["cron_catchup"],
            catchup_window_s=row["cron_catchup_window_s"],
            overlap=row["cron_overlap"],
            paused=row["cron_paused"],
            payload=from_json(row["cron_payload"]),
        )
        # The matching hot paths select kv or dead-letter rows only, without these.
        if row.get("cron_schedule") is not None
        else None
    )
    pubsub = PubsubSpec(row["pubsub_topic"]) if row.get("pubsub_topic") is not None else None
    email = EmailSpec(row["email_local_part"]) if row.get("email_local_part") else None
    queue = (
        QueueSpec(
            queue_id=row["queue_id"],
            batch_size=row["queue_batch_size"],
            max_batch_wait_ms=row["queue_max_batch_wait_ms"],
            max_concurrency=row["queue_max_concurrency"],
            max_receives=row["queue_max_receives"],
        )
        if row.get("queue_id") is not None
        else None
    )
    return TriggerRecord(
        id=row["id"],
        app_id=row["app_id"],
        kind=row["kind"],
        script_id=row["script_id"],
        name=row["name"],
        enabled=row["enabled"],
        registered_by_principal=row["registered_by_principal"],
        kv=kv,
        dead_letter=dl,
        max_attempts=row["max_attempts"],
        retry_base_delay_ms=row["retry_base_delay_ms"],
        retry_max_delay_ms=row["retry_max_delay_ms"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        cron=cron,
        pubsub=pubsub,
        queue=queue,
        email=email,
    )


class PgTriggerRepo:
    def create(self, new: NewTrigger) -> TriggerRecord:
        facts = _facts(new, None)
        new = validate_trigger(new, facts)
        trigger_id = uuid.uuid4()
        params = {**new.__dict__, "id": trigger_id}
        with _translating_integrity_errors(new, facts), transaction.atomic():
            execute(Q["insert_trigger"], params)
            self._write_details(trigger_id, new)
        return self.get(trigger_id)  # type: ignore[return-value]

    def get(self, trigger_id: uuid.UUID) -> TriggerRecord | None:
        row = fetch_one(Q["get_trigger"], {"id": trigger_id})
        return _record(row) if row else None

    def update(self, trigger_id: uuid.UUID, **changes: object) -> TriggerRecord:
        current = self.get(trigger_id)
        if current is None:
            raise TriggerNotFound(trigger_id)
        new = as_new(current, changes)
        facts = _facts(new, trigger_id)
        new = validate_trigger(new, facts, frozenset(changes))
        with _translating_integrity_errors(new, facts), transaction.atomic():
            execute(Q["update_trigger"], {**new.__dict__, "id": trigger_id})
            self._write_details(trigger_id, new)
        return self.get(trigger_id)  # type: ignore[return-value]

    def delete(self, trigger_id: uuid.UUID) -> bool:
        filtering = fetch_all(Q["filters_naming_trigger"], {"id": trigger_id})
        if filtering:
            raise TriggerInUse([row["name"] for row in filtering])
        return execute(Q["delete_trigger"], {"id": trigger_id}) > 0

    def list_for_app(self, app_id: uuid.UUID, *, kind: str | None = None) -> list[TriggerRecord]:
        return [_record(r) for r in fetch_all(Q["list_for_app"], {"app_id": app_id, "kind": kind})]

    def list_matching_kv(self, app_id: uuid.UUID, collection: str, op: str) -> list[TriggerRecord]:
        rows = fetch_all(
            Q["list_matching_kv"], {"app_id": app_id, "collection": collection, "op": op}
        )
        return [_record(r) for r in rows]

    def list_matching_pubsub(self, app_id: uuid.UUID, topic: str) -> list[TriggerRecord]:
        rows = fetch_all(Q["list_matching_pubsub"], {"app_id": app_id, "topic": topic})
        return [_record(r) for r in rows]

    def list_matching_email(self, app_id: uuid.UUID, local_part: str) -> list[TriggerRecord]:
        rows = fetch_all(Q["list_matching_email"], {"app_id": app_id, "local_part": local_part})
        return [_record(r) for r in rows]

    def list_matching_dead_letter(
        self, app_id: uuid.UUID, dead_letter: DeadLetterSource
    ) -> list[TriggerRecord]:
        rows = fetch_all(
            Q["list_matching_dead_letter"],
            {
                "app_id": app_id,
                "source_kind": dead_letter.source_kind,
                "trigger_id": dead_letter.trigger_id,
            },
        )
        return [_record(r) for r in rows]

    @staticmethod
    def _write_details(trigger_id: uuid.UUID, new: NewTrigger) -> None:
        if new.kind == TriggerKind.KV and new.kv is not None:
            execute(
                Q["upsert_kv_details"],
                {
                    "trigger_id": trigger_id,
                    "collection": new.kv.collection,
                    "ops": list(new.kv.ops),
                },
            )
        if new.kind == TriggerKind.CRON and new.cron is not None:
            execute(
                Q["upsert_cron_details"],
                {
                    "trigger_id": trigger_id,
                    **{f: getattr(new.cron, f) for f in CronSpec.__dataclass_fields__},
                    "payload": to_json(new.cron.payload),
                },
            )
        if new.kind == TriggerKind.PUBSUB and new.pubsub is not None:
            execute(
                Q["upsert_pubsub_details"], {"trigger_id": trigger_id, "topic": new.pubsub.topic}
            )
        if new.kind == TriggerKind.EMAIL and new.email is not None:
            execute(
                Q["upsert_email_details"],
                {"trigger_id": trigger_id, "local_part": new.email.local_part},
            )
        if new.kind == TriggerKind.QUEUE and new.queue is not None:
            execute(
                Q["upsert_queue_details"],
                {"trigger_id": trigger_id, "app_id": new.app_id, **new.queue.__dict__},
            )
        if new.kind == TriggerKind.DEAD_LETTER and new.dead_letter is not None:
            execute(
                Q["upsert_dead_letter_details"],
                {
                    "trigger_id": trigger_id,
                    "app_id": new.app_id,
                    "source_kind": new.dead_letter.source_kind,
                    "source_trigger_id": new.dead_letter.source_trigger_id,
                },
            )


def _facts(new: NewTrigger, trigger_id: uuid.UUID | None) -> Facts:
    """What the rules read of other rows, in one round trip."""
    source_id = new.dead_letter.source_trigger_id if new.dead_letter else None
    row = fetch_one(
        Q["trigger_facts"],
        {
            "app_id": new.app_id,
            "id": trigger_id,
            "name": new.name,
            "script_id": new.script_id,
            "source_trigger_id": source_id,
            "queue_id": new.queue.queue_id if new.queue else None,
        },
    )
    assert row is not None  # the query always returns its one row
    script = source = None
    if row["script_app_id"] is not None:
        script = Ref(row["script_app_id"], row["script_name"])
    if row["source_app_id"] is not None:
        source = Ref(row["source_app_id"], row["source_label"], row["source_kind"])
    queue = Ref(row["queue_app_id"], row["queue_name"]) if row["queue_app_id"] else None
    return Facts(
        app_slug=row["app_slug"] or str(new.app_id),
        name_taken=row["name_taken"],
        script=script,
        source=source,
        queue=queue,
        queue_consumer=row["queue_consumer"],
    )


class _translating_integrity_errors:
    """Turn the violations a check before the write can race with into the
    repository's errors: the unique (app_id, name) into DuplicateTriggerName,
    and a script or source trigger deleted meanwhile (both keys are checked at
    commit) into ForeignScript or ForeignSourceTrigger."""

    def __init__(self, new: NewTrigger, facts: Facts):
        self.new, self.facts = new, facts

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is IntegrityError and NAME_CONSTRAINT in str(exc):
            raise DuplicateTriggerName(self.new.name) from exc
        new, slug = self.new, self.facts.app_slug
        if exc_type is IntegrityError and SCRIPT_CONSTRAINT in str(exc):
            raise ForeignScript(new.script_id, None, slug) from exc
        if exc_type is IntegrityError and SOURCE_CONSTRAINT in str(exc) and new.dead_letter:
            raise ForeignSourceTrigger(new.dead_letter.source_trigger_id, None, slug) from exc
        if exc_type is IntegrityError and new.queue is not None:
            # A queue deleted, or taken by another trigger, since the check.
            consumer = "another trigger" if QUEUE_CONSUMER_CONSTRAINT in str(exc) else None
            if consumer or QUEUE_CONSTRAINT in str(exc):
                queue = self.facts.queue if consumer else None
                try:
                    rules.check_queue(new.queue, queue, consumer, new.app_id, slug)
                except ValidationError as error:
                    raise error from exc
        return False
