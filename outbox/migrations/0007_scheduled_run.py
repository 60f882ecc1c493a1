# One-off scheduled runs in admin: a proxy of the outbox (no schema change).

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0006_claim_waits"),
    ]

    operations = [
        migrations.CreateModel(
            name="ScheduledRun",
            fields=[],
            options={
                "verbose_name": "scheduled run",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("outbox.outboxentry",),
        ),
    ]
