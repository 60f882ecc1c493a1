-- The delivery log: one row per attempt of every outbox row, successes
-- included, and the rollups admin's health columns and dashboard read.
--
-- Written by the dispatcher in the statements that settle what ran (a
-- success's row goes in the statement that acknowledges it, a retry's or a
-- dead letter's in the transaction that records it), so an attempt is
-- logged exactly when its outcome is. No foreign keys: the log outlives the
-- triggers and scripts it names, and a key check per attempt would cost the
-- dispatcher's hot path.
--
-- Partitioned twice: by whether the attempt failed (failures are kept
-- longer), then by day of started_at (UTC). Retention drops whole days, so
-- there is never a mass DELETE and no bloat for autovacuum to chase.
-- delivery_log_maintain() below creates days ahead and drops expired ones;
-- the dispatcher hosts call it every hour. A row for a day that has no
-- partition (a cluster stopped for longer than the days made ahead) lands
-- in the default partition and moves to its day's when that is created:
-- nothing is refused.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE TABLE delivery_log (
    outbox_id    UUID NOT NULL,  -- the idempotency key handlers see
    app_id       UUID NOT NULL,
    trigger_id   UUID,           -- NULL for invocations
    script_id    UUID NOT NULL,
    source_kind  TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    duration_ms  INTEGER NOT NULL CHECK (duration_ms >= 0),
    -- What the attempt did.
    outcome      TEXT NOT NULL
        CHECK (outcome IN ('success', 'error', 'timeout', 'unauthorized', 'lost')),
    -- What the dispatcher did with the row then: finished (acknowledged, or
    -- answered to a synchronous caller), retry later, dead letter, or given
    -- up without one (a failing dead-letter handler resolves its letter).
    disposition  TEXT NOT NULL
        CHECK (disposition IN ('done', 'retry', 'dead_letter', 'given_up')),
    failed       BOOLEAN NOT NULL,
    status_code  SMALLINT,       -- the endpoint's HTTP status, or the one a caller was told
    event_key    TEXT,           -- what the event was about (a KV key, a topic...), for search
    detail       TEXT NOT NULL DEFAULT '',  -- the first 4 KB of the answer or the error
    CHECK (failed = (outcome <> 'success'))
) PARTITION BY LIST (failed);

CREATE TABLE delivery_log_ok PARTITION OF delivery_log
    FOR VALUES IN (FALSE) PARTITION BY RANGE (started_at);
CREATE TABLE delivery_log_failed PARTITION OF delivery_log
    FOR VALUES IN (TRUE) PARTITION BY RANGE (started_at);
CREATE TABLE delivery_log_ok_default PARTITION OF delivery_log_ok DEFAULT;
CREATE TABLE delivery_log_failed_default PARTITION OF delivery_log_failed DEFAULT;

-- A trigger's attempts, newest first (its admin page); an app's (the
-- log's page, scoped to the user's apps); one outbox row's (from a dead
-- letter, or a search by id); an event's key (a search by key).
CREATE INDEX delivery_log_trigger_idx ON delivery_log (trigger_id, started_at DESC)
    WHERE trigger_id IS NOT NULL;
CREATE INDEX delivery_log_app_idx ON delivery_log (app_id, started_at DESC);
CREATE INDEX delivery_log_outbox_idx ON delivery_log (outbox_id);
CREATE INDEX delivery_log_key_idx ON delivery_log (app_id, event_key)
    WHERE event_key IS NOT NULL;

-- What an event was about, to find its attempts by: the KV entry
-- (collection/key), the topic, the message's Message-ID, the dead letter.
CREATE FUNCTION delivery_log_event_key(p_kind TEXT, p_payload JSONB) RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(NULLIF(CASE p_kind
        WHEN 'kv' THEN (p_payload ->> 'collection') || '/' || (p_payload ->> 'key')
        WHEN 'pubsub' THEN p_payload ->> 'topic'
        WHEN 'email' THEN p_payload ->> 'message_id'
        WHEN 'dead_letter' THEN p_payload ->> 'dead_letter_id'
    END, ''), 512);
$$;

