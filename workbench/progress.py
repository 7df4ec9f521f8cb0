"""Progress reporting for long operations.

Long core operations are generators: they ``yield Progress(done, total, message)`` and ``return``
their result.  The same generator drives the CLI progress bar and the GUI worker.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of work; ``message`` says what is being done.  A job's last Progress may
    carry ``warnings``: sentences the user should read (the CLI prints each as ``warning: ...``)."""

    done: float
    total: float
    message: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))


Job = Generator[Progress, None, T]


def run(job: Job[T], on_progress: Callable[[Progress], Any] | None = None) -> T:
    """Drive a job generator to completion and return its result."""
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


def relay(job: Job[T], transform: Callable[[Progress], Progress]) -> Job[T]:
    """Re-yield a job's progress through ``transform`` and return its result (``x = yield from relay(...)``)."""
    while True:
        try:
            p = next(job)
        except StopIteration as stop:
            return stop.value
        yield transform(p)


class TextProgressBar:
    """Progress of a long operation on a stream (the CLI's stderr).

    On a terminal: a one-line bar with ETA, redrawn in place.  Not on a terminal (a log file, a pipe, a CI
    job): a plain line every ``interval`` seconds (what, done/total, percent, ETA), so a long run is not
    silent and the log stays readable.  ``quiet``: nothing at all.
    """

    INTERVAL = 5.0  # seconds between lines when not on a terminal

    def __init__(self, stream=None, width: int = 30, *, quiet: bool = False, interval: float | None = None,
                 clock: Callable[[], float] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = self.INTERVAL if interval is None else interval
        self.clock = clock or time.monotonic
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = not quiet
        self.start = self.clock()
        self._total: float | None = None
        self._next_line = self.start + self.interval
        self._drawn = False  # a bar is on the terminal line (close() ends it)
        self._pending: Progress | None = None  # the last state not yet printed as a line
        self.lines = 0  # progress lines printed (not on a terminal)

    def _eta(self, p: Progress) -> tuple[float, float]:
        if p.total != self._total:  # a new phase (opening, then converting): its own clock for the ETA
            self._total = p.total
            self.start = self.clock()
        elapsed = self.clock() - self.start
        frac = p.fraction
        return elapsed, (elapsed / frac - elapsed) if frac > 0 else float("nan")

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        elapsed, eta = self._eta(p)
        if self.tty:
            frac = p.fraction
            filled = int(self.width * frac)
            bar = "#" * filled + "-" * (self.width - filled)
            eta_s = f"{eta:5.0f}s" if eta == eta else "    ?s"
            self.stream.write(f"\r[{bar}] {frac * 100:5.1f}%  ETA {eta_s}  {p.message[:40]:<40}")
            self.stream.flush()
            self._drawn = True
            return
        now = self.clock()
        if now < self._next_line:
            self._pending = p
            return
        self._line(p, elapsed, eta)
        self._next_line = now + self.interval

    def _line(self, p: Progress, elapsed: float, eta: float) -> None:
        what = p.message.split("; warning")[0] if p.warnings else p.message  # the warnings get their own lines
        what = what.replace("\n", " ")
        what = what if len(what) <= 70 else what[:69] + "…"
        eta_s = f"ETA {_seconds(eta)}" if eta == eta else "ETA ?"
        self.stream.write(f"{what}: {_amount(p.done)}/{_amount(p.total)} ({p.fraction * 100:.1f}%), "
                          f"{_seconds(elapsed)} elapsed, {eta_s}\n")
        self.stream.flush()
        self._pending = None
        self.lines += 1

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
            return
        # a log that showed progress lines ends with the final state
        if self._pending is not None and self.lines:
            p = self._pending
            elapsed = self.clock() - self.start
            self._line(p, elapsed, 0.0 if p.fraction >= 1 else float("nan"))


def _amount(x: float) -> str:
    from .units import human_count

    return human_count(x).replace(" ", "")


def _seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
