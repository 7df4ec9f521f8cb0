"""Tools ▸ Optimize…: choose a budget, the allowed types and the calibration text, then measure (or only
estimate) the model's sensitivity and search the plan with the lowest predicted KLD within the budget.

The job (:func:`optimize_job`) runs on a worker: ``workbench.optimize.sensitivity`` measures or estimates the
:class:`SensitivityTable` and ``workbench.optimize.optimizer.optimize`` chooses the plan.  Measurements are put
on a queue as they finish; the dialog drains it on every progress signal and emits ``streamed(table)`` so the
chart and the heatmap fill in while the job runs.  ``finished_result(OptimizeRun)`` carries the final table and
the optimizer's result.
"""
from __future__ import annotations

import copy
import importlib
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QRadioButton, QSpinBox, QVBoxLayout, QWidget)

from workbench import WorkbenchError
from workbench.plan import TYPES, allows_quantization, row_fits
from workbench.units import human_bytes

from ..worker import Worker

DEFAULT_OFF = {"F32", "F16", "BF16"}  # allowed types not ticked by default (a size budget wants quantized types)
BUDGETS = {"size": "File size (MiB)", "bpw": "Bits per weight", "fit": "Fit in memory (MiB) with context"}


@dataclass
class OptimizeOptions:
    budget: str  # "size" | "bpw" | "fit"
    target_bytes: int | None = None  # budget "size"
    target_bpw: float | None = None  # budget "bpw"
    fit_bytes: int | None = None  # budget "fit": file + KV cache at n_ctx must fit in this
    n_ctx: int = 4096
    types: list[str] = field(default_factory=list)
    text_path: str | None = None  # None: the bundled calibration text
    measure: bool = True  # False: the estimate only (no forward passes)


@dataclass
class OptimizeRun:
    table: Any  # SensitivityTable
    result: Any  # workbench.optimize.optimizer.OptimizeResult (plan, predicted_kld, nbytes, frontier)
    options: OptimizeOptions


def fitting_types(plan) -> list[str]:
    """The plan types whose blocks fit the rows of at least one quantizable tensor of ``plan``'s model."""
    shapes = {e.shape for e in plan.entries if len(e.shape) >= 2 and allows_quantization(e.gguf_name, e.shape)}
    return [q for q in TYPES if any(row_fits(q, s) for s in shapes)]


def available() -> dict[str, bool]:
    """Which core parts exist: ``measure``, ``estimate`` (sensitivity) and ``optimize`` (optimizer)."""
    out = {"measure": False, "estimate": False, "optimize": False}
    try:
        sens = importlib.import_module("workbench.optimize.sensitivity")
        out["measure"] = hasattr(sens, "measure_sensitivity")
        out["estimate"] = hasattr(sens, "estimate_sensitivity")
    except ImportError:
        pass
    try:
        out["optimize"] = hasattr(importlib.import_module("workbench.optimize.optimizer"), "optimize")
    except ImportError:
        pass
    return out


def calibration_text(path: str | None) -> str | None:
    """The training part of a text file (its held-out part is never used for choosing); None: the bundled
    text (the measuring job takes its training part itself)."""
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise WorkbenchError(f"cannot read the calibration text: {exc.strerror or exc}", path=path) from None
    try:
        from workbench.optimize.imatrix_compute import split_calibration
    except ImportError:  # pragma: no cover - older core
        return text
    return split_calibration(text)[0]


def budget_kwargs(options: OptimizeOptions) -> dict:
    """The optimizer's budget arguments for ``options``."""
    if options.budget == "size":
        return {"target_bytes": int(options.target_bytes or 0)}
    if options.budget == "bpw":
        return {"target_bpw": float(options.target_bpw or 0.0)}
    return {"fit": (int(options.fit_bytes or 0), int(options.n_ctx))}


def optimize_job(model, options: OptimizeOptions, sink: queue.SimpleQueue | None = None,
                 cancel: threading.Event | None = None):
    """Worker job: the estimate (streamed as a copy), the measurement if asked (each value streamed as
    ``(group, type, ΔKLD)``; a second run reads the core's cache), then the optimized plan: an ``OptimizeRun``."""
    from workbench.optimize import sensitivity as sens
    from workbench.optimize.optimizer import optimize

    stop = cancel.is_set if cancel is not None else None
    text = calibration_text(options.text_path)
    types = list(options.types)
    table = yield from sens.estimate_sensitivity(model, types, cancel=stop)
    if sink is not None:
        sink.put(copy.deepcopy(table))  # the GUI's own copy: the measurement below fills this one
    if options.measure:
        budgets = ()
        try:  # measure the candidates that matter near the budget (the optimizer on the estimate)
            budgets = (optimize(model, table, types=types, **budget_kwargs(options)).budget,)
        except WorkbenchError:
            pass
        table = yield from sens.measure_sensitivity(
            model, types, text=text, cancel=stop, budgets=budgets, estimate=table,
            on_measured=(lambda k, t, v: sink.put((k, t, v))) if sink is not None else None)
        if sink is not None:
            sink.put(copy.deepcopy(table))
    result = optimize(model, table, types=types, **budget_kwargs(options))
    return OptimizeRun(table, result, options)


