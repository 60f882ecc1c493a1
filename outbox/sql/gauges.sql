-- Named queries of the outbox's gauges for /metrics (outbox/storage/pg_gauges.py),
-- read at scrape time.

-- in_flight --
-- Rows in flight cluster-wide: their lease runs. Only leased rows are in the
-- partial leased indexes (0004_fair_claim.sql), so this reads rows in flight
-- and expired leases, never the backlog.
SELECT count(*) AS in_flight FROM outbox WHERE leased_until > NOW();

-- busiest_apps --
-- The %(top)s apps with the most due rows, each with its rows in flight, and
-- the same two figures summed over every other app (the row whose rank is
-- NULL). Nothing scans the whole table: the apps with rows are found by a
-- skip scan of outbox_app_due_idx (one descent per app, as the claim walks
-- them), and each app's rows are counted by its own index range, at most
-- %(count_cap)s of them: a scrape reads at most apps × %(count_cap)s
-- index entries whatever the backlog, and a figure of %(count_cap)s means
-- "at least". (ORDER BY keeps each count an ordered walk of the index that
-- stops at the cap: a bitmap scan would read the app's whole range.) Apps
-- with only future rows are left out.
WITH RECURSIVE ring(app_id) AS (
    (SELECT o.app_id FROM outbox o ORDER BY o.app_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.app_id FROM outbox o WHERE o.app_id > r.app_id ORDER BY o.app_id LIMIT 1)
    FROM ring r
    WHERE r.app_id IS NOT NULL
),
-- (MATERIALIZED: each app's counts run once, not again for the filter below.)
load AS MATERIALIZED (
    SELECT r.app_id,
           (SELECT count(*) FROM (
               SELECT 1 FROM outbox o
               WHERE o.app_id = r.app_id AND o.due_at <= NOW()
               ORDER BY o.due_at LIMIT %(count_cap)s
           ) d) AS due,
           (SELECT count(*) FROM (
               SELECT 1 FROM outbox o
               WHERE o.app_id = r.app_id AND o.leased_until > NOW()
               ORDER BY o.leased_until LIMIT %(count_cap)s
           ) f) AS in_flight
    FROM ring r
    WHERE r.app_id IS NOT NULL
),
ranked AS (
    SELECT l.*, row_number() OVER (ORDER BY l.due DESC, l.in_flight DESC, l.app_id) AS rank
    FROM load l
    WHERE l.due > 0 OR l.in_flight > 0
)
SELECT a.slug, r.due, r.in_flight, r.rank
FROM ranked r JOIN apps a ON a.id = r.app_id
WHERE r.rank <= %(top)s
UNION ALL
SELECT NULL, COALESCE(sum(r.due), 0), COALESCE(sum(r.in_flight), 0), NULL
FROM ranked r
WHERE r.rank > %(top)s;
