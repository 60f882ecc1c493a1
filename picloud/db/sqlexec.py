"""Run named SQL on Django's connection and map rows to dicts.

Repositories use Django's connection (not one of their own) so that their
writes join the caller's transaction: a KV write and its outbox rows commit
or roll back together.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection


def fetch_all(sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.description is None:
            return []
        names = [col.name for col in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def fetch_one(sql: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    rows = fetch_all(sql, params)
    return rows[0] if rows else None


def execute(sql: str, params: dict[str, Any] | None = None) -> int:
    """Run a statement; return the number of rows it touched."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def model_from_row(model, values: dict[str, Any]):
    """A model instance (as loaded, not new) from some of its fields; the
    others load on first access."""
    fields = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db("default", fields, [values[f] for f in fields])


def to_json(value: Any) -> str:
    """A parameter for a ``%(x)s::jsonb`` placeholder."""
    return json.dumps(value)


def from_json(value: Any) -> Any:
    """Django's psycopg setup hands jsonb back as text; parse it once here."""
    return json.loads(value) if isinstance(value, str | bytes) else value
