-- Named queries of the outbox repository (loaded by picloud.sqlfiles).

-- insert --
INSERT INTO outbox (app_id, source_kind, trigger_id, script_id, run_as_principal,
                    payload, depth, reply_to, due_at)
VALUES (%(app_id)s, %(source_kind)s, %(trigger_id)s, %(script_id)s, %(run_as_principal)s,
        %(payload)s::jsonb, %(depth)s, %(reply_to)s, COALESCE(%(due_at)s, NOW()))
RETURNING *;

-- get --
SELECT * FROM outbox WHERE id = %(id)s;

-- claim_due --
-- One statement, so one short transaction: outbox_claim (0004_fair_claim.sql)
-- deletes the acknowledged rows, then claims fairly across apps under the
-- caps (FOR UPDATE SKIP LOCKED: concurrent claimers take disjoint rows
-- instead of queueing behind each other), bumps attempts and leases the
-- rows. The caller executes after this commits; if it dies, the row is due
-- again (and no longer in flight) when the lease runs out. Columns come in
-- OutboxRow's field order: the dispatcher builds records from the tuples.
SELECT * FROM outbox_claim(%(limit)s, %(lease)s, %(ack)s::uuid[], %(after_app)s::uuid,
                           %(default_cap)s, %(quantum)s);

-- claim_due_logged --
-- The claim, acknowledging the last batch with its attempts written to the
-- delivery log in the same statement (outbox_claim_logged,
-- 0009_claim_due_at.sql): a row goes exactly when its attempt is logged.
SELECT * FROM outbox_claim_logged(
    %(limit)s, %(lease)s, %(after_app)s::uuid, %(default_cap)s, %(quantum)s,
    %(ack)s::uuid[], %(started)s::float8[], %(ms)s::integer[],
    %(outcomes)s::text[], %(statuses)s::integer[], %(details)s::text[]);

-- delete --
DELETE FROM outbox WHERE id = ANY (%(ids)s::uuid[]);

-- delete_logged --
-- Acknowledge rows and log their attempts in one statement.
SELECT delivery_log_ack(%(ack)s::uuid[], %(started)s::float8[], %(ms)s::integer[],
                        %(outcomes)s::text[], %(statuses)s::integer[], %(details)s::text[])
       AS deleted;

-- reschedule --
-- outbox_reschedule_claimed (0011_settle_claimed_attempt.sql): only while
-- the row still holds %(attempt)s and its lease (NULL: any row), so a
-- settle repeated after a lost COMMIT answer matches nothing and is not
-- logged twice; keeps the newest %(max_errors)s errors.
SELECT outbox_reschedule_claimed(%(id)s, %(attempt)s, %(due_at)s, %(error)s,
                                 %(max_errors)s) AS rescheduled;

-- release --
-- Hand claimed rows back unexecuted (shutdown, a batch running late, a cron
-- tick waiting for the one before it): due now or %(delay)s seconds from
-- now, no longer in flight, and the claim's attempt is not counted.
UPDATE outbox
SET due_at = NOW() + make_interval(secs => %(delay)s), leased_until = NULL,
    attempts = GREATEST(attempts - 1, 0)
WHERE id = ANY (%(ids)s::uuid[]);

-- run_now --
-- An operator's "run now": due immediately (the notify trigger wakes a
-- dispatcher). A claimed row has one attempt more than its recorded errors;
-- it is running right now and is left alone, or it would run twice at once.
UPDATE outbox
SET due_at = NOW()
WHERE id = ANY (%(ids)s::uuid[]) AND due_at > NOW() AND attempts = jsonb_array_length(errors);

-- next_due_at --
-- When the earliest row becomes due (served by outbox_due_at_idx).
SELECT min(due_at) AS due_at FROM outbox;

-- stats --
-- The backlog: rows due now, and how long the oldest of them has waited.
SELECT count(*) AS due, min(due_at) AS oldest_due_at FROM outbox WHERE due_at <= NOW();

-- load --
-- An app's (or one of its scripts') rows in flight and rows due: what admin
-- shows beside the caps. Served by the (app_id, ...) indexes.
SELECT count(*) FILTER (WHERE leased_until > NOW()) AS in_flight,
       count(*) FILTER (WHERE due_at <= NOW()) AS backlog
