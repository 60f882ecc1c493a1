"""A plain psycopg connection to Django's database, for LISTEN.

LISTEN needs a connection of its own: psycopg 3 holds a connection's lock
while ``notifies()`` waits, so nothing else may share it. Through a
transaction-mode pooler it needs a direct one too (``listen_connector``).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, urlencode

import psycopg
from django.db import connections

from picloud.config import PoolerConfig
from picloud.db import hostlist

# Keys Django adds for its own cursor handling that a plain connection must not get.
_DJANGO_ONLY = ("cursor_factory", "context", "prepare_threshold", "pool")


def connect(alias: str = "default", **overrides) -> psycopg.Connection:
    params = connections[alias].get_connection_params()
    for key in _DJANGO_ONLY:
        params.pop(key, None)
    params.update(overrides)
    return psycopg.connect(autocommit=True, **params)


def listen_connector(alias: str = "default") -> Callable[[], psycopg.Connection] | None:
    """How this process opens its LISTEN connections, or None when it must not.

    PICLOUD_LISTEN_DATABASE_URL when set. Otherwise Django's database, unless
    that goes through a transaction-mode pooler: a pooled server connection
    is someone else's after each transaction, so a LISTEN there would hear
    nothing (or make the pooler keep the connection for ever). None then,
    and the waiters poll (picloud/db/pglisten.py).
    """
    pooler = PoolerConfig.current()
    if pooler.listen_url is not None:
        url = pooler.listen_url
        return lambda: psycopg.connect(url, autocommit=True)
    if not pooler.listens:
        return None
    return lambda: connect(alias)


def database_url(settings_dict: dict, name: str | None = None) -> str:
    """A DATABASE_URL for a Django DATABASES entry (Unix-socket hosts included)."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    host = settings_dict.get("HOST") or ""
    port = settings_dict.get("PORT") or ""
    name = name or settings_dict["NAME"]
    options = _url_options(settings_dict)
    if host.startswith("/"):
        return (
            f"postgres://{user}:{password}@/{name}?host={host}"
            + (f"&port={port}" if port else "")
            + (f"&{options}" if options else "")
        )
    # One host or several (a failover list): host:port,host:port.
    netloc = ",".join(hostlist.pairs(settings_dict))
    return f"postgres://{user}:{password}@{netloc}/{name}" + (f"?{options}" if options else "")


def _url_options(settings_dict: dict) -> str:
    """The entry's libpq options (target_session_attrs, connect_timeout,
    sslmode...) as a query string: a child process must connect as we do."""
    options = settings_dict.get("OPTIONS") or {}
    return urlencode(
        {k: v for k, v in options.items() if k not in _DJANGO_ONLY and isinstance(v, str | int)}
    )
