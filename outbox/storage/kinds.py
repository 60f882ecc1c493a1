"""The outbox's vocabulary: what put a row there (the outbox table's CHECK)."""

from django.db import models


class SourceKind(models.TextChoices):
    """What put a row into the outbox: a trigger kind, a sync invocation, or
    mail a script sent (delivered by the dispatcher, no script runs)."""

    KV = "kv", "KV write"
    CRON = "cron", "Cron"
    PUBSUB = "pubsub", "Pub/sub"
    QUEUE = "queue", "Queue"
    EMAIL = "email", "Email"
    DEAD_LETTER = "dead_letter", "Dead letter"
    INVOKE = "invoke", "HTTP invocation"
    EMAIL_SEND = "email_send", "Email (outbound)"
