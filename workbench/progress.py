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
    done: float
    total: float
    message: str = ""

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
    """A one-line progress bar with ETA for a terminal (used by the CLI on stderr)."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        frac = p.fraction
        elapsed = time.monotonic() - self.start
        eta = (elapsed / frac - elapsed) if frac > 0 else 0.0
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {frac * 100:5.1f}%  ETA {eta:5.0f}s  {p.message[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
