"""The KV store: per-app collections of JSON values (``from picloud import kv``)."""

from picloud.kv.hooks import KvEvent
from picloud.kv.store import KvClient, KvItem, delete, get, list, put

__all__ = ["KvClient", "KvEvent", "KvItem", "delete", "get", "list", "put"]
