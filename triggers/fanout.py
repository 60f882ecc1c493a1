"""Fan-out: turn one event into one outbox row per matching trigger.

Runs inside the event's own transaction (the caller's), so the event and its
rows commit or roll back together. A write made by a script carries its
row's depth + 1; past PICLOUD_MAX_TRIGGER_DEPTH the rows are not enqueued and
each stopped trigger is recorded as a dead letter instead (never dropped
silently, never an endless loop).
"""

from __future__ import annotations

import uuid
from typing import Any

from deadletters.pg_repository import PgDeadLetterRepo
from deadletters.repository import DeadLetterRecord, DeadLetterRepo, NewDeadLetter
from outbox.storage.kinds import SourceKind
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow, OutboxRepo
from picloud.config import TriggerConfig
from picloud.kv import KvEvent
from picloud.mail.addresses import Recipient
from picloud.mail.hooks import Received
from picloud.messaging.hooks import Published
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import TriggerRecord, TriggerRepo


class FanOut:
    def __init__(
        self,
        triggers: TriggerRepo,
        outbox: OutboxRepo,
        dead_letters: DeadLetterRepo,
        config: TriggerConfig | None = None,
    ) -> None:
        self.triggers, self.outbox, self.dead_letters = triggers, outbox, dead_letters
        self.config = config

    def kv(self, event: KvEvent, *, depth: int = 0, cause: uuid.UUID | None = None) -> int:
        """Enqueue the event for every matching trigger; returns the rows written."""
        matching = self.triggers.list_matching_kv(event.app_id, event.collection, event.op)
        if not matching:
            return 0
        config = self.config or TriggerConfig.current()
        payload = event.payload()
        if depth > config.max_trigger_depth:
            what = f"a write to {payload['collection']}/{payload['key']}"
            self._stop_cascade(SourceKind.KV, event.app_id, what, payload, matching, depth, cause)
            return 0
        self._enqueue(SourceKind.KV, event.app_id, matching, depth, lambda _t: payload)
        return len(matching)

    def pubsub(self, event: Published, *, depth: int = 0, cause: uuid.UUID | None = None) -> int:
        """Enqueue a publish for every subscribed trigger; returns the rows written."""
        matching = self.triggers.list_matching_pubsub(event.app_id, event.topic)
        if not matching:
            return 0
        payload = event.payload()

        def event_for(trigger: TriggerRecord) -> dict[str, Any]:
            return {**payload, "trigger": trigger.name, "trigger_id": str(trigger.id)}

        config = self.config or TriggerConfig.current()
        if depth > config.max_trigger_depth:
            what = f"a publish to topic {event.topic}"
            for trigger in matching:
                self._stop_cascade(
                    SourceKind.PUBSUB,
                    event.app_id,
                    what,
                    event_for(trigger),
                    [trigger],
                    depth,
                    cause,
                )
            return 0
        self._enqueue(SourceKind.PUBSUB, event.app_id, matching, depth, event_for)
        return len(matching)

    def email(self, event: Received) -> list[dict[str, str]]:
        """Enqueue a stored message once for every enabled email trigger
        matching one of its recipients (with the recipients it matched);
        returns what fired. Mail comes from outside: depth 0, never stopped."""
        matched: dict[uuid.UUID, tuple[TriggerRecord, list[Recipient]]] = {}
        by_local_part: dict[str, list[TriggerRecord]] = {}
        for recipient in event.recipients:
            local = recipient.local_part
            if local not in by_local_part:
                by_local_part[local] = self.triggers.list_matching_email(event.app_id, local)
            for trigger in by_local_part[local]:
                matched.setdefault(trigger.id, (trigger, []))[1].append(recipient)
        fired = []
        for trigger, recipients in sorted(matched.values(), key=lambda m: m[0].name):
            payload = {
                **event.payload(recipients),
                "trigger": trigger.name,
                "trigger_id": str(trigger.id),
            }
            row = self._insert(SourceKind.EMAIL, event.app_id, trigger, 0, payload)
            fired.append(
                {"trigger_id": str(trigger.id), "name": trigger.name, "outbox_id": str(row.id)}
            )
        return fired

    def _enqueue(self, kind, app_id, matching, depth, payload_for) -> None:
        for trigger in matching:
            self._insert(kind, app_id, trigger, depth, payload_for(trigger))

    def _insert(self, kind, app_id, trigger: TriggerRecord, depth: int, payload):
        return self.outbox.insert(
            NewOutboxRow(
                app_id=app_id,
                source_kind=kind,
                script_id=trigger.script_id,
                run_as_principal=trigger.registered_by_principal,
                payload=payload,
                trigger_id=trigger.id,
                depth=depth,
            )
        )

    def _stop_cascade(
        self,
        kind: str,
        app_id: uuid.UUID,
        what: str,
        payload: dict[str, Any],
        matching: list[TriggerRecord],
        depth: int,
        cause: uuid.UUID | None,
    ) -> None:
        # One dead letter per stopped trigger, holding what its row would have
        # held, so replaying each runs that trigger's script as the cascade
        # would have. No row was ever written (outbox_id stays NULL); `cause`
        # is the row whose script made the write. The repository records a
        # stopped event (cause, trigger, collection, key) once: a script
        # writing past the limit leaves one letter per trigger and key it
        # wrote, holding that key's first stopped write; running the causing
        # row again adds none.
        config = self.config or TriggerConfig.current()
        for trigger in matching:
            error = (
                f"depth limit stopped a cascade: {what} at depth {depth} exceeds "
                f"PICLOUD_MAX_TRIGGER_DEPTH={config.max_trigger_depth}; "
                f"not enqueued for trigger {trigger.name!r}"
            )
            self.dead_letter(
                NewDeadLetter(
                    app_id=app_id,
                    source_kind=kind,
                    script_id=trigger.script_id,
                    trigger_id=trigger.id,
                    run_as_principal=trigger.registered_by_principal,
                    outbox_id=None,
                    cause_outbox_id=cause,
                    payload=payload,
                    last_error=error,
                    errors=(error,),
                    attempts=0,
                    depth=depth,
                )
            )

    def dead_letter(self, new: NewDeadLetter) -> DeadLetterRecord | None:
        """Record a dead letter and fan it out to the app's matching
        dead_letter triggers, in the caller's transaction; None (and no
        fan-out) when the repository already holds it (see
        DeadLetterRepo.insert).

        Dead letters about dead-letter handlers are never written (the
        dispatcher resolves the original as handler_failed instead), so a
        dead letter can never trigger a handler about itself.
        """
        record = self.dead_letters.insert(new)
        if record is None:
            return None
        for trigger in self.triggers.list_matching_dead_letter(record.app_id, record):
            self.outbox.insert(
                NewOutboxRow(
                    app_id=record.app_id,
                    source_kind=SourceKind.DEAD_LETTER,
                    script_id=trigger.script_id,
                    run_as_principal=trigger.registered_by_principal,
                    payload=dead_letter_event(record),
                    trigger_id=trigger.id,
                    depth=record.depth + 1,
                )
            )
        return record


