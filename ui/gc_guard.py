"""Cyclic garbage is collected on the GUI thread only.

Python runs its cyclic collector in whichever thread happens to allocate past a threshold.  When that is a
worker thread and the garbage holds a Qt object (a menu, an action, a widget caught in a cycle through a
connected lambda), Qt destroys it there: the worker then holds Qt's connection lock while it waits for the
interpreter lock, and the GUI thread, deleting a widget of its own, waits for that lock while holding the
interpreter lock.  Neither moves again.

:func:`install` turns the automatic collector off and collects on the GUI thread instead: a timer does what
the automatic collector would have done by then (each generation whose count passed its threshold), and a
worker that asks for a collection through :func:`workbench.gcpolicy.collect` (the comparison does, between
levels) has it run on the GUI thread while it waits.
"""
from __future__ import annotations

import gc
import threading

from PySide6.QtCore import QCoreApplication, QObject, Qt, QThread, QTimer, Signal

from workbench import gcpolicy

INTERVAL_MS = 250  # how often the GUI thread looks at the collector's counts
REQUEST_TIMEOUT_S = 10.0  # a worker's request gives up waiting after this (the GUI thread may be shutting down)

_installed: "GuiCollector | None" = None


class GuiCollector(QObject):
    """Runs the cyclic collector on the thread it lives in (the GUI thread)."""

    _requested = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._lock = threading.Lock()
        self._waiting: list[threading.Event] = []
        self._requested.connect(self._collect_requested, Qt.ConnectionType.QueuedConnection)
        self.timer = QTimer(self)
        self.timer.setInterval(INTERVAL_MS)
        self.timer.timeout.connect(self.collect_due)
        self.timer.start()

    def collect_due(self) -> int:
        """Collect the oldest generation whose count passed its threshold (as the automatic collector would);
        returns the generation collected, or -1."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        generation = -1
        for g in range(3):
            if thresholds[g] and counts[g] > thresholds[g]:
                generation = g
            else:
                break
        if generation >= 0:
            gc.collect(generation)
        return generation

    def request(self) -> None:
        """Collect everything now: at once on the GUI thread; from another thread, on the GUI thread while the
        caller waits (at most ``REQUEST_TIMEOUT_S``)."""
        if QThread.currentThread() is self.thread():
            gc.collect()
            return
        done = threading.Event()
        with self._lock:
            self._waiting.append(done)
        self._requested.emit()
        done.wait(REQUEST_TIMEOUT_S)

    def _collect_requested(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        if waiting:
            gc.collect()
            for done in waiting:
                done.set()


def install(app: QCoreApplication | None = None) -> GuiCollector:
    """Collect cyclic garbage on the GUI thread from now on (idempotent; call it on the GUI thread)."""
    global _installed
    if _installed is None:
        app = app or QCoreApplication.instance()
        _installed = GuiCollector(app)
        gc.disable()
        gcpolicy.set_collector(_installed.request)
    return _installed
