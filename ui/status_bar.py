"""The status bar: model warnings, a one-line model summary, and progress + Cancel while loading."""
from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar, QWidget

from workbench import Model

from .elided_label import ElidedLabel
from .formatting import human_bytes, human_count
from .worker import Worker

SHOW_DELAY_MS = 150  # fast jobs finish before the progress bar would flash


def model_summary(model: Model) -> str:
    """``gguf · llama · 272 tensors · 134.5 M params · 92.1 MiB · 5.74 bpw``."""
    parts = [model.format]
    if model.architecture:
        parts.append(str(model.architecture))
    parts += [f"{len(model.tensors)} tensors", f"{human_count(model.n_params)} params",
              human_bytes(model.nbytes)]
    if model.n_params:
        parts.append(f"{model.bits_per_weight:.2f} bpw")
    return " · ".join(parts)


class StatusBar(QStatusBar):
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.warning_label = ElidedLabel("", self)
        self.warning_label.setStyleSheet("color: #b35900;")
        self.summary_label = QLabel("No model", self)
        self.summary_label.setToolTip("Format · architecture · tensors · parameters · size on disk · "
                                      "average bits per weight")
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setMaximumWidth(180)
        self.progress_bar.setMaximumHeight(16)
        self.progress_bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setToolTip("Stop loading (Esc)")
        self.cancel_button.setFlat(True)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.addWidget(self.warning_label, 1)
        self.addPermanentWidget(self.summary_label)
        self.addPermanentWidget(self.progress_bar)
        self.addPermanentWidget(self.cancel_button)
        self._show_timer = QTimer(self)
        self._show_timer.setSingleShot(True)
        self._show_timer.setInterval(SHOW_DELAY_MS)
        self._show_timer.timeout.connect(lambda: self._set_progress_visible(True))
        self._set_progress_visible(False)

    def set_model(self, model: Model | None) -> None:
        self.summary_label.setText(model_summary(model) if model is not None else "No model")
        warnings = list(model.warnings) if model is not None else []
        self.warning_label.setText(("⚠ " + " · ".join(warnings)) if warnings else "")
        self.warning_label.setToolTip("\n".join(warnings))

    def track(self, worker: Worker) -> None:
        """Show progress + Cancel while ``worker`` runs (after a short delay)."""
        worker.started.connect(self._started)
        worker.progress.connect(self._progress)
        worker.finished.connect(lambda: self._finished(worker))

    def is_busy_visible(self) -> bool:
        return self.progress_bar.isVisible() or self._show_timer.isActive()

    def _started(self) -> None:
        self.progress_bar.setRange(0, 0)
        self._show_timer.start()

    def _progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
        self.progress_bar.setToolTip(message)
        if message:
            self.showMessage(message)

    def _finished(self, worker: Worker) -> None:
        if worker.is_busy():  # superseded by a newer job of the same worker
            return
        self._show_timer.stop()
        self._set_progress_visible(False)
        self.clearMessage()

    def _set_progress_visible(self, visible: bool) -> None:
        self.progress_bar.setVisible(visible)
        self.cancel_button.setVisible(visible)
