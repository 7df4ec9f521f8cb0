"""File drops anywhere on a window: which local paths a drag carries, and forwarding from children."""
from __future__ import annotations

import os

from PySide6.QtCore import QEvent, QMimeData, QObject


def local_paths(mime: QMimeData | None) -> list[str]:
    """Local files/folders in a drag (``file://`` URLs), in drag order."""
    if mime is None or not mime.hasUrls():
        return []
    return [u.toLocalFile() for u in mime.urls() if u.isLocalFile() and u.toLocalFile()]


def path_to_open(paths: list[str]) -> str | None:
    """One dropped item opens as is; several files from one folder (shards) open that folder."""
    if not paths:
        return None
    if len(paths) == 1:
        return paths[0]
    parents = {os.path.dirname(os.path.abspath(p.rstrip("/\\"))) for p in paths}
    return parents.pop() if len(parents) == 1 else paths[0]


class DropForwarder(QObject):
    """Event filter for child widgets that accept drops themselves (text fields, views): a drag
    carrying files goes to ``target`` (the main window) instead."""

    def __init__(self, target):
        super().__init__(target)
        self.target = target

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop):
            if local_paths(event.mimeData()):
                if kind == QEvent.Type.Drop:
                    self.target.dropEvent(event)
                else:
                    self.target.dragEnterEvent(event)
                return True
        return False
