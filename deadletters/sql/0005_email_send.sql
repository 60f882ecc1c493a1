-- Outbound mail that could not be delivered becomes a dead letter of
-- source 'email_send' (docs/email.md).
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_source_kind_check,
    ADD CONSTRAINT dead_letters_source_kind_check CHECK (source_kind IN
        ('kv', 'cron', 'pubsub', 'queue', 'email', 'dead_letter', 'invoke', 'email_send'));
