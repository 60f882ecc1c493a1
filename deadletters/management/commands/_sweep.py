"""What the sweep commands share: their options and a terminal progress bar."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from deadletters.gc import BATCH_SIZE

WIDTH = 30  # characters of the progress bar


class SweepCommand(BaseCommand):
    retention_variable = ""  # the PICLOUD_* variable --older-than defaults to

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            metavar="DAYS",
            help=f"retention in days (default: {self.retention_variable})",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="rows per batch")

    @staticmethod
    def days(older_than: int | None, default: int, batch_size: int) -> int:
        days = default if older_than is None else older_than
        if days < 1:
            raise CommandError(f"--older-than must be at least 1 day, got {days}")
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, got {batch_size}")
        return days


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
