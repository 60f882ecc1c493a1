-- A pause, a schedule or payload edit, or a disabled trigger drops only the
-- ticks written AHEAD, those whose scheduled time is still to come.
-- 0003_cron.sql picked them by the outbox row's due_at, which is also in
-- the future for a tick that was due before the edit and has not run yet
-- but was handed back with a delay (a tick waiting for the one before it, a
-- row returned unstarted) with its attempt uncounted: the edit dropped a
-- tick that was owed. The chaos run found it (docs/reliability.md).
--
-- Rolling upgrade (docs/operations.md, "Rolling upgrades"): the same
-- function, the same signature and callers, a narrower match; no table
-- changes, so it is safe while nodes of the previous release dispatch.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE OR REPLACE FUNCTION cron_drop_pending_ticks(p_trigger UUID) RETURNS VOID
LANGUAGE sql AS $$
    WITH dropped AS (
        DELETE FROM outbox o
        USING cron_ticks k
        WHERE o.trigger_id = p_trigger AND o.source_kind = 'cron'
          AND o.leased_until IS NULL AND o.attempts = 0
          AND k.trigger_id = p_trigger AND k.outbox_id = o.id
          AND k.scheduled_at > NOW()
        RETURNING o.id
    )
    DELETE FROM cron_ticks k USING dropped d
    WHERE k.trigger_id = p_trigger AND k.outbox_id = d.id;
$$;
