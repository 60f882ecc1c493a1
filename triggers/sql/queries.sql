-- Named queries of the trigger repository (loaded by picloud.sqlfiles).
-- Lists sort by name COLLATE "C" (code point order), as the in-memory
-- repository does, so both agree whatever the database locale.
-- Reads go through the triggers_with_details view so every query returns
-- the same row shape.

-- insert_trigger --
INSERT INTO triggers (id, app_id, kind, script_id, name, enabled, registered_by_principal,
                      max_attempts, retry_base_delay_ms, retry_max_delay_ms)
VALUES (%(id)s, %(app_id)s, %(kind)s, %(script_id)s, %(name)s, %(enabled)s,
        %(registered_by_principal)s, %(max_attempts)s, %(retry_base_delay_ms)s,
        %(retry_max_delay_ms)s);

-- upsert_kv_details --
INSERT INTO kv_trigger_details (trigger_id, collection, ops)
VALUES (%(trigger_id)s, %(collection)s, %(ops)s)
ON CONFLICT (trigger_id) DO UPDATE SET collection = EXCLUDED.collection, ops = EXCLUDED.ops;

-- upsert_dead_letter_details --
-- app_id is the trigger's own; the composite keys hold the source trigger to it.
INSERT INTO dead_letter_trigger_details (trigger_id, app_id, source_kind, source_trigger_id)
VALUES (%(trigger_id)s, %(app_id)s, %(source_kind)s, %(source_trigger_id)s)
ON CONFLICT (trigger_id) DO UPDATE
    SET source_kind = EXCLUDED.source_kind, source_trigger_id = EXCLUDED.source_trigger_id;

-- upsert_cron_details --
-- A change of schedule, timezone, payload or pause drops the ticks written
-- ahead for it (the table's trigger, triggers/sql/0003_cron.sql).
INSERT INTO cron_trigger_details (trigger_id, schedule, timezone, catchup, catchup_window_s,
                                  overlap, paused, payload)
VALUES (%(trigger_id)s, %(schedule)s, %(timezone)s, %(catchup)s, %(catchup_window_s)s,
        %(overlap)s, %(paused)s, %(payload)s::jsonb)
ON CONFLICT (trigger_id) DO UPDATE
    SET schedule = EXCLUDED.schedule, timezone = EXCLUDED.timezone,
        catchup = EXCLUDED.catchup, catchup_window_s = EXCLUDED.catchup_window_s,
        overlap = EXCLUDED.overlap, paused = EXCLUDED.paused, payload = EXCLUDED.payload;

-- upsert_pubsub_details --
INSERT INTO pubsub_trigger_details (trigger_id, topic) VALUES (%(trigger_id)s, %(topic)s)
ON CONFLICT (trigger_id) DO UPDATE SET topic = EXCLUDED.topic;

-- upsert_email_details --
INSERT INTO email_trigger_details (trigger_id, local_part) VALUES (%(trigger_id)s, %(local_part)s)
ON CONFLICT (trigger_id) DO UPDATE SET local_part = EXCLUDED.local_part;

-- upsert_queue_details --
-- app_id is the trigger's own; the composite keys hold the queue to it.
INSERT INTO queue_trigger_details (trigger_id, app_id, queue_id, batch_size, max_batch_wait_ms,
                                   max_concurrency, max_receives)
VALUES (%(trigger_id)s, %(app_id)s, %(queue_id)s, %(batch_size)s, %(max_batch_wait_ms)s,
        %(max_concurrency)s, %(max_receives)s)
ON CONFLICT (trigger_id) DO UPDATE
    SET queue_id = EXCLUDED.queue_id, batch_size = EXCLUDED.batch_size,
        max_batch_wait_ms = EXCLUDED.max_batch_wait_ms,
        max_concurrency = EXCLUDED.max_concurrency, max_receives = EXCLUDED.max_receives;

-- trigger_facts --
-- What the rules (triggers/rules.py) read of other rows before a write, in
-- one row: the app's slug; whether another trigger of the app (not
-- %(id)s, the one updated) has the name; the script's app and name; the
-- app, kind and "app/name" of the trigger a dead-letter filter names; and
-- the app and name of a queue trigger's queue, and which other trigger
-- consumes it already.
SELECT (SELECT slug FROM apps WHERE id = %(app_id)s) AS app_slug,
       EXISTS (SELECT 1 FROM triggers
               WHERE app_id = %(app_id)s AND name = %(name)s
                 AND id IS DISTINCT FROM %(id)s::uuid) AS name_taken,
       s.app_id AS script_app_id, s.name AS script_name,
       t.app_id AS source_app_id, t.kind AS source_kind,
       sa.slug || '/' || t.name AS source_label,
       q.app_id AS queue_app_id, q.name AS queue_name,
       (SELECT ct.name FROM queue_trigger_details qd JOIN triggers ct ON ct.id = qd.trigger_id
        WHERE qd.queue_id = q.id AND qd.trigger_id IS DISTINCT FROM %(id)s::uuid) AS queue_consumer
