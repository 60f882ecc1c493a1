"""The KV store's Python API: per-app collections of JSON values.

    from picloud import kv
    kv.put(app, "orders", "o-1", {"total": 12}, principal=principal)
    kv.get(app, "orders", "o-1", principal=principal)   # -> KvItem | None

Every call checks the principal's capability in that app (KvRead / KvWrite)
and raises PermissionDenied when it is missing. A put or delete tells its
listeners (picloud/kv/hooks.py; the triggers app fans out to matching kv
triggers) in the same transaction: if the caller's transaction rolls back,
neither the entry nor the outbox rows exist.
"""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from picloud.db.sqlexec import fetch_all as _fetch_all
from picloud.db.sqlexec import fetch_one, from_json, to_json
from picloud.db.sqlfiles import load_queries
from picloud.db.storable import Unstorable, check_json
from picloud.domain.authz import Capability, require
from picloud.domain.calls import check_text as _check_text
from picloud.domain.calls import resolve_app as _app
from picloud.domain.calls import resolve_principal as _principal
from picloud.kv import hooks
from picloud.kv.hooks import KvEvent
from picloud.models import App

MAX_KEY_LENGTH = 1024  # characters
MAX_COLLECTION_LENGTH = 255  # characters
MAX_LIST_LIMIT = 1000

Q = load_queries("picloud")


@dataclass(frozen=True)
class KvItem:
    collection: str
    key: str
    value: Any
    version: int
    updated_at: datetime


class VersionConflict(ValidationError):
    """The entry is not at the version the caller read: written (or deleted,
    or created) by someone else since. Nothing was written."""

    def __init__(self, collection: str, key: str, expected: int, current: int | None):
        now = "does not exist" if current is None else f"is at version {current}"
        wanted = "not to exist" if expected == 0 else f"to be at version {expected}"
        super().__init__(
            f"{collection}/{key} {now}, expected {wanted}: it changed since it was read; "
            "read it again and retry.",
            code="version_conflict",
        )


def _check_version(collection, key, expected: int | None, current: int | None) -> None:
    """`expected`: None, any; 0, the entry must not exist; N, at version N."""
    if expected is None:
        return
    if type(expected) is not int or expected < 0:
        raise ValidationError({"expected_version": "Give None, 0 (must not exist) or a version."})
    if (current or 0) != expected:
        raise VersionConflict(collection, key, expected, current)


def _item(row: dict[str, Any]) -> KvItem:
    return KvItem(**{**row, "value": from_json(row["value"])})


def _check_value(value: Any) -> str:
    """The value as JSON text for jsonb, or ValidationError saying what is wrong."""
    try:
        check_json(value)
    except Unstorable as exc:
        raise ValidationError(
            f"The value cannot be stored: {exc}. Allowed: JSON (dicts with string keys, "
            "lists, strings, finite numbers, booleans, None)."
        ) from None
    return to_json(value)


def _check_limit(limit: object) -> int:
    # bool is an int to Python, and "5" or 1.5 would reach SQL: refuse them here.
    if type(limit) is not int or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValidationError(
            f"limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {limit!r}."
        )
    return limit


def _params(app: App, collection: str, *key: str) -> dict[str, Any]:
    """The statement's parameters, checked; `key` is given by the calls that
    name one (get, put, delete), where None is as wrong as any non-string."""
    params: dict[str, Any] = {
        "app_id": app.id,
        "collection": _check_text("Collection", collection, MAX_COLLECTION_LENGTH),
    }
    if key:
        params["key"] = _check_text("Key", key[0], MAX_KEY_LENGTH)
    return params


def get(app, collection: str, key: str, *, principal) -> KvItem | None:
    """The entry, or None. Needs KvRead in the app."""
    app = _app(app)
    require(_principal(principal), Capability.KvRead(app.id))
    row = fetch_one(Q["kv_get"], _params(app, collection, key))
    return _item(row) if row else None


