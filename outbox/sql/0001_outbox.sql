-- The transactional outbox: every event source writes rows of this one shape
-- in the same transaction as the change that caused them.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE TABLE outbox (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id            UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    -- A trigger kind, or 'invoke' for a synchronous HTTP invocation.
    source_kind       TEXT NOT NULL
        CHECK (source_kind IN ('kv', 'cron', 'pubsub', 'queue', 'email', 'dead_letter', 'invoke')),
    -- NULL for invocations. Deleting a trigger discards its pending rows.
    trigger_id        UUID REFERENCES triggers(id) ON DELETE CASCADE,
    script_id         UUID NOT NULL REFERENCES scripts(id) ON DELETE CASCADE,
    -- Who the script runs as. NULL once that principal was deleted: the
    -- dispatcher then fails the row as unauthorized instead of dropping it.
    run_as_principal  UUID REFERENCES principals(id) ON DELETE SET NULL,
    payload           JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- 0 for an event from outside; a write made by a script runs at the
    -- triggering row's depth + 1.
    depth             INTEGER NOT NULL DEFAULT 0 CHECK (depth >= 0),
    -- Executions started so far; claim_due bumps it.
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the row may next be claimed: insert time, a retry's backoff, or a
    -- claim's lease (visibility timeout) running out.
    due_at            TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    -- Reply inbox of a synchronous invocation; such rows are never retried.
    reply_to          UUID,
    last_error        TEXT,
    -- Every failed attempt's error, oldest first (bounded by the repository).
    errors            JSONB NOT NULL DEFAULT '[]'::jsonb,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- claim_due: "the oldest rows whose due_at has passed", read by every claim.
CREATE INDEX outbox_due_at_idx ON outbox (due_at);
-- FK lookups when an app, trigger or script is deleted.
CREATE INDEX outbox_app_idx ON outbox (app_id);
CREATE INDEX outbox_trigger_idx ON outbox (trigger_id) WHERE trigger_id IS NOT NULL;
CREATE INDEX outbox_script_idx ON outbox (script_id);
