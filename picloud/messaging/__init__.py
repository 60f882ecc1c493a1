"""An app's messaging sources: topics (``picloud.messaging.topics``) and
queues (``picloud.messaging.queues``); docs/messaging.md."""