FROM (SELECT 1) AS one
LEFT JOIN scripts s ON s.id = %(script_id)s::uuid
LEFT JOIN triggers t ON t.id = %(source_trigger_id)s::uuid
LEFT JOIN apps sa ON sa.id = t.app_id
LEFT JOIN queues q ON q.id = %(queue_id)s::uuid;

-- update_trigger --
UPDATE triggers
SET name = %(name)s, enabled = %(enabled)s, script_id = %(script_id)s,
    max_attempts = %(max_attempts)s, retry_base_delay_ms = %(retry_base_delay_ms)s,
    retry_max_delay_ms = %(retry_max_delay_ms)s, updated_at = NOW()
WHERE id = %(id)s;

-- delete_trigger --
DELETE FROM triggers WHERE id = %(id)s;

-- filters_naming_trigger --
-- The other dead-letter triggers whose filter names this one: while they do,
-- it cannot be deleted (dead_letter_trigger_details_source_same_app_fkey).
SELECT t.name FROM dead_letter_trigger_details d
JOIN triggers t ON t.id = d.trigger_id
WHERE d.source_trigger_id = %(id)s AND d.trigger_id <> %(id)s
ORDER BY t.name COLLATE "C";

-- get_trigger --
SELECT * FROM triggers_with_details WHERE id = %(id)s;

-- list_for_app --
SELECT * FROM triggers_with_details
WHERE app_id = %(app_id)s AND (%(kind)s::text IS NULL OR kind = %(kind)s)
ORDER BY name COLLATE "C", id;

-- list_matching_kv --
-- Hot path of every KV write. Mirrors triggers.matching.collection_matches:
-- '*' matches all; 'p:*' matches names starting with 'p:' (starts_with, never
-- LIKE, so '%%' and '_' in names are plain characters); else exact equality.
-- The MATERIALIZED CTE pins the plan: first the app's enabled kv triggers
-- from triggers_enabled_app_kind_idx (an app has few), then each one's
-- details by primary key. Left to itself the planner may misjudge the
-- pattern test's selectivity and scan every app's details instead.
WITH candidates AS MATERIALIZED (
    SELECT * FROM triggers
    WHERE app_id = %(app_id)s AND kind = 'kv' AND enabled
)
SELECT c.*, k.collection, k.ops,
       NULL::text AS dl_source_kind, NULL::uuid AS dl_source_trigger_id,
       FALSE AS has_dead_letter_details
FROM candidates c
JOIN kv_trigger_details k ON k.trigger_id = c.id
WHERE %(op)s = ANY (k.ops)
  AND (k.collection = '*'
       OR k.collection = %(collection)s
       OR (right(k.collection, 2) = ':*' AND starts_with(%(collection)s, left(k.collection, -1))))
ORDER BY c.name COLLATE "C", c.id;

-- list_matching_pubsub --
-- Hot path of every publish: the same shape and rule as list_matching_kv,
-- on the topic's name.
WITH candidates AS MATERIALIZED (
    SELECT * FROM triggers
    WHERE app_id = %(app_id)s AND kind = 'pubsub' AND enabled
)
SELECT c.*, p.topic AS pubsub_topic,
       NULL::text AS collection, NULL::text[] AS ops,
       NULL::text AS dl_source_kind, NULL::uuid AS dl_source_trigger_id,
       FALSE AS has_dead_letter_details
FROM candidates c
JOIN pubsub_trigger_details p ON p.trigger_id = c.id
WHERE p.topic = '*'
   OR p.topic = %(topic)s
   OR (right(p.topic, 2) = ':*' AND starts_with(%(topic)s, left(p.topic, -1)))
ORDER BY c.name COLLATE "C", c.id;

