-- What the dead-letter admin reads at 1,000,000 letters (docs/admin.md, "At
-- scale"): each list, filter and search an index range or an index search
-- instead of a scan of the table.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- The list's order, newest first (created_at, then id, as Django makes
-- every ordering total), and the age filter: read backwards.
CREATE INDEX dead_letters_created_idx ON dead_letters (created_at, id);

-- The trigger filter, newest first; it serves the SET NULL when a trigger
-- is deleted as well, so it replaces the index on trigger_id alone.
CREATE INDEX dead_letters_trigger_created_idx ON dead_letters (trigger_id, created_at, id)
    WHERE trigger_id IS NOT NULL;
DROP INDEX dead_letters_trigger_idx;

-- "Did this outbox row end as a dead letter?": the trigger list's last fire
-- of each cron trigger.
CREATE INDEX dead_letters_outbox_id_idx ON dead_letters (outbox_id) WHERE outbox_id IS NOT NULL;

-- The unresolved letters of one topic's deliveries and of one queue's
-- messages (the topics' and queues' pages count them per row).
CREATE INDEX dead_letters_unresolved_topic_idx ON dead_letters (app_id, (payload ->> 'topic'))
    WHERE resolution IS NULL AND source_kind = 'pubsub';
CREATE INDEX dead_letters_unresolved_queue_idx ON dead_letters (app_id, (payload ->> 'queue_id'))
    WHERE resolution IS NULL AND source_kind = 'queue';

-- The words the admin's search finds in a letter (search_words,
-- picloud/sql/0007_search_words.sql): its last error, its note and every
-- attempt's error, the JSON string escapes of the errors' text (\n,
-- \u0007) taken for separators too.
CREATE FUNCTION dead_letter_words(p_last_error TEXT, p_note TEXT, p_errors JSONB)
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT search_words(p_last_error || ' ' || p_note || ' '
                        || regexp_replace(p_errors::text, '\\(u[0-9a-fA-F]{4}|.)', ' ', 'g'))
$$;
CREATE INDEX dead_letters_words_idx ON dead_letters
    USING gin (dead_letter_words(last_error, note, errors));
