-- Pub/sub and queue triggers (docs/messaging.md).
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- A pubsub trigger subscribes to the topics its pattern matches: '*', 'p:*'
-- or an exact name, the rule of kv_trigger_details.collection
-- (triggers.matching.validate_collection_pattern says the same).
CREATE TABLE pubsub_trigger_details (
    trigger_id  UUID PRIMARY KEY REFERENCES triggers(id) ON DELETE CASCADE,
    topic       TEXT NOT NULL CHECK (
        char_length(topic) BETWEEN 1 AND 255
        AND (topic = '*' OR topic ~ '^[^*]+:\*$' OR strpos(topic, '*') = 0)
    )
);

-- A queue trigger consumes one queue of its own app in batches; a queue has
-- one consumer trigger at most (two would only compete for its messages).
CREATE TABLE queue_trigger_details (
    trigger_id         UUID PRIMARY KEY,
    -- The trigger's app, for the composite keys below.
    app_id             UUID NOT NULL,
    queue_id           UUID NOT NULL,
    batch_size         INTEGER NOT NULL DEFAULT 10 CHECK (batch_size BETWEEN 1 AND 100),
    -- How long a partial batch waits for more messages.
    max_batch_wait_ms  INTEGER NOT NULL DEFAULT 0 CHECK (max_batch_wait_ms BETWEEN 0 AND 60000),
    -- Batches of this trigger in the outbox (waiting or running) at most.
    max_concurrency    INTEGER NOT NULL DEFAULT 5 CHECK (max_concurrency BETWEEN 1 AND 100),
    -- Receives of a message before it becomes a dead letter.
    max_receives       INTEGER NOT NULL DEFAULT 5 CHECK (max_receives BETWEEN 1 AND 100),
    CONSTRAINT queue_trigger_details_trigger_app_fkey
        FOREIGN KEY (trigger_id, app_id) REFERENCES triggers (id, app_id) ON DELETE CASCADE,
    -- Deleting a queue a trigger consumes is refused; checked at commit, so
    -- deleting the app (both go) works whatever order the cascades run in.
    CONSTRAINT queue_trigger_details_queue_same_app_fkey
        FOREIGN KEY (queue_id, app_id) REFERENCES queues (id, app_id)
        DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT queue_trigger_details_queue_key UNIQUE (queue_id)
);

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
       q.max_concurrency AS queue_max_concurrency, q.max_receives AS queue_max_receives
FROM triggers t
LEFT JOIN kv_trigger_details k ON k.trigger_id = t.id
LEFT JOIN dead_letter_trigger_details d ON d.trigger_id = t.id
LEFT JOIN cron_trigger_details c ON c.trigger_id = t.id
LEFT JOIN pubsub_trigger_details p ON p.trigger_id = t.id
LEFT JOIN queue_trigger_details q ON q.trigger_id = t.id;

-- Make batches of visible messages for one queue trigger, when it is
-- enabled, its script too, and it has room (fewer than max_concurrency
-- batches in the outbox), at most p_max_batches of them: one outbox row of
-- source 'queue' per batch, holding its messages (batch_id) for as long as
-- the row exists. A partial batch waits until its oldest message has been
-- visible for max_batch_wait_ms. A batch holds messages of one depth (that
-- of its earliest message), so a message at the depth limit never fails
-- fresh ones with it. A batch's event stays under p_max_bytes (each message
-- counted as its JSON text plus 200 bytes of envelope); one message always
-- fits (sends are capped below it). A trigger another caller is filling is
-- passed by (SKIP LOCKED), so concurrent callers never exceed its
-- max_concurrency. Returns the batches and messages written, and when a
-- waiting partial batch or a delayed message is next due (NULL: none). The
-- caller commits after each trigger: one tenant's batches never wait for
-- another's.
--
-- Bitmap scans are off: counting the trigger's outbox rows by bitmap never
-- marks deleted rows dead in the index, and after ten thousand settled
-- batches the count read them all (0.5 ms against 0.06).
CREATE FUNCTION queue_fill_trigger(p_trigger UUID, p_max_bytes INTEGER, p_max_batches INTEGER)
RETURNS TABLE (o_batches INTEGER, o_messages INTEGER, o_next_at TIMESTAMPTZ)
LANGUAGE plpgsql
SET enable_bitmapscan = off
AS $$
DECLARE
    t RECORD;
    free INTEGER;
    picked INTEGER;
    kept INTEGER;
    ids BIGINT[];
    oldest TIMESTAMPTZ;
    later TIMESTAMPTZ;
    wait INTERVAL;
    batch UUID;
