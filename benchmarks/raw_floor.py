"""The raw SQL floor: a bare psycopg loop claiming 100-row batches with SKIP
LOCKED and deleting them. No execution, no checks: what PostgreSQL allows.

It drains `outbox_floor`, a copy of the outbox table's shape and indexes
(without its NOTIFY triggers), so a dispatcher running beside it stays idle.
Its claim has the same shape as the dispatcher's (outbox/sql/queries.sql):
claimed rows are updated through the primary key, never by a join the
planner may turn into a scan of the whole table.

    python benchmarks/raw_floor.py CONNINFO   (waits for a line on stdin, then drains)
"""

import sys

import psycopg

CLAIM = """
WITH due AS (
    SELECT id FROM outbox_floor WHERE due_at <= NOW() ORDER BY due_at LIMIT 100
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox_floor o SET attempts = o.attempts + 1, due_at = NOW() + interval '60 seconds'
WHERE o.id = ANY (ARRAY(SELECT id FROM due)) RETURNING o.id
"""
DELETE = "DELETE FROM outbox_floor WHERE id = ANY(%s)"


def main(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        sys.stdin.readline()  # start together
        empty = 0
        while empty < 3:
            ids = [r[0] for r in conn.execute(CLAIM).fetchall()]
            if not ids:
                empty += 1
                continue
            empty = 0
            conn.execute(DELETE, [ids])


if __name__ == "__main__":
    main(sys.argv[1])
