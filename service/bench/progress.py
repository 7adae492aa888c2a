"""What a long bench run is doing and how long it has left: one line kept up to date on a terminal,
nothing when the output goes to a file or a pipe (the report is what is kept there)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts down the seconds of load still planned; `step` says what runs now."""

    def __init__(self, planned_seconds: float, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.shown = self.stream.isatty()
        self.left = planned_seconds
        self.started = time.monotonic()
        self.width = 0

    def plan_more(self, seconds: float) -> None:
        self.left += seconds

    def step(self, what: str, seconds: float = 0.0) -> None:
        """`what` starts now and will load the server for `seconds` (0: work of unknown length)."""
        self._show(what)
        self.left = max(0.0, self.left - seconds)

    def note(self, line: str) -> None:
        """A line worth keeping on the terminal (a finished scenario's row), above the status line."""
        if self.shown:
            self._clear()
            print(line, file=self.stream, flush=True)

    def done(self) -> None:
        if self.shown:
            self._clear()

    def _show(self, what: str) -> None:
        if not self.shown:
            return
        elapsed = time.monotonic() - self.started
        line = f"[{_clock(elapsed)} in, about {_clock(self.left)} of load left] {what}"
        self._clear()
        self.stream.write(line)
        self.stream.flush()
        self.width = len(line)

    def _clear(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"
