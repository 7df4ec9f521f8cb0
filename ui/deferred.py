"""Launch in stages: the window paints its welcome page first; the rest is built afterwards in small steps.

``Preloader`` imports the heavy modules (pyqtgraph, the core's analysis, comparison and inference
modules) on a background thread after the first paint; the window's steps wait for it (rather than
compete with it for the interpreter lock) and then find them imported.  Importing them creates no Qt object (pyqtgraph only defines classes and value-type
constants at import), so this is safe off the GUI thread.  ``FirstPaint`` calls back once a widget has
been painted for the first time.
"""
from __future__ import annotations

import importlib
import logging
import sys
import threading
from typing import Callable, Iterable

from PySide6.QtCore import QEvent, QObject

log = logging.getLogger(__name__)

# what the deferred parts of the window import (under their own ui modules)
PRELOAD = ("workbench.plan", "workbench.stats", "workbench.formats.hf", "workbench.analysis", "workbench.naming",
           "workbench.infer.weights", "workbench.infer.compare", "workbench.convert.metadata_edit",
           "workbench.optimize.sensitivity", "pyqtgraph")


class Preloader:
    """Imports ``modules`` (those not imported yet) on a daemon thread, once."""

    def __init__(self, modules: Iterable[str] = PRELOAD):
        self.modules = [m for m in modules if m not in sys.modules]
        self.done: set[str] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.modules and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="preload-imports", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        for name in self.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the GUI thread imports it again and reports the error there
                log.debug("preloading %s failed", name, exc_info=True)
            self.done.add(name)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class FirstPaint(QObject):
    """Calls ``callback()`` after ``widget``'s first paint event, once."""

    def __init__(self, widget, callback: Callable[[], None]):
        super().__init__(widget)
        self.callback = callback
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Paint:
            obj.removeEventFilter(self)
            self.callback()
        return False
