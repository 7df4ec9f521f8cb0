"""The "Quantization error" tab: what several types would do to the selected tensor.

For each chosen type the tensor is quantized and dequantized on the worker (core ``error_stats``); the
error histograms are overlaid over one common range (core ``shared_histograms``) beside a table of the
statistics.  Selecting another tensor supersedes the job; a result for a tensor no longer shown is dropped.
Work starts only while the tab is visible.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QHBoxLayout, QHeaderView, QLabel,
                               QPushButton, QSplitter, QTableView, QVBoxLayout, QWidget)

from workbench import Model, Progress, TensorInfo
from workbench.analysis import ErrorStats, error_stats, normalized_histograms, shared_histograms
from workbench.plan import TYPES, Plan, row_fits
from workbench.progress import relay

from ..models.error_table import ErrorStatsModel
from ..widgets.type_toggles import TYPE_COLORS, TypeToggles
from ..widgets.busy_row import BusyRow
from ..widgets.plots import curve_color, histogram_plot
from ..worker import Worker

BINS = 101
CACHE_SIZE = 24  # (tensor, type) results kept, each with an error sample of at most 4 MiB
COLUMNS = ("type", "bpw", "size", "rmse", "max_abs", "rel_rmse", "snr_db", "cosine")


def error_job(model: Model, name: str, types: list[str]):
    """Worker job: ``error_stats`` for each type in turn; returns ``(name, {type: ErrorStats})``."""
    tensor = model.tensor(name)
    n = max(1, tensor.info.n_params)
    out: dict[str, ErrorStats] = {}
    for k, qtype in enumerate(types):
        out[qtype] = yield from relay(error_stats(tensor, qtype), lambda p, k=k, qtype=qtype: Progress(
            k * n + p.done, len(types) * n, f"{name} → {qtype} ({k + 1}/{len(types)})"))
    return name, out


def default_types(planned: str | None, shape: tuple[int, ...]) -> list[str]:
    """The planned type plus Q8_0 and Q4_0, those that fit."""
    wanted = [t for t in (planned, "Q8_0", "Q4_0") if t in TYPES]
    return [t for t in TYPES if t in wanted and row_fits(t, shape)]


class ErrorView(QWidget):
    shown = Signal(object)  # the list of ErrorStats now on screen, in the order of the curves

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.worker = Worker(self, name="quant-error")
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(self._on_error)
        self.worker.progress.connect(self._on_progress)
        self.worker.cancelled.connect(lambda: self._set_busy(False))
        self.job = error_job  # the job factory (injectable: tests)
        self._model: Model | None = None
        self._plan: Plan | None = None
        self._item: TensorInfo | None = None
        self._chosen: list[str] | None = None  # the user's types; None = defaults per tensor
        self._cache: OrderedDict[tuple[str, str], ErrorStats] = OrderedDict()
        self._pending = False
        self._deferred = False  # a tensor was chosen while the tab was hidden: build the view when shown
        self._planned_shown: str | None = None
        self.stats: list[ErrorStats] = []
        self.curves: list[pg.PlotDataItem] = []

        self.title = QLabel(self)
        f = QFont(self.title.font())
        f.setPointSizeF(f.pointSizeF() * 1.25)
        f.setBold(True)
        self.title.setFont(f)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.toggles = TypeToggles(parent=self)
        self.toggles.toggled.connect(self._on_toggled)
        self.defaults_button = QPushButton("Defaults", self)
        self.defaults_button.setToolTip("Back to the planned type plus Q8_0 and Q4_0")
        self.defaults_button.clicked.connect(self.reset_types)
        pick = QHBoxLayout()
        pick.addWidget(self.toggles, 1)
        pick.addWidget(self.defaults_button, 0, Qt.AlignmentFlag.AlignTop)

        self.busy = BusyRow(self, self.worker.cancel, "Stop computing the quantization errors")

        self.plot = self._make_plot()
        pal = self.palette()
        base = pal.color(QPalette.ColorRole.Base)
        base.setAlpha(190)  # translucent: curves behind the legend stay visible
        self.legend = self.plot.getPlotItem().addLegend(
            offset=(-10, 10), labelTextColor=pal.color(QPalette.ColorRole.WindowText), brush=pg.mkBrush(base),
            pen=pg.mkPen(pal.color(QPalette.ColorRole.Mid)), verSpacing=-4)
        self.log_box = QCheckBox("Log count", self)
        self.log_box.setToolTip("Logarithmic count axis: shows the tails of the error distributions")
        self.log_box.toggled.connect(self._set_log)
        self.log_box.setChecked(True)  # a narrow type (Q8_0) would otherwise flatten the wide ones
        self.scale = QComboBox(self)
        self.scale.addItem("Error", "shared")
        self.scale.addItem("Error ÷ each type's RMSE", "normalized")
        self.scale.setToolTip("Error: every type over one common range (a precise type is a narrow spike).\n"
                              "Error ÷ RMSE: each type in units of its own RMSE, so all types are equally wide "
                              "and their shapes compare (uniform rounding, heavy tails).")
        self.scale.currentIndexChanged.connect(lambda _i: self._show() if self._item is not None else None)
        plot_bar = QHBoxLayout()
        self.plot_title = QLabel(self)
        plot_bar.addWidget(self.plot_title, 1)
        plot_bar.addWidget(QLabel("x:", self))
        plot_bar.addWidget(self.scale)
        plot_bar.addWidget(self.log_box)
        top = QWidget(self)
        top_lay = QVBoxLayout(top)
        top_lay.setContentsMargins(0, 0, 0, 0)
        top_lay.addLayout(plot_bar)
        top_lay.addWidget(self.plot, 1)

        self.table_model = ErrorStatsModel(COLUMNS, self)
        self.table = QTableView(self)
        self.table.setModel(self.table_model)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)  # numbers never elided
        header.setStretchLastSection(True)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.table.setToolTip("Error statistics of each type (dequantized − original, over every value)")
        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.table)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        row = self.fontMetrics().height() + 8
        self.table.setMinimumHeight(3 * row)
        self.splitter.setSizes([400, 5 * row + 4])  # a few types fit without scrolling
        self.splitter.setChildrenCollapsible(False)

        self.hint = QLabel(self)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addLayout(pick)
        lay.addWidget(self.busy)
        lay.addWidget(self.splitter, 1)
        lay.addWidget(self.hint, 1)
        self.show_item(None)

    def _make_plot(self) -> pg.PlotWidget:
        return histogram_plot(self, "error (dequantized − original)",
                              "Error distribution of each type over one common range. Drag to pan, wheel to zoom.", 160)

    def _set_log(self, on: bool) -> None:
        self.plot.setLogMode(y=on)
        self.plot.getPlotItem().enableAutoRange()

    # -- input ---------------------------------------------------------------------------------------
    def set_model(self, model: Model | None) -> None:
        self.worker.cancel()
        self._model = model
        self._cache.clear()
        self.show_item(None)

    def set_plan(self, plan: Plan | None) -> None:
        """The plan decides the default types; call again after every plan change."""
        self._plan = plan
        if self._item is not None and self.planned_type() != self._planned_shown:
            self.show_item(self._item)  # the defaults and the bold button follow the planned type

    def show_item(self, item) -> None:
        """Show a tensor (anything else clears the view).  While the tab is hidden only the choice is kept:
        the view is built when it is shown (a click in the tree costs this tab nothing)."""
        self._item = item if isinstance(item, TensorInfo) else None
        self.worker.cancel()
        if not self.isVisible():
            self._deferred = True
            return
        self._render_item()

    def _render_item(self) -> None:
        self._deferred = False
        self._set_busy(False)
        self._clear_results()
        tensor = self._item is not None
        self.splitter.setVisible(tensor)
        self.toggles.setVisible(tensor)
        self.defaults_button.setVisible(tensor)
        self.hint.setVisible(not tensor)
        self.title.setText(self._item.name if tensor else "")
        self.title.setVisible(tensor)
        if not tensor:
            self.hint.setText("Select a tensor in the tree to compare the error of quantization types.")
            return
        fits = {t for t in TYPES if row_fits(t, self._item.shape)}
        self._planned_shown = self.planned_type()
        self.toggles.configure(fits, self.types(), self._planned_shown)
        self._pending = True
        if self.isVisible():
            self._compute()

    def planned_type(self) -> str | None:
        if self._plan is None or self._item is None:
            return None
        return self._plan.type_of(self._item.name)

    def types(self) -> list[str]:
        """The types shown for the current tensor, in :data:`TYPES` order."""
        if self._item is None:
            return []
        if self._chosen is None:
            return default_types(self.planned_type(), self._item.shape)
        return [t for t in TYPES if t in self._chosen and row_fits(t, self._item.shape)]

    def set_types(self, types) -> None:
        """Choose the types as the user would (they stay chosen from tensor to tensor, where they fit)."""
        self._chosen = [str(t).upper() for t in types]
        self.show_item(self._item)

    def reset_types(self) -> None:
        self._chosen = None
        if self._item is not None:
            self.show_item(self._item)

    def _on_toggled(self) -> None:
        self._chosen = self.toggles.checked()
        self.show_item(self._item)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self._deferred:
            self._render_item()
        elif self._pending:
            self._compute()

    # -- computing -------------------------------------------------------------------------------------
    def _compute(self) -> None:
        self._pending = False
        if self._item is None or self._model is None:
            return
        types = self.types()
        missing = [t for t in types if (self._item.name, t) not in self._cache]
        if not missing:
            self._show()
            return
        self._set_busy(True, f"Quantizing to {', '.join(missing)}…")
        self.worker.start(self.job, self._model, self._item.name, missing)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.busy.update_progress(done, total, message)

    def _on_result(self, result) -> None:
        name, by_type = result
        if self._item is None or name != self._item.name:
            return  # a tensor no longer shown
        for qtype, s in by_type.items():
            self._cache[(name, qtype)] = s
            self._cache.move_to_end((name, qtype))
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        self._set_busy(False)
        self._show()

    def _on_error(self, message: str) -> None:
        self._set_busy(False)
        self.plot_title.setText("Could not compute the error: " + message)

    def _set_busy(self, busy: bool, text: str = "") -> None:
        if busy:
            self.busy.start(text)
        else:
            self.busy.stop()

    # -- showing ---------------------------------------------------------------------------------------
    def _clear_results(self) -> None:
        self.stats = []
        self.legend.clear()
        for c in self.curves:
            self.plot.removeItem(c)
        self.curves = []
        self.table_model.set_rows([])
        self.plot_title.setText("")

    def _show(self) -> None:
        self._clear_results()
        stats = [self._cache[(self._item.name, t)] for t in self.types() if (self._item.name, t) in self._cache]
        self.stats = stats
        if not stats:
            self.plot_title.setText("Choose one or more types above.")
            self.shown.emit(stats)
            return
        normalized = self.scale.currentData() == "normalized"
        edges, counts = normalized_histograms(stats, BINS) if normalized else shared_histograms(stats, BINS)
        edges = np.asarray(edges, dtype=np.float64)
        self.plot.getPlotItem().setLabel("bottom", "error ÷ the type's RMSE" if normalized
                                         else "error (dequantized − original)")
        for s, c in zip(stats, counts):
            color = curve_color(TYPE_COLORS[s.qtype], self.plot.palette())  # Q2_K's near-black on a dark theme
            curve = self.plot.plot(edges, np.asarray(c, dtype=np.float64), stepMode="center",
                                   pen=pg.mkPen(color, width=2), name=f"{s.qtype}  ({s.snr_db:.1f} dB)"
                                   if np.isfinite(s.snr_db) else f"{s.qtype}  (exact)")
            curve.setZValue(len(stats) - len(self.curves))  # narrow (precise) types drawn over wide ones
            self.curves.append(curve)
        self.plot.getPlotItem().enableAutoRange()
        sampled = max(len(s.sample) for s in stats if s.sample is not None) if stats else 0
        n = stats[0].n
        self.plot_title.setText(f"Error distribution · {BINS} bins · " +
                                ("all values" if sampled >= n else f"{sampled:,} sampled values"))
        self.table_model.set_rows([("", s) for s in stats],
                                  [curve_color(TYPE_COLORS[s.qtype], self.plot.palette()) for s in stats])
        self.shown.emit(stats)

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        return self.worker.shutdown(timeout_ms)
