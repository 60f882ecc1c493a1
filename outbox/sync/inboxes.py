"""Reply inboxes left behind by requests that died, swept by age."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from outbox.storage.repository import ReplyInbox
from picloud.db.batches import BATCH_SIZE

# A reply inbox older than this has no waiter left: no wait lasts longer
# than PICLOUD_SYNC_TIMEOUT_MS, which is at most 15 minutes.
INBOX_ORPHAN_AGE = timedelta(hours=1)


def sweep_orphaned_inboxes(inbox: ReplyInbox, *, batch_size: int = BATCH_SIZE) -> int:
    """Remove the reply inboxes of requests that died with their process."""
    return inbox.gc(timezone.now() - INBOX_ORPHAN_AGE, batch_size)
