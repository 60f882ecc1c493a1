-- A dead-letter trigger filters only on a trigger of its own app, as a
-- trigger runs only a script of its own app (triggers_script_same_app_fkey).
-- Without this, a user administering two apps could point app A's filter at
-- app B's trigger; once that user lost B, B's admins could not delete their
-- own trigger, blocked by a row of an app they cannot see.
--
-- WARNING: migrations run this file. Editing it does not change databases
-- that already ran it; add a new numbered file and migration instead.

-- Filters that already point at another app's trigger stop the migration,
-- naming them. They are not rewritten: such a filter never matched (dead
-- letters reach only triggers of their own app), and clearing it would
-- widen its trigger from nothing to every dead letter of its app.
DO $$
DECLARE
    offenders TEXT;
BEGIN
    SELECT string_agg(format('%s/%s filters on %s/%s', a.slug, t.name, sa.slug, s.name),
                      '; ' ORDER BY a.slug, t.name)
    INTO offenders
    FROM dead_letter_trigger_details d
    JOIN triggers t ON t.id = d.trigger_id
    JOIN apps a ON a.id = t.app_id
    JOIN triggers s ON s.id = d.source_trigger_id
    JOIN apps sa ON sa.id = s.app_id
    WHERE s.app_id <> t.app_id;
    IF offenders IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE =
            'Dead-letter triggers filter on another app''s trigger, which is no longer '
            || 'allowed: ' || offenders || '. Such a filter never matched anything. '
            || 'Disable each of these triggers and clear its source trigger (or delete it): '
            || 'docs/admin.md, "Upgrading", has the SQL. Then run migrate again.';
    END IF;
END;
$$;

-- The key the composite foreign keys below reference.
ALTER TABLE triggers ADD CONSTRAINT triggers_id_app_key UNIQUE (id, app_id);

-- Each details row carries its trigger's app.
ALTER TABLE dead_letter_trigger_details ADD COLUMN app_id UUID;
UPDATE dead_letter_trigger_details d SET app_id = t.app_id
FROM triggers t WHERE t.id = d.trigger_id;

ALTER TABLE dead_letter_trigger_details
    ALTER COLUMN app_id SET NOT NULL,
    -- Replaced by the composite keys, which check the same and the app.
    DROP CONSTRAINT dead_letter_trigger_details_trigger_id_fkey,
    DROP CONSTRAINT dead_letter_trigger_details_source_trigger_id_fkey,
    -- app_id is the app of the trigger the details belong to.
    ADD CONSTRAINT dead_letter_trigger_details_trigger_app_fkey
        FOREIGN KEY (trigger_id, app_id) REFERENCES triggers (id, app_id) ON DELETE CASCADE,
    -- The source trigger is of that same app. Deleting a trigger that a
    -- filter names is still refused (a silently widened filter would
    -- surprise the operator), and now the filter is always in the same app,
    -- where whoever deletes can see and change it. Checked at commit, so
    -- deleting both in one transaction, or the whole app, works whatever
    -- order the cascades run in.
    ADD CONSTRAINT dead_letter_trigger_details_source_same_app_fkey
        FOREIGN KEY (source_trigger_id, app_id) REFERENCES triggers (id, app_id)
        DEFERRABLE INITIALLY DEFERRED;
