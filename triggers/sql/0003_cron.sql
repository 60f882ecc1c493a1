-- Cron triggers (docs/triggers.md): a schedule per trigger, and one row per
-- tick ever written, keyed by (trigger, scheduled time), so no number of
-- clusters or restarts can write a tick twice.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE TABLE cron_trigger_details (
    trigger_id        UUID PRIMARY KEY REFERENCES triggers(id) ON DELETE CASCADE,
    -- Five cron fields, six with seconds first, or an @alias;
    -- triggers.schedule.Schedule.parse checks it (and says what is wrong).
    schedule          TEXT NOT NULL CHECK (char_length(schedule) BETWEEN 1 AND 200),
    -- An IANA name; the same parser checks it.
    timezone          TEXT NOT NULL DEFAULT 'UTC' CHECK (char_length(timezone) BETWEEN 1 AND 64),
    catchup           TEXT NOT NULL DEFAULT 'latest' CHECK (catchup IN ('skip', 'latest', 'all')),
    catchup_window_s  INTEGER NOT NULL DEFAULT 21600 CHECK (catchup_window_s BETWEEN 0 AND 604800),
    overlap           TEXT NOT NULL DEFAULT 'skip'
        CHECK (overlap IN ('skip', 'buffer_one', 'allow')),
    paused            BOOLEAN NOT NULL DEFAULT FALSE,
    -- Merged into every tick's event.
    payload           JSONB NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(payload) = 'object'),
    -- The latest tick written or given up; ticks after it are still to come.
    -- Set to the moment of creation, of a schedule change, of a resume or
    -- of a re-enable: no tick before those is owed.
    watermark         TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    -- When the next tick after the watermark falls (NULL: not computed yet);
    -- the ticker reads only triggers whose next tick is near.
    next_tick_at      TIMESTAMPTZ,
    -- Counted by the ticker: ticks the catch-up policy gave up.
    missed_ticks      BIGINT NOT NULL DEFAULT 0 CHECK (missed_ticks >= 0)
);
CREATE INDEX cron_trigger_details_next_tick_idx
    ON cron_trigger_details (next_tick_at) WHERE NOT paused;

-- Every tick written as an outbox row; a run-now click is a tick of its own
-- at the moment of the click. Kept for the trigger's history (last fire);
-- the ticker prunes keys older than 8 days (each trigger's latest stays).
CREATE TABLE cron_ticks (
    trigger_id    UUID NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
    scheduled_at  TIMESTAMPTZ NOT NULL,
    outbox_id     UUID NOT NULL DEFAULT gen_random_uuid(),
    run_now       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (trigger_id, scheduled_at)
);
CREATE INDEX cron_ticks_created_idx ON cron_ticks (created_at);

-- A schedule (or payload) that changes, a pause, or a trigger disabled: ticks written
-- ahead that have not started are dropped (they were written for what no
-- longer holds), and the watermark moves to now, so no tick of the time in
-- between is owed (a pause is not downtime; catch-up is for downtime).
CREATE FUNCTION cron_drop_pending_ticks(p_trigger UUID) RETURNS VOID
LANGUAGE sql AS $$
    WITH dropped AS (
        DELETE FROM outbox o
        WHERE o.trigger_id = p_trigger AND o.source_kind = 'cron'
          AND o.leased_until IS NULL AND o.attempts = 0 AND o.due_at > NOW()
        RETURNING o.id
    )
    DELETE FROM cron_ticks k USING dropped d
    WHERE k.trigger_id = p_trigger AND k.outbox_id = d.id;
$$;

CREATE FUNCTION cron_details_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.schedule IS DISTINCT FROM OLD.schedule
       OR NEW.timezone IS DISTINCT FROM OLD.timezone
       OR NEW.payload IS DISTINCT FROM OLD.payload
       OR NEW.paused IS DISTINCT FROM OLD.paused THEN
        PERFORM cron_drop_pending_ticks(NEW.trigger_id);
        NEW.watermark := NOW();
        NEW.next_tick_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER cron_details_changed BEFORE UPDATE ON cron_trigger_details
    FOR EACH ROW EXECUTE FUNCTION cron_details_changed();

CREATE FUNCTION cron_trigger_toggled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The details row first: its lock waits for a ticker writing this
    -- trigger's ticks, whose ticks the drop below then sees.
    UPDATE cron_trigger_details SET watermark = NOW(), next_tick_at = NULL
    WHERE trigger_id = NEW.id;
    PERFORM cron_drop_pending_ticks(NEW.id);
    RETURN NULL;
END;
$$;
CREATE TRIGGER cron_trigger_toggled AFTER UPDATE OF enabled ON triggers
    FOR EACH ROW WHEN (NEW.kind = 'cron' AND NEW.enabled IS DISTINCT FROM OLD.enabled)
    EXECUTE FUNCTION cron_trigger_toggled();

-- The view every trigger read goes through, with the cron details (new
-- columns go last: CREATE OR REPLACE VIEW may only add columns at the end).
CREATE OR REPLACE VIEW triggers_with_details AS
SELECT t.id, t.app_id, t.kind, t.script_id, t.name, t.enabled,
       t.registered_by_principal, t.max_attempts, t.retry_base_delay_ms,
       t.retry_max_delay_ms, t.created_at, t.updated_at,
       k.collection, k.ops,
       d.source_kind AS dl_source_kind, d.source_trigger_id AS dl_source_trigger_id,
       (d.trigger_id IS NOT NULL) AS has_dead_letter_details,
       c.schedule AS cron_schedule, c.timezone AS cron_timezone, c.catchup AS cron_catchup,
       c.catchup_window_s AS cron_catchup_window_s, c.overlap AS cron_overlap,
       c.paused AS cron_paused, c.payload AS cron_payload
FROM triggers t
LEFT JOIN kv_trigger_details k ON k.trigger_id = t.id
LEFT JOIN dead_letter_trigger_details d ON d.trigger_id = t.id
LEFT JOIN cron_trigger_details c ON c.trigger_id = t.id;
