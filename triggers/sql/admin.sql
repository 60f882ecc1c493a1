-- Named queries of the triggers' admin pages (triggers/admin.py).

-- pending_rows --
-- Each listed trigger's pending outbox rows, counted up to %(cap)s: one
-- range of outbox_trigger_idx per trigger, read no further (LIMIT), so a
-- page of the list reads at most its triggers x %(cap)s index entries
-- however long the backlog grows. A count of %(cap)s means "at least";
-- the page then shows the planner's estimate instead.
SELECT t.id AS trigger_id,
       (SELECT count(*) FROM (
           SELECT 1 FROM outbox o WHERE o.trigger_id = t.id LIMIT %(cap)s
       ) c) AS pending
FROM unnest(%(ids)s::uuid[]) AS t(id);
