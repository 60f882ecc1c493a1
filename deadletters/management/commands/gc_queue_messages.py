from deadletters.management.commands._sweep import SweepCommand
from picloud.config import TriggerConfig
from picloud.messaging import queues


class Command(SweepCommand):
    help = (
        "Delete queue messages nobody consumed within the retention (sent longer ago), in "
        "batches; messages a queue trigger's running batch holds are kept."
    )
    retention_variable = "PICLOUD_QUEUE_RETENTION_DAYS"

    def handle(self, *args, older_than, dry_run, batch_size, **options):
        default = TriggerConfig.current().queue_retention_days
        days = self.days(older_than, default, batch_size)
        if dry_run:
            self.stdout.write(
                f"Dry run: queue messages sent more than {days} day(s) ago would be deleted "
                f"({queues.gc_count(days)} now)."
            )
            return
        deleted = queues.gc(days, batch_size=batch_size)
        self.stdout.write(f"Deleted {deleted} queue message(s) sent more than {days} day(s) ago.")