-- Writes attempts given as a JSON array of objects (one parameter,
-- whatever their number): the retries, dead letters and queue batches the
-- dispatcher settles one by one, in the transaction that records each
-- (the event key comes computed, by the Python twin of
-- delivery_log_event_key). Attempts that succeeded for a trigger set to
-- log failures only are left out here, where the trigger is one index
-- lookup away.
CREATE FUNCTION delivery_log_write(p_attempts JSON) RETURNS INTEGER
LANGUAGE sql AS $$
    WITH written AS (
        INSERT INTO delivery_log (outbox_id, app_id, trigger_id, script_id, source_kind,
                                  attempt, started_at, duration_ms, outcome, disposition,
                                  failed, status_code, event_key, detail)
        SELECT a.outbox_id, a.app_id, a.trigger_id, a.script_id, a.source_kind,
               a.attempt, a.started_at, a.duration_ms, a.outcome, a.disposition,
               a.outcome <> 'success', a.status_code, a.event_key, a.detail
        FROM json_to_recordset(p_attempts) AS a(
            outbox_id UUID, app_id UUID, trigger_id UUID, script_id UUID, source_kind TEXT,
            attempt INTEGER, started_at TIMESTAMPTZ, duration_ms INTEGER, outcome TEXT,
            disposition TEXT, status_code SMALLINT, event_key TEXT, detail TEXT)
        WHERE a.outcome <> 'success' OR a.trigger_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM triggers t WHERE t.id = a.trigger_id AND t.log_failures_only
        )
        RETURNING 1
    )
    SELECT count(*)::INTEGER FROM written;
$$;

-- Acknowledges rows that are done and logs their attempts, in one
-- statement: the dispatcher's hot path (it runs in the claim that follows,
-- outbox_claim_logged). Everything about a row comes from the row as it is
-- deleted; the dispatcher sends only what it measured, as arrays in the
-- order of p_ids: when each attempt started (epoch seconds) and how long it
-- took, and, only when one of them is not a plain success, the outcomes,
-- HTTP statuses and answers (NULL arrays: success, no status, no answer).
CREATE FUNCTION delivery_log_ack(
    p_ids UUID[], p_started DOUBLE PRECISION[], p_ms INTEGER[],
    p_outcomes TEXT[], p_statuses INTEGER[], p_details TEXT[]
) RETURNS INTEGER
LANGUAGE sql AS $$
    WITH attempts AS (
        SELECT a.id, a.started, a.ms, COALESCE(p_outcomes[a.n], 'success') AS outcome,
               p_statuses[a.n] AS status, COALESCE(p_details[a.n], '') AS detail
        FROM unnest(p_ids, p_started, p_ms) WITH ORDINALITY AS a(id, started, ms, n)
    ), acked AS (
        DELETE FROM outbox o USING attempts a
        WHERE o.id = a.id
        RETURNING o.id, o.app_id, o.trigger_id, o.script_id, o.source_kind, o.attempts,
                  o.payload, a.started, a.ms, a.outcome, a.status, a.detail
    ), written AS (
        INSERT INTO delivery_log (outbox_id, app_id, trigger_id, script_id, source_kind,
                                  attempt, started_at, duration_ms, outcome, disposition,
                                  failed, status_code, event_key, detail)
        SELECT k.id, k.app_id, k.trigger_id, k.script_id, k.source_kind, k.attempts,
               to_timestamp(k.started), k.ms, k.outcome, 'done', k.outcome <> 'success',
               k.status, delivery_log_event_key(k.source_kind, k.payload), k.detail
        FROM acked k
        WHERE k.outcome <> 'success' OR k.trigger_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM triggers t WHERE t.id = k.trigger_id AND t.log_failures_only
        )
        RETURNING 1
    )
    SELECT (SELECT count(*)::INTEGER FROM acked);
$$;

-- The name of one day's partition.
CREATE FUNCTION delivery_log_partition(p_failed BOOLEAN, p_day DATE) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('delivery_log_%s_%s',
                  CASE WHEN p_failed THEN 'failed' ELSE 'ok' END, to_char(p_day, 'YYYYMMDD'));
$$;

