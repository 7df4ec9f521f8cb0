"""The "working…" row of a view: a message, a progress bar and a Cancel button, hidden when idle."""
from __future__ import annotations

from typing import Callable

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget


class BusyRow(QWidget):
    def __init__(self, parent: QWidget, cancel: Callable[[], None], cancel_tip: str):
        super().__init__(parent)
        self.label = QLabel(self)
        self.progress = QProgressBar(self)
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setToolTip(cancel_tip)
        self.cancel_button.clicked.connect(cancel)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label)
        lay.addWidget(self.progress, 1)
        lay.addWidget(self.cancel_button)
        self.setVisible(False)

    def start(self, text: str) -> None:
        """Show the row with ``text`` and an indeterminate bar until the first progress arrives."""
        self.label.setText(text)
        self.progress.setRange(0, 0)
        self.setVisible(True)

    def update_progress(self, done: int, total: int, message: str | None = None) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        if message is not None:
            self.label.setText(message)

    def stop(self) -> None:
        self.setVisible(False)
