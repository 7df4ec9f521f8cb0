"""A note under an output folder: the partial files that interrupted (killed) runs left there, with a button
that removes them.  Scanning and removing run on a worker (a folder on a network share can block); only
the leftovers of runs that are no longer alive are counted or removed (see :mod:`workbench.fsutil`)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from workbench import fsutil
from workbench.units import human_bytes

from ..worker import Worker


def _scan(folder: Path):
    return folder, fsutil.dead_partials(folder), None


def _remove(folder: Path, shown: list[fsutil.Leftover]):
    names = {x.path.name for x in shown}
    dead = [x for x in fsutil.dead_partials(folder) if x.path.name in names]  # still dead, and what was shown
    removed = fsutil.remove_leftovers(dead)
    return folder, fsutil.dead_partials(folder), removed


def _files(n: int) -> str:
    return f"{n} leftover file{'s' if n != 1 else ''}"


class LeftoverNote(QWidget):
    """Hidden unless ``check(folder)`` finds leftovers.  ``scanned(list)`` after each scan, ``removed(n, bytes)``
    after a removal."""

    scanned = Signal(object)
    removed = Signal(int, int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.label = QLabel("", self)
        self.label.setWordWrap(True)
        self.button = QPushButton("", self)
        self.button.setToolTip("Delete the partial outputs of conversions that were interrupted (killed or crashed); "
                               "a run still writing is never touched")
        self.button.clicked.connect(self.remove)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.button)
        self.worker = Worker(self, name="leftovers")
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(lambda _message: self._show([]))
        self.folder: Path | None = None
        self.found: list[fsutil.Leftover] = []
        self.setVisible(False)

    def check(self, folder) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is None:
            self._show([])
            return
        self.worker.start(_scan, self.folder)

    def remove(self) -> None:
        if self.folder is None or not self.found:
            return
        self.button.setEnabled(False)
        self.worker.start(_remove, self.folder, list(self.found))

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        return self.worker.shutdown(timeout_ms)

    def _on_result(self, result) -> None:
        folder, found, removed = result
        if folder != self.folder:
            return
        self._show(found)
        if removed is not None:
            self.removed.emit(*removed)
        self.scanned.emit(found)

    def _show(self, found: list[fsutil.Leftover]) -> None:
        self.found = list(found)
        n, size = len(found), sum(x.nbytes for x in found)
        self.label.setText(f"This folder holds {_files(n)} of interrupted runs ({human_bytes(size)}).")
        self.button.setText(f"Remove {_files(n)} ({human_bytes(size)})")
        self.button.setEnabled(True)
        self.setVisible(bool(found))
