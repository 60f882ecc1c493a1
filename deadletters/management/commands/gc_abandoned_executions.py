from deadletters.gc import sweep_abandoned
from deadletters.management.commands._sweep import ProgressBar, SweepCommand
from deadletters.pg_repository import PgAbandonedRepo
from outbox.storage.pg_repository import PgReplyInbox
from outbox.sync.inboxes import sweep_orphaned_inboxes
from picloud.config import TriggerConfig


class Command(SweepCommand):
    help = (
        "Delete abandoned executions older than the retention, in batches, and the reply "
        "inboxes that requests which died left behind."
    )
    retention_variable = "PICLOUD_ABANDONED_EXECUTIONS_RETENTION_DAYS"

    def handle(self, *args, older_than, dry_run, batch_size, **options):
        default = TriggerConfig.current().abandoned_executions_retention_days
        bar = ProgressBar(self.stdout)
        result = sweep_abandoned(
            PgAbandonedRepo(),
            older_than_days=self.days(older_than, default, batch_size),
            dry_run=dry_run,
            batch_size=batch_size,
            progress=bar,
        )
        bar.finish()
        summary = result.summary()
        if not dry_run:
            inboxes = sweep_orphaned_inboxes(PgReplyInbox(), batch_size=batch_size)
            if inboxes:
                summary += f" Removed {inboxes} reply inbox(es) left by requests that died."
        self.stdout.write(summary)
