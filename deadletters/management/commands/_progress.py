"""A progress bar for the sweep commands, drawn only on a terminal."""

from __future__ import annotations

WIDTH = 30  # characters of the bar


class ProgressBar:
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
