# Claims stamp their rows with a token, so rows of a claim whose answer was
# lost can be given back: outbox/sql/0012_claim_token.sql. A nullable column
# (no rewrite, old inserts valid) and functions beside the released ones;
# the released outbox_claim keeps its arguments and result. Safe while
# nodes of the previous release dispatch (docs/operations.md).

from django.db import migrations

from picloud.db.sqlfiles import read_sql, sql_migration

# Reverting restores the claim of 0009_claim_due_at.sql (its function, as
# released) and drops what this migration added.
_CLAIM_0009 = read_sql("outbox", "0009_claim_due_at.sql")
_CLAIM_0009 = _CLAIM_0009[
    _CLAIM_0009.index("CREATE OR REPLACE FUNCTION outbox_claim(") : _CLAIM_0009.index(
        "-- The claim that acknowledges the last batch"
    )
]


class Migration(migrations.Migration):
    dependencies = [("outbox", "0013_settle_claimed_attempt")]

    operations = [
        sql_migration(
            "outbox",
            "0012_claim_token.sql",
            reverse_sql=[
                "DROP FUNCTION outbox_release_claimed(UUID[], UUID[])",
                "DROP FUNCTION outbox_give_back(UUID[])",
                "DROP FUNCTION outbox_claim_logged(INTEGER, DOUBLE PRECISION, UUID, INTEGER, "
                "INTEGER, UUID[], DOUBLE PRECISION[], INTEGER[], TEXT[], INTEGER[], TEXT[], UUID)",
                _CLAIM_0009,
                "DROP FUNCTION outbox_claim(INTEGER, DOUBLE PRECISION, UUID[], UUID, INTEGER, "
                "INTEGER, UUID)",
                "ALTER TABLE outbox DROP COLUMN claim_token",
            ],
            state_operations=[],
        ),
    ]
