-- Claim tokens: each claim stamps its rows with a token the claimer made,
-- so a claimer that lost the claim's answer (the connection broke while
-- the claim committed, as when a primary dies during a failover) can give
-- the rows back at once instead of leaving them leased, and counted
-- against their app's cap, until the lease runs out.
--
-- Rolling upgrade (docs/operations.md, "Rolling upgrades"): a nullable
-- column without a default (no table rewrite; old inserts stay valid) and
-- new signatures beside the released ones. The claim functions with the
-- new last parameter p_claim_token are copies of their latest versions
-- (outbox_claim and outbox_claim_logged of 0009_claim_due_at.sql), the
-- only change being the token stamped in the claim's UPDATE. The released
-- six-parameter outbox_claim is replaced by a call of the new one with no
-- token: same arguments, same rows and columns for a node of the previous
-- release, and a row it claims loses any token an earlier claim left, so a
-- give-back never takes a row that claim holds. The released
-- outbox_claim_logged calls it and is left as it was.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- Adding a column takes an ACCESS EXCLUSIVE lock for a moment: fail fast
-- rather than queue every claim behind it (run migrate again). LOCAL: it
-- ends with the migration's transaction.
SET LOCAL lock_timeout = '5s';
ALTER TABLE outbox ADD COLUMN claim_token UUID;

-- The claim of 0009_claim_due_at.sql, stamping each claimed row with
-- p_claim_token.

CREATE FUNCTION outbox_claim(
    p_limit INTEGER,
    p_lease DOUBLE PRECISION,
    p_ack UUID[],
    p_after UUID,          -- the app served last by this claimer; NULL: start at the first
    p_default_cap INTEGER, -- PICLOUD_APP_MAX_CONCURRENCY of the claiming process
    p_quantum INTEGER,     -- rows at most per app per visit
    p_claim_token UUID     -- stamped on every row claimed (NULL: none)
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
            SET attempts = o.attempts + 1, due_at = lease_end, leased_until = lease_end,
                claim_token = p_claim_token
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

-- The logged claim of 0009_claim_due_at.sql, passing p_claim_token on.
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
    p_details TEXT[],
    p_claim_token UUID
) RETURNS TABLE (
    id UUID, app_id UUID, source_kind TEXT, trigger_id UUID, script_id UUID,
    run_as_principal UUID, payload JSONB, depth INTEGER, attempts INTEGER,
    due_at TIMESTAMPTZ, reply_to UUID, last_error TEXT, errors JSONB, created_at TIMESTAMPTZ
) LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_ack) > 0 THEN
        PERFORM delivery_log_ack(p_ack, p_started, p_ms, p_outcomes, p_statuses, p_details);
    END IF;
    RETURN QUERY SELECT * FROM outbox_claim(
        p_limit, p_lease, '{}', p_after, p_default_cap, p_quantum, p_claim_token);
END;
$$;

-- The released claim (nodes of the previous release call it, directly and
-- through the released outbox_claim_logged): the claim above with no
-- token, so its rows carry none.
CREATE OR REPLACE FUNCTION outbox_claim(
    p_limit INTEGER,
    p_lease DOUBLE PRECISION,
    p_ack UUID[],
    p_after UUID,
    p_default_cap INTEGER,
    p_quantum INTEGER
) RETURNS TABLE (
    id UUID, app_id UUID, source_kind TEXT, trigger_id UUID, script_id UUID,
    run_as_principal UUID, payload JSONB, depth INTEGER, attempts INTEGER,
    due_at TIMESTAMPTZ, reply_to UUID, last_error TEXT, errors JSONB, created_at TIMESTAMPTZ
) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM outbox_claim(
        p_limit, p_lease, p_ack, p_after, p_default_cap, p_quantum, NULL::uuid);
END;
$$;

-- Give back the rows of claims whose answer never reached their claimer:
-- those still leased under one of p_claim_tokens become due now, no longer
-- in flight, their claim's attempt uncounted (as the release query), and
-- lose the token. A row whose lease ran out, or that was settled, released
-- or claimed again since (another token, or none), is left alone. Returns
-- the ids given back. Rows in flight are few: the leased indexes hold only
-- rows with a lease.
CREATE FUNCTION outbox_give_back(p_claim_tokens UUID[]) RETURNS SETOF UUID
LANGUAGE sql
SET enable_seqscan = off
AS $$
    UPDATE outbox
    SET due_at = NOW(), leased_until = NULL, attempts = GREATEST(attempts - 1, 0),
        claim_token = NULL
    WHERE claim_token = ANY (p_claim_tokens) AND leased_until > NOW()
    RETURNING id;
$$;

-- Hand back claimed rows that never started, each only while it is still
-- leased under the claim that took it (p_ids[i] under p_claim_tokens[i]):
-- the same hand-back repeated after its answer was lost changes nothing,
-- and never a row another claimer took meanwhile. Returns the ids given back.
CREATE FUNCTION outbox_release_claimed(p_ids UUID[], p_claim_tokens UUID[]) RETURNS SETOF UUID
LANGUAGE sql AS $$
    UPDATE outbox o
    SET due_at = NOW(), leased_until = NULL, attempts = GREATEST(o.attempts - 1, 0),
        claim_token = NULL
    FROM unnest(p_ids, p_claim_tokens) AS g(id, claim_token)
    WHERE o.id = g.id AND o.claim_token = g.claim_token AND o.leased_until > NOW()
    RETURNING o.id;
$$;