def list(
    app, collection: str, *, principal, prefix: str | None = None, limit: int = 100
) -> builtins.list[KvItem]:
    """Entries of a collection by key (code point order), at most `limit`. Needs KvRead."""
    app = _app(app)
    require(_principal(principal), Capability.KvRead(app.id))
    if prefix:
        _check_text("Prefix", prefix, MAX_KEY_LENGTH)
    params = {**_params(app, collection), "prefix": prefix or None, "limit": _check_limit(limit)}
    return [_item(r) for r in _fetch_all(Q["kv_list"], params)]


def put(
    app,
    collection: str,
    key: str,
    value: Any,
    *,
    principal,
    depth: int = 0,
    cause: uuid.UUID | None = None,
    expected_version: int | None = None,
) -> KvItem:
    """Insert or update the entry and fan out to matching triggers. Needs KvWrite.

    `expected_version` makes the write conditional: 0, only if the key does
    not exist; N, only if it is at version N (what the caller read);
    VersionConflict otherwise, and nothing is written. `depth` and `cause`
    are set by the KV client a script receives (its row's depth + 1 and the
    row's id); leave them alone elsewhere.
    """
    app = _app(app)
    require(_principal(principal), Capability.KvWrite(app.id))
    params = {**_params(app, collection, key), "value": _check_value(value)}
    with transaction.atomic():
        while True:
            old = fetch_one(Q["kv_lock"], params)
            if old is not None:
                _check_version(collection, key, expected_version, old["version"])
                row, op, old_value = fetch_one(Q["kv_update"], params), "update", old["value"]
                break
            _check_version(collection, key, expected_version, None)
            row = fetch_one(Q["kv_insert"], params)
            if row is not None:
                op, old_value = "insert", None
                break
            # Another transaction inserted this key since our lock read: lock it now.
        item = _item(row)  # type: ignore[arg-type]
        _fan_out(app, item, op, from_json(old_value), item.value, depth, cause)
    return item


def delete(
    app,
    collection: str,
    key: str,
    *,
    principal,
    depth: int = 0,
    cause: uuid.UUID | None = None,
    expected_version: int | None = None,
) -> bool:
    """Delete the entry and fan out; a missing key is a no-op that fires
    nothing. Needs KvWrite. `expected_version` N deletes only the entry at
    version N (VersionConflict otherwise, nothing deleted)."""
    app = _app(app)
    require(_principal(principal), Capability.KvWrite(app.id))
    params = _params(app, collection, key)
    with transaction.atomic():
        if expected_version is not None:
            old = fetch_one(Q["kv_lock"], params)
            _check_version(collection, key, expected_version, old and old["version"])
        row = fetch_one(Q["kv_delete"], params)
        if row is None:
            return False
        item = _item(row)
        _fan_out(app, item, "delete", item.value, None, depth, cause)
    return True


def _fan_out(app: App, item: KvItem, op: str, old: Any, new: Any, depth: int, cause) -> None:
    event = KvEvent(
        app_id=app.id,
        app_slug=app.slug,
        collection=item.collection,
        key=item.key,
        op=op,
        old=old,
        new=new,
        version=item.version,
    )
    hooks.written(event, depth=depth, cause=cause)


class KvClient:
    """The KV API bound to one app and principal; scripts get one as ``ctx.kv``.

    Writes carry the cascade depth and the causing outbox row, so a chain of
    script-made writes stops at PICLOUD_MAX_TRIGGER_DEPTH.
    """

    def __init__(self, app: App, principal, *, depth: int = 0, cause: uuid.UUID | None = None):
        self.app, self.principal, self.depth, self.cause = app, principal, depth, cause

    def get(self, collection: str, key: str) -> KvItem | None:
        return get(self.app, collection, key, principal=self.principal)

    def list(self, collection: str, *, prefix: str | None = None, limit: int = 100):
        return list(self.app, collection, principal=self.principal, prefix=prefix, limit=limit)

    def put(self, collection: str, key: str, value: Any) -> KvItem:
        return put(
            self.app,
            collection,
            key,
            value,
            principal=self.principal,
            depth=self.depth,
            cause=self.cause,
        )

    def delete(self, collection: str, key: str) -> bool:
        return delete(
            self.app, collection, key, principal=self.principal, depth=self.depth, cause=self.cause
        )