-- Create the partitions of today (UTC) and p_ahead days after it, and of
-- yesterday (an attempt started before midnight is logged after it). A new
-- day's rows that waited in the default partition move into it. Returns the
-- partitions created. One caller at a time (an advisory try-lock): every
-- dispatcher host runs this, and one that finds another at it makes none.
CREATE FUNCTION delivery_log_make_partitions(p_ahead INTEGER) RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    today DATE := (NOW() AT TIME ZONE 'UTC')::DATE;
    day DATE;
    f BOOLEAN;
    parent TEXT;
    part TEXT;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1869968483, 1) THEN
        RETURN;  -- another host is making them
    END IF;
    FOREACH f IN ARRAY ARRAY[FALSE, TRUE] LOOP
        parent := CASE WHEN f THEN 'delivery_log_failed' ELSE 'delivery_log_ok' END;
        FOR i IN -1..p_ahead LOOP
            day := today + i;
            part := delivery_log_partition(f, day);
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            -- Built apart and attached: ATTACH takes a lock on the parent
            -- that lets inserts and reads go on (CREATE ... PARTITION OF
            -- would stop them).
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           part, parent);
            EXECUTE format(
                'WITH moved AS (DELETE FROM %I WHERE started_at >= %L AND started_at < %L RETURNING *) '
                'INSERT INTO %I SELECT * FROM moved',
                parent || '_default',
                (day::TIMESTAMP AT TIME ZONE 'UTC'), ((day + 1)::TIMESTAMP AT TIME ZONE 'UTC'),
                part);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part,
                           (day::TIMESTAMP AT TIME ZONE 'UTC'),
                           ((day + 1)::TIMESTAMP AT TIME ZONE 'UTC'));
            RETURN NEXT part;
        END LOOP;
    END LOOP;
END;
$$;

-- Day partitions wholly older than their retention (days before today,
-- UTC): the caller drops them one by one, each in its own short statement.
CREATE FUNCTION delivery_log_expired(p_ok_days INTEGER, p_failed_days INTEGER)
RETURNS SETOF TEXT
LANGUAGE sql STABLE AS $$
    SELECT c.relname::TEXT
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE p.relname IN ('delivery_log_ok', 'delivery_log_failed')
      AND c.relname ~ '_[0-9]{8}$'
      AND to_date(right(c.relname, 8), 'YYYYMMDD') + 1
          <= (NOW() AT TIME ZONE 'UTC')::DATE
             - CASE WHEN p.relname = 'delivery_log_failed' THEN p_failed_days ELSE p_ok_days END
    ORDER BY 1;
$$;

-- Per app and minute: attempts that succeeded and failed (the dashboard's
-- charts). Per trigger and hour: the same, when each last succeeded and
-- failed, and a histogram of durations (admin's health columns; a p95 is
-- read off its buckets). Every dispatcher process adds what it settled
-- about once a second; they count every attempt, whether or not its trigger
-- logs successes.
CREATE TABLE delivery_minutes (
    app_id     UUID NOT NULL,
    minute     TIMESTAMPTZ NOT NULL,
    succeeded  INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, minute)
);
CREATE INDEX delivery_minutes_minute_idx ON delivery_minutes (minute);

CREATE TABLE trigger_hours (
    trigger_id       UUID NOT NULL,
    hour             TIMESTAMPTZ NOT NULL,
    app_id           UUID NOT NULL,
    succeeded        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    last_success_at  TIMESTAMPTZ,
    last_failure_at  TIMESTAMPTZ,
    -- Attempts per duration bucket (bounds in outbox/storage/delivery_log.py).
    durations        INTEGER[] NOT NULL,
    PRIMARY KEY (trigger_id, hour)
);
CREATE INDEX trigger_hours_hour_idx ON trigger_hours (hour);

-- The backlog over time: per app and minute, rows due and the oldest due
-- row's due_at, sampled by one dispatcher host each minute.
CREATE TABLE outbox_samples (
    app_id         UUID NOT NULL,
    minute         TIMESTAMPTZ NOT NULL,
    due            INTEGER NOT NULL,
    oldest_due_at  TIMESTAMPTZ,
    PRIMARY KEY (app_id, minute)
);
CREATE INDEX outbox_samples_minute_idx ON outbox_samples (minute);

SELECT count(*) FROM delivery_log_make_partitions(7);
