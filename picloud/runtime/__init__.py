"""Script execution: one outbox row in, one outcome out (handlers, webhooks, the sandbox)."""
