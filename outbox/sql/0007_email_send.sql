-- Mail a script sends is an outbox row of its own source kind, 'email_send'
-- (docs/email.md): delivered by the dispatcher through Django's email
-- backend, retried and dead-lettered like any row.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- Widening a CHECK: every stored row passes the new one.
ALTER TABLE outbox DROP CONSTRAINT outbox_source_kind_check,
    ADD CONSTRAINT outbox_source_kind_check CHECK (source_kind IN
        ('kv', 'cron', 'pubsub', 'queue', 'email', 'dead_letter', 'invoke', 'email_send'));
