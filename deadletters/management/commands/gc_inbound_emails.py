from deadletters.management.commands._sweep import SweepCommand
from picloud.config import EmailConfig
from picloud.mail import inbound


class Command(SweepCommand):
    help = (
        "Delete received mail older than the retention (PICLOUD_EMAIL_RETENTION_DAYS), in "
        "batches; the outbox rows it fired are not touched."
    )
    retention_variable = "PICLOUD_EMAIL_RETENTION_DAYS"

    def handle(self, *args, older_than, dry_run, batch_size, **options):
        days = self.days(older_than, EmailConfig.current().retention_days, batch_size)
        if dry_run:
            self.stdout.write(
                f"Dry run: received emails older than {days} day(s) would be deleted "
                f"({inbound.gc_count(days)} now)."
            )
            return
        deleted = inbound.gc(days, batch_size=batch_size)
        self.stdout.write(f"Deleted {deleted} received email(s) older than {days} day(s).")
