"""What the sweep commands share: their options and a terminal progress bar."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from picloud.db.batches import BATCH_SIZE
from picloud.management.arguments import check_between, int_between

WIDTH = 30  # characters of the progress bar
MAX_DAYS = 3650  # --older-than's bound, the same as the retention variables'
MAX_BATCH_SIZE = 100_000  # rows per DELETE; more would hold row locks for seconds


class SweepCommand(BaseCommand):
    retention_variable = ""  # the PICLOUD_* variable --older-than defaults to

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int_between(1, MAX_DAYS, "days"),
            metavar="DAYS",
            help=f"retention in days, 1 to {MAX_DAYS} (default: {self.retention_variable})",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument(
            "--batch-size",
            type=int_between(1, MAX_BATCH_SIZE, "rows"),
            metavar="N",
            default=BATCH_SIZE,
            help=f"rows per batch, 1 to {MAX_BATCH_SIZE} (default: {BATCH_SIZE})",
        )

    @staticmethod
    def days(older_than: int | None, default: int, batch_size: int) -> int:
        """The retention to sweep with: --older-than, else the variable's `default`."""
        check_between("--batch-size", batch_size, 1, MAX_BATCH_SIZE, "rows")
        if older_than is None:
            return default  # already checked by TriggerConfig.from_env
        return check_between("--older-than", older_than, 1, MAX_DAYS, "days")


class ProgressBar:
    """Draws `[####....] done/total` on a terminal; silent otherwise."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.drawn = False

    @property
    def enabled(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = min(WIDTH, WIDTH * done // total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total}", ending="")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("")  # end the bar's line
