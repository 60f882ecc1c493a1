"""TriggerRepo in memory, for fast tests of logic; held to the same contract."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import replace

from django.utils import timezone

from triggers.kinds import TriggerKind
from triggers.matching import collection_matches
from triggers.repository import (
    DeadLetterSource,
    Facts,
    NewTrigger,
    TriggerInUse,
    TriggerNotFound,
    TriggerRecord,
    as_new,
    validate_trigger,
)
from triggers.rules import Ref


class MemoryTriggerRepo:
    def __init__(
        self,
        script_apps: Mapping[uuid.UUID, uuid.UUID] | None = None,
        queue_apps: Mapping[uuid.UUID, uuid.UUID] | None = None,
    ) -> None:
        """`script_apps`: the app of each script triggers may run (scripts live
        outside this repository). Given, a script not in it or of another app
        is refused, as in PostgreSQL; the contract suite gives it. None: tests
        of logic that need no scripts table take every script as the
        trigger's app's. Apps are named by their id (there are no slugs here)."""
        self._script_apps = None if script_apps is None else dict(script_apps)
        # The same for the queues queue triggers consume.
        self._queue_apps = None if queue_apps is None else dict(queue_apps)
        self._rows: dict[uuid.UUID, TriggerRecord] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._rows.clear()

    def create(self, new: NewTrigger) -> TriggerRecord:
        now = timezone.now()
        with self._lock:
            new = validate_trigger(new, self._facts(new, None))
            record = TriggerRecord(id=uuid.uuid4(), **new.__dict__, created_at=now, updated_at=now)
            self._rows[record.id] = record
        return record

    def get(self, trigger_id: uuid.UUID) -> TriggerRecord | None:
        return self._rows.get(trigger_id)

    def update(self, trigger_id: uuid.UUID, **changes: object) -> TriggerRecord:
        with self._lock:
            current = self._rows.get(trigger_id)
            if current is None:
                raise TriggerNotFound(trigger_id)
            new = as_new(current, changes)
            new = validate_trigger(new, self._facts(new, trigger_id), frozenset(changes))
            record = replace(current, **new.__dict__, updated_at=timezone.now())
            self._rows[trigger_id] = record
        return record

    def delete(self, trigger_id: uuid.UUID) -> bool:
        with self._lock:
            filtering = sorted(
                t.name
                for t in self._rows.values()
                if t.dead_letter is not None
                and t.dead_letter.source_trigger_id == trigger_id
                and t.id != trigger_id
            )
            if filtering:
                raise TriggerInUse(filtering)
            return self._rows.pop(trigger_id, None) is not None

    def list_for_app(self, app_id: uuid.UUID, *, kind: str | None = None) -> list[TriggerRecord]:
        return self._sorted(
            t for t in self._rows.values() if t.app_id == app_id and kind in (None, t.kind)
        )

    def list_matching_kv(self, app_id: uuid.UUID, collection: str, op: str) -> list[TriggerRecord]:
        return self._sorted(
            t
            for t in self._rows.values()
            if t.app_id == app_id
            and t.kind == TriggerKind.KV
            and t.enabled
            and t.kv is not None
            and op in t.kv.ops
            and collection_matches(t.kv.collection, collection)
        )

    def list_matching_pubsub(self, app_id: uuid.UUID, topic: str) -> list[TriggerRecord]:
        return self._sorted(
            t
            for t in self._rows.values()
            if t.app_id == app_id
            and t.kind == TriggerKind.PUBSUB
            and t.enabled
            and t.pubsub is not None
            and collection_matches(t.pubsub.topic, topic)
        )

    def list_matching_email(self, app_id: uuid.UUID, local_part: str) -> list[TriggerRecord]:
        return self._sorted(
            t
            for t in self._rows.values()
            if t.app_id == app_id
            and t.kind == TriggerKind.EMAIL
            and t.enabled
            and t.email is not None
            and collection_matches(t.email.local_part, local_part)
        )

    def list_matching_dead_letter(
        self, app_id: uuid.UUID, dead_letter: DeadLetterSource
    ) -> list[TriggerRecord]:
        def accepts(t: TriggerRecord) -> bool:
            f = t.dead_letter
            return f is not None and (
                f.source_kind in (None, dead_letter.source_kind)
                and f.source_trigger_id in (None, dead_letter.trigger_id)
            )

        return self._sorted(
            t
            for t in self._rows.values()
            if t.app_id == app_id and t.kind == TriggerKind.DEAD_LETTER and t.enabled and accepts(t)
        )

    @staticmethod
    def _sorted(records) -> list[TriggerRecord]:
        return sorted(records, key=lambda t: (t.name, str(t.id)))

    def _facts(self, new: NewTrigger, trigger_id: uuid.UUID | None) -> Facts:
        """What PgTriggerRepo's trigger_facts query reads, from the rows here."""
        if self._script_apps is None:
            script: Ref | None = Ref(new.app_id, str(new.script_id))
        else:
            script_app = self._script_apps.get(new.script_id)
            script = Ref(script_app, str(new.script_id)) if script_app else None
        source_id = new.dead_letter.source_trigger_id if new.dead_letter else None
        source = self._rows.get(source_id) if source_id else None
        queue = consumer = None
        if new.queue is not None:
            queue_id = new.queue.queue_id
            if self._queue_apps is None:
                queue = Ref(new.app_id, str(queue_id))
            elif queue_id in self._queue_apps:
                queue = Ref(self._queue_apps[queue_id], str(queue_id))
            consumer = next(
                (
                    t.name
                    for t in self._rows.values()
                    if t.queue is not None and t.queue.queue_id == queue_id and t.id != trigger_id
                ),
                None,
            )
        return Facts(
            app_slug=str(new.app_id),
            name_taken=any(
                t.app_id == new.app_id and t.name == new.name and t.id != trigger_id
                for t in self._rows.values()
            ),
            script=script,
            source=source and Ref(source.app_id, f"{source.app_id}/{source.name}", source.kind),
            queue=queue,
            queue_consumer=consumer,
        )