class OptimizeDialog(QDialog):
    """Non-modal.  ``streamed(item)``: a measured ``(group, type, ΔKLD)`` or a whole table, as they arrive;
    ``finished_result(OptimizeRun)`` at the end."""

    streamed = Signal(object)
    finished_result = Signal(object)

    def __init__(self, plan_provider: Callable[[], object], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Optimize Plan")
        self.plan_provider = plan_provider  # the window's current Plan (None without a model)
        self.job = optimize_job  # the job factory (injectable: tests)
        self.worker = Worker(self, name="optimize")
        self.worker.progress.connect(self._on_progress)
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(self._on_error)
        self.worker.cancelled.connect(lambda: self._done("Cancelled."))
        # however the job is cancelled (here, Esc, the status bar's Cancel), its measuring loops stop too
        self.worker.cancelled.connect(lambda: self._cancel.set())
        self.sink: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._started = 0.0

        # budget
        self.budget_combo = QComboBox(self)
        for key, text in BUDGETS.items():
            self.budget_combo.addItem(text, key)
        self.budget_combo.setToolTip("What the plan must fit: a file size, an average bits per weight, or the "
                                     "file plus the KV cache at a context length within a memory size")
        self.size_spin = QDoubleSpinBox(self)
        self.size_spin.setRange(0.01, 10_000_000)
        self.size_spin.setDecimals(2)
        self.size_spin.setSuffix(" MiB")
        self.bpw_spin = QDoubleSpinBox(self)
        self.bpw_spin.setRange(1.0, 32.0)
        self.bpw_spin.setDecimals(2)
        self.bpw_spin.setValue(4.8)
        self.ctx_spin = QSpinBox(self)
        self.ctx_spin.setRange(16, 1 << 20)
        self.ctx_spin.setValue(4096)
        self.ctx_spin.setPrefix("context ")
        self.ctx_spin.setSuffix(" tokens")
        self.ctx_spin.setToolTip("The KV cache at this context is counted in the memory budget")
        budget_row = QHBoxLayout()
        budget_row.addWidget(self.budget_combo)
        budget_row.addWidget(self.size_spin)
        budget_row.addWidget(self.bpw_spin)
        budget_row.addWidget(self.ctx_spin)
        self.current_label = QLabel(self)  # the current plan's size, for reference
        budget_row.addWidget(self.current_label)
        budget_row.addStretch(1)
        self.budget_combo.currentIndexChanged.connect(lambda _i: self._show_budget())

        # types
        self.types_box = QGroupBox("Allowed types (only those whose blocks fit the model's rows)", self)
        self.types_grid = QGridLayout(self.types_box)
        self.type_checks: dict[str, QCheckBox] = {}

        # text
        self.text_edit = QLineEdit(self)
        self.text_edit.setPlaceholderText("the bundled calibration text")
        self.text_edit.setToolTip("A text file to measure on (empty: the bundled calibration text); a held-out "
                                  "part is kept apart and never used for choosing")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        text_row = QHBoxLayout()
        text_row.addWidget(self.text_edit, 1)
        text_row.addWidget(browse)

        # mode
        self.measure_radio = QRadioButton("Measure (run the model: slower, accurate)", self)
        self.estimate_radio = QRadioButton("Estimate only (from the weights: seconds)", self)
        self.measure_radio.setChecked(True)
        self.mode_group = QButtonGroup(self)
        self.mode_group.addButton(self.measure_radio)
        self.mode_group.addButton(self.estimate_radio)
        mode_row = QHBoxLayout()
        mode_row.addWidget(self.measure_radio)
        mode_row.addWidget(self.estimate_radio)
        mode_row.addStretch(1)

        self.progress = QProgressBar(self)
        self.progress.setVisible(False)
        self.status = QLabel(self)
        self.status.setWordWrap(True)
        self.run_button = QPushButton("Optimize", self)
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        close = QPushButton("Close", self)
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.progress, 1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.run_button)
        buttons.addWidget(close)

        form = QFormLayout()
        form.addRow("Budget:", budget_row)
        form.addRow("Text:", text_row)
        form.addRow("Sensitivity:", mode_row)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.types_box)
        lay.addWidget(self.status)
        lay.addLayout(buttons)
        self.refresh()

    # -- state -------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Fill the type checkboxes for the opened model; the current plan's size is the default budget."""
        plan = self.plan_provider()
        while self.types_grid.count():
            w = self.types_grid.takeAt(0).widget()
            if w is not None:
                w.hide()  # at once: a deleted-later box would still be painted where the layout left it
                w.deleteLater()
        self.type_checks = {}
        types = fitting_types(plan) if plan is not None else []
        for i, t in enumerate(types):
            box = QCheckBox(t, self.types_box)
            box.setChecked(t not in DEFAULT_OFF)
            self.types_grid.addWidget(box, i // 8, i % 8)
            self.type_checks[t] = box
        if plan is not None:
            self.size_spin.setValue(plan.nbytes / 2**20)
            self.bpw_spin.setValue(round(plan.bits_per_weight, 2))
            self.current_label.setText(f"(current plan: {human_bytes(plan.nbytes)}, {plan.bits_per_weight:.2f} bpw)")
        self.run_button.setEnabled(plan is not None and not self.worker.is_busy())
        avail = available()
        self.measure_radio.setEnabled(avail["measure"])
        self.estimate_radio.setEnabled(avail["estimate"])
        if not avail["measure"] and avail["estimate"]:
            self.estimate_radio.setChecked(True)
        if not (avail["measure"] or avail["estimate"]) or not avail["optimize"]:
            self.status.setText("This build cannot optimize yet (the sensitivity or optimizer part is missing).")
        self._show_budget()

    def _show_budget(self) -> None:
        kind = self.budget_combo.currentData()
        self.size_spin.setVisible(kind in ("size", "fit"))
        self.bpw_spin.setVisible(kind == "bpw")
        self.ctx_spin.setVisible(kind == "fit")

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Calibration Text", self.text_edit.text(),
                                              "Text (*.txt *.md);;All files (*)")
        if path:
            self.text_edit.setText(path)

    def options(self) -> OptimizeOptions:
        kind = self.budget_combo.currentData()
        mib = int(round(self.size_spin.value() * 2**20))
        return OptimizeOptions(
            budget=kind, target_bytes=mib if kind == "size" else None,
            target_bpw=self.bpw_spin.value() if kind == "bpw" else None,
            fit_bytes=mib if kind == "fit" else None, n_ctx=self.ctx_spin.value(),
            types=[t for t, box in self.type_checks.items() if box.isChecked()],
            text_path=self.text_edit.text().strip() or None, measure=self.measure_radio.isChecked())

    # -- running -----------------------------------------------------------------------------------------
    def run(self) -> int | None:
        plan = self.plan_provider()
        if plan is None:
            return None
        opts = self.options()
        if not opts.types:
            self.status.setText("Tick at least one allowed type.")
            return None
        self.sink = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._started = time.monotonic()
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.run_button.setEnabled(False)
        self.status.setText("Measuring sensitivity…" if opts.measure else "Estimating sensitivity…")
        return self.worker.start(self.job, plan.model, opts, self.sink, self._cancel)

    def cancel(self) -> None:
        self._cancel.set()
        self.worker.cancel()

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        self._cancel.set()
        return self.worker.shutdown(timeout_ms)

    def drain(self) -> int:
        n = 0
        while True:
            try:
                item = self.sink.get_nowait()
            except queue.Empty:
                return n
            self.streamed.emit(item)
            n += 1

    @staticmethod
    def eta_text(done: int, total: int, elapsed: float) -> str:
        if done <= 0 or total <= 0 or done >= total:
            return ""
        left = elapsed * (total - done) / done
        return f"about {left:.0f} s left" if left < 90 else f"about {left / 60:.0f} min left"

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.drain()
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))
        eta = "" if "ETA" in message else self.eta_text(done, total, time.monotonic() - self._started)
        self.status.setText(" — ".join(x for x in (message, eta) if x))

    def _on_result(self, run: OptimizeRun) -> None:
        self.drain()
        res = run.result
        text = "Done."
        if res is not None and getattr(res, "nbytes", None) is not None:
            text = (f"Done: {human_bytes(res.nbytes)}, predicted mean KLD {res.predicted_kld:.4g}. "
                    "The plan is on the chart: click it to apply.")
        self._done(text)
        self.finished_result.emit(run)

    def _on_error(self, message: str) -> None:
        self.drain()
        self._done(f"Failed: {message}")

    def _done(self, text: str) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.run_button.setEnabled(self.plan_provider() is not None)
        self.status.setText(text)