FROM outbox
WHERE app_id = %(app_id)s
  AND (%(script_id)s::uuid IS NULL OR script_id = %(script_id)s::uuid)
  AND (leased_until > NOW() OR due_at <= NOW());

-- add_counters --
INSERT INTO dispatcher_counters (name, value)
SELECT * FROM unnest(%(names)s::text[], %(values)s::bigint[])
ON CONFLICT (name) DO UPDATE SET value = dispatcher_counters.value + EXCLUDED.value;

-- read_counters --
SELECT name, value FROM dispatcher_counters;

-- inbox_open --
-- Joins the caller's transaction: the inbox and its outbox row commit together.
INSERT INTO reply_inboxes (id, app_id) VALUES (%(id)s, %(app_id)s);

-- inbox_deliver --
-- The dispatcher's half of the race (see 0003_reply_inboxes.sql). One
-- statement, so the update and its notification commit together; it returns
-- a row only if the inbox was still open.
WITH delivered AS (
    UPDATE reply_inboxes
    SET delivered_at = NOW(), status_code = %(status)s, body = %(body)s::jsonb
    WHERE id = %(id)s AND delivered_at IS NULL
    RETURNING id
)
SELECT pg_notify('picloud_reply', id::text) FROM delivered;

-- inbox_collect --
-- A woken waiter takes its reply, if it has arrived.
DELETE FROM reply_inboxes
WHERE id = %(id)s AND delivered_at IS NOT NULL
RETURNING status_code, body;

-- inbox_close --
-- The waiter's half of the race: it leaves, taking the reply if it came.
DELETE FROM reply_inboxes WHERE id = %(id)s RETURNING status_code, body;

-- inbox_gc --
-- Inboxes left by waiters that died, a batch at a time.
DELETE FROM reply_inboxes
WHERE id IN (
    SELECT id FROM reply_inboxes WHERE created_at < %(older_than)s LIMIT %(batch_size)s
);

-- record_circuits --
-- One batch's outcomes per script (arrays of one entry a script).
SELECT record_circuit_outcomes(
    %(scripts)s::uuid[], %(apps)s::uuid[], %(succeeded)s::boolean[], %(failures)s::integer[],
    %(errors)s::text[], %(threshold)s, %(base_ms)s, %(max_ms)s
);

-- get_circuit --
SELECT script_id, app_id, failures, opened, open_until, last_error
FROM script_circuits WHERE script_id = %(script_id)s;

-- close_circuits --
-- An operator's "close now". Returns the circuits that were not closed.
WITH was AS (
    SELECT script_id, open_until IS NOT NULL AS not_closed
    FROM script_circuits WHERE script_id = ANY (%(ids)s::uuid[]) FOR UPDATE
)
UPDATE script_circuits c
SET failures = 0, opened = 0, open_until = NULL, updated_at = NOW()
FROM was WHERE c.script_id = was.script_id
RETURNING was.not_closed;

-- dirty_circuits --
-- Circuits a success would change (few: scripts failing right now).
SELECT script_id FROM script_circuits WHERE failures > 0 OR open_until IS NOT NULL;

-- circuit_counts --
-- Circuits not closed (served by script_circuits_app_open_idx's predicate).
SELECT count(*) FILTER (WHERE open_until > NOW()) AS open,
       count(*) FILTER (WHERE open_until <= NOW()) AS probing
FROM script_circuits WHERE open_until IS NOT NULL;

-- scheduled_run --
-- A one-off scheduled run that has not started (outbox/scheduled.py): an
-- invocation without a reply inbox that no claim has taken (a claimed row
-- has an attempt; a row given back has its attempt uncounted), locked.
SELECT o.id, o.app_id, o.script_id, o.due_at, o.payload, o.run_as_principal
FROM outbox o
WHERE o.id = %(id)s AND o.source_kind = 'invoke' AND o.reply_to IS NULL
  AND o.attempts = 0 AND o.leased_until IS NULL
FOR UPDATE;

-- scheduled_runs_of_app --
SELECT o.id, o.app_id, o.script_id, o.due_at, o.payload, o.run_as_principal
FROM outbox o
WHERE o.app_id = %(app_id)s AND o.source_kind = 'invoke' AND o.reply_to IS NULL
  AND o.attempts = 0 AND o.leased_until IS NULL
ORDER BY o.due_at, o.id;
