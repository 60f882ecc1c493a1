-- Concurrency caps: how many executions of an app (and of a script) may be
-- in flight at once, across every dispatcher of every cluster. The outbox
-- claim (outbox/sql/0004_fair_claim.sql) reads them.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- NULL: the platform's cap (platform_settings, else PICLOUD_APP_MAX_CONCURRENCY).
ALTER TABLE apps
    ADD COLUMN max_concurrency INTEGER CHECK (max_concurrency > 0);

-- NULL: no cap of its own (the app's still holds).
ALTER TABLE scripts
    ADD COLUMN max_concurrency INTEGER CHECK (max_concurrency > 0);
-- "Which scripts of this app have a cap?", asked by each claim per app.
CREATE INDEX scripts_capped_idx ON scripts (app_id) WHERE max_concurrency IS NOT NULL;

-- Platform settings a superuser may change at run time: one row, id 1.
CREATE TABLE platform_settings (
    id                   SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    -- NULL: PICLOUD_APP_MAX_CONCURRENCY of the claiming process.
    app_max_concurrency  INTEGER CHECK (app_max_concurrency > 0),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
INSERT INTO platform_settings (id) VALUES (1);
