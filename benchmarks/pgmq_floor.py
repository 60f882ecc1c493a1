"""The queue floor: pgmq's read and delete as bare SQL, in a psycopg loop.

A consumer reads `BATCH` visible messages (hiding them for 30 s and counting
the read), then deletes what it read: two statements a batch, nothing run in
between. What PostgreSQL allows for a pgmq-shaped queue, the measure the
queue trigger's batches are compared with (benchmarks/queues.py).

The table is `pgmq_floor`, shaped as pgmq's queue tables are (msg_id
identity, read_ct, enqueued_at, vt, message; an index on vt), and the two
statements are pgmq's `read` and `delete` (pgmq's sql/pgmq.sql: the read
takes the oldest visible msg_ids FOR UPDATE SKIP LOCKED and updates them
through a join with that CTE; delete is `msg_id = ANY` with RETURNING).

    python benchmarks/pgmq_floor.py CONNINFO BATCH

Waits for a line on stdin, drains, prints "done", and waits for another
line before it closes its connection (so its CPU time, and its server
process's, can be read while both still exist).
"""

import sys

import psycopg

TABLE = """
CREATE TABLE IF NOT EXISTS pgmq_floor (
    msg_id      BIGINT PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    read_ct     INTEGER NOT NULL DEFAULT 0,
    enqueued_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    vt          TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    message     JSONB
);
CREATE INDEX IF NOT EXISTS pgmq_floor_vt_idx ON pgmq_floor (vt ASC);
"""
VISIBILITY = 30  # seconds a read message stays hidden (pgmq's `vt` argument)
READ = """
WITH cte AS (
    SELECT msg_id FROM pgmq_floor
    WHERE vt <= clock_timestamp()
    ORDER BY msg_id ASC
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pgmq_floor m
SET vt = clock_timestamp() + make_interval(secs => %(vt)s), read_ct = read_ct + 1
FROM cte
WHERE m.msg_id = cte.msg_id
RETURNING m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message
"""
DELETE = "DELETE FROM pgmq_floor WHERE msg_id = ANY(%s) RETURNING msg_id"


def main(conninfo: str, batch: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        sys.stdin.readline()  # start together
        params = {"n": batch, "vt": VISIBILITY}
        empty = 0
        while empty < 3:
            ids = [r[0] for r in conn.execute(READ, params).fetchall()]
            if not ids:
                empty += 1
                continue
            empty = 0
            conn.execute(DELETE, [ids])
        print("done", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
