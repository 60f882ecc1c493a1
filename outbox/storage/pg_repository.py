"""OutboxRepo on PostgreSQL: named queries from outbox/sql/queries.sql."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from psycopg.types.datetime import TimestamptzLoader

from outbox.storage.delivery_log import Acked, ack_params
from outbox.storage.repository import (
    CLAIM_QUANTUM,
    MAX_ERRORS_KEPT,
    NewOutboxRow,
    OutboxRow,
    Reply,
    check_claim_args,
    check_new_row,
    payload_size,
)
from picloud.config import ConcurrencyConfig
from picloud.db.batches import check_batch_size
from picloud.db.sqlexec import execute, fetch_all, fetch_one, from_json, to_json
from picloud.db.sqlfiles import load_queries
from picloud.db.storable import bounded_error

Q = load_queries("outbox")


# The record's fields. Queries that return every column (INSERT ... RETURNING
# *, SELECT *) may meet columns a later release adds while this one still
# runs (a rolling upgrade): they are left out, not an error.
_FIELDS = frozenset(f.name for f in dataclasses.fields(OutboxRow)) - {"payload_bytes"}


def _record(row: dict[str, Any]) -> OutboxRow:
    raw = row["payload"]
    return OutboxRow(
        **{
            **{k: v for k, v in row.items() if k in _FIELDS},
            "payload": from_json(raw),
            "errors": tuple(from_json(row["errors"])),
            "payload_bytes": len(raw.encode()) if isinstance(raw, str) else payload_size(raw),
        }
    )


def _claimed(values: tuple) -> OutboxRow:
    raw_payload, raw_errors = values[6], values[12]
    payload_bytes = len(raw_payload.encode())
    errors = () if raw_errors == "[]" else tuple(from_json(raw_errors))
    return OutboxRow.from_values(
        (*values[:6], from_json(raw_payload), *values[7:12], errors, values[13], payload_bytes)
    )


class PgOutboxRepo:
    def insert(self, row: NewOutboxRow) -> OutboxRow:
        check_new_row(row)
        params = {**row.__dict__, "payload": to_json(row.payload)}
        return _record(fetch_one(Q["insert"], params))  # type: ignore[arg-type]

    def get(self, row_id: uuid.UUID) -> OutboxRow | None:
        row = fetch_one(Q["get"], {"id": row_id})
        return _record(row) if row else None

    def claim_due(
        self,
        limit: int,
        lease: float,
        *,
        ack: Sequence[uuid.UUID] = (),
        log: Sequence[Acked] = (),
        after_app: uuid.UUID | None = None,
    ) -> list[OutboxRow]:
        check_claim_args(limit, lease)
        # The hot path of the dispatcher: ids go as one array literal (not a
        # list psycopg adapts item by item), timestamps are parsed by
        # psycopg's C loader (Django's is Python, a regex per value), and
        # records are built from the tuples (RETURNING is in field order).
        params = {
            "limit": limit,
            "lease": lease,
            "ack": "{" + ",".join(map(str, ack)) + "}",
            "after_app": after_app,
            "default_cap": ConcurrencyConfig.current().app_max_concurrency,
            "quantum": CLAIM_QUANTUM,
        }
        query = Q["claim_due"]
        if log:
            params.update(ack_params(ack, log))
            query = Q["claim_due_logged"]
        with connection.cursor() as cursor:
            cursor.cursor.adapters.register_loader("timestamptz", TimestamptzLoader)
            cursor.execute(query, params)
            return [_claimed(values) for values in cursor.fetchall()]

    def delete(self, row_ids: Sequence[uuid.UUID], *, log: Sequence[Acked] = ()) -> int:
        if log:
            return fetch_one(Q["delete_logged"], ack_params(row_ids, log))["deleted"]  # type: ignore[index]
        if not row_ids:
            return 0
        return execute(Q["delete"], {"ids": list(row_ids)})

    def reschedule(
        self, row_id: uuid.UUID, due_at: datetime, error: str, *, attempt: int | None = None
    ) -> bool:
        params = {
            "id": row_id,
            "attempt": attempt,
            "due_at": due_at,
            "error": bounded_error(error),
            "max_errors": MAX_ERRORS_KEPT,
        }
        return fetch_one(Q["reschedule"], params)["rescheduled"]  # type: ignore[index]

    def release(self, row_ids: Sequence[uuid.UUID], *, delay: float = 0.0) -> int:
        if not row_ids:
            return 0
        return execute(Q["release"], {"ids": list(row_ids), "delay": delay})

    def run_now(self, row_ids: Sequence[uuid.UUID]) -> int:
        if not row_ids:
            return 0
        return execute(Q["run_now"], {"ids": list(row_ids)})

    def next_due_at(self) -> datetime | None:
        return fetch_one(Q["next_due_at"])["due_at"]  # type: ignore[index]

    def stats(self) -> tuple[int, datetime | None]:
        row = fetch_one(Q["stats"])
        return row["due"], row["oldest_due_at"]  # type: ignore[index]

    def load(self, app_id: uuid.UUID, script_id: uuid.UUID | None = None) -> tuple[int, int]:
        row = fetch_one(Q["load"], {"app_id": app_id, "script_id": script_id})
        return row["in_flight"], row["backlog"]  # type: ignore[index]


class PgCounterStore:
    """Dispatcher counters summed in PostgreSQL across processes and hosts."""

    def add(self, increments: dict[str, int]) -> None:
        names = [n for n, v in increments.items() if v]
        if names:
            values = [increments[n] for n in names]
            execute(Q["add_counters"], {"names": names, "values": values})

    def read(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in fetch_all(Q["read_counters"])}


class PgReplyInbox:
    """ReplyInbox on the reply_inboxes table; deliveries notify picloud_reply."""

    def open(self, inbox_id: uuid.UUID, app_id: uuid.UUID) -> None:
        execute(Q["inbox_open"], {"id": inbox_id, "app_id": app_id})

    def deliver(self, inbox_id: uuid.UUID, reply: Reply) -> bool:
        params = {"id": inbox_id, "status": reply.status, "body": to_json(reply.body)}
        return bool(fetch_all(Q["inbox_deliver"], params))

    def collect(self, inbox_id: uuid.UUID) -> Reply | None:
        return _reply(fetch_one(Q["inbox_collect"], {"id": inbox_id}))

    def close(self, inbox_id: uuid.UUID) -> Reply | None:
        return _reply(fetch_one(Q["inbox_close"], {"id": inbox_id}))

    def gc(self, older_than: datetime, batch_size: int) -> int:
        check_batch_size(batch_size)
        total = 0
        while n := execute(Q["inbox_gc"], {"older_than": older_than, "batch_size": batch_size}):
            total += n
        return total


def _reply(row: dict[str, Any] | None) -> Reply | None:
    if row is None or row["status_code"] is None:
        return None
    return Reply(status=row["status_code"], body=from_json(row["body"]))
