"""A plain psycopg connection to Django's database, for LISTEN.

LISTEN needs a connection of its own: psycopg 3 holds a connection's lock
while ``notifies()`` waits, so nothing else may share it.
"""

from __future__ import annotations

from urllib.parse import quote

import psycopg
from django.db import connections

# Keys Django adds for its own cursor handling that a plain connection must not get.
_DJANGO_ONLY = ("cursor_factory", "context", "prepare_threshold", "pool")


def connect(alias: str = "default", **overrides) -> psycopg.Connection:
    params = connections[alias].get_connection_params()
    for key in _DJANGO_ONLY:
        params.pop(key, None)
    params.update(overrides)
    return psycopg.connect(autocommit=True, **params)


def database_url(settings_dict: dict, name: str | None = None) -> str:
    """A DATABASE_URL for a Django DATABASES entry (Unix-socket hosts included)."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    host = settings_dict.get("HOST") or ""
    port = settings_dict.get("PORT") or ""
    name = name or settings_dict["NAME"]
    if host.startswith("/"):
        return f"postgres://{user}:{password}@/{name}?host={host}" + (
            f"&port={port}" if port else ""
        )
    netloc = host + (f":{port}" if port else "")
    return f"postgres://{user}:{password}@{netloc}/{name}"
