-- Settling a queue batch only while its outbox row is still the claim
-- that ran it (the retry's twin: outbox/sql/0011_settle_claimed_attempt.sql).
-- queue_settle_batch (0004_pubsub_and_queues.sql) cannot tell the caller
-- that the batch was settled already, so a settle repeated after a lost
-- COMMIT answer logged the batch's attempt a second time.
--
-- Rolling upgrade (docs/operations.md, "Rolling upgrades"): a new function
-- beside queue_settle_batch, which it calls and does not change: nodes of
-- the previous release keep calling that one. No table changes.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- queue_settle_batch, only while the batch's row is still the claim that
-- made attempt p_attempt. Returns the dead messages deleted (the caller writes their letters), or NULL when
-- the batch was not settled here: its row already settled (a settle
-- repeated after a lost COMMIT answer: nothing to do; its messages, if the
-- row went with its trigger, are released as before), or claimed again by
-- another dispatcher (the messages are that claim's: nothing is touched).
-- The caller logs the attempt only when it gets an array.
CREATE FUNCTION queue_settle_claimed(
    p_batch UUID, p_attempt INTEGER, p_done BIGINT[], p_retry BIGINT[],
    p_retry_delay_ms INTEGER[], p_retry_count INTEGER[], p_dead BIGINT[]
) RETURNS BIGINT[]
LANGUAGE plpgsql AS $$
DECLARE
    current_attempt INTEGER;
BEGIN
    SELECT attempts INTO current_attempt FROM outbox WHERE id = p_batch FOR UPDATE;
    IF NOT FOUND THEN
        UPDATE queue_messages SET batch_id = NULL WHERE batch_id = p_batch;
        RETURN NULL;
    END IF;
    IF current_attempt <> p_attempt THEN
        RETURN NULL;
    END IF;
    -- Ours: the released function settles it (it deletes the row first).
    RETURN queue_settle_batch(p_batch, p_done, p_retry, p_retry_delay_ms, p_retry_count, p_dead);
END;
$$;
