"""DeadLetterRepo and AbandonedRepo on PostgreSQL (deadletters/sql/queries.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from deadletters.repository import (
    AbandonedRecord,
    AlreadyResolved,
    DeadLetterFilter,
    DeadLetterNotFound,
    DeadLetterRecord,
    NewAbandonedExecution,
    NewDeadLetter,
    ProgressCallback,
    cap_summary,
    check_new_dead_letter,
    check_page,
    check_resolution,
)
from picloud.db.batches import check_batch_size, run_batches
from picloud.db.sqlexec import fetch_all, fetch_one, from_json, to_json
from picloud.db.sqlfiles import load_queries

Q = load_queries("deadletters")


def _dead_letter(row: dict[str, Any]) -> DeadLetterRecord:
    return DeadLetterRecord(
        **{**row, "payload": from_json(row["payload"]), "errors": tuple(from_json(row["errors"]))}
    )


def _app_ids(app_id: uuid.UUID | None, app_ids: Collection[uuid.UUID] | None):
    if app_id is not None and app_ids is not None:
        raise TypeError("pass app_id or app_ids, not both")
    if app_id is not None:
        return [app_id]
    return None if app_ids is None else list(app_ids)


class PgDeadLetterRepo:
    def insert(self, new: NewDeadLetter) -> DeadLetterRecord | None:
        check_new_dead_letter(new)
        params = {
            **new.__dict__,
            "payload": to_json(new.payload),
            "errors": to_json(list(new.errors)),
        }
        row = fetch_one(Q["insert_dead_letter"], params)
        return _dead_letter(row) if row else None

    def get(self, dead_letter_id: uuid.UUID) -> DeadLetterRecord | None:
        row = fetch_one(Q["get_dead_letter"], {"id": dead_letter_id})
        return _dead_letter(row) if row else None

    def list(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[DeadLetterRecord]:
        check_page(limit, offset)
        filters = filters or DeadLetterFilter()
        params = {
            **filters.__dict__,
            "app_ids": None if filters.app_ids is None else list(filters.app_ids),
            "limit": limit,
            "offset": offset,
        }
        return [_dead_letter(r) for r in fetch_all(Q["list_dead_letters"], params)]

    def unresolved_count(
        self, app_id: uuid.UUID | None = None, *, app_ids: Collection[uuid.UUID] | None = None
    ) -> int:
        row = fetch_one(Q["unresolved_count"], {"app_ids": _app_ids(app_id, app_ids)})
        return row["n"]  # type: ignore[index]

    def resolve(
        self, dead_letter_id: uuid.UUID, resolution: str, by: uuid.UUID | None, note: str = ""
    ) -> DeadLetterRecord:
        check_resolution(resolution)
        params = {"id": dead_letter_id, "resolution": resolution, "by": by, "note": note}
        row = fetch_one(Q["resolve"], params)
        if row is not None:
            return _dead_letter(row)
        current = self.get(dead_letter_id)
        if current is None:
            raise DeadLetterNotFound(dead_letter_id)
        raise AlreadyResolved(current)

    def gc(
        self,
        older_than: datetime,
        batch_size: int,
        *,
        include_unresolved: bool = False,
        on_batch: ProgressCallback | None = None,
    ) -> int:
        check_batch_size(batch_size)
        params = {
            "older_than": older_than,
            "batch_size": batch_size,
            "include_unresolved": include_unresolved,
        }
        return run_batches(Q["gc_dead_letters_batch"], params, on_batch)

    def gc_count(self, older_than: datetime, *, include_unresolved: bool = False) -> int:
        params = {"older_than": older_than, "include_unresolved": include_unresolved}
        return fetch_one(Q["gc_dead_letters_count"], params)["n"]  # type: ignore[index]


class PgAbandonedRepo:
    def insert(self, new: NewAbandonedExecution) -> AbandonedRecord:
        params = {**new.__dict__, "result_summary": cap_summary(new.result_summary)}
        return AbandonedRecord(**fetch_one(Q["insert_abandoned"], params))  # type: ignore[arg-type]

    def list(self, app_id: uuid.UUID | None = None, *, limit: int = 50) -> list[AbandonedRecord]:
        check_page(limit, 0)
        rows = fetch_all(Q["list_abandoned"], {"app_id": app_id, "limit": limit})
        return [AbandonedRecord(**r) for r in rows]

    def gc(
        self, older_than: datetime, batch_size: int, *, on_batch: ProgressCallback | None = None
    ) -> int:
        check_batch_size(batch_size)
        params = {"older_than": older_than, "batch_size": batch_size}
        return run_batches(Q["gc_abandoned_batch"], params, on_batch)

    def gc_count(self, older_than: datetime) -> int:
        return fetch_one(Q["gc_abandoned_count"], {"older_than": older_than})["n"]  # type: ignore[index]
