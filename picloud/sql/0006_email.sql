-- Email: messages the SMTP receiver accepted, and the hourly count of mail
-- each app's scripts sent (docs/email.md).
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- One row per app a message was accepted for: a message to two apps is
-- stored twice, so each app sees (and its retention sweeps) its own copy and
-- nothing of the other's. Written with the message's outbox rows in one
-- transaction, before the receiver answers 250.
CREATE TABLE inbound_emails (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id       UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    -- The envelope: MAIL FROM ('' for a bounce) and this app's recipients.
    mail_from    TEXT NOT NULL,
    rcpt_to      TEXT[] NOT NULL CHECK (cardinality(rcpt_to) >= 1),
    -- What the admin lists without reading raw: parsed once, at arrival.
    subject      TEXT NOT NULL DEFAULT '',
    from_header  TEXT NOT NULL DEFAULT '',
    message_id   TEXT,
    size         INTEGER NOT NULL CHECK (size >= 0),
    -- The triggers it fired, as they were then: [{"trigger_id", "name", "outbox_id"}].
    fired        JSONB NOT NULL DEFAULT '[]'::jsonb,
    -- The SMTP client's address, for an operator tracing where mail came from.
    peer         TEXT NOT NULL DEFAULT '',
    raw          BYTEA NOT NULL
);

-- The admin's list of an app's mail, newest first.
CREATE INDEX inbound_emails_app_received_idx ON inbound_emails (app_id, received_at DESC);
-- The retention sweep: oldest first, across apps.
CREATE INDEX inbound_emails_received_idx ON inbound_emails (received_at);

-- Mail sent by an app's scripts, per clock hour: PICLOUD_EMAIL_SEND_PER_HOUR
-- caps it. Counted in the sender's transaction, so a send that rolls back
-- is not counted; swept a day after its hour.
CREATE TABLE email_send_counts (
    app_id  UUID NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    hour    TIMESTAMPTZ NOT NULL,
    sent    INTEGER NOT NULL CHECK (sent >= 0),
    PRIMARY KEY (app_id, hour)
);
CREATE INDEX email_send_counts_hour_idx ON email_send_counts (hour);
