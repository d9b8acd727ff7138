"""Progress for long operator commands (bulk load, backup, restore, reinit).

On a terminal: a ``rich`` bar with percent, size, MB/s, items/s and ETA (a
spinner when a single call has no progress to report). Not on a terminal
(cron, CI, a pipe): no control characters, one plain line every
``PLAIN_EVERY_S`` and a last one at the end, with the same figures.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

PLAIN_EVERY_S = 5.0
TTY_EVERY_S = 0.1  # rich redraws itself; feeding it faster only costs the caller


class Progress:
    """``update(done, nbytes)`` as work goes by (``done`` counts what ``total``
    counts: items, or bytes when the two are the same), ``finish()`` once.

    Contract: writes to ``out`` (stderr by default) only, never to stdout, and
    nothing at all when ``enabled`` is False; ``total`` may be set later (a
    backup learns its item count from the snapshot header)."""

    def __init__(self, label: str, total: int, enabled: bool = True, out: TextIO | None = None) -> None:
        self.label, self.total, self.enabled = label, max(0, total), enabled
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.t0 = self.last = time.monotonic()
        self.done = 0
        self.nbytes = 0
        self._rich: Any = None
        self._task: Any = None

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self._rich = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                              TextColumn("{task.fields[figures]}"), TextColumn("ETA"), TimeRemainingColumn(),
                              console=Console(file=self.out), transient=False)
        self._rich.start()
        self._task = self._rich.add_task(self.label, total=self.total or None, figures="")

    def update(self, done: int, nbytes: int) -> None:
        self.done, self.nbytes = done, nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < (TTY_EVERY_S if self.tty else PLAIN_EVERY_S):
            return
        self.last = now
        if self.tty:
            if self._rich is None:
                self._start_rich()
            self._rich.update(self._task, completed=done, total=self.total or None, figures=self._figures())
        else:
            self._plain()

    def finish(self) -> None:
        if not self.enabled:
            return
        self.done = max(self.done, self.total)
        if self.tty:
            if self._rich is None:
                self._start_rich()
            self._rich.update(self._task, completed=self.done, total=self.total or self.done or 1,
                              figures=self._figures())
            self._rich.stop()
        else:
            self._plain()

    def _figures(self) -> str:
        secs = max(1e-6, time.monotonic() - self.t0)
        mb = self.nbytes / 1e6
        out = f"{mb:.1f} MB {mb / secs:.1f} MB/s"
        if self.done != self.nbytes:  # counting items, not bytes
            out += f" {self.done / secs:,.0f} items/s"
        return out

    def eta(self) -> float | None:
        secs = time.monotonic() - self.t0
        if not self.total or self.done <= 0 or secs <= 0:
            return None
        return max(0.0, (self.total - self.done) / (self.done / secs))

    def _plain(self) -> None:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        eta = self.eta()
        self.out.write(f"{self.label} [{'#' * int(frac * 30):<30}] {frac * 100:5.1f}% {self._figures()}"
                       f" ETA {'-' if eta is None else f'{eta:.0f} s'}\n")
        self.out.flush()


@contextmanager
def spinner(label: str, out: TextIO | None = None) -> Iterator[None]:
    """A spinner with the label while a single long call runs (terminal only)."""
    stream = out or sys.stderr
    if not stream.isatty():
        yield
        return
    from rich.console import Console

    with Console(file=stream).status(label):
        yield