-- list_matching_email --
-- Asked at every RCPT TO and again when the message is stored: the same
-- shape and rule as list_matching_kv, on the recipient's local part
-- (lower-cased, without its +tag).
WITH candidates AS MATERIALIZED (
    SELECT * FROM triggers
    WHERE app_id = %(app_id)s AND kind = 'email' AND enabled
)
SELECT c.*, e.local_part AS email_local_part,
       NULL::text AS collection, NULL::text[] AS ops,
       NULL::text AS dl_source_kind, NULL::uuid AS dl_source_trigger_id,
       FALSE AS has_dead_letter_details
FROM candidates c
JOIN email_trigger_details e ON e.trigger_id = c.id
WHERE e.local_part = '*'
   OR e.local_part = %(local_part)s
   OR (right(e.local_part, 2) = ':*' AND starts_with(%(local_part)s, left(e.local_part, -1)))
ORDER BY c.name COLLATE "C", c.id;

-- list_matching_dead_letter --
-- Same shape as list_matching_kv; NULL filters match any source.
WITH candidates AS MATERIALIZED (
    SELECT * FROM triggers
    WHERE app_id = %(app_id)s AND kind = 'dead_letter' AND enabled
)
SELECT c.*, NULL::text AS collection, NULL::text[] AS ops,
       d.source_kind AS dl_source_kind, d.source_trigger_id AS dl_source_trigger_id,
       TRUE AS has_dead_letter_details
FROM candidates c
JOIN dead_letter_trigger_details d ON d.trigger_id = c.id
WHERE (d.source_kind IS NULL OR d.source_kind = %(source_kind)s)
  AND (d.source_trigger_id IS NULL OR d.source_trigger_id = %(trigger_id)s)
ORDER BY c.name COLLATE "C", c.id;

-- cron_due_triggers --
-- Cron triggers whose next tick falls before %(until)s (or not computed
-- yet), locked so an edit (which moves the watermark) waits for the ticker
-- or is seen by it.
SELECT t.id, t.app_id, t.script_id, t.registered_by_principal, t.name,
       a.slug AS app_slug, c.schedule, c.timezone, c.catchup, c.catchup_window_s,
       c.watermark
FROM cron_trigger_details c
JOIN triggers t ON t.id = c.trigger_id
JOIN apps a ON a.id = t.app_id
WHERE NOT c.paused AND t.enabled
  AND (c.next_tick_at IS NULL OR c.next_tick_at <= %(until)s)
ORDER BY c.next_tick_at NULLS FIRST
LIMIT %(limit)s
FOR UPDATE OF c SKIP LOCKED;

-- write_cron_ticks --
-- One outbox row per tick not written before: the key of cron_ticks
-- (trigger, scheduled time) lets each tick through once, whoever writes it.
-- The event: the trigger's static payload (read here, in the writer's
-- transaction), then the tick's own keys over it.
WITH ticks AS (
    INSERT INTO cron_ticks (trigger_id, scheduled_at, run_now)
    SELECT %(trigger_id)s, at, %(run_now)s FROM unnest(%(at)s::timestamptz[]) AS at
    ON CONFLICT (trigger_id, scheduled_at) DO NOTHING
    RETURNING scheduled_at, outbox_id
)
INSERT INTO outbox (id, app_id, source_kind, trigger_id, script_id, run_as_principal,
                    payload, due_at)
