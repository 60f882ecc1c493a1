-- Fair claiming under concurrency caps (docs/dispatcher.md, "Fairness and caps").
--
-- A claim goes round the apps that have rows, in app_id order, starting
-- after the app the claimer served last, and takes at most a quantum of due
-- rows from each app per visit, as long as the app (and each of its capped
-- scripts) stays under its cap of rows in flight. A row is in flight while
-- its lease runs: leased_until > NOW().
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- Set by a claim to the end of its lease; cleared by reschedule and release.
ALTER TABLE outbox ADD COLUMN leased_until TIMESTAMPTZ;

-- The claim walks the apps with one descent each (the first app_id > the last)
-- and reads an app's due rows oldest first. Also serves the app's foreign key.
CREATE INDEX outbox_app_due_idx ON outbox (app_id, due_at);
DROP INDEX outbox_app_idx;
-- A capped script's due rows, oldest first. Also serves the script's foreign key.
CREATE INDEX outbox_script_due_idx ON outbox (script_id, due_at);
DROP INDEX outbox_script_idx;
-- Rows in flight per app and per script: only leased rows are in these.
CREATE INDEX outbox_app_leased_idx ON outbox (app_id, leased_until)
    WHERE leased_until IS NOT NULL;
CREATE INDEX outbox_script_leased_idx ON outbox (script_id, leased_until)
    WHERE leased_until IS NOT NULL;

