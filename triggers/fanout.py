"""Fan-out: turn one event into one outbox row per matching trigger.

Runs inside the event's own transaction (the caller's), so the event and its
rows commit or roll back together. A write made by a script carries its
row's depth + 1; past PICLOUD_MAX_TRIGGER_DEPTH the rows are not enqueued and
the stopped cascade is recorded as one dead letter instead (never dropped
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
            self._stop_cascade(event.app_id, payload, matching, depth, cause, config)
            return 0
        for trigger in matching:
            self.outbox.insert(
                NewOutboxRow(
                    app_id=event.app_id,
                    source_kind=SourceKind.KV,
                    script_id=trigger.script_id,
                    run_as_principal=trigger.registered_by_principal,
                    payload=payload,
                    trigger_id=trigger.id,
                    depth=depth,
                )
            )
        return len(matching)

    def _stop_cascade(
        self,
        app_id: uuid.UUID,
        payload: dict[str, Any],
        matching: list[TriggerRecord],
        depth: int,
        cause: uuid.UUID | None,
        config: TriggerConfig,
    ) -> None:
        # One dead letter per stopped cascade: a script that writes in a loop
        # past the limit records it once for the row it is running (`cause`).
        if cause is not None and self.dead_letters.exists_for_outbox(cause):
            return
        names = ", ".join(t.name for t in matching)
        error = (
            f"depth limit stopped a cascade: a write to {payload['collection']}/{payload['key']} "
            f"at depth {depth} exceeds PICLOUD_MAX_TRIGGER_DEPTH={config.max_trigger_depth}; "
            f"not enqueued for {len(matching)} trigger(s): {names}"
        )
        first = matching[0]
        self.dead_letter(
            NewDeadLetter(
                app_id=app_id,
                source_kind=SourceKind.KV,
                script_id=first.script_id,
                trigger_id=first.id,
                run_as_principal=first.registered_by_principal,
                outbox_id=cause,
                payload={**payload, "stopped_trigger_ids": [str(t.id) for t in matching]},
                last_error=error,
                errors=(error,),
                attempts=0,
                depth=depth,
            )
        )

    def dead_letter(self, new: NewDeadLetter) -> DeadLetterRecord:
        """Record a dead letter and fan it out to the app's matching
        dead_letter triggers, in the caller's transaction.

        Dead letters about dead-letter handlers are never written (the
        dispatcher resolves the original as handler_failed instead), so a
        dead letter can never trigger a handler about itself.
        """
        record = self.dead_letters.insert(new)
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
        "trigger_id": str(record.trigger_id) if record.trigger_id else None,
        "script_id": str(record.script_id) if record.script_id else None,
        "outbox_id": str(record.outbox_id) if record.outbox_id else None,
        "payload": record.payload,
        "last_error": record.last_error,
        "errors": list(record.errors),
        "attempts": record.attempts,
        "depth": record.depth,
    }


def default_fan_out() -> FanOut:
    return FanOut(PgTriggerRepo(), PgOutboxRepo(), PgDeadLetterRepo())


def fan_out_kv(event: KvEvent, *, depth: int = 0, cause: uuid.UUID | None = None) -> int:
    return default_fan_out().kv(event, depth=depth, cause=cause)
