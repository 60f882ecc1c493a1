-- Topics (pub/sub) and queues: the two messaging sources of an app
-- (docs/messaging.md).
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- A topic holds nothing: publishing fans the message out to the app's
-- pubsub triggers whose pattern matches the topic's name, in the
-- publisher's transaction. The table names the topics an app publishes to,
-- so a typo is refused instead of published to nobody.
CREATE TABLE topics (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    -- picloud.messaging.names.validate_name says the same, with its message.
    name        TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT topics_app_name_key UNIQUE (app_id, name)
);

CREATE TABLE queues (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id      UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT queues_app_name_key UNIQUE (app_id, name),
    -- What a queue trigger's composite key references: its queue is of its app.
    CONSTRAINT queues_id_app_key UNIQUE (id, app_id)
);

-- pgmq's model: a message is visible once vt (its visibility time) has
-- passed; receiving it pushes vt ahead (the visibility timeout) and counts
-- the receive; acknowledging deletes it. A queue trigger's batch holds its
-- messages by batch_id (the batch's outbox row) instead of by vt, for as
-- long as that row exists, however long it waits for a slot.
CREATE TABLE queue_messages (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id           UUID NOT NULL REFERENCES queues(id) ON DELETE CASCADE,
    body               JSONB NOT NULL,
    sent_at            TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    vt                 TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    receive_count      INTEGER NOT NULL DEFAULT 0 CHECK (receive_count >= 0),
    -- 0 from outside; a script's send carries its row's depth + 1, so a
    -- chain of scripts feeding queues stops at PICLOUD_MAX_TRIGGER_DEPTH.
    depth              INTEGER NOT NULL DEFAULT 0 CHECK (depth >= 0),
    batch_id           UUID
);
-- Receives and batches take the queue's visible messages, earliest vt first.
CREATE INDEX queue_messages_visible_idx ON queue_messages (queue_id, vt, id)
    WHERE batch_id IS NULL;
-- Settling a batch, and finding batches whose outbox row is gone.
CREATE INDEX queue_messages_batch_idx ON queue_messages (batch_id) WHERE batch_id IS NOT NULL;
-- A queue's messages whatever their state: stats, purge, deleting the queue
-- (the foreign key's cascade), without reading other queues' messages.
CREATE INDEX queue_messages_queue_idx ON queue_messages (queue_id);

-- Sending wakes the dispatchers' batchers (queue triggers), once per
-- sending transaction (PostgreSQL folds identical notifications).
CREATE FUNCTION queue_messages_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('picloud_queue', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER queue_messages_notify_insert
    AFTER INSERT ON queue_messages
    FOR EACH STATEMENT EXECUTE FUNCTION queue_messages_notify();
