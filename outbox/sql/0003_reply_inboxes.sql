-- Reply inboxes of synchronous invocations (outbox/invoke.py).
--
-- The HTTP request that invokes a script opens an inbox (this row) in the
-- same transaction as its outbox row, whose reply_to names the inbox. Two
-- parties then race, and this row decides the race:
--
--   the dispatcher delivers:  UPDATE ... SET delivered_at, status_code, body
--                             WHERE delivered_at IS NULL, then NOTIFY;
--                             no row updated -> nobody waits -> abandoned
--   the waiter leaves:        DELETE ... RETURNING the row; if it was
--                             delivered, the reply is the caller's after all
--
-- Both statements lock the row, so one of them goes first and the other
-- sees its result: every reply is either handed to its caller or recorded
-- as an abandoned execution, never both and never neither. The reply body
-- always lives here (a notification carries only the inbox id), so results
-- of any size travel the same way and a notification lost to a reconnect
-- loses nothing.
--
-- Inboxes are deleted by their waiter; a waiter whose process died leaves
-- one behind, which GC removes.
--
-- WARNING: migrations run this file; add a new one to change it.

CREATE TABLE reply_inboxes (
    id            UUID PRIMARY KEY,
    -- No foreign key: an inbox lives for one request and a deleted app's
    -- inboxes are swept by GC like any other left behind.
    app_id        UUID NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    delivered_at  TIMESTAMPTZ,
    -- The HTTP status and JSON body the caller gets.
    status_code   INT,
    body          JSONB,
    CONSTRAINT reply_inboxes_delivered CHECK ((delivered_at IS NULL) = (status_code IS NULL))
);
CREATE INDEX reply_inboxes_created_idx ON reply_inboxes (created_at);
