"""Model analysis results: every tensor's quantization error under a plan (or several presets).

The job runs on this view's worker (the status bar shows its progress and Cancel).  Rows stream in as each
tensor finishes (the job hands them over through a queue the view drains on every progress signal), with
the count and the time left in the summary; a cancelled run keeps the rows measured so far, marked as
partial.  Three views: *Tensors* (one row per tensor and plan), *By preset* (with several presets: a pivot,
one row per tensor and one SNR column per preset) and *By layer* (mean SNR of each layer's tensors per plan,
as a chart).  Double-clicking a row emits ``tensor_activated(name)``.
"""
from __future__ import annotations

import os
import queue
import re
import statistics
import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QTableView, \
    QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget

from workbench import Model
from workbench.analysis import ErrorStats, analyze_plans
from workbench.plan import Plan

from ..models.error_table import ErrorStatsModel, ErrorStatsProxy
from ..formatting import human_bytes
from ..widgets.plots import curve_color, style_plot
from ..worker import Worker

LAYER_RE = re.compile(r"(?:^|\.)(?:blk|layers|h|block|layer)\.(\d+)\.")
PLAN_COLORS = [QColor(c) for c in ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                                    "#7f7f7f", "#bcbd22", "#17becf")]

COLUMNS = ("plan", "tensor", "type", "bpw", "size", "rmse", "max_abs", "rel_rmse", "snr_db", "cosine")


def analysis_job(model: Model, plan: Plan | None, presets: list[str] | None, sink: queue.SimpleQueue | None = None,
                 imatrix_path: str | None = None):
    """Worker job: ``{label: [ErrorStats]}`` for the plan (a private copy) or for each preset; each tensor's
    ``(label, ErrorStats)`` is also put on ``sink`` as it finishes.  ``imatrix_path``: an importance matrix
    (llama-imatrix's GGUF or .dat) weighting the quantization, with llama-quantize's rules for its presence."""
    imatrix = None
    if imatrix_path:
        from workbench.optimize.imatrix import Imatrix

        imatrix = Imatrix.load(imatrix_path)
    plans = {f"Plan {plan.preset}": plan} if presets is None else {p: Plan(model, p) for p in presets}
    if imatrix is not None:
        for pl in plans.values():
            pl.has_imatrix = True
            pl.validate()
    return analyze_plans(plans, on_result=None if sink is None else (lambda label, st: sink.put((label, st))),
                         imatrix=imatrix)


