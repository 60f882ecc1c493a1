# The schema change is outbox/sql/0006_claim_waits.sql (the claim function only).

from django.db import migrations

from picloud.db.sqlfiles import read_sql, sql_migration

# Reverting restores the claim of 0005_circuit_breaker.sql (its function, as released).
_CLAIM_0005 = read_sql("outbox", "0005_circuit_breaker.sql")
_CLAIM_0005 = _CLAIM_0005[_CLAIM_0005.index("CREATE OR REPLACE FUNCTION outbox_claim(") :]


class Migration(migrations.Migration):
    dependencies = [("outbox", "0005_circuit_breaker")]

    operations = [
        sql_migration(
            "outbox", "0006_claim_waits.sql", reverse_sql=_CLAIM_0005, state_operations=[]
        ),
    ]
