-- The claim of 0006_claim_waits.sql, returning each claimed row's due_at as
-- it was before the claim (when the row became due) instead of its new
-- lease end: the dispatcher measures from it how late each execution
-- starts (the start-latency histogram, docs/dispatcher.md). The lease end
-- is still what the row holds; nothing else read the returned due_at. The
-- columns are the same, so a node of the previous release calling this
-- function keeps working during a rolling upgrade.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE OR REPLACE FUNCTION outbox_claim(
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
) LANGUAGE plpgsql
-- Plain index scans only. Every acknowledged row leaves a dead entry in the
-- leased indexes (its lease still in the future) until VACUUM; a plain index
-- scan marks such entries dead as it passes (later scans skip them), where a
-- bitmap or index-only scan visits every one of them on every claim: 5 ms
-- per count after 100,000 rows went through, against 0.3 ms.
SET enable_bitmapscan = off
SET enable_indexonlyscan = off
-- And never a sequential scan. An outbox swings from empty to 100,000 rows
-- between two ANALYZEs; planned on statistics that say "empty", the
-- cached plans of these statements read the whole table on every claim (a
-- drain fell from ~6,000 to ~400 rows/s). Every statement here has its index.
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    lease_end TIMESTAMPTZ := NOW() + make_interval(secs => p_lease);
    platform_cap INTEGER;
    remaining INTEGER := p_limit;
    cur UUID := p_after;       -- the app visited last
    app UUID;                  -- the app visited now
    idle_from UUID;            -- first app of the current run of visits that took nothing
    idle_wrapped BOOLEAN := FALSE;
    seen UUID[] := '{}';       -- apps visited in this claim ...
    rooms INTEGER[] := '{}';   -- ... and how many more rows each may take in it
    at INTEGER;
    cap INTEGER;
    room INTEGER;
    take INTEGER;
    special BOOLEAN;
    locked BOOLEAN := FALSE;   -- holds an app's lock: must not wait for another's
    got BOOLEAN;               -- holds the app visited now
    ids UUID[];
    chosen UUID[] := '{}';     -- every row taken, in claim order
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
        at := array_position(seen, app);

        IF at IS NULL THEN
            -- First visit. An app with no due row costs one more descent and
            -- no lock. (Its earliest due_at, not EXISTS: the planner may
            -- answer EXISTS with a sequential scan betting on an early hit.)
            room := 0;
            special := FALSE;
            got := FALSE;
            IF (SELECT o.due_at FROM outbox o WHERE o.app_id = app ORDER BY o.due_at LIMIT 1) <= NOW() THEN
                -- Another claimer holding the app holds it for its claim's
                -- few milliseconds: wait, unless this claim holds an app
                -- already (then pass it by: see the top of this file).
                got := pg_try_advisory_xact_lock(1869968482, hashtext(app::text));
                IF NOT got AND NOT locked THEN
                    PERFORM pg_advisory_xact_lock(1869968482, hashtext(app::text));
                    got := TRUE;
                END IF;
                locked := locked OR got;
            END IF;
            IF got THEN
                SELECT COALESCE(a.max_concurrency, platform_cap, p_default_cap) INTO cap
                FROM apps a WHERE a.id = app;
                -- A statement of its own, after the lock: a fresh snapshot.
                SELECT cap - count(*) INTO room FROM (
                    SELECT 1 FROM outbox o
                    WHERE o.app_id = app AND o.leased_until > NOW() LIMIT cap
                ) in_flight;
                special := EXISTS (
                    SELECT 1 FROM scripts s WHERE s.app_id = app AND s.max_concurrency IS NOT NULL
                ) OR EXISTS (
                    SELECT 1 FROM script_circuits k WHERE k.app_id = app AND k.open_until IS NOT NULL
                );
            END IF;
            seen := seen || app;
            rooms := rooms || room;
            at := cardinality(seen);
        ELSE
            room := rooms[at];
            special := FALSE;  -- a special app was served on its first visit
        END IF;

        take := LEAST(p_quantum, remaining, room);
        IF take > 0 AND NOT special THEN
            ids := ARRAY(
                SELECT o.id FROM outbox o
                WHERE o.app_id = app AND o.due_at <= NOW() AND o.id <> ALL (chosen)
                ORDER BY o.due_at
                LIMIT take
                FOR UPDATE SKIP LOCKED
            );
            -- Fewer than asked: nothing more of this app is claimable now.
            rooms[at] := CASE WHEN cardinality(ids) < take THEN 0
                              ELSE room - cardinality(ids) END;
        ELSIF take > 0 THEN
            -- Some scripts have caps or a circuit that is not closed: take
            -- each script's oldest due rows up to its room (none for a
            -- script at its cap or with an open circuit, so its backlog is
            -- never read; one in flight at most while its circuit probes),
            -- then the oldest of those for the app. Once per claim: the
            -- script counts below see only leased rows.
            ids := ARRAY(
                SELECT o.id FROM outbox o
                WHERE o.id = ANY (ARRAY(
                    SELECT c.id
                    FROM scripts s
                    LEFT JOIN script_circuits k ON k.script_id = s.id
                    CROSS JOIN LATERAL (
                        SELECT CASE
                            WHEN k.open_until > NOW() THEN 0
                            WHEN k.open_until IS NOT NULL THEN LEAST(s.max_concurrency, 1)
                            ELSE s.max_concurrency
                        END AS cap
                    ) sc
                    CROSS JOIN LATERAL (
                        SELECT CASE WHEN sc.cap IS NULL THEN take
                               WHEN sc.cap = 0 THEN 0
                               ELSE sc.cap - (
                                   SELECT count(*) FROM (
                                       -- (app_id too: whichever leased index
                                       -- the planner picks, it reads only
                                       -- this app's rows in flight.)
                                       SELECT 1 FROM outbox f
                                       WHERE f.script_id = s.id AND f.app_id = app
                                         AND f.leased_until > NOW()
                                       LIMIT sc.cap
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
            rooms[at] := 0;
        END IF;

        IF cardinality(ids) > 0 THEN
            chosen := chosen || ids;
            remaining := remaining - cardinality(ids);
            idle_from := NULL;
            idle_wrapped := FALSE;
        ELSIF idle_from IS NULL THEN
            idle_from := app;
            idle_wrapped := FALSE;
        END IF;
    END LOOP;

    IF cardinality(chosen) > 0 THEN
        RETURN QUERY
        -- (Both CTEs read the statement's snapshot: `was` sees each row as
        -- it was before the UPDATE, which this claim's lock kept still.)
        WITH was AS (
            SELECT o.id, o.due_at FROM outbox o WHERE o.id = ANY (chosen)
        ), claimed AS (
            UPDATE outbox o
            SET attempts = o.attempts + 1, due_at = lease_end, leased_until = lease_end
            WHERE o.id = ANY (chosen)
            RETURNING o.*
        )
        SELECT c.id, c.app_id, c.source_kind, c.trigger_id, c.script_id,
               c.run_as_principal, c.payload, c.depth, c.attempts, w.due_at,
               c.reply_to, c.last_error, c.errors, c.created_at
        FROM claimed c
        JOIN was w ON w.id = c.id
        JOIN unnest(chosen) WITH ORDINALITY AS u(id, n) ON u.id = c.id
        ORDER BY u.n;
    END IF;
END;
$$;

-- The claim that acknowledges the last batch with its attempts logged
-- (delivery_log_ack, 0008_delivery_log.sql) before it claims: one
-- statement, so the rows go and their log entries come together, and the
-- claim counts the acknowledged rows out of its apps' rooms.
CREATE FUNCTION outbox_claim_logged(
    p_limit INTEGER,
    p_lease DOUBLE PRECISION,
    p_after UUID,
    p_default_cap INTEGER,
    p_quantum INTEGER,
    p_ack UUID[],
    p_started DOUBLE PRECISION[],
    p_ms INTEGER[],
    p_outcomes TEXT[],
    p_statuses INTEGER[],
    p_details TEXT[]
) RETURNS TABLE (
    id UUID, app_id UUID, source_kind TEXT, trigger_id UUID, script_id UUID,
    run_as_principal UUID, payload JSONB, depth INTEGER, attempts INTEGER,
    due_at TIMESTAMPTZ, reply_to UUID, last_error TEXT, errors JSONB, created_at TIMESTAMPTZ
) LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_ack) > 0 THEN
        PERFORM delivery_log_ack(p_ack, p_started, p_ms, p_outcomes, p_statuses, p_details);
    END IF;
    RETURN QUERY SELECT * FROM outbox_claim(p_limit, p_lease, '{}', p_after, p_default_cap, p_quantum);
END;
$$;