def layer_of(name: str) -> int | None:
    """The block index in a tensor name (``blk.7.attn_q.weight``, ``model.layers.7.mlp...``), else None."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def layer_means(stats: list[ErrorStats]) -> tuple[np.ndarray, np.ndarray]:
    """(layer indices, mean finite SNR dB of each layer's tensors), layers in order."""
    per: dict[int, list[float]] = {}
    for st in stats:
        i = layer_of(st.name)
        if i is not None and np.isfinite(st.snr_db):
            per.setdefault(i, []).append(st.snr_db)
    layers = sorted(per)
    return np.array(layers, float), np.array([float(np.mean(per[i])) for i in layers], float)


def _eta(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, int(round(seconds)))} s"
    return f"{int(round(seconds / 60))} min"


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
        self.worker.progress.connect(self._on_progress)
        self.worker.error.connect(self._on_failed)
        self.worker.cancelled.connect(self._on_cancelled)
        self.sink: queue.SimpleQueue = queue.SimpleQueue()
        self._started = 0.0
        self._stale = False  # rows arrived since the pivot and the chart were built
        self._refreshed = 0.0
        self._labels: list[str] = []
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
        self.pivot = QTableWidget(self)
        self.pivot.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.pivot.setSortingEnabled(True)
        self.pivot.verticalHeader().setVisible(False)
        self.pivot.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 4)
        self.pivot.setAlternatingRowColors(True)
        self.pivot.setToolTip("SNR in dB of every tensor under each preset (higher is better); click a header "
                              "to sort, double-click a row to select the tensor")
        self.pivot.cellDoubleClicked.connect(lambda r, _c: self._pivot_activated(r))
        self.chart = pg.PlotWidget(self)
        self.chart.setMinimumHeight(120)
        self.chart.setToolTip("Mean SNR of each layer's tensors under each plan: dips are the layers the "
                              "quantization hurts most")
        pi = self.chart.getPlotItem()
        pi.setLabel("bottom", "layer")
        pi.setLabel("left", "mean SNR (dB)")
        pi.showGrid(x=True, y=True, alpha=0.25)
        self.chart_legend = pi.addLegend(offset=(8, 4), labelTextColor=self.palette().color(QPalette.ColorRole.WindowText))
        style_plot(self.chart, self.palette())
        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.view, "Tensors")
        self.tabs.addTab(self.pivot, "By preset")
        self.tabs.addTab(self.chart, "By layer")
        self.tabs.setTabToolTip(0, "One row per tensor (and plan): type, size and error statistics")
        self.tabs.setTabToolTip(1, "With several presets: one row per tensor, one SNR column per preset")
        self.tabs.setTabToolTip(2, "Mean SNR per layer for each plan")
        self.tabs.currentChanged.connect(self._on_tab)
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        top.addWidget(self.filter, 0, Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.tabs, 1)
        self.clear()

    # -- running ----------------------------------------------------------------------------------------
    def start(self, plan: Plan, presets: list[str] | None = None, imatrix_path: str | None = None) -> int:
        """Analyze ``plan`` (a copy is taken) or, with ``presets``, each preset (with ``imatrix_path``, weighted
        by that importance matrix).  Clears the old table."""
        self.clear()
        self._n_tensors = len(plan.model.tensors)
        self._for_current_plan = presets is None
        self._labels = [f"Plan {plan.preset}"] if presets is None else list(presets)
        self._what = f"the plan ({plan.preset})" if presets is None else ", ".join(presets)
        self._set_message(f"Analyzing {self._what}…")
        self.tabs.setTabVisible(1, len(self._labels) > 1)
        self.sink = queue.SimpleQueue()  # this run's rows (a cancelled run's late rows go to its own queue)
        self._started = time.monotonic()
        extra = {"imatrix_path": imatrix_path} if imatrix_path else {}
        if imatrix_path:
            self._what += f", weighted by {os.path.basename(imatrix_path)}"
            self._set_message(f"Analyzing {self._what}…")
        return self.worker.start(self.job, plan.model, plan.copy() if presets is None else None, presets, self.sink,
                                 **extra)

    def cancel(self) -> None:
        self.worker.cancel()

    def reset(self) -> None:
        """Another model: drop the job and the table."""
        self.worker.cancel()
        self.clear()

    def clear(self) -> None:
        self.results = {}
        self.model.set_rows([])
        self.pivot.clear()
        self.pivot.setRowCount(0)
        self.pivot.setColumnCount(0)
        self.chart.getPlotItem().clear()
        self.chart_legend.clear()
        self.tabs.setTabVisible(1, False)
        self.view.setColumnHidden(self.model.column("plan"), True)
        self._set_message("No analysis yet: Tools ▸ Analyze Model… measures every tensor's quantization error.")

    def plan_changed(self) -> None:
        """The plan was edited: an analysis of the current plan is now out of date (say so)."""
        if self.results and self._for_current_plan and "out of date" not in self.summary.text():
            self.summary.setText(self.summary.text() + "<br><i>The plan has changed since: "
                                 "analyze again to update (results are out of date).</i>")

    # -- streaming --------------------------------------------------------------------------------------
    def _drain(self) -> int:
        """Move the rows finished so far from the job's queue into the table; returns how many came."""
        new = []
        while True:
            try:
                new.append(self.sink.get_nowait())
            except queue.Empty:
                break
        if new:
            for label, st in new:
                self.results.setdefault(label, []).append(st)
            self.model.append_rows(new)
            self.view.setColumnHidden(self.model.column("plan"), len(self._labels) <= 1)
        return len(new)

    def _on_progress(self, done: int, total: int, _message: str) -> None:
        if self._drain():
            self._stale = True
        # the pivot and the chart are rebuilt only while shown, at most once a second (a rebuild of a
        # thousand-row pivot or of the plot items is tens of milliseconds of GUI time)
        if self._stale and self.tabs.currentIndex() != 0 and time.monotonic() - self._refreshed > 1.0:
            self._refresh_views()
        n = len(self.model.rows)
        elapsed = time.monotonic() - self._started
        text = f"Analyzing {self._what}… {n:,} tensor{'s' if n != 1 else ''} measured"
        if 0 < done < total and elapsed > 1.0:
            text += f" · about {_eta(elapsed * (total - done) / done)} left"
        self._set_message(text)

    def _on_cancelled(self) -> None:
        self._drain()
        self._refresh_views()
        n = len(self.model.rows)
        self._set_message(f"Analysis cancelled: {n:,} tensor{'s' if n != 1 else ''} measured before it stopped "
                          "(partial)." if n
                          else "Analysis cancelled.")

    def _on_failed(self, message: str) -> None:
        self._drain()
        self._refresh_views()
        self._set_message(f"Analysis failed: {message}")

    def _on_tab(self, index: int) -> None:
        if index != 0 and self._stale:
            self._refresh_views()

    def _refresh_views(self) -> None:
        """The pivot and the per-layer chart from the rows so far."""
        self._stale = False
        self._refreshed = time.monotonic()
        labels = [lb for lb in self._labels if lb in self.results] or list(self.results)
        multi = len(labels) > 1
        self.tabs.setTabVisible(1, multi)
        if multi:
            self._fill_pivot(labels)
        pi = self.chart.getPlotItem()
        pi.clear()
        self.chart_legend.clear()
        pal = self.chart.palette()
        self.chart_legend.setColumnCount(max(1, len(labels)))  # one row above the curves
        lows, highs = [], []
        for k, label in enumerate(labels):
            x, y = layer_means(self.results[label])
            if x.size:
                lows.append(float(y.min()))
                highs.append(float(y.max()))
                color = curve_color(PLAN_COLORS[k % len(PLAN_COLORS)], pal)
                pi.plot(x, y, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=5, symbolBrush=color,
                        symbolPen=None, name=label)
        if lows:
            lo, hi = min(lows), max(highs)
            pi.setYRange(lo - 1.0, hi + 0.3 * max(hi - lo, 5.0) + 1.0, padding=0)  # room for the legend

    def _fill_pivot(self, labels: list[str]) -> None:
        snr: dict[str, dict[str, float]] = {}
        for label in labels:
            for st in self.results[label]:
                snr.setdefault(st.name, {})[label] = st.snr_db
        self.pivot.setSortingEnabled(False)
        self.pivot.clear()
        self.pivot.setColumnCount(1 + len(labels))
        self.pivot.setHorizontalHeaderLabels(["tensor"] + [f"{lb} SNR dB" for lb in labels])
        self.pivot.setRowCount(len(snr))
        for r, (name, per) in enumerate(snr.items()):
            self.pivot.setItem(r, 0, QTableWidgetItem(name))
            for c, label in enumerate(labels, start=1):
                if label in per:
                    item = QTableWidgetItem()
                    value = per[label]
                    item.setData(Qt.ItemDataRole.DisplayRole, round(value, 2) if np.isfinite(value) else float("inf"))
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    self.pivot.setItem(r, c, item)
        self.pivot.setSortingEnabled(True)
        self.pivot.resizeColumnsToContents()
        self.pivot.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)

    def pivot_row(self, name: str) -> dict[str, float]:
        """The pivot's SNR cells of tensor ``name`` (header label -> value)."""
        for r in range(self.pivot.rowCount()):
            if self.pivot.item(r, 0) is not None and self.pivot.item(r, 0).text() == name:
                return {self.pivot.horizontalHeaderItem(c).text(): self.pivot.item(r, c).data(Qt.ItemDataRole.DisplayRole)
                        for c in range(1, self.pivot.columnCount()) if self.pivot.item(r, c) is not None}
        return {}

    def _pivot_activated(self, row: int) -> None:
        item = self.pivot.item(row, 0)
        if item is not None:
            self.tensor_activated.emit(item.text())

    # -- results ----------------------------------------------------------------------------------------
    def _on_result(self, results: dict[str, list[ErrorStats]]) -> None:
        self._drain()
        self.results = results
        rows = [(label, s) for label, stats in results.items() for s in stats]
        # the streamed rows are these very objects in this order: rebuilding a thousand rows' cells again
        # froze the window for ~40 ms at the end of every analysis
        old = self.model.rows
        if len(old) != len(rows) or any(a[1] is not b[1] or a[0] != b[0] for a, b in zip(old, rows)):
            self.model.set_rows(rows)
        self._refresh_views()
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
