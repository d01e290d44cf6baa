"""Progress of a long replay or recording: a rich bar on a terminal, plain lines otherwise.

``progress(label, total)`` picks one: on a TTY, rich's bar with rate, ETA and the error
count (rich, a runtime dependency, imported only then); elsewhere
(CI logs, a pipe) one line every ``interval`` seconds and one at the end, on stderr:
``replay: 120/1000 updates (12%), 40.0/s, ETA 0m22s, 0 error(s)``. ``total`` None
(``record --follow``) drops the percentage and the ETA.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

INTERVAL = 5.0


class Progress(Protocol):
    def advance(self, n: int = 1) -> None: ...
    def error(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class PlainProgress:
    """One line every ``interval`` seconds (checked on each advance) and one on close."""

    def __init__(
        self,
        label: str,
        total: int | None,
        out: IO[str],
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "",
    ) -> None:
        self.label, self.total, self.out, self.interval = label, total, out, interval
        self.clock, self.unit = clock, unit
        self.done = self.errors = 0
        self.start = self._last = clock()

    def line(self) -> str:
        took = max(self.clock() - self.start, 1e-9)
        rate = self.done / took
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            head = f"{self.done}{unit}"
            eta = ""
        else:
            pct = 100 * self.done / self.total if self.total else 100.0
            head = f"{self.done}/{self.total}{unit} ({pct:.0f}%)"
            left = self.total - self.done
            eta = f", ETA {_duration(left / rate)}" if rate > 0 and left > 0 else ""
        return f"{self.label}: {head}, {rate:.1f}/s{eta}, {self.errors} error(s)"

    def _tick(self) -> None:
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            print(self.line(), file=self.out, flush=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._tick()

    def error(self, n: int = 1) -> None:
        self.errors += n
        self._tick()

    def close(self) -> None:
        print(self.line() + f" in {_duration(self.clock() - self.start)}", file=self.out,
              flush=True)  # fmt: skip


class RichProgress:
    """rich's bar: description, bar, done/total, percentage, rate, ETA, errors."""

    def __init__(self, label: str, total: int | None, out: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[errors]} error(s)"),
            console=Console(file=out),
        )
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, errors=0, rate="")
        self.errors = 0
        self.done = 0
        self._start = time.monotonic()

    def _refresh(self, **fields: Any) -> None:
        rate = self.done / max(time.monotonic() - self._start, 1e-9)
        self._bar.update(self._task, rate=f"{rate:.1f}/s", **fields)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._bar.advance(self._task, n)
        self._refresh()

    def error(self, n: int = 1) -> None:
        self.errors += n
        self._refresh(errors=self.errors)

    def close(self) -> None:
        self._bar.stop()


class NoProgress:
    def advance(self, n: int = 1) -> None:
        return None

    def error(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def progress(
    label: str, total: int | None, out: IO[str] | None = None, *, unit: str = ""
) -> Progress:
    """A bar on a terminal, plain periodic lines otherwise (on stderr by default)."""
    stream = out if out is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty() and importlib.util.find_spec("rich") is not None:
        return RichProgress(label, total, stream)
    return PlainProgress(label, total, stream, unit=unit)
