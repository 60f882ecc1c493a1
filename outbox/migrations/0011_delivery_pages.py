# Admin's delivery log and dashboard pages: models over the log of
# outbox/sql/0008_delivery_log.sql, which SQL manages (no table changes).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0010_claim_due_at"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryAttempt",
            fields=[
                ("outbox_id", models.UUIDField(primary_key=True, serialize=False)),
                ("started_at", models.DateTimeField()),
            ],
            options={
                "verbose_name": "delivery attempt",
                "verbose_name_plural": "delivery log",
                "db_table": "delivery_log",
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="DeliveryDashboard",
            fields=[],
            options={
                "verbose_name": "dashboard",
                "verbose_name_plural": "dashboard",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("outbox.deliveryattempt",),
        ),
    ]
