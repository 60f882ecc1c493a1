-- The words admin's searches find in a text (docs/admin.md, "At scale"):
-- every ASCII character but letters and digits separates words, so
-- "o-4242" is the words "o" and "4242" and a URL is its parts; a search
-- then matches each word the operator types as the start of one
-- (picloud/db/search.py splits a search the same way). Indexes are built
-- on it (deadletters/sql/0006_admin_at_scale.sql, outbox/sql/
-- 0010_admin_at_scale.sql): changing it means rebuilding them.
--
-- Only the first 100,000 characters count: a tsvector holds at most 1 MB,
-- and a row must never fail to be written for the sake of its search.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

CREATE FUNCTION search_words(p_text TEXT) RETURNS tsvector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT to_tsvector('simple'::regconfig, regexp_replace(
        left(p_text, 100000), '[\x01-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+', ' ', 'g'))
$$;
