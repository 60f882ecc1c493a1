"""TriggerRepo in memory, for fast tests of logic; held to the same contract."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace

from django.utils import timezone

from triggers.kinds import TriggerKind
from triggers.matching import collection_matches
from triggers.repository import (
    DeadLetterSource,
    DuplicateTriggerName,
    NewTrigger,
    TriggerNotFound,
    TriggerRecord,
    as_new,
    validate_trigger,
)


class MemoryTriggerRepo:
    def __init__(self) -> None:
        self._rows: dict[uuid.UUID, TriggerRecord] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._rows.clear()

    def create(self, new: NewTrigger) -> TriggerRecord:
        new = validate_trigger(new)
        now = timezone.now()
        with self._lock:
            self._check_name_free(new.app_id, new.name, exclude=None)
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
            new = validate_trigger(as_new(current, changes))
            self._check_name_free(new.app_id, new.name, exclude=trigger_id)
            record = replace(current, **new.__dict__, updated_at=timezone.now())
            self._rows[trigger_id] = record
        return record

    def delete(self, trigger_id: uuid.UUID) -> bool:
        with self._lock:
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

    def _check_name_free(self, app_id, name, exclude) -> None:
        for t in self._rows.values():
            if t.app_id == app_id and t.name == name and t.id != exclude:
                raise DuplicateTriggerName(name)
