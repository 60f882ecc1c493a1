from django.core.management.base import BaseCommand, CommandError

from deadletters.gc import BATCH_SIZE, sweep_dead_letters
from deadletters.management.commands._progress import ProgressBar
from deadletters.pg_repository import PgDeadLetterRepo
from picloud.config import TriggerConfig


class Command(BaseCommand):
    help = (
        "Delete resolved dead letters older than the retention (by when they were resolved), "
        "in batches. Unresolved ones are kept unless --include-unresolved."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            metavar="DAYS",
            help="retention in days (default: PICLOUD_DEAD_LETTER_RETENTION_DAYS)",
        )
        parser.add_argument(
            "--include-unresolved",
            action="store_true",
            help="also delete unresolved dead letters created before the cutoff",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="rows per batch")

    def handle(self, *args, older_than, include_unresolved, dry_run, batch_size, **options):
        default = TriggerConfig.from_env().dead_letter_retention_days
        days = default if older_than is None else older_than
        check_numbers(days, batch_size)
        bar = ProgressBar(self.stdout)
        result = sweep_dead_letters(
            PgDeadLetterRepo(),
            older_than_days=days,
            include_unresolved=include_unresolved,
            dry_run=dry_run,
            batch_size=batch_size,
            progress=bar,
        )
        bar.finish()
        self.stdout.write(result.summary())


def check_numbers(days: int, batch_size: int) -> None:
    if days < 1:
        raise CommandError(f"--older-than must be at least 1 day, got {days}")
    if batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {batch_size}")
