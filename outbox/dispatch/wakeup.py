"""The channel that wakes idle dispatch engines when rows arrive (LISTEN/NOTIFY)."""

from __future__ import annotations

CHANNEL = "picloud_outbox"  # outbox/sql/0002_notify.sql sends on it
