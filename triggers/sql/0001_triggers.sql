-- Layout E: one parent row per trigger, one child row per kind's details.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- A trigger may only point at a script of its own app: the composite foreign
-- key below needs this key to reference.
ALTER TABLE scripts ADD CONSTRAINT scripts_id_app_key UNIQUE (id, app_id);

CREATE TABLE triggers (
    id                       UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id                   UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    kind                     TEXT NOT NULL
        CHECK (kind IN ('kv', 'cron', 'pubsub', 'queue', 'email', 'dead_letter')),
    script_id                UUID NOT NULL,
    name                     VARCHAR(200) NOT NULL,
    enabled                  BOOLEAN NOT NULL DEFAULT TRUE,
    -- The dispatcher runs the script as this principal, re-checking its
    -- rights at every execution. Deleting the principal is refused while it
    -- has triggers (deactivate the user instead, or reassign the triggers).
    registered_by_principal  UUID NOT NULL REFERENCES principals(id),
    -- Per-trigger retry overrides; NULL means PICLOUD_TRIGGER_RETRY_*.
    max_attempts             INTEGER CHECK (max_attempts BETWEEN 1 AND 100),
    retry_base_delay_ms      INTEGER CHECK (retry_base_delay_ms BETWEEN 1 AND 86400000),
    retry_max_delay_ms       INTEGER CHECK (retry_max_delay_ms BETWEEN 1 AND 86400000),
    created_at               TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT triggers_app_name_key UNIQUE (app_id, name),
    -- Deferred to commit: deleting an app cascades to its scripts and its
    -- triggers in an order PostgreSQL does not promise, and an immediate
    -- check could see the script gone before the trigger.
    CONSTRAINT triggers_script_same_app_fkey
        FOREIGN KEY (script_id, app_id) REFERENCES scripts (id, app_id)
        DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT triggers_retry_delays_ordered
        CHECK (retry_max_delay_ms IS NULL OR retry_base_delay_ms IS NULL
               OR retry_max_delay_ms >= retry_base_delay_ms)
);

-- The matching hot paths (list_matching_kv, list_matching_dead_letter) look
-- up the enabled triggers of one app and one kind; disabled triggers never
-- enter this index.
CREATE INDEX triggers_enabled_app_kind_idx ON triggers (app_id, kind) WHERE enabled;
-- "Which triggers run this script?" (script deletion, admin filters).
CREATE INDEX triggers_script_idx ON triggers (script_id);
CREATE INDEX triggers_registered_by_idx ON triggers (registered_by_principal);

CREATE TABLE kv_trigger_details (
    trigger_id  UUID PRIMARY KEY REFERENCES triggers(id) ON DELETE CASCADE,
    -- '*', 'prefix:*' (non-empty prefix without '*') or an exact name
    -- without '*'; triggers.matching.validate_collection_pattern says the same.
    collection  TEXT NOT NULL CHECK (
        char_length(collection) BETWEEN 1 AND 255
        AND (collection = '*'
             OR collection ~ '^[^*]+:\*$'
             OR strpos(collection, '*') = 0)
    ),
    ops         TEXT[] NOT NULL CHECK (
        cardinality(ops) BETWEEN 1 AND 3
        AND ops <@ ARRAY['insert', 'update', 'delete']::TEXT[]
        AND array_position(ops, NULL) IS NULL
    )
);

CREATE TABLE dead_letter_trigger_details (
    trigger_id         UUID PRIMARY KEY REFERENCES triggers(id) ON DELETE CASCADE,
    -- Filters on the dead letter's source; NULL matches any.
    source_kind        TEXT
        CHECK (source_kind IN ('kv', 'cron', 'pubsub', 'queue', 'email', 'invoke')),
    -- Deleting a trigger that a dead-letter trigger filters on is refused
    -- (a silently widened filter would surprise the operator). Checked at
    -- commit, so deleting both in one transaction, or the whole app, works
    -- whatever order the cascades run in.
    source_trigger_id  UUID REFERENCES triggers(id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX dead_letter_trigger_details_source_trigger_idx
    ON dead_letter_trigger_details (source_trigger_id) WHERE source_trigger_id IS NOT NULL;

-- One row shape for reading a trigger with its details; the repositories
-- select from it so every query maps rows the same way.
CREATE VIEW triggers_with_details AS
SELECT t.id, t.app_id, t.kind, t.script_id, t.name, t.enabled,
       t.registered_by_principal, t.max_attempts, t.retry_base_delay_ms,
       t.retry_max_delay_ms, t.created_at, t.updated_at,
       k.collection, k.ops,
       d.source_kind AS dl_source_kind, d.source_trigger_id AS dl_source_trigger_id,
       (d.trigger_id IS NOT NULL) AS has_dead_letter_details
FROM triggers t
LEFT JOIN kv_trigger_details k ON k.trigger_id = t.id
LEFT JOIN dead_letter_trigger_details d ON d.trigger_id = t.id;
