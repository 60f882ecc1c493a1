-- A dead letter's outbox_id is the row that failed, on every dead letter.
-- A write stopped by the depth limit never had a row of its own: its letters
-- have outbox_id NULL and name in cause_outbox_id the row whose script made
-- the write (NULL for a write made outside scripts). A stopped write records
-- one letter per stopped trigger, each replayable as that trigger's own row.
--
-- WARNING: migrations run this file; add a new one to change it.

ALTER TABLE dead_letters ADD COLUMN cause_outbox_id UUID;

-- Letters written before this file: one per stopped cascade, for its first
-- trigger, with the causing row in outbox_id and every stopped trigger in
-- payload.stopped_trigger_ids. The causing row moves to cause_outbox_id.
-- Unresolved ones also get a letter for each other stopped trigger that still
-- exists (a deleted trigger's work went with it, as its pending rows do), and
-- every unresolved one carries the event exactly as its trigger's script would
-- have received it; resolved ones are history and keep their payload.
-- The old code checked before inserting, so a race could leave two letters
-- for one (row, trigger): only the first keeps the cause (the unique index
-- below needs that) and is split.
WITH old AS (
    SELECT d.*,
           d.outbox_id IS NOT NULL AND row_number() OVER (
               PARTITION BY d.outbox_id, d.trigger_id ORDER BY d.created_at, d.id
           ) > 1 AS duplicate
    FROM dead_letters d
    WHERE d.payload ? 'stopped_trigger_ids'
      AND d.last_error LIKE 'depth limit stopped a cascade:%'
), split AS (
    INSERT INTO dead_letters (app_id, source_kind, trigger_id, script_id, run_as_principal,
                              cause_outbox_id, payload, last_error, errors, attempts, depth,
                              created_at)
    SELECT old.app_id, old.source_kind, t.id, t.script_id, t.registered_by_principal,
           old.outbox_id, old.payload - 'stopped_trigger_ids', old.last_error, old.errors,
           old.attempts, old.depth, old.created_at
    FROM old
    CROSS JOIN LATERAL jsonb_array_elements_text(old.payload -> 'stopped_trigger_ids')
        AS stopped(trigger_id)
    JOIN triggers t ON t.id = stopped.trigger_id::uuid AND t.app_id = old.app_id
    WHERE old.resolution IS NULL
      AND NOT old.duplicate
      AND t.id IS DISTINCT FROM old.trigger_id
)
UPDATE dead_letters d
SET cause_outbox_id = CASE WHEN old.duplicate THEN NULL ELSE old.outbox_id END,
    outbox_id = NULL,
    payload = CASE
        WHEN old.resolution IS NULL THEN old.payload - 'stopped_trigger_ids'
        ELSE old.payload
    END
FROM old
WHERE d.id = old.id;

-- A script writing in a loop past the limit records each stopped trigger
-- once per causing row: the insert is ON CONFLICT DO NOTHING on this index.
CREATE UNIQUE INDEX dead_letters_cause_trigger_key ON dead_letters (cause_outbox_id, trigger_id)
    WHERE cause_outbox_id IS NOT NULL;

-- Its only query ("a dead letter for this causing row?") is gone; the unique
-- index above answers that question now.
DROP INDEX dead_letters_outbox_idx;
