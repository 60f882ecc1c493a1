-- Named queries of the KV store (picloud.kv), loaded by picloud.sqlfiles.

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
