"""Load the SQL that defines our tables and queries.

SQL is the source of truth for the schema: each migration runs a named file
from its app's ``sql/`` folder, wrapped in ``SeparateDatabaseAndState`` so
Django's model state mirrors it (and ``makemigrations --check`` stays clean).
Queries used at run time live in ``sql/queries.sql`` (or another named
file of queries) under ``-- name --`` headers and are loaded once per
process by ``load_queries``.
"""

from __future__ import annotations

import functools
import re
from importlib import import_module
from pathlib import Path

from django.db import migrations

_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --\s*$", re.MULTILINE)


def sql_dir(app_module: str) -> Path:
    return Path(import_module(app_module).__file__).resolve().parent / "sql"


def read_sql(app_module: str, filename: str) -> str:
    return (sql_dir(app_module) / filename).read_text(encoding="utf-8")


def sql_migration(
    app_module: str, filename: str, *, reverse_sql: str | list[str], state_operations: list
) -> migrations.SeparateDatabaseAndState:
    """A migration operation: run `filename` forwards and `reverse_sql` backwards."""
    return migrations.SeparateDatabaseAndState(
        database_operations=[
            migrations.RunSQL(sql=read_sql(app_module, filename), reverse_sql=reverse_sql)
        ],
        state_operations=state_operations,
    )


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file on ``-- name --`` header lines into {name: sql}."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@functools.cache
def load_queries(app_module: str, filename: str = "queries.sql") -> dict[str, str]:
    return parse_queries(read_sql(app_module, filename))