-- Claim up to p_limit due rows, fairly, under the caps; delete the rows in
-- p_ack first. Returns the claimed rows in claim order (app by app, each
-- app's oldest due first), so the last row's app is where the next claim
-- starts after. Called as one statement: it commits as one transaction.
--
-- Caps hold across every claimer on this database: an app is claimed for
-- under a transaction-scoped advisory lock (another claimer holding it skips
-- the app), and the rows in flight are counted after taking the lock, by a
-- statement of its own: in READ COMMITTED each statement of a function sees
-- a fresh snapshot, so the count sees every claim committed before the lock.
CREATE FUNCTION outbox_claim(
    p_limit INTEGER,
    p_lease DOUBLE PRECISION,
    p_ack UUID[],
    p_after UUID,          -- the app served last by this claimer; NULL: start at the first
    p_default_cap INTEGER, -- PICLOUD_APP_MAX_CONCURRENCY of the claiming process
    p_quantum INTEGER      -- rows at most per app per visit
) RETURNS TABLE (
    id UUID, app_id UUID, source_kind TEXT, trigger_id UUID, script_id UUID,
    run_as_principal UUID, payload JSONB, depth INTEGER, attempts INTEGER,
    due_at TIMESTAMPTZ, reply_to UUID, last_error TEXT, errors JSONB, created_at TIMESTAMPTZ
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    lease_end TIMESTAMPTZ := NOW() + make_interval(secs => p_lease);
    platform_cap INTEGER;
    remaining INTEGER := p_limit;
    cur UUID := p_after;       -- the app visited last
    app UUID;                  -- the app visited now
    idle_from UUID;            -- first app of the current run of visits that took nothing
    idle_wrapped BOOLEAN := FALSE;
    cap INTEGER;
    room INTEGER;
    take INTEGER;
    ids UUID[];
BEGIN
    IF cardinality(p_ack) > 0 THEN
        DELETE FROM outbox o WHERE o.id = ANY (p_ack);
    END IF;
    SELECT s.app_max_concurrency INTO platform_cap FROM platform_settings s WHERE s.id = 1;

    LOOP
        EXIT WHEN remaining <= 0;
        -- The next app with rows: one descent of outbox_app_due_idx.
        -- (No min(uuid) in PostgreSQL 15; ORDER BY ... LIMIT 1 reads the same entry.)
        IF cur IS NULL THEN
            app := (SELECT o.app_id FROM outbox o ORDER BY o.app_id LIMIT 1);
        ELSE
            app := (SELECT o.app_id FROM outbox o WHERE o.app_id > cur ORDER BY o.app_id LIMIT 1);
        END IF;
        IF app IS NULL THEN
            EXIT WHEN cur IS NULL;  -- no rows at all
            cur := NULL;            -- past the last app: wrap around
            IF idle_from IS NOT NULL THEN
                EXIT WHEN idle_wrapped;  -- (idle_from's rows went away meanwhile)
                idle_wrapped := TRUE;
            END IF;
            CONTINUE;
        END IF;
        -- A whole turn of the ring took nothing: nothing more can be taken.
        EXIT WHEN idle_from IS NOT NULL AND idle_wrapped AND app >= idle_from;
        cur := app;
        ids := '{}';

        -- An app with no due row costs one more descent and no lock. (Its
        -- earliest due_at, not EXISTS: the planner may answer EXISTS with a
        -- sequential scan betting on an early hit.)
        IF (SELECT o.due_at FROM outbox o WHERE o.app_id = app ORDER BY o.due_at LIMIT 1) <= NOW()
           AND pg_try_advisory_xact_lock(1869968482, hashtext(app::text))
        THEN
            SELECT COALESCE(a.max_concurrency, platform_cap, p_default_cap) INTO cap
            FROM apps a WHERE a.id = app;
            -- A statement of its own, after the lock: a fresh snapshot.
            SELECT cap - count(*) INTO room FROM (
                SELECT 1 FROM outbox o
                WHERE o.app_id = app AND o.leased_until > NOW() LIMIT cap
            ) in_flight;
            take := LEAST(p_quantum, remaining, room);
            IF take > 0 AND NOT EXISTS (
                SELECT 1 FROM scripts s WHERE s.app_id = app AND s.max_concurrency IS NOT NULL
            ) THEN
                ids := ARRAY(
                    SELECT o.id FROM outbox o
                    WHERE o.app_id = app AND o.due_at <= NOW()
                    ORDER BY o.due_at
                    LIMIT take
                    FOR UPDATE SKIP LOCKED
                );
            ELSIF take > 0 THEN
                -- Some scripts have caps: take each script's oldest due rows up
                -- to its room (none for a script at its cap, so its backlog is
                -- never read), then the oldest of those for the app.
                ids := ARRAY(
                    SELECT o.id FROM outbox o
                    WHERE o.id = ANY (ARRAY(
                        SELECT c.id
                        FROM scripts s
                        CROSS JOIN LATERAL (
                            SELECT CASE WHEN s.max_concurrency IS NULL THEN take
                                   ELSE s.max_concurrency - (
                                       SELECT count(*) FROM (
                                           -- (app_id too: whichever leased index
                                           -- the planner picks, it reads only
                                           -- this app's rows in flight.)
                                           SELECT 1 FROM outbox f
                                           WHERE f.script_id = s.id AND f.app_id = app
                                             AND f.leased_until > NOW()
                                           LIMIT s.max_concurrency
                                       ) script_in_flight)
                                   END AS room
                        ) r
                        CROSS JOIN LATERAL (
                            SELECT w.id, w.due_at FROM outbox w
                            WHERE w.script_id = s.id AND w.app_id = app AND w.due_at <= NOW()
                            ORDER BY w.due_at
                            LIMIT GREATEST(LEAST(r.room, take), 0)
                        ) c
                        WHERE s.app_id = app
                        ORDER BY c.due_at
                        LIMIT take
                    ))
                    AND o.due_at <= NOW()
                    ORDER BY o.due_at
                    FOR UPDATE SKIP LOCKED
                );
            END IF;
        END IF;

        IF cardinality(ids) > 0 THEN
            RETURN QUERY
            WITH claimed AS (
                UPDATE outbox o
                SET attempts = o.attempts + 1, due_at = lease_end, leased_until = lease_end
                WHERE o.id = ANY (ids)
                RETURNING o.*
            )
            SELECT c.id, c.app_id, c.source_kind, c.trigger_id, c.script_id,
                   c.run_as_principal, c.payload, c.depth, c.attempts, c.due_at,
                   c.reply_to, c.last_error, c.errors, c.created_at
            FROM claimed c JOIN unnest(ids) WITH ORDINALITY AS u(id, n) ON u.id = c.id
            ORDER BY u.n;
            remaining := remaining - cardinality(ids);
            idle_from := NULL;
            idle_wrapped := FALSE;
        ELSIF idle_from IS NULL THEN
            idle_from := app;
            idle_wrapped := FALSE;
        END IF;
    END LOOP;
END;
$$;
