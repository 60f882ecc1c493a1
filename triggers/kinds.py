"""The vocabularies the trigger tables' CHECK constraints spell out."""

from django.db import models

from outbox.storage.kinds import SourceKind


class TriggerKind(models.TextChoices):
    KV = "kv", "KV write"
    CRON = "cron", "Cron"
    PUBSUB = "pubsub", "Pub/sub"
    QUEUE = "queue", "Queue"
    EMAIL = "email", "Email"
    DEAD_LETTER = "dead_letter", "Dead letter"


class KvOp(models.TextChoices):
    INSERT = "insert", "insert"
    UPDATE = "update", "update"
    DELETE = "delete", "delete"


# Dead letters of dead-letter handlers are never written, so a dead-letter
# trigger cannot filter on that source.
DEAD_LETTER_FILTER_KINDS = [k for k in SourceKind if k != SourceKind.DEAD_LETTER]
