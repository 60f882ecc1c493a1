"""Outbox storage: the row shape, its repositories and the reply inboxes."""
