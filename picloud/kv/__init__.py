"""The KV store: per-app collections of JSON values (``from picloud import kv``)."""

from picloud.kv.hooks import KvEvent
from picloud.kv.store import KvClient, KvItem, VersionConflict, delete, get, list, put

__all__ = ["KvClient", "KvEvent", "KvItem", "VersionConflict", "delete", "get", "list", "put"]
