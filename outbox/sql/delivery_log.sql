-- Named queries of the delivery log (outbox/storage/pg_delivery_log.py);
-- the tables and functions are 0008_delivery_log.sql.

-- write --
SELECT delivery_log_write(%(attempts)s::json) AS written;

-- add_minutes --
-- One process's counts of the last second or so; sorted by key, so two
-- processes adding the same minutes lock them in the same order.
INSERT INTO delivery_minutes AS m (app_id, minute, succeeded, failed)
SELECT * FROM unnest(%(apps)s::uuid[], %(minutes)s::timestamptz[],
                     %(succeeded)s::integer[], %(failed)s::integer[])
ORDER BY 1, 2
ON CONFLICT (app_id, minute) DO UPDATE
SET succeeded = m.succeeded + EXCLUDED.succeeded, failed = m.failed + EXCLUDED.failed;

-- add_hours --
-- The histograms come as one flat array, %(width)s buckets a trigger.
INSERT INTO trigger_hours AS h (trigger_id, hour, app_id, succeeded, failed,
                                last_success_at, last_failure_at, durations)
SELECT t.trigger_id, t.hour, t.app_id, t.succeeded, t.failed, t.last_ok, t.last_failed,
       (%(durations)s::integer[])[(t.n - 1) * %(width)s + 1 : t.n * %(width)s]
FROM unnest(%(triggers)s::uuid[], %(hours)s::timestamptz[], %(apps)s::uuid[],
            %(succeeded)s::integer[], %(failed)s::integer[],
            %(last_ok)s::timestamptz[], %(last_failed)s::timestamptz[])
     WITH ORDINALITY AS t(trigger_id, hour, app_id, succeeded, failed, last_ok, last_failed, n)
ORDER BY 1, 2
ON CONFLICT (trigger_id, hour) DO UPDATE
SET succeeded = h.succeeded + EXCLUDED.succeeded,
    failed = h.failed + EXCLUDED.failed,
    last_success_at = GREATEST(h.last_success_at, EXCLUDED.last_success_at),
    last_failure_at = GREATEST(h.last_failure_at, EXCLUDED.last_failure_at),
    durations = ARRAY(SELECT a + b FROM unnest(h.durations, EXCLUDED.durations) AS d(a, b));

-- make_partitions --
SELECT p AS name FROM delivery_log_make_partitions(%(ahead)s) AS p;

-- expired --
SELECT p AS name FROM delivery_log_expired(%(ok_days)s, %(failed_days)s) AS p;

-- drop_default_expired --
-- Rows that waited in a default partition past their retention (the days
-- they belong to were never created): few, deleted as rows.
WITH ok AS (
    DELETE FROM delivery_log_ok_default
    WHERE started_at < date_trunc('day', NOW() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                       - make_interval(days => %(ok_days)s)
    RETURNING 1
), failed AS (
    DELETE FROM delivery_log_failed_default
    WHERE started_at < date_trunc('day', NOW() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                       - make_interval(days => %(failed_days)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM ok) + (SELECT count(*) FROM failed) AS deleted;

-- drop_rollups --
-- The rollups and samples older than anything the pages show: per trigger
-- and hour, the longer retention (a trigger's last failure is read from
-- them); per minute, the dashboard's day and a margin.
WITH minutes AS (
    DELETE FROM delivery_minutes WHERE minute < NOW() - make_interval(days => %(minute_days)s)
    RETURNING 1
), hours AS (
    DELETE FROM trigger_hours WHERE hour < NOW() - make_interval(days => %(days)s)
    RETURNING 1
), samples AS (
    DELETE FROM outbox_samples WHERE minute < NOW() - make_interval(days => %(minute_days)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM minutes) + (SELECT count(*) FROM hours)
       + (SELECT count(*) FROM samples) AS deleted;

-- sample_backlog --
-- Each app's rows due now and its oldest due row, for this minute: the
-- first host to sample a minute does the counting (a transaction-scoped
-- try-lock keeps two from counting at once); the others find the minute
-- sampled and count nothing. Apps are found by a skip scan of
-- outbox_app_due_idx, as the claim walks them.
WITH RECURSIVE go AS (
    SELECT 1 WHERE pg_try_advisory_xact_lock(1869968483, 2)
      AND NOT EXISTS (SELECT 1 FROM outbox_samples WHERE minute = date_trunc('minute', NOW()))
), ring(app_id) AS (
    (SELECT o.app_id FROM outbox o WHERE EXISTS (SELECT 1 FROM go) ORDER BY o.app_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.app_id FROM outbox o WHERE o.app_id > r.app_id ORDER BY o.app_id LIMIT 1)
    FROM ring r
    WHERE r.app_id IS NOT NULL
)
INSERT INTO outbox_samples (app_id, minute, due, oldest_due_at)
SELECT r.app_id, date_trunc('minute', NOW()),
       (SELECT count(*) FROM outbox o WHERE o.app_id = r.app_id AND o.due_at <= NOW()),
       (SELECT min(o.due_at) FROM outbox o WHERE o.app_id = r.app_id AND o.due_at <= NOW())
FROM ring r
WHERE r.app_id IS NOT NULL
ON CONFLICT (app_id, minute) DO NOTHING;
