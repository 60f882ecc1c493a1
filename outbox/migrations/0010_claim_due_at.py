# The claim returns when each row was due: outbox/sql/0009_claim_due_at.sql.

from django.db import migrations

from picloud.db.sqlfiles import read_sql, sql_migration

# Reverting drops the logged claim and restores the claim of
# 0006_claim_waits.sql (its function, as released).
_CLAIM_0006 = read_sql("outbox", "0006_claim_waits.sql")
_CLAIM_0006 = _CLAIM_0006[_CLAIM_0006.index("CREATE OR REPLACE FUNCTION outbox_claim(") :]


class Migration(migrations.Migration):
    dependencies = [("outbox", "0009_delivery_log")]

    operations = [
        sql_migration(
            "outbox",
            "0009_claim_due_at.sql",
            reverse_sql=[
                "DROP FUNCTION outbox_claim_logged(INTEGER, DOUBLE PRECISION, UUID, INTEGER, "
                "INTEGER, UUID[], DOUBLE PRECISION[], INTEGER[], TEXT[], INTEGER[], TEXT[])",
                _CLAIM_0006,
            ],
            state_operations=[],
        ),
    ]