BEGIN
    o_batches := 0; o_messages := 0; o_next_at := NULL;
    SELECT d.trigger_id, d.app_id, d.queue_id, d.batch_size, d.max_batch_wait_ms,
           d.max_concurrency, tr.script_id, tr.registered_by_principal, tr.name,
           a.slug, q.name AS queue_name
    INTO t
    FROM queue_trigger_details d
    JOIN triggers tr ON tr.id = d.trigger_id
    JOIN scripts s ON s.id = tr.script_id
    JOIN apps a ON a.id = d.app_id
    JOIN queues q ON q.id = d.queue_id
    WHERE d.trigger_id = p_trigger AND tr.enabled AND s.enabled
    FOR UPDATE OF d SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT LEAST(t.max_concurrency - count(*), p_max_batches) INTO free
    FROM outbox o WHERE o.trigger_id = t.trigger_id;
    wait := make_interval(secs => t.max_batch_wait_ms / 1000.0);
    WHILE free > 0 LOOP
        SELECT count(*),
               count(*) FILTER (WHERE s.depth = s.first_depth
                                  AND (s.n = 1 OR s.running <= p_max_bytes)),
               array_agg(s.id ORDER BY s.n) FILTER (WHERE s.depth = s.first_depth
                                                      AND (s.n = 1 OR s.running <= p_max_bytes)),
               min(s.vt)
        INTO picked, kept, ids, oldest
        FROM (
            SELECT v.id, v.vt, v.depth, first_value(v.depth) OVER w AS first_depth,
                   row_number() OVER w AS n,
                   sum(octet_length(v.body::text) + 200) OVER w AS running
            FROM (
                SELECT m.id, m.vt, m.depth, m.body FROM queue_messages m
                WHERE m.queue_id = t.queue_id AND m.batch_id IS NULL AND m.vt <= NOW()
                ORDER BY m.vt, m.id
                LIMIT t.batch_size
                FOR UPDATE SKIP LOCKED
            ) v
            WINDOW w AS (ORDER BY v.vt, v.id)
        ) s;
        IF picked = 0 THEN
            EXIT;
        END IF;
        IF picked = kept AND picked < t.batch_size AND oldest > NOW() - wait THEN
            -- A partial batch waits for more (or for its time).
            o_next_at := LEAST(o_next_at, oldest + wait);
            EXIT;
        END IF;
        batch := gen_random_uuid();
        WITH held AS (
            UPDATE queue_messages m
            SET batch_id = batch, receive_count = m.receive_count + 1
            WHERE m.id = ANY (ids)
            RETURNING m.id, m.body, m.receive_count, m.sent_at, m.depth
        )
        INSERT INTO outbox (id, app_id, source_kind, trigger_id, script_id,
                            run_as_principal, payload, depth)
        SELECT batch, t.app_id, 'queue', t.trigger_id, t.script_id,
               t.registered_by_principal,
               jsonb_build_object(
                   'source', 'queue', 'app', t.slug, 'app_id', t.app_id::text,
                   'queue', t.queue_name, 'queue_id', t.queue_id::text,
                   'trigger', t.name, 'trigger_id', t.trigger_id::text,
                   'messages', jsonb_agg(jsonb_build_object(
                       'id', h.id, 'body', h.body, 'receive_count', h.receive_count,
                       'sent_at', to_char(h.sent_at AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                       ORDER BY h.id)),
               max(h.depth)
        FROM held h;
        free := free - 1;
        o_batches := o_batches + 1;
        o_messages := o_messages + kept;
    END LOOP;
    -- Delayed (or backing-off) messages: when the first becomes visible.
    SELECT min(m.vt) INTO later FROM queue_messages m
    WHERE m.queue_id = t.queue_id AND m.batch_id IS NULL AND m.vt > NOW();
    o_next_at := LEAST(o_next_at, later);
    RETURN NEXT;
END;
$$;

-- Settle one batch message by message, and delete its outbox row, in one
-- transaction (the caller's): p_done are deleted (consumed); p_retry become
-- visible again after their delay, with their receive counts; p_dead are
-- deleted and returned (the caller writes their dead letters in the same
-- transaction). A message of the batch not named becomes visible again.
-- The row goes first: when it is gone already (settled before, or deleted
-- with its trigger), the batch's messages are only released, and no dead
-- message is returned, so no letter is written twice or for a trigger that
-- no longer exists.
CREATE FUNCTION queue_settle_batch(
    p_batch UUID, p_done BIGINT[], p_retry BIGINT[], p_retry_delay_ms INTEGER[],
    p_retry_count INTEGER[], p_dead BIGINT[]
) RETURNS BIGINT[]
LANGUAGE plpgsql AS $$
DECLARE
    dead BIGINT[];
BEGIN
    DELETE FROM outbox WHERE id = p_batch;
    IF NOT FOUND THEN
        UPDATE queue_messages SET batch_id = NULL WHERE batch_id = p_batch;
        RETURN '{}';
    END IF;
    DELETE FROM queue_messages WHERE batch_id = p_batch AND id = ANY (p_done);
    UPDATE queue_messages m
    SET batch_id = NULL, vt = NOW() + make_interval(secs => r.delay_ms / 1000.0),
        receive_count = GREATEST(m.receive_count, r.receives)
    FROM unnest(p_retry, p_retry_delay_ms, p_retry_count) AS r(id, delay_ms, receives)
    WHERE m.batch_id = p_batch AND m.id = r.id;
    WITH gone AS (
        DELETE FROM queue_messages WHERE batch_id = p_batch AND id = ANY (p_dead) RETURNING id
    )
    SELECT COALESCE(array_agg(id ORDER BY id), '{}') INTO dead FROM gone;
    UPDATE queue_messages SET batch_id = NULL WHERE batch_id = p_batch;
    RETURN dead;
END;
$$;
