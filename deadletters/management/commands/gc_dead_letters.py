from deadletters.gc import sweep_dead_letters
from deadletters.management.commands._sweep import ProgressBar, SweepCommand
from deadletters.pg_repository import PgDeadLetterRepo
from picloud.config import TriggerConfig


class Command(SweepCommand):
    help = (
        "Delete resolved dead letters older than the retention (by when they were resolved), "
        "in batches. Unresolved ones are kept unless --include-unresolved."
    )
    retention_variable = "PICLOUD_DEAD_LETTER_RETENTION_DAYS"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--include-unresolved",
            action="store_true",
            help="also delete unresolved dead letters created before the cutoff",
        )

    def handle(self, *args, older_than, include_unresolved, dry_run, batch_size, **options):
        default = TriggerConfig.current().dead_letter_retention_days
        bar = ProgressBar(self.stdout)
        result = sweep_dead_letters(
            PgDeadLetterRepo(),
            older_than_days=self.days(older_than, default, batch_size),
            include_unresolved=include_unresolved,
            dry_run=dry_run,
            batch_size=batch_size,
            progress=bar,
        )
        bar.finish()
        self.stdout.write(result.summary())
