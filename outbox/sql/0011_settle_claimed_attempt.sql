-- Rescheduling a retry only while the row is still the claim that ran it.
-- A settle whose COMMIT answer was lost (the connection broke after the
-- server committed) is settled again by the dispatcher; the unconditional
-- reschedule of the previous release matched the row again and logged the
-- attempt twice. Here the second settle matches nothing, and the caller
-- writes no second log entry. (Queue batches: triggers/sql/0007.)
--
-- Rolling upgrade (docs/operations.md, "Rolling upgrades"): a new function
-- beside the released queries. Nodes of the previous release keep running
-- their unconditional UPDATE; no table, column or index changes, so this
-- takes no lock on any table and is safe while those nodes dispatch.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- Make a claimed row due again at p_due_at after a failed attempt, with
-- p_error appended to its errors (the newest p_max_errors kept). Only the
-- claim that made attempt p_attempt may: the row must still hold that
-- attempt and its lease. A reschedule clears the lease, so the same settle
-- twice matches once; another claim bumps attempts, so a settle arriving
-- after the row was taken again matches nothing. p_attempt NULL: any row
-- (tools and tests that reschedule a row they did not claim). Returns
-- whether the row was rescheduled.
CREATE FUNCTION outbox_reschedule_claimed(
    p_id UUID,
    p_attempt INTEGER,
    p_due_at TIMESTAMPTZ,
    p_error TEXT,
    p_max_errors INTEGER
) RETURNS BOOLEAN
LANGUAGE sql AS $$
    WITH moved AS (
        UPDATE outbox
        SET due_at = p_due_at,
            leased_until = NULL,
            last_error = p_error,
            errors = (
                SELECT COALESCE(jsonb_agg(e ORDER BY n), '[]'::jsonb)
                FROM jsonb_array_elements(errors || jsonb_build_array(p_error))
                     WITH ORDINALITY AS x(e, n)
                WHERE n > jsonb_array_length(errors) + 1 - p_max_errors
            )
        WHERE id = p_id
          AND (p_attempt IS NULL OR (attempts = p_attempt AND leased_until IS NOT NULL))
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM moved);
$$;
