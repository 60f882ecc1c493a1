-- Named queries of the platform core (picloud.kv and picloud.execution),
-- loaded by picloud.sqlfiles.

-- kv_get --
SELECT collection, key, value, version, updated_at FROM kv_entries
WHERE app_id = %(app_id)s AND collection = %(collection)s AND key = %(key)s;

-- kv_lock --
-- Locks the entry for the rest of the write's transaction, so two writers of
-- one key take turns and each sees the value it replaces.
SELECT value, version FROM kv_entries
WHERE app_id = %(app_id)s AND collection = %(collection)s AND key = %(key)s
FOR UPDATE;

-- kv_insert --
-- DO NOTHING on a concurrent insert of the same key; the caller then locks
-- the row the other writer created and updates it instead.
INSERT INTO kv_entries (app_id, collection, key, value)
VALUES (%(app_id)s, %(collection)s, %(key)s, %(value)s::jsonb)
ON CONFLICT (app_id, collection, key) DO NOTHING
RETURNING collection, key, value, version, updated_at;

-- kv_update --
UPDATE kv_entries
SET value = %(value)s::jsonb, version = version + 1, updated_at = NOW()
WHERE app_id = %(app_id)s AND collection = %(collection)s AND key = %(key)s
RETURNING collection, key, value, version, updated_at;

-- kv_delete --
DELETE FROM kv_entries
WHERE app_id = %(app_id)s AND collection = %(collection)s AND key = %(key)s
RETURNING collection, key, value, version, updated_at;

-- kv_list --
-- Keys in code point order (COLLATE "C"), optionally those starting with a
-- prefix (starts_with: '%%' and '_' in keys are plain characters).
SELECT collection, key, value, version, updated_at FROM kv_entries
WHERE app_id = %(app_id)s AND collection = %(collection)s
  AND (%(prefix)s::text IS NULL OR starts_with(key, %(prefix)s))
ORDER BY key COLLATE "C"
LIMIT %(limit)s;

-- run_context --
-- Everything execute_row needs to decide whether and how to run a row, in
-- one round trip: the script and its app, the run-as principal and its user's
-- flags, and the principal's role in that app (NULL: no membership).
SELECT s.id, s.app_id, s.name, s.enabled, s.runtime, s.handler, s.webhook_url, s.secret,
       s.created_at, s.updated_at,
       a.slug AS app_slug, a.name AS app_name, a.created_at AS app_created_at,
       p.id AS principal_id, p.user_id, p.created_at AS principal_created_at,
       u.username, u.is_active, u.is_superuser,
       m.role
FROM scripts s
JOIN apps a ON a.id = s.app_id
LEFT JOIN principals p ON p.id = %(principal_id)s
LEFT JOIN auth_user u ON u.id = p.user_id
LEFT JOIN app_memberships m ON m.app_id = s.app_id AND m.principal_id = p.id
WHERE s.id = %(script_id)s;

-- token_context --
-- A presented token, only if valid now (not revoked, not expired), with its
-- principal and user flags; and - when asked for and existing - an app by
-- slug, the principal's role in it and a script by name: everything the
-- invoke endpoint checks, in one round trip. The one place that says what a
-- valid token is.
SELECT t.id AS token_id, t.scopes, t.app_id AS token_app_id,
       p.id AS principal_id, u.id AS user_id, u.is_active, u.is_superuser,
       a.id AS app_id, m.role, s.id AS script_id, s.enabled AS script_enabled
FROM api_tokens t
JOIN principals p ON p.id = t.principal_id
JOIN auth_user u ON u.id = p.user_id
LEFT JOIN apps a ON a.slug = %(app_slug)s
LEFT JOIN app_memberships m ON m.app_id = a.id AND m.principal_id = p.id
LEFT JOIN scripts s ON s.app_id = a.id AND s.name = %(script_name)s
WHERE t.token_hash = %(token_hash)s AND t.revoked_at IS NULL AND t.expires_at > NOW();
