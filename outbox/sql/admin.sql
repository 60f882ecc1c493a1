-- Named queries of the outbox's admin pages (outbox/admin.py).

-- backlog_by_app --
-- The outbox page's backlog: the %(top)s apps among %(app_ids)s (NULL:
-- every app) whose oldest due row has waited longest (then those with only
-- future rows), each with its rows and its due rows counted up to
-- %(cap)s, and how many other apps have rows. Nothing reads the whole
-- table: the apps with rows are found by a skip scan of outbox_app_due_idx
-- (one descent per app, as the claim walks them), an app's oldest row is
-- the first entry of its range, and the counts read at most %(cap)s
-- entries of it (ORDER BY keeps each an ordered walk that stops there; a
-- bitmap scan would read the whole range). A count of %(cap)s means "at
-- least": the page then shows the planner's estimate.
WITH RECURSIVE ring(app_id) AS (
    (SELECT o.app_id FROM outbox o ORDER BY o.app_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.app_id FROM outbox o WHERE o.app_id > r.app_id ORDER BY o.app_id LIMIT 1)
    FROM ring r
    WHERE r.app_id IS NOT NULL
),
listed AS MATERIALIZED (
    SELECT r.app_id FROM ring r WHERE r.app_id IS NOT NULL AND %(app_ids)s::uuid[] IS NULL
    UNION ALL
    SELECT a.app_id FROM unnest(%(app_ids)s::uuid[]) AS a(app_id)
),
oldest AS MATERIALIZED (
    SELECT l.app_id,
           (SELECT o.due_at FROM outbox o WHERE o.app_id = l.app_id
            ORDER BY o.due_at LIMIT 1) AS first_due_at
    FROM listed l
),
ranked AS MATERIALIZED (
    SELECT o.app_id, o.first_due_at,
           row_number() OVER (ORDER BY o.first_due_at, o.app_id) AS rank
    FROM oldest o
    WHERE o.first_due_at IS NOT NULL
)
SELECT a.id AS app_id, a.slug,
       CASE WHEN r.first_due_at <= NOW() THEN r.first_due_at END AS oldest_due,
       (SELECT count(*) FROM (
           SELECT 1 FROM outbox o WHERE o.app_id = r.app_id
           ORDER BY o.due_at LIMIT %(cap)s
       ) t) AS total,
       (SELECT count(*) FROM (
           SELECT 1 FROM outbox o WHERE o.app_id = r.app_id AND o.due_at <= NOW()
           ORDER BY o.due_at LIMIT %(cap)s
       ) d) AS due,
       (SELECT count(*) FROM ranked) AS apps
FROM ranked r JOIN apps a ON a.id = r.app_id
WHERE r.rank <= %(top)s
ORDER BY r.rank;
