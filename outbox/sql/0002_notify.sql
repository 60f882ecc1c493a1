-- Wake the dispatchers: every statement that inserts outbox rows, and every
-- update that makes a row due now (a release, "run now", a replay), sends a
-- notification on channel picloud_outbox. PostgreSQL folds identical
-- notifications of one transaction into one and delivers them at commit.
-- Claims (which push due_at into the future) send nothing.
--
-- WARNING: migrations run this file; add a new one to change it.

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('picloud_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify_insert
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TRIGGER outbox_notify_due_now
    AFTER UPDATE OF due_at ON outbox
    FOR EACH ROW WHEN (NEW.due_at <= NOW() AND NEW.due_at < OLD.due_at)
    EXECUTE FUNCTION outbox_notify();

-- Counters of the dispatchers (dispatched, succeeded, ...), summed over every
-- process of every cluster; each process adds its increments about once a
-- second. /metrics reads them.
CREATE TABLE dispatcher_counters (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL DEFAULT 0 CHECK (value >= 0)
);
