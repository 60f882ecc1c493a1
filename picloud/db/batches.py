"""Deleting in batches: one short statement and commit per batch, so a large
sweep never holds many row locks for long."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction

from picloud.db.sqlexec import execute

BATCH_SIZE = 1_000  # rows per DELETE: each batch holds its row locks for milliseconds

ProgressCallback = Callable[[int], None]  # rows deleted so far


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def run_batches(
    query: str, params: dict[str, Any], on_batch: ProgressCallback | None = None
) -> int:
    """Repeat a batched DELETE until it deletes nothing; each batch commits on its own."""
    total = 0
    while True:
        with transaction.atomic():
            deleted = execute(query, params)
        if deleted == 0:
            return total
        total += deleted
        if on_batch:
            on_batch(total)