SELECT k.outbox_id, %(app_id)s, 'cron', %(trigger_id)s, %(script_id)s, %(principal)s,
       (SELECT c.payload FROM cron_trigger_details c WHERE c.trigger_id = %(trigger_id)s)
       || jsonb_build_object(
           'source', 'cron', 'app_id', %(app_id)s::text, 'app', %(app_slug)s::text,
           'trigger', %(name)s::text, 'trigger_id', %(trigger_id)s::text,
           'schedule', %(schedule)s::text, 'timezone', %(timezone)s::text,
           'scheduled_at', to_char(k.scheduled_at AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'run_now', %(run_now)s::boolean,
           'catch_up', k.scheduled_at = ANY (%(catch_up)s::timestamptz[])),
       CASE WHEN %(run_now)s THEN NOW() ELSE k.scheduled_at END
FROM ticks k;

-- advance_cron_trigger --
UPDATE cron_trigger_details
SET watermark = %(watermark)s, next_tick_at = %(next_tick_at)s,
    missed_ticks = missed_ticks + %(missed)s
WHERE trigger_id = %(trigger_id)s;

-- cron_trigger_for_run_now --
-- A paused trigger may be run now (its schedule stays paused); a disabled one may not.
SELECT t.id, t.app_id, t.script_id, t.registered_by_principal, t.name,
       a.slug AS app_slug, c.schedule, c.timezone
FROM cron_trigger_details c
JOIN triggers t ON t.id = c.trigger_id
JOIN apps a ON a.id = t.app_id
WHERE t.id = %(id)s AND t.enabled;

-- prune_cron_ticks --
-- Ticks written more than %(before)s ago, a batch at a time, keeping each
-- trigger's latest (admin shows it as the last fire). Their keys are no
-- longer needed: a watermark never moves back past them (an edit moves it
-- to now).
DELETE FROM cron_ticks k
WHERE (k.trigger_id, k.scheduled_at) IN (
    SELECT o.trigger_id, o.scheduled_at FROM cron_ticks o
    WHERE o.created_at < %(before)s
      AND o.scheduled_at < (SELECT max(l.scheduled_at) FROM cron_ticks l
                            WHERE l.trigger_id = o.trigger_id)
    LIMIT %(limit)s
);

-- cron_overlaps --
-- For claimed ticks (ids, triggers, scheduled times as the events spell
-- them, which sort as text): the trigger's overlap policy, when it is not
-- 'allow', and how many earlier ticks of the trigger are still in the outbox
-- (running, retrying, or waiting their turn). Reads the trigger's few
-- pending rows by outbox_trigger_idx, never its history.
SELECT r.id, c.overlap,
       (SELECT count(*) FROM outbox o
        WHERE o.trigger_id = r.trigger_id AND o.source_kind = 'cron' AND o.id <> r.id
          AND o.payload->>'scheduled_at' < r.scheduled_at) AS earlier
FROM unnest(%(ids)s::uuid[], %(triggers)s::uuid[], %(ats)s::text[])
     AS r(id, trigger_id, scheduled_at)
JOIN cron_trigger_details c ON c.trigger_id = r.trigger_id
WHERE c.overlap <> 'allow';

-- queue_consumers_of --
-- The triggers consuming a queue (one at most): deleting it is refused while any does.
SELECT t.name FROM queue_trigger_details d JOIN triggers t ON t.id = d.trigger_id
WHERE d.queue_id = %(queue_id)s;

-- queue_triggers_with_messages --
-- The enabled queue triggers whose queue has messages no batch holds
-- (visible now or later): the ones queue_fill_trigger may have work for.
SELECT d.trigger_id FROM queue_trigger_details d
JOIN triggers t ON t.id = d.trigger_id
WHERE t.enabled
  AND EXISTS (SELECT 1 FROM queue_messages m WHERE m.queue_id = d.queue_id AND m.batch_id IS NULL)
ORDER BY d.trigger_id;

-- fill_queue_trigger --
SELECT o_batches AS batches, o_messages AS messages, o_next_at AS next_at
FROM queue_fill_trigger(%(trigger_id)s, %(max_bytes)s, %(max_batches)s);

-- release_orphaned_batches --
-- Messages held by a batch whose outbox row is gone without settling (its
-- trigger was deleted, say) become visible again. Each batch's row is
-- looked up once by its key (the batches are few; the outbox may be large),
-- and the row lock's recheck of m.batch_id passes a message that was
-- settled and taken into a new batch meanwhile.
WITH held AS MATERIALIZED (
    SELECT DISTINCT batch_id FROM queue_messages WHERE batch_id IS NOT NULL
), gone AS MATERIALIZED (
    SELECT h.batch_id FROM held h
    WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id = h.batch_id)
)
UPDATE queue_messages m SET batch_id = NULL
FROM gone
WHERE m.batch_id = gone.batch_id;

-- settle_queue_batch --
-- Only while the batch's row holds the claim of %(attempt)s
-- (outbox/sql/0011_settle_claimed_attempt.sql): NULL when it was settled
-- already or claimed again elsewhere.
SELECT queue_settle_claimed(%(batch)s, %(attempt)s, %(done)s::bigint[], %(retry)s::bigint[],
                            %(retry_delay_ms)s::integer[], %(retry_count)s::integer[],
                            %(dead)s::bigint[]) AS dead;
