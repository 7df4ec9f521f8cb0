"""Who runs Python's cyclic garbage collector.

Core code that wants cyclic garbage gone now (the comparison frees one level's engine before it builds the
next) calls :func:`collect` instead of ``gc.collect()``.  On its own that is ``gc.collect()``.  A GUI host
installs its own collector with :func:`set_collector`: Qt objects caught in a reference cycle must be
destroyed on the GUI thread, and a collection that runs on a worker thread and destroys one there can
deadlock against the GUI thread (the worker holds Qt's lock and waits for the interpreter lock, the GUI
thread the other way round).  So the GUI turns the automatic collector off, collects on its own thread, and
a worker's request is carried out there.
"""
from __future__ import annotations

import gc
from collections.abc import Callable

_collector: Callable[[], object] | None = None


def set_collector(fn: Callable[[], object] | None) -> None:
    """Route :func:`collect` to ``fn`` (None: back to ``gc.collect``)."""
    global _collector
    _collector = fn


def collect() -> None:
    """Collect cyclic garbage now, where the host allows it (see the module's text)."""
    if _collector is None:
        gc.collect()
    else:
        _collector()
