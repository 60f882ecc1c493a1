-- Dead letters: outbox rows that exhausted their attempts, kept for operators.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE TABLE dead_letters (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id            UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    source_kind       TEXT NOT NULL
        CHECK (source_kind IN ('kv', 'cron', 'pubsub', 'queue', 'email', 'dead_letter', 'invoke')),
    -- The failed row's facts. References are kept loose (SET NULL) so a dead
    -- letter outlives the trigger, script or principal it names.
    trigger_id        UUID REFERENCES triggers(id) ON DELETE SET NULL,
    script_id         UUID REFERENCES scripts(id) ON DELETE SET NULL,
    run_as_principal  UUID REFERENCES principals(id) ON DELETE SET NULL,
    outbox_id         UUID,
    payload           JSONB NOT NULL DEFAULT '{}'::jsonb,
    last_error        TEXT NOT NULL,
    errors            JSONB NOT NULL DEFAULT '[]'::jsonb,
    attempts          INTEGER NOT NULL CHECK (attempts >= 0),
    depth             INTEGER NOT NULL CHECK (depth >= 0),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    resolution        TEXT
        CHECK (resolution IN ('replayed', 'ignored', 'handled_by_script', 'handler_failed')),
    resolved_at       TIMESTAMPTZ,
    resolved_by       UUID REFERENCES principals(id) ON DELETE SET NULL,
    note              TEXT NOT NULL DEFAULT '',
    CONSTRAINT dead_letters_resolution_with_time
        CHECK ((resolution IS NULL) = (resolved_at IS NULL))
);

-- The admin badge counts unresolved rows, per app or over a set of apps.
-- Resolved rows (the vast majority over time) never enter this index, so
-- the count stays cheap however many resolved rows retention keeps.
CREATE INDEX dead_letters_unresolved_idx ON dead_letters (app_id, created_at)
    WHERE resolution IS NULL;
-- The GC sweep: resolved rows by age of their resolution.
CREATE INDEX dead_letters_resolved_gc_idx ON dead_letters (resolved_at)
    WHERE resolution IS NOT NULL;
-- Listing an app's dead letters newest first.
CREATE INDEX dead_letters_app_created_idx ON dead_letters (app_id, created_at DESC);
CREATE INDEX dead_letters_trigger_idx ON dead_letters (trigger_id) WHERE trigger_id IS NOT NULL;
