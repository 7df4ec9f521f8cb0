"""Model analysis results: every tensor's quantization error under a plan (or several presets).

The job runs on this view's worker (the status bar shows its progress and Cancel).  Results appear only
when the whole analysis is done, so a cancelled run leaves no partial table.  Double-clicking a row
emits ``tensor_activated(name)``.
"""
from __future__ import annotations

import statistics

import numpy as np
from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QTableView, QVBoxLayout, \
    QWidget

from workbench import Model
from workbench.analysis import ErrorStats, analyze_plans
from workbench.plan import Plan

from .error_table import ErrorStatsModel, ErrorStatsProxy
from .formatting import human_bytes
from .worker import Worker

COLUMNS = ("plan", "tensor", "type", "bpw", "size", "rmse", "max_abs", "rel_rmse", "snr_db", "cosine")


def analysis_job(model: Model, plan: Plan | None, presets: list[str] | None):
    """Worker job: ``{label: [ErrorStats]}`` for the plan (a private copy) or for each preset."""
    plans = {f"Plan {plan.preset}": plan} if presets is None else {p: Plan(model, p) for p in presets}
    return analyze_plans(plans)


def summary_line(label: str, stats: list[ErrorStats]) -> str:
    """``Q4_K_M: 98.9 MiB · 6.17 bpw · median SNR 25.3 dB · worst 19.1 dB (token_embd.weight)``."""
    n = sum(s.n for s in stats)
    nbytes = sum(s.nbytes for s in stats)
    text = f"<b>{label}</b>: {human_bytes(nbytes)} · {8 * nbytes / n if n else 0:.2f} bpw"
    finite = [s for s in stats if np.isfinite(s.snr_db)]
    if finite:
        worst = min(finite, key=lambda s: s.snr_db)
        text += (f" · median SNR {statistics.median(s.snr_db for s in finite):.1f} dB"
                 f" · worst {worst.snr_db:.1f} dB ({worst.name})")
    return text


class AnalysisView(QWidget):
    tensor_activated = Signal(str)
    analyzed = Signal(object)  # the result dict, once shown

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.worker = Worker(self, name="analysis")
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(lambda m: self._set_message(f"Analysis failed: {m}"))
        self.worker.cancelled.connect(lambda: self._set_message("Analysis cancelled."))
        self.job = analysis_job  # the job factory (injectable: tests)
        self.results: dict[str, list[ErrorStats]] = {}
        self._for_current_plan = False
        self._n_tensors = 0

        self.summary = QLabel(self)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.filter = QLineEdit(self)
        self.filter.setPlaceholderText("Filter tensors")
        self.filter.setClearButtonEnabled(True)
        self.filter.setToolTip("Show only tensors whose name contains this text")
        self.filter.setMaximumWidth(260)
        self.model = ErrorStatsModel(COLUMNS, self)
        self.proxy = ErrorStatsProxy(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterKeyColumn(self.model.column("tensor"))
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.view = QTableView(self)
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(self.model.column("snr_db"), Qt.SortOrder.AscendingOrder)  # worst first
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 4)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setToolTip("Double-click a row to select the tensor in the tree")
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(self.model.column("tensor"), QHeaderView.ResizeMode.Stretch)
        self.view.doubleClicked.connect(self._activated)
        self.view.activated.connect(self._activated)
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(self.filter, 0, Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.view, 1)
        self.clear()

    # -- running ----------------------------------------------------------------------------------------
    def start(self, plan: Plan, presets: list[str] | None = None) -> int:
        """Analyze ``plan`` (a copy is taken) or, with ``presets``, each preset.  Clears the old table."""
        self.clear()
        self._n_tensors = len(plan.model.tensors)
        self._for_current_plan = presets is None
        what = f"the plan ({plan.preset})" if presets is None else ", ".join(presets)
        self._set_message(f"Analyzing {what}…")
        return self.worker.start(self.job, plan.model, plan.copy() if presets is None else None, presets)

    def cancel(self) -> None:
        self.worker.cancel()

    def reset(self) -> None:
        """Another model: drop the job and the table."""
        self.worker.cancel()
        self.clear()

    def clear(self) -> None:
        self.results = {}
        self.model.set_rows([])
        self.view.setColumnHidden(self.model.column("plan"), True)
        self._set_message("No analysis yet: Tools ▸ Analyze Model… measures every tensor's quantization error.")

    def plan_changed(self) -> None:
        """The plan was edited: an analysis of the current plan is now out of date (say so)."""
        if self.results and self._for_current_plan and "out of date" not in self.summary.text():
            self.summary.setText(self.summary.text() + "<br><i>The plan has changed since: "
                                 "analyze again to update (results are out of date).</i>")

    # -- results ----------------------------------------------------------------------------------------
    def _on_result(self, results: dict[str, list[ErrorStats]]) -> None:
        self.results = results
        rows = [(label, s) for label, stats in results.items() for s in stats]
        self.model.set_rows(rows)
        self.view.setColumnHidden(self.model.column("plan"), len(results) <= 1)
        self.view.resizeColumnsToContents()
        self.view.horizontalHeader().setSectionResizeMode(self.model.column("tensor"), QHeaderView.ResizeMode.Stretch)
        text = "<br>".join(summary_line(label, stats) for label, stats in results.items())
        skipped = self._n_tensors - len(next(iter(results.values()), []))
        if skipped > 0:
            many = skipped != 1
            text += (f"<br><i>{skipped} tensor{'s' if many else ''} of an integer type (e.g. position ids) "
                     f"cannot be quantized and {'are' if many else 'is'} not listed.</i>")
        self.summary.setText(text)
        self.analyzed.emit(results)

    def _set_message(self, text: str) -> None:
        self.summary.setText(text)

    def _activated(self, index: QModelIndex) -> None:
        if index.isValid():
            self.tensor_activated.emit(self.proxy.index(index.row(), self.model.column("tensor")).data())

    def row_names(self) -> list[str]:
        """Tensor names in view order (sorted and filtered)."""
        col = self.model.column("tensor")
        return [self.proxy.index(r, col).data() for r in range(self.proxy.rowCount())]

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        return self.worker.shutdown(timeout_ms)
