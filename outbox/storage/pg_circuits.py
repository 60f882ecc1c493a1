"""CircuitRepo on PostgreSQL: script_circuits, through outbox/sql/queries.sql."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from outbox.storage.circuits import OPEN, PROBING, CircuitState, ScriptOutcomes
from picloud.config import CircuitConfig
from picloud.db.sqlexec import fetch_all, fetch_one
from picloud.db.sqlfiles import load_queries
from picloud.db.storable import bounded_error

Q = load_queries("outbox")


class PgCircuitRepo:
    def record(self, outcomes: Sequence[ScriptOutcomes], config: CircuitConfig) -> None:
        if not outcomes:
            return
        # One order for every process: each locks the circuits it records in
        # this order, so two recording the same scripts cannot deadlock.
        outcomes = sorted(outcomes, key=lambda o: o.script_id)
        fetch_all(
            Q["record_circuits"],
            {
                "scripts": [o.script_id for o in outcomes],
                "apps": [o.app_id for o in outcomes],
                "succeeded": [o.succeeded for o in outcomes],
                "failures": [o.failures for o in outcomes],
                "errors": [bounded_error(o.last_error) if o.last_error else None for o in outcomes],
                "threshold": config.failure_threshold,
                "base_ms": config.cooldown_ms,
                "max_ms": config.max_cooldown_ms,
            },
        )

    def get(self, script_id: uuid.UUID) -> CircuitState | None:
        row = fetch_one(Q["get_circuit"], {"script_id": script_id})
        return CircuitState(**row) if row else None

    def close(self, script_ids: Sequence[uuid.UUID]) -> int:
        if not script_ids:
            return 0
        rows = fetch_all(Q["close_circuits"], {"ids": list(script_ids)})
        return sum(r["not_closed"] for r in rows)

    def dirty(self) -> set[uuid.UUID]:
        return {r["script_id"] for r in fetch_all(Q["dirty_circuits"])}

    def counts(self) -> dict[str, int]:
        row = fetch_one(Q["circuit_counts"])
        return {OPEN: row["open"], PROBING: row["probing"]}  # type: ignore[index]
