-- Named queries admin reads of the delivery log and its rollups
-- (outbox/storage/delivery_reads.py). A NULL %(apps)s means every app.
-- `/*where*/ TRUE` is replaced by the page's filters (written by the
-- module, values always as parameters).

-- attempts_direct --
-- One outbox row's attempts, or one trigger's: served by
-- delivery_log_outbox_idx or delivery_log_trigger_idx.
SELECT d.*, a.slug AS app_slug, t.name AS trigger_name, s.name AS script_name
FROM delivery_log d
JOIN apps a ON a.id = d.app_id
LEFT JOIN triggers t ON t.id = d.trigger_id
LEFT JOIN scripts s ON s.id = d.script_id
WHERE /*where*/ TRUE
ORDER BY d.started_at DESC, d.outbox_id DESC, d.attempt DESC
LIMIT %(limit)s;

-- attempts_per_app --
-- Newest first across the apps in scope: for each app an ordered walk of
-- delivery_log_app_idx (or, searching a key, delivery_log_key_idx) that
-- stops at the page's end, then the apps' pages merged. Apps that no longer
-- exist are not shown (their rows wait for retention).
SELECT l.*, a.slug AS app_slug, t.name AS trigger_name, s.name AS script_name
FROM apps a
CROSS JOIN LATERAL (
    SELECT d.*
    FROM delivery_log d
    WHERE d.app_id = a.id AND /*where*/ TRUE
    ORDER BY d.started_at DESC, d.outbox_id DESC, d.attempt DESC
    LIMIT %(limit)s
) l
LEFT JOIN triggers t ON t.id = l.trigger_id
LEFT JOIN scripts s ON s.id = l.script_id
WHERE %(apps)s::uuid[] IS NULL OR a.id = ANY (%(apps)s::uuid[])
ORDER BY l.started_at DESC, l.outbox_id DESC, l.attempt DESC
LIMIT %(limit)s;

-- attempts_direct_window --
-- As attempts_direct, with filters no index serves (/*post*/): only the
-- newest %(window)s attempts are looked at; the matching ones come back
-- (at most %(limit)s), and the last one looked at, marked window_end, says
-- where the next page goes on.
SELECT w.*, a.slug AS app_slug, t.name AS trigger_name, s.name AS script_name
FROM (
    SELECT x.*, sum(x.matches::int) OVER o AS match_n, row_number() OVER o = %(window)s AS window_end
    FROM (
        SELECT d.*, (/*post*/ TRUE) AS matches
        FROM (
            SELECT d.* FROM delivery_log d
            WHERE /*where*/ TRUE
            ORDER BY d.started_at DESC, d.outbox_id DESC, d.attempt DESC
            LIMIT %(window)s
        ) d
    ) x
    WINDOW o AS (ORDER BY x.started_at DESC, x.outbox_id DESC, x.attempt DESC)
) w
JOIN apps a ON a.id = w.app_id
LEFT JOIN triggers t ON t.id = w.trigger_id
LEFT JOIN scripts s ON s.id = w.script_id
WHERE (w.matches AND w.match_n <= %(limit)s) OR w.window_end;

-- attempts_per_app_window --
-- As attempts_per_app, with filters no index serves: per app, the newest
-- %(window)s attempts looked at, as in attempts_direct_window.
SELECT w.*, a.slug AS app_slug, t.name AS trigger_name, s.name AS script_name
FROM apps a
CROSS JOIN LATERAL (
    SELECT x.*, sum(x.matches::int) OVER o AS match_n, row_number() OVER o = %(window)s AS window_end
    FROM (
        SELECT d.*, (/*post*/ TRUE) AS matches
        FROM (
            SELECT d.* FROM delivery_log d
            WHERE d.app_id = a.id AND /*where*/ TRUE
            ORDER BY d.started_at DESC, d.outbox_id DESC, d.attempt DESC
            LIMIT %(window)s
        ) d
    ) x
    WINDOW o AS (ORDER BY x.started_at DESC, x.outbox_id DESC, x.attempt DESC)
) w
LEFT JOIN triggers t ON t.id = w.trigger_id
LEFT JOIN scripts s ON s.id = w.script_id
WHERE (%(apps)s::uuid[] IS NULL OR a.id = ANY (%(apps)s::uuid[]))
  AND ((w.matches AND w.match_n <= %(limit)s) OR w.window_end);

-- trigger_last --
-- When each trigger last succeeded and failed, over the rollups kept.
SELECT trigger_id, max(last_success_at) AS last_success_at,
       max(last_failure_at) AS last_failure_at
FROM trigger_hours
WHERE trigger_id = ANY (%(ids)s::uuid[])
GROUP BY trigger_id;

-- trigger_window --
SELECT trigger_id, succeeded, failed, durations
FROM trigger_hours
WHERE trigger_id = ANY (%(ids)s::uuid[]) AND hour >= date_trunc('hour', %(since)s::timestamptz);

-- minutes_total --
SELECT minute, sum(succeeded)::BIGINT AS succeeded, sum(failed)::BIGINT AS failed
FROM delivery_minutes
WHERE minute >= date_trunc('minute', %(since)s::timestamptz)
  AND (%(apps)s::uuid[] IS NULL OR app_id = ANY (%(apps)s::uuid[]))
GROUP BY minute;

-- apps_ranked --
SELECT m.app_id, a.slug, sum(m.succeeded + m.failed)::BIGINT AS total
FROM delivery_minutes m
JOIN apps a ON a.id = m.app_id
WHERE m.minute >= date_trunc('minute', %(since)s::timestamptz)
  AND (%(apps)s::uuid[] IS NULL OR m.app_id = ANY (%(apps)s::uuid[]))
GROUP BY m.app_id, a.slug
ORDER BY total DESC, a.slug;

-- minutes_per_app --
SELECT app_id, minute, succeeded, failed
FROM delivery_minutes
WHERE app_id = ANY (%(apps)s::uuid[]) AND minute >= date_trunc('minute', %(since)s::timestamptz);

-- samples --
SELECT minute, sum(due)::BIGINT AS due, min(oldest_due_at) AS oldest_due_at
FROM outbox_samples
WHERE minute >= date_trunc('minute', %(since)s::timestamptz)
  AND (%(apps)s::uuid[] IS NULL OR app_id = ANY (%(apps)s::uuid[]))
GROUP BY minute;

-- failing_triggers --
SELECT h.trigger_id, t.name AS trigger_name, a.slug AS app_slug,
       sum(h.failed)::BIGINT AS failed, sum(h.succeeded)::BIGINT AS succeeded,
       max(h.last_failure_at) AS last_failure_at
FROM trigger_hours h
JOIN triggers t ON t.id = h.trigger_id
JOIN apps a ON a.id = h.app_id
WHERE h.hour >= date_trunc('hour', %(since)s::timestamptz)
  AND (%(apps)s::uuid[] IS NULL OR h.app_id = ANY (%(apps)s::uuid[]))
GROUP BY h.trigger_id, t.name, a.slug
HAVING sum(h.failed) > 0
ORDER BY failed DESC, t.name
LIMIT %(limit)s;
