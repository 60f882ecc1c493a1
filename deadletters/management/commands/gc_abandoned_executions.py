from django.core.management.base import BaseCommand

from deadletters.gc import BATCH_SIZE, sweep_abandoned, sweep_orphaned_inboxes
from deadletters.management.commands._progress import ProgressBar
from deadletters.management.commands.gc_dead_letters import check_numbers
from deadletters.pg_repository import PgAbandonedRepo
from outbox.pg_repository import PgReplyInbox
from picloud.config import TriggerConfig


class Command(BaseCommand):
    help = (
        "Delete abandoned executions older than the retention, in batches, and the reply "
        "inboxes that requests which died left behind."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            metavar="DAYS",
            help="retention in days (default: PICLOUD_ABANDONED_EXECUTIONS_RETENTION_DAYS)",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="rows per batch")

    def handle(self, *args, older_than, dry_run, batch_size, **options):
        default = TriggerConfig.from_env().abandoned_executions_retention_days
        days = default if older_than is None else older_than
        check_numbers(days, batch_size)
        bar = ProgressBar(self.stdout)
        result = sweep_abandoned(
            PgAbandonedRepo(),
            older_than_days=days,
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
