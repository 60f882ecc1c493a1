-- The KV store and the script runtimes.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE TABLE kv_entries (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    -- Any characters but NUL (which PostgreSQL text cannot hold).
    collection  TEXT NOT NULL CHECK (char_length(collection) BETWEEN 1 AND 255),
    key         TEXT NOT NULL CHECK (char_length(key) BETWEEN 1 AND 1024),
    value       JSONB NOT NULL,
    -- 1 on insert, +1 on every update.
    version     BIGINT NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    -- Serves get/put/delete by key and list by collection (its prefix).
    CONSTRAINT kv_entries_app_collection_key_key UNIQUE (app_id, collection, key)
);

-- A script runs one of two runtimes: a Python handler registered by a Django
-- app (chosen by name; never an arbitrary dotted path) or a webhook.
ALTER TABLE scripts
    ADD COLUMN runtime TEXT NOT NULL DEFAULT 'python' CHECK (runtime IN ('python', 'webhook')),
    ADD COLUMN handler VARCHAR(200) NOT NULL DEFAULT '',
    ADD COLUMN webhook_url VARCHAR(2000) NOT NULL DEFAULT '',
    -- HMAC key for webhook signatures. It must stay readable to sign with;
    -- admin shows it once, at creation, and it is never logged.
    ADD COLUMN secret VARCHAR(200) NOT NULL DEFAULT '',
    ADD CONSTRAINT scripts_runtime_fields CHECK (
        (runtime = 'python' AND handler <> '')
        OR (runtime = 'webhook' AND webhook_url <> '' AND secret <> '')
    );
