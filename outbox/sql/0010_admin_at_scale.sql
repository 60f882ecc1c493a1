-- What the admin reads from the outbox at 1,000,000 rows (docs/admin.md,
-- "At scale") that no index served: the scheduled runs, a topic's
-- deliveries, and the search.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- One-off scheduled runs not started (outbox.models.PendingScheduledRuns),
-- by due time: their page, without walking past every other row due
-- before them. A row leaves it when first claimed.
CREATE INDEX outbox_scheduled_runs_idx ON outbox (due_at)
    WHERE source_kind = 'invoke' AND reply_to IS NULL AND attempts = 0
      AND leased_until IS NULL;

-- A topic's pending deliveries (the topics' page counts them per topic):
-- one range of the app's publishes to that topic. Only pub/sub rows are in
-- it, so other rows cost nothing to write.
CREATE INDEX outbox_pubsub_topic_idx ON outbox (app_id, (payload ->> 'topic'))
    WHERE source_kind = 'pubsub';

-- The outbox's search, the words of each row's last error (search_words,
-- picloud/sql/0007_search_words.sql): an index search where a substring
-- search read the whole table. Only rows with an error are in it (a row
-- gets one when an attempt fails), so rows that never failed, the usual
-- kind, cost nothing to write or claim.
CREATE INDEX outbox_error_words_idx ON outbox USING gin (search_words(last_error))
    WHERE last_error IS NOT NULL;
