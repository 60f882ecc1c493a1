-- Named queries of topics and queues (picloud/messaging/). Lists sort by
-- name COLLATE "C" (code point order) whatever the database locale.

-- topic_get --
SELECT id, app_id, name, created_at FROM topics WHERE app_id = %(app_id)s AND name = %(name)s;

-- topic_create --
INSERT INTO topics (app_id, name) VALUES (%(app_id)s, %(name)s)
ON CONFLICT (app_id, name) DO NOTHING
RETURNING id, app_id, name, created_at;

-- topic_delete --
DELETE FROM topics WHERE app_id = %(app_id)s AND name = %(name)s;

-- topics_of_app --
SELECT id, app_id, name, created_at FROM topics WHERE app_id = %(app_id)s
ORDER BY name COLLATE "C";

-- queue_get --
SELECT id, app_id, name, created_at FROM queues WHERE app_id = %(app_id)s AND name = %(name)s;

-- queue_create --
INSERT INTO queues (app_id, name) VALUES (%(app_id)s, %(name)s)
ON CONFLICT (app_id, name) DO NOTHING
RETURNING id, app_id, name, created_at;

-- queue_delete --
DELETE FROM queues WHERE app_id = %(app_id)s AND name = %(name)s;

-- queues_of_app --
SELECT id, app_id, name, created_at FROM queues WHERE app_id = %(app_id)s
ORDER BY name COLLATE "C";

-- queue_send --
-- Ids in the order the bodies were given (identity values follow the
-- insertion order, which the ORDER BY fixes).
INSERT INTO queue_messages (queue_id, body, vt, depth)
SELECT %(queue_id)s, m.body, NOW() + make_interval(secs => %(delay)s), %(depth)s
FROM unnest(%(bodies)s::jsonb[]) WITH ORDINALITY AS m(body, n)
ORDER BY m.n
RETURNING id;

-- queue_receive --
-- pgmq's read: up to %(count)s visible messages, earliest visible first,
-- hidden for %(vt)s seconds and their receive counted. SKIP LOCKED: two
-- consumers never take the same message.
WITH picked AS (
    SELECT id FROM queue_messages
    WHERE queue_id = %(queue_id)s AND batch_id IS NULL AND vt <= NOW()
    ORDER BY vt, id
    LIMIT %(count)s
    FOR UPDATE SKIP LOCKED
)
UPDATE queue_messages m
SET vt = NOW() + make_interval(secs => %(vt)s), receive_count = m.receive_count + 1
FROM picked
WHERE m.id = picked.id
RETURNING m.id, m.body, m.receive_count, m.sent_at, m.vt;

-- queue_ack --
-- Messages a queue trigger's batch holds are that batch's to settle.
DELETE FROM queue_messages
WHERE queue_id = %(queue_id)s AND batch_id IS NULL AND id = ANY (%(ids)s::bigint[])
RETURNING id;

-- queue_nack --
UPDATE queue_messages SET vt = NOW() + make_interval(secs => %(delay)s)
WHERE queue_id = %(queue_id)s AND batch_id IS NULL AND id = ANY (%(ids)s::bigint[])
RETURNING id;

-- queue_purge --
-- Every message, a running batch's too (its settle then finds them gone).
DELETE FROM queue_messages WHERE queue_id = %(queue_id)s;

-- queue_stats --
-- "In flight": held by a batch, or received and not visible again yet.
SELECT count(*) AS depth,
       count(*) FILTER (WHERE batch_id IS NULL AND vt <= NOW()) AS visible,
       count(*) FILTER (WHERE batch_id IS NULL AND vt > NOW() AND receive_count = 0) AS delayed,
       count(*) FILTER (WHERE batch_id IS NOT NULL
                           OR (vt > NOW() AND receive_count > 0)) AS in_flight,
       min(sent_at) AS oldest_sent_at
FROM queue_messages WHERE queue_id = %(queue_id)s;

-- queue_gc --
-- Messages sent before %(before)s, a batch at a time, oldest first (by id,
-- which follows sending), except those a running batch holds.
DELETE FROM queue_messages
WHERE id IN (
    SELECT id FROM queue_messages
    WHERE sent_at < %(before)s AND batch_id IS NULL
    ORDER BY id
    LIMIT %(limit)s
);

-- queue_gc_count --
SELECT count(*) AS n FROM queue_messages WHERE sent_at < %(before)s AND batch_id IS NULL;

-- queue_requeue --
-- A dead letter's message put back on its queue (of the letter's own app)
-- as a new message, at the letter's depth: a replay never restarts a
-- cascade the depth limit ended.
INSERT INTO queue_messages (queue_id, body, depth)
SELECT q.id, %(body)s::jsonb, %(depth)s FROM queues q
WHERE q.id = %(queue_id)s AND q.app_id = %(app_id)s
RETURNING id;
