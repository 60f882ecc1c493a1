-- Named queries of the dead-letter and abandoned-execution repositories.

-- insert_dead_letter --
-- No row back when dead_letters_stopped_event_key already holds this
-- stopped event (cause_outbox_id, trigger_id, the payload's collection and
-- key): a causing row's script writing one key again records nothing more,
-- and each distinct key it writes is recorded. A concurrent insert of the
-- same event waits for the first to commit, then does nothing.
INSERT INTO dead_letters (app_id, source_kind, trigger_id, script_id, run_as_principal,
                          outbox_id, cause_outbox_id, payload, last_error, errors, attempts,
                          depth)
VALUES (%(app_id)s, %(source_kind)s, %(trigger_id)s, %(script_id)s, %(run_as_principal)s,
        %(outbox_id)s, %(cause_outbox_id)s, %(payload)s::jsonb, %(last_error)s,
        %(errors)s::jsonb, %(attempts)s, %(depth)s)
ON CONFLICT (cause_outbox_id, trigger_id, (payload ->> 'collection'), md5(payload ->> 'key'))
    WHERE cause_outbox_id IS NOT NULL DO NOTHING
RETURNING *;

-- get_dead_letter --
SELECT * FROM dead_letters WHERE id = %(id)s;

-- list_dead_letters --
SELECT * FROM dead_letters
WHERE (%(app_ids)s::uuid[] IS NULL OR app_id = ANY (%(app_ids)s::uuid[]))
  AND (%(source_kind)s::text IS NULL OR source_kind = %(source_kind)s)
  AND (%(trigger_id)s::uuid IS NULL OR trigger_id = %(trigger_id)s)
  AND (%(resolved)s::boolean IS NULL OR (resolution IS NOT NULL) = %(resolved)s)
  AND (%(resolution)s::text IS NULL OR resolution = %(resolution)s)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s)
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- unresolved_count --
-- The admin badge. Only dead_letters_unresolved_idx is read: its predicate
-- (resolution IS NULL) matches, and resolved rows are not in it.
SELECT count(*) AS n FROM dead_letters
WHERE resolution IS NULL
  AND (%(app_ids)s::uuid[] IS NULL OR app_id = ANY (%(app_ids)s::uuid[]));

-- resolve --
-- "AND resolution IS NULL" makes resolving once atomic: of two concurrent
-- resolvers the second waits on the row lock, then matches nothing.
UPDATE dead_letters
SET resolution = %(resolution)s, resolved_at = NOW(), resolved_by = %(by)s, note = %(note)s
WHERE id = %(id)s AND resolution IS NULL
RETURNING *;

-- gc_dead_letters_batch --
-- One batch per statement keeps each lock short; SKIP LOCKED steps around
-- rows an operator is resolving right now.
WITH doomed AS (
    SELECT id FROM dead_letters
    WHERE (resolution IS NOT NULL AND resolved_at < %(older_than)s)
       OR (%(include_unresolved)s AND resolution IS NULL AND created_at < %(older_than)s)
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM dead_letters d USING doomed WHERE d.id = doomed.id;

-- gc_dead_letters_count --
-- What gc_dead_letters_batch would delete, for --dry-run (the same predicate).
SELECT count(*) AS n FROM dead_letters
WHERE (resolution IS NOT NULL AND resolved_at < %(older_than)s)
   OR (%(include_unresolved)s AND resolution IS NULL AND created_at < %(older_than)s);

-- insert_abandoned --
INSERT INTO abandoned_executions (app_id, outbox_id, script_id, inbox_id, status_code,
                                  result_summary)
VALUES (%(app_id)s, %(outbox_id)s, %(script_id)s, %(inbox_id)s, %(status_code)s,
        %(result_summary)s)
RETURNING *;

-- list_abandoned --
SELECT * FROM abandoned_executions
WHERE %(app_id)s::uuid IS NULL OR app_id = %(app_id)s
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- gc_abandoned_batch --
-- Served by idx_abandoned_executions_gc (created_at).
WITH doomed AS (
    SELECT id FROM abandoned_executions
    WHERE created_at < %(older_than)s
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM abandoned_executions a USING doomed WHERE a.id = doomed.id;

-- gc_abandoned_count --
SELECT count(*) AS n FROM abandoned_executions WHERE created_at < %(older_than)s;
