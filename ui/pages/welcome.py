"""The page shown before any model is loaded: the ways to open something, recent models, and the
models already in the user's Hugging Face cache.

Whether recent entries still exist and what the hub cache holds are found on a background worker
(``welcome_scan_job``) each time the page is shown; a recent model that no longer exists is greyed
with a tooltip saying so.  A click (or Enter) on an entry opens it.
"""
from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTime, Signal
from PySide6.QtGui import QFont, QIcon, QKeyEvent, QShowEvent
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QFrame, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from workbench.hfcache import CachedModel, hub_cache_dir, scan_hub_cache

from ..formatting import human_bytes
from ..controllers.recent_files import RecentFiles
from ..worker import Worker

WELCOME_TEXT = "Drop a model file or folder here, or use File ▸ Open"
PATH_ROLE = Qt.ItemDataRole.UserRole
SPACING = 12
MODEL_SUFFIXES = {".gguf", ".safetensors", ".bin", ".pt", ".pth", ".json"}


def welcome_scan_job(recent_paths: list[str], hub_cache: Path):
    """Worker job: ``({path: exists}, [CachedModel])``."""
    exists = {p: os.path.exists(p) for p in recent_paths}
    models = yield from scan_hub_cache(hub_cache)
    return exists, models


class ModelList(QTreeWidget):
    """A flat two-column list whose entries open with one click or Enter (``open_path(str)``)."""

    open_path = Signal(str)

    def __init__(self, headers: tuple[str, str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setHeaderLabels(list(headers))
        self.setRootIsDecorated(False)
        self.setUniformRowHeights(True)
        self.setAllColumnsShowFocus(True)
        self.setMouseTracking(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAcceptDrops(False)  # drops go to the window
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep the file name's quantization suffix
        header = self.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.itemClicked.connect(lambda item, _col: self._open(item))
        self._last: tuple[str, QTime] | None = None

    def _open(self, item: QTreeWidgetItem | None) -> None:
        if item is None or not (item.flags() & Qt.ItemFlag.ItemIsEnabled):
            return
        path = item.data(0, PATH_ROLE)
        if not path:
            return
        now = QTime.currentTime()
        if self._last and self._last[0] == path and self._last[1].msecsTo(now) < QApplication.doubleClickInterval():
            return  # the second click of a double-click: already opening
        self._last = (path, now)
        self.open_path.emit(path)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self._open(self.currentItem())
            return
        super().keyPressEvent(event)

    def set_placeholder(self, text: str) -> None:
        self.clear()
        item = QTreeWidgetItem([text, ""])
        item.setFlags(Qt.ItemFlag.NoItemFlags)
        self.addTopLevelItem(item)

    def paths(self) -> list[str]:
        return [self.topLevelItem(i).data(0, PATH_ROLE) for i in range(self.topLevelItemCount())
                if self.topLevelItem(i).data(0, PATH_ROLE)]

    def item_for(self, path: str) -> QTreeWidgetItem | None:
        for i in range(self.topLevelItemCount()):
            if self.topLevelItem(i).data(0, PATH_ROLE) == path:
                return self.topLevelItem(i)
        return None

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(360, 220)


def _section(title: str, tooltip: str, body: QWidget, parent: QWidget) -> QWidget:
    box = QWidget(parent)
    lay = QVBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.setSpacing(6)
    label = QLabel(title, box)
    f = QFont(label.font())
    f.setBold(True)
    label.setFont(f)
    label.setToolTip(tooltip)
    lay.addWidget(label)
    lay.addWidget(body, 1)
    return box


class WelcomeWidget(QWidget):
    open_file = Signal()
    open_folder = Signal()
    open_demo = Signal()
    open_path = Signal(str)
    scanned = Signal()  # the recent list and the Hugging Face list are up to date

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.recent: RecentFiles | None = None
        self.hub_cache: Path | None = None  # None: from the environment (HF_HUB_CACHE, HF_HOME, ~/.cache)
        self.exists: dict[str, bool] = {}
        self.hf_models: list[CachedModel] = []
        self.worker = Worker(self, name="welcome-scan")
        self.worker.result.connect(self._on_scanned)
        self.worker.error.connect(lambda msg: self.hf_list.set_placeholder(f"Could not read the cache: {msg}"))

        panel = QFrame(self)
        panel.setObjectName("welcomePanel")
        panel.setFrameShape(QFrame.Shape.StyledPanel)
        panel.setStyleSheet("#welcomePanel { border: 2px dashed palette(mid); border-radius: 12px; }")
        self.logo = QLabel(panel)
        icon = QApplication.windowIcon()
        if icon.isNull():
            from ..app import app_icon

            icon = app_icon()
        if not icon.isNull():
            self.logo.setPixmap(icon.pixmap(56, 56))
        title = QLabel("Model Workbench", panel)
        f = QFont(title.font())
        f.setPointSizeF(f.pointSizeF() * 1.8)
        f.setBold(True)
        title.setFont(f)
        heading = QHBoxLayout()
        heading.setSpacing(SPACING)
        heading.addStretch(1)
        heading.addWidget(self.logo)
        heading.addWidget(title)
        heading.addStretch(1)
        self.label = QLabel(WELCOME_TEXT, panel)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        formats = QLabel("GGUF · safetensors (single or sharded) · PyTorch .bin · Hugging Face folders · "
                         "PEFT adapters", panel)
        formats.setAlignment(Qt.AlignmentFlag.AlignCenter)
        formats.setWordWrap(True)
        formats.setEnabled(False)  # drawn greyed: a secondary line

        self.file_button = QPushButton("Open File…", panel)
        self.file_button.setToolTip("Open a .gguf, .safetensors or .bin file (Ctrl+O)")
        self.folder_button = QPushButton("Open Folder…", panel)
        self.folder_button.setToolTip("Open a Hugging Face model or PEFT adapter folder (Ctrl+Shift+O)")
        self.demo_button = QPushButton("Open Demo Model", panel)
        self.demo_button.setToolTip("Open a tiny built-in llama-style GGUF to explore the app")
        self.file_button.clicked.connect(self.open_file)
        self.folder_button.clicked.connect(self.open_folder)
        self.demo_button.clicked.connect(self.open_demo)
        buttons = QHBoxLayout()
        buttons.setSpacing(SPACING)
        buttons.addStretch(1)
        for b in (self.file_button, self.folder_button, self.demo_button):
            b.setMinimumWidth(140)
            buttons.addWidget(b)
        buttons.addStretch(1)

        self.recent_list = ModelList(("Model", "Folder"), panel)
        self.recent_list.setToolTip("Recently opened models: click to open")
        self.recent_list.open_path.connect(self.open_path)
        self.hf_list = ModelList(("Model", "Size"), panel)
        self.hf_list.setToolTip("Models already downloaded by Hugging Face tools: click to open")
        self.hf_list.open_path.connect(self.open_path)
        self.hf_title_tip = "Models in the Hugging Face hub cache"
        lists = QHBoxLayout()
        lists.setSpacing(SPACING * 2)
        lists.addWidget(_section("Recent models", "Models you opened before (File ▸ Open Recent)",
                                 self.recent_list, panel), 1)
        self.hf_section = _section("In your Hugging Face cache", self.hf_title_tip, self.hf_list, panel)
        lists.addWidget(self.hf_section, 1)

        inner = QVBoxLayout(panel)
        inner.setContentsMargins(SPACING * 3, SPACING * 3, SPACING * 3, SPACING * 3)
        inner.setSpacing(SPACING)
        inner.addLayout(heading)
        inner.addWidget(self.label)
        inner.addWidget(formats)
        inner.addSpacing(SPACING // 2)
        inner.addLayout(buttons)
        inner.addSpacing(SPACING)
        inner.addLayout(lists, 1)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(SPACING * 3, SPACING * 3, SPACING * 3, SPACING * 3)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(panel, 8)
        row.addStretch(1)
        outer.addLayout(row, 1)
        self.recent_list.set_placeholder("No recent models yet")
        self.hf_list.set_placeholder("Looking for models…")

    # -- data ---------------------------------------------------------------------------------------
    def set_recent(self, recent: RecentFiles) -> None:
        self.recent = recent
        recent.changed.connect(self._on_recent_changed)
        self._fill_recent()

    def cache_dir(self) -> Path:
        return self.hub_cache if self.hub_cache is not None else hub_cache_dir()

    def refresh(self) -> int:
        """Check the recent entries and scan the Hugging Face cache in the background."""
        paths = self.recent.paths() if self.recent is not None else []
        tip = f"{self.hf_title_tip}: {self.cache_dir()}"
        self.hf_section.findChild(QLabel).setToolTip(tip)
        return self.worker.start(welcome_scan_job, paths, self.cache_dir())

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        return self.worker.shutdown(timeout_ms)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.refresh()

    def _on_recent_changed(self) -> None:
        self._fill_recent()
        if self.isVisible():
            self.refresh()

    def _on_scanned(self, result) -> None:
        self.exists, self.hf_models = result
        self._fill_recent()
        self._fill_hf()
        self.scanned.emit()

    def _icons(self) -> tuple[QIcon, QIcon]:
        style = self.style()
        return style.standardIcon(style.StandardPixmap.SP_DirIcon), style.standardIcon(style.StandardPixmap.SP_FileIcon)

    def _fill_recent(self) -> None:
        paths = self.recent.paths() if self.recent is not None else []
        if not paths:
            self.recent_list.set_placeholder("No recent models yet")
            return
        self.recent_list.clear()
        folder_icon, file_icon = self._icons()
        for path in paths:
            stripped = path.rstrip("/\\")
            name = os.path.basename(stripped) or path
            item = QTreeWidgetItem([name, os.path.basename(os.path.dirname(stripped))])
            item.setData(0, PATH_ROLE, path)
            item.setIcon(0, file_icon if os.path.splitext(name)[1] in MODEL_SUFFIXES else folder_icon)
            if self.exists.get(path, True):
                item.setToolTip(0, path)
                item.setToolTip(1, path)
            else:  # greyed, not clickable
                item.setFlags(Qt.ItemFlag.NoItemFlags)
                tip = f"Not found: {path}\n(moved, renamed or deleted)"
                item.setToolTip(0, tip)
                item.setToolTip(1, tip)
            self.recent_list.addTopLevelItem(item)

    def _fill_hf(self) -> None:
        if not self.hf_models:
            self.hf_list.set_placeholder("No models found")
            self.hf_list.topLevelItem(0).setToolTip(0, f"Nothing to open in {self.cache_dir()}")
            return
        self.hf_list.clear()
        folder_icon, file_icon = self._icons()
        for m in self.hf_models:
            item = QTreeWidgetItem([m.label, human_bytes(m.size)])
            item.setData(0, PATH_ROLE, str(m.path))
            item.setIcon(0, folder_icon if m.kind == "folder" else file_icon)
            item.setToolTip(0, f"{m.repo_id} (revision {m.revision[:12]})\n{m.path}")
            item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.hf_list.addTopLevelItem(item)

