"""Progress for long operator commands (bulk load, backup, restore, reinit), on
``rich``: a bar with bytes, rate and ETA when the total is known, a spinner when
it is not. On a terminal only: piped or redirected output (logs, CI) gets no
control characters, just the commands' own summary lines, plus one plain line
every ``PLAIN_EVERY_S`` for long runs so a log shows the command is alive.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

PLAIN_EVERY_S = 5.0


class Bar:
    """``advance(n)`` as bytes (or items) go by; ``close()`` once done. Contract:
    never raises for display problems, never writes to stdout (stderr only)."""

    def __init__(self, label: str, total: int | None, unit: str = "bytes", enabled: bool = True,
                 out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.t0 = self._last = time.monotonic()
        self._progress = None
        self._task = None
        self.enabled = enabled
        if enabled and self.out.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            size_cols = ([DownloadColumn(), TransferSpeedColumn()] if unit == "bytes"
                         else [MofNCompleteColumn(), TextColumn("{task.fields[rate]}")])
            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      TaskProgressColumn(), *size_cols, TextColumn("ETA"), TimeRemainingColumn(),
                                      console=Console(file=self.out), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(label, total=total, rate="")

    def advance(self, n: int) -> None:
        self.done += n
        if self._progress is not None:
            fields = {}
            if self.unit != "bytes":
                secs = max(1e-6, time.monotonic() - self.t0)
                fields["rate"] = f"{self.done / secs:,.0f} {self.unit}/s"
            self._progress.update(self._task, advance=n, **fields)  # type: ignore[arg-type]
        elif self.enabled and time.monotonic() - self._last >= PLAIN_EVERY_S:
            self._last = time.monotonic()
            self.out.write(self._plain() + "\n")
            self.out.flush()

    def _plain(self) -> str:
        secs = max(1e-6, time.monotonic() - self.t0)
        rate = self.done / secs
        pct = f" {100.0 * self.done / self.total:5.1f}%" if self.total else ""
        eta = f", ETA {max(0.0, (self.total - self.done) / rate):.0f} s" if self.total and rate > 0 else ""
        if self.unit == "bytes":
            what = f"{self.done / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s"
        else:
            what = f"{self.done:,} {self.unit}, {rate:,.0f} {self.unit}/s"
        return f"{self.label}:{pct} {what}{eta}"

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextmanager
def spinner(label: str, out: TextIO | None = None) -> Iterator[None]:
    """A spinner with elapsed time while a single long call runs (terminal only)."""
    stream = out or sys.stderr
    if not stream.isatty():
        yield
        return
    from rich.console import Console

    with Console(file=stream).status(label):
        yield
