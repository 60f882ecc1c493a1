-- Email triggers, and dead-letter filters on outbound mail (docs/email.md).
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- An email trigger fires for mail to <local part>@<app slug>.<domain>
-- whose local part (lower-cased, its +tag removed) its pattern matches:
-- '*', 'p:*' or an exact name, the rule of kv_trigger_details.collection
-- (triggers.rules.check_local_part says the same, with its message).
CREATE TABLE email_trigger_details (
    trigger_id  UUID PRIMARY KEY REFERENCES triggers(id) ON DELETE CASCADE,
    local_part  TEXT NOT NULL CHECK (
        char_length(local_part) BETWEEN 1 AND 64
        AND local_part ~ '^[a-z0-9!#$%&''*/=?^_`{|}~.:-]+$'
        AND (local_part = '*' OR local_part ~ '^[^*]+:\*$' OR strpos(local_part, '*') = 0)
    )
);

-- A dead-letter trigger may filter on undeliverable outbound mail.
ALTER TABLE dead_letter_trigger_details DROP CONSTRAINT dead_letter_trigger_details_source_kind_check,
    ADD CONSTRAINT dead_letter_trigger_details_source_kind_check CHECK (source_kind IN
        ('kv', 'cron', 'pubsub', 'queue', 'email', 'invoke', 'email_send'));

-- The view every trigger read goes through (new columns go last).
CREATE OR REPLACE VIEW triggers_with_details AS
SELECT t.id, t.app_id, t.kind, t.script_id, t.name, t.enabled,
       t.registered_by_principal, t.max_attempts, t.retry_base_delay_ms,
       t.retry_max_delay_ms, t.created_at, t.updated_at,
       k.collection, k.ops,
       d.source_kind AS dl_source_kind, d.source_trigger_id AS dl_source_trigger_id,
       (d.trigger_id IS NOT NULL) AS has_dead_letter_details,
       c.schedule AS cron_schedule, c.timezone AS cron_timezone, c.catchup AS cron_catchup,
       c.catchup_window_s AS cron_catchup_window_s, c.overlap AS cron_overlap,
       c.paused AS cron_paused, c.payload AS cron_payload,
       p.topic AS pubsub_topic,
       q.queue_id, q.batch_size AS queue_batch_size,
       q.max_batch_wait_ms AS queue_max_batch_wait_ms,
       q.max_concurrency AS queue_max_concurrency, q.max_receives AS queue_max_receives,
       e.local_part AS email_local_part
FROM triggers t
LEFT JOIN kv_trigger_details k ON k.trigger_id = t.id
LEFT JOIN dead_letter_trigger_details d ON d.trigger_id = t.id
LEFT JOIN cron_trigger_details c ON c.trigger_id = t.id
LEFT JOIN pubsub_trigger_details p ON p.trigger_id = t.id
LEFT JOIN queue_trigger_details q ON q.trigger_id = t.id
LEFT JOIN email_trigger_details e ON e.trigger_id = t.id;
