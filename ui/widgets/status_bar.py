"""The status bar: model warnings, a one-line model summary, the plan's total, and progress + Cancel
while a tracked background job (loading, analysis) runs."""
from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar, QWidget

from workbench import Model
from workbench.plan import Plan

from .elided_label import ElidedLabel
from ..formatting import human_bytes, human_count
from ..worker import Worker

SHOW_DELAY_MS = 150  # fast jobs finish before the progress bar would flash
STEPS = 200  # progress bar positions (a repaint each): finer progress is not visible anyway


def plan_summary(plan: Plan) -> str:
    """``Plan Q4_K_M: 98.9 MiB · 6.17 bpw`` (``Q4_K_M+`` when rules or overrides change the preset)."""
    edited = "+" if plan.rules or plan.overrides else ""
    return f"Plan {plan.preset}{edited}: {human_bytes(plan.nbytes)} · {plan.bits_per_weight:.2f} bpw"


def plan_tooltip(plan: Plan) -> str:
    counts = ", ".join(f"{n} × {t}" for t, n in sorted(plan.type_counts().items(), key=lambda kv: -kv[1]))
    lines = [f"Planned size of the quantized model: {plan.nbytes:,} bytes, {plan.bits_per_weight:.3f} bits per weight",
             f"Preset {plan.preset}; {len(plan.rules)} rules; {len(plan.overrides)} overrides", f"Types: {counts}"]
    return "\n".join(lines)


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
    """``cancel_requested`` after the Cancel button cancelled the running tracked job."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.warning_label = ElidedLabel("", self)
        self.warning_label.setStyleSheet("color: #b35900;")
        self.summary_label = QLabel("No model", self)
        self.summary_label.setToolTip("Format · architecture · tensors · parameters · size on disk · "
                                      "average bits per weight")
        self.plan_label = QLabel("", self)
        self.plan_label.setObjectName("planTotal")
        self.plan_label.setStyleSheet("QLabel#planTotal { border-left: 1px solid palette(mid); padding-left: 8px; "
                                      "margin-left: 4px; font-weight: bold; }")
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setMaximumWidth(180)
        self.progress_bar.setMaximumHeight(16)
        self.progress_bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setToolTip("Stop loading (Esc)")
        self.cancel_button.setFlat(True)
        self.cancel_button.clicked.connect(self.cancel_active)
        self._tracked: list[tuple[Worker, str]] = []
        self.addWidget(self.warning_label, 1)
        self.addPermanentWidget(self.summary_label)
        self.addPermanentWidget(self.plan_label)
        self.addPermanentWidget(self.progress_bar)
        self.addPermanentWidget(self.cancel_button)
        self._show_timer = QTimer(self)
        self._show_timer.setSingleShot(True)
        self._show_timer.setInterval(SHOW_DELAY_MS)
        self._show_timer.timeout.connect(lambda: self._set_progress_visible(True))
        self._set_progress_visible(False)
        self._active: Worker | None = None
        self._shown: dict = {}  # what the progress bar shows: total, value, message
        self.set_plan(None)

    def set_model(self, model: Model | None) -> None:
        self.summary_label.setText(model_summary(model) if model is not None else "No model")
        warnings = list(model.warnings) if model is not None else []
        self.warning_label.setText(("⚠ " + " · ".join(warnings)) if warnings else "")
        self.warning_label.setToolTip("\n".join(warnings))

    def set_plan(self, plan: Plan | None) -> None:
        self.plan_label.setText(plan_summary(plan) if plan is not None else "")
        self.plan_label.setToolTip(plan_tooltip(plan) if plan is not None else "")
        self.plan_label.setVisible(plan is not None)

    def track(self, worker: Worker, cancel_tip: str = "Stop loading (Esc)") -> None:
        """Show progress + Cancel while ``worker`` runs (after a short delay).  With several tracked
        workers busy, the one started last owns the bar."""
        self._tracked.append((worker, cancel_tip))
        worker.started.connect(lambda: self._started(worker))
        worker.progress.connect(lambda d, t, m: self._progress(worker, d, t, m))
        worker.finished.connect(lambda: self._finished(worker))

    def active_worker(self) -> Worker | None:
        """The tracked worker whose job the bar shows, or None."""
        return self._active if self._active is not None and self._active.is_busy() else None

    def cancel_active(self) -> None:
        worker = self.active_worker()
        if worker is not None:
            worker.cancel()
        self.cancel_requested.emit()

    def is_busy_visible(self) -> bool:
        return self.progress_bar.isVisible() or self._show_timer.isActive()

    def _started(self, worker: Worker) -> None:
        self._active = worker
        self.cancel_button.setToolTip(next(tip for w, tip in self._tracked if w is worker))
        self.progress_bar.setRange(0, 0)
        self._shown = {}
        self._show_timer.start()

    def _progress(self, worker: Worker, done: int, total: int, message: str) -> None:
        if worker is not self.active_worker():
            return
        # Each Qt call lets a worker take the interpreter lock until it lets go again (a numpy step can hold
        # it for tens of ms), so what the bar shows is remembered here instead of asked back; and a new value
        # is a synchronous repaint: the bar moves in steps of 1/STEPS.
        bar, shown = self.progress_bar, self._shown
        if total > 0:
            if shown.get("total") != total:
                bar.setRange(0, total)
                shown.update(total=total, value=0)
            value = min(done, total)
            if abs(value - shown["value"]) * STEPS >= total or (value == total and shown["value"] != total):
                bar.setValue(value)
                shown["value"] = value
        if message != shown.get("message"):
            bar.setToolTip(message)
            if message:
                self.showMessage(message)
            shown["message"] = message

    def _finished(self, worker: Worker) -> None:
        if worker.is_busy():  # superseded by a newer job of the same worker
            return
        busy = [w for w, _tip in self._tracked if w.is_busy()]
        if busy:  # another tracked job still runs: it takes the bar over
            self._active = busy[-1]
            self.cancel_button.setToolTip(next(tip for w, tip in self._tracked if w is self._active))
            self.progress_bar.setRange(0, 0)
            self._shown = {}
            return
        self._active = None
        self._show_timer.stop()
        self._set_progress_visible(False)
        self.clearMessage()

    def _set_progress_visible(self, visible: bool) -> None:
        self.progress_bar.setVisible(visible)
        self.cancel_button.setVisible(visible)