def dead_letter_event(record: DeadLetterRecord) -> dict[str, Any]:
    """What a dead_letter handler receives."""
    return {
        "dead_letter_id": str(record.id),
        "app_id": str(record.app_id),
        "source_kind": record.source_kind,
        "trigger_id": _str_or_none(record.trigger_id),
        "script_id": _str_or_none(record.script_id),
        "outbox_id": _str_or_none(record.outbox_id),
        "cause_outbox_id": _str_or_none(record.cause_outbox_id),
        "payload": record.payload,
        "last_error": record.last_error,
        "errors": list(record.errors),
        "attempts": record.attempts,
        "depth": record.depth,
    }


def _str_or_none(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def default_fan_out() -> FanOut:
    return FanOut(PgTriggerRepo(), PgOutboxRepo(), PgDeadLetterRepo())


def fan_out_kv(event: KvEvent, *, depth: int = 0, cause: uuid.UUID | None = None) -> int:
    return default_fan_out().kv(event, depth=depth, cause=cause)


def fan_out_pubsub(event: Published, *, depth: int = 0, cause: uuid.UUID | None = None) -> int:
    return default_fan_out().pubsub(event, depth=depth, cause=cause)


def fan_out_email(event: Received) -> list[dict[str, str]]:
    return default_fan_out().email(event)


def email_wanted(app_id: uuid.UUID, local_part: str) -> bool:
    """Whether mail to this local part of the app fires an enabled trigger."""
    return bool(PgTriggerRepo().list_matching_email(app_id, local_part))
