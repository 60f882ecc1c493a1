"""A plain psycopg connection to Django's database, for LISTEN.

LISTEN needs a connection of its own: psycopg 3 holds a connection's lock
while ``notifies()`` waits, so nothing else may share it.
"""

from __future__ import annotations

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
