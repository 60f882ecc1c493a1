"""The daily retention sweep, run by django-q2 (schedule in deadletters/schedules.py)."""

from __future__ import annotations

import logging

from deadletters.gc import sweep_abandoned, sweep_dead_letters
from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
from outbox.storage.pg_repository import PgReplyInbox
from outbox.sync.inboxes import sweep_orphaned_inboxes
from picloud.config import EmailConfig, TriggerConfig
from picloud.mail import inbound
from picloud.messaging import queues

logger = logging.getLogger("picloud.gc")


def sweep_retention() -> str:
    """Every sweep with the configured retention (dead letters, abandoned
    executions, reply inboxes, queue messages, received mail); returns the summary (kept
    by django-q2 as the task's result)."""

    config = TriggerConfig.current()
    letters = sweep_dead_letters(
        PgDeadLetterRepo(), older_than_days=config.dead_letter_retention_days
    )
    abandoned = sweep_abandoned(
        PgAbandonedRepo(), older_than_days=config.abandoned_executions_retention_days
    )
    inboxes = sweep_orphaned_inboxes(PgReplyInbox())
    messages = queues.gc(config.queue_retention_days)
    emails = inbound.gc(EmailConfig.current().retention_days)
    summary = (
        f"{letters.summary()} {abandoned.summary()} Orphaned reply inboxes removed: {inboxes}. "
        f"Queue messages past retention removed: {messages}. "
        f"Received emails past retention removed: {emails}."
    )
    logger.info(summary)
    return summary
