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
-- The old code checked before inserting, so a race could record one row's
-- cascade twice, from another first trigger or another first write. Of the
-- letters that would hold one stopped event (the unique index below), the
-- first keeps the cause: an existing letter before a split one, then the
-- oldest. A later existing one loses its cause; a later split one is not made.
WITH old AS (
    SELECT d.*
    FROM dead_letters d
    WHERE d.payload ? 'stopped_trigger_ids'
      AND d.last_error LIKE 'depth limit stopped a cascade:%'
), wanted AS (
    SELECT old.id AS old_id, old.trigger_id, old.script_id, old.run_as_principal,
           TRUE AS existing
    FROM old
    UNION ALL
    SELECT old.id, t.id, t.script_id, t.registered_by_principal, FALSE
    FROM old
    CROSS JOIN LATERAL jsonb_array_elements_text(old.payload -> 'stopped_trigger_ids')
        AS stopped(trigger_id)
    JOIN triggers t ON t.id = stopped.trigger_id::uuid AND t.app_id = old.app_id
    WHERE old.resolution IS NULL
      AND t.id IS DISTINCT FROM old.trigger_id
), ranked AS (
    SELECT wanted.*,
           old.outbox_id IS NOT NULL AND row_number() OVER (
               PARTITION BY old.outbox_id, wanted.trigger_id,
                            old.payload ->> 'collection', old.payload ->> 'key'
               ORDER BY wanted.existing DESC, old.created_at, old.id
           ) > 1 AS duplicate
    FROM wanted
    JOIN old ON old.id = wanted.old_id
), split AS (
    INSERT INTO dead_letters (app_id, source_kind, trigger_id, script_id, run_as_principal,
                              cause_outbox_id, payload, last_error, errors, attempts, depth,
                              created_at)
    SELECT old.app_id, old.source_kind, ranked.trigger_id, ranked.script_id,
           ranked.run_as_principal, old.outbox_id, old.payload - 'stopped_trigger_ids',
           old.last_error, old.errors, old.attempts, old.depth, old.created_at
    FROM ranked
    JOIN old ON old.id = ranked.old_id
    WHERE NOT ranked.existing
      AND NOT ranked.duplicate
)
UPDATE dead_letters d
SET cause_outbox_id = CASE WHEN ranked.duplicate THEN NULL ELSE old.outbox_id END,
    outbox_id = NULL,
    payload = CASE
        WHEN old.resolution IS NULL THEN old.payload - 'stopped_trigger_ids'
        ELSE old.payload
    END
FROM ranked
JOIN old ON old.id = ranked.old_id
WHERE ranked.existing
  AND d.id = ranked.old_id;

-- One letter per stopped event: a script writing in a loop past the limit
-- records each (trigger, collection, key) once per causing row, and every
-- distinct key it wrote; the insert is ON CONFLICT DO NOTHING on this index.
-- The key is indexed by its md5, so an entry stays small whatever the key
-- (up to 1024 characters, 4 KiB of UTF-8; a btree entry holds 2704 bytes).
-- A letter whose payload names no collection or key is never merged: NULLs
-- never conflict in a unique index.
CREATE UNIQUE INDEX dead_letters_stopped_event_key
    ON dead_letters (cause_outbox_id, trigger_id, (payload ->> 'collection'),
                     md5(payload ->> 'key'))
    WHERE cause_outbox_id IS NOT NULL;

-- Its only query ("a dead letter for this causing row?") is gone; the unique
-- index above answers that question now.
DROP INDEX dead_letters_outbox_idx;
