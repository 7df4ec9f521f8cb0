"""Details of the selected tensor: where it lives, value statistics and a histogram; or of a layer: its
tensors with their stored and planned types and sizes, and the layer's quantization error under the plan.

Statistics and errors run on a :class:`~ui.worker.Worker`; selecting another row supersedes the job, and a
result is shown only if it belongs to the row currently selected.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QFrame, QGridLayout, QHBoxLayout, QHeaderView, QLabel,
                               QSizePolicy, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from workbench import Model, TensorInfo, WorkbenchError
from workbench.analysis import ErrorStats, analyze_tensors, combined_error, is_float_type
from workbench.plan import Plan
from workbench.stats import TensorStats, tensor_stats

from ..formatting import count_with_percent, float_text, grouped, human_bytes, shape_text
from ..widgets.tensor_tree import TensorGroup
from ..widgets.busy_row import BusyRow
from ..widgets.plots import histogram_plot
from ..worker import Worker

INFO_FIELDS = ("Shape", "Type", "Parameters", "Size", "File", "Offset")
STAT_FIELDS = (("min", "Min"), ("max", "Max"), ("mean", "Mean"), ("std", "Std"),
               ("nan", "NaN"), ("inf", "Inf"), ("zeros", "Zeros"), ("sampled", "Histogram of"))
CACHE_SIZE = 64
BINS = 128
STATS_CHUNK = 1 << 20  # values per step of the statistics job (~4 MB of float32)
STATS_DELAY_MS = 80  # a selection that moves on sooner (a held arrow key: ~30 ms) starts no statistics job
PENDING_MS = 150  # stats that arrive sooner replace the old histogram directly (no blank plot, no busy row)


def _stats_job(model: Model, name: str):
    """Runs on the worker thread: look the tensor up and return the statistics generator.  Smaller chunks
    than the core's default: some numpy steps (boolean indexing, casts) hold the interpreter lock for
    their whole chunk, and the GUI thread waits that long for its next paint."""
    return tensor_stats(model.tensor(name), bins=BINS, chunk=STATS_CHUNK)


LAYER_COLUMNS = ("Tensor", "Stored", "Planned", "Planned size", "SNR", "Rel. error")
LAYER_CACHE_SIZE = 32


def _snr_text(snr: float) -> str:
    return "exact" if snr == float("inf") else f"{snr:.1f} dB"


def _value_label(parent: QWidget) -> QLabel:
    lab = QLabel(parent)
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return lab


class TensorDetailWidget(QWidget):
    """Shows a TensorInfo (with statistics and histogram), a layer group summary, or a hint."""

    stats_shown = Signal(object)  # the TensorStats now on screen

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.worker = Worker(self, name="tensor-stats")
        self.worker.progress.connect(self._on_progress)
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(self._on_error)
        self.worker.cancelled.connect(self._on_cancelled)
        self._quiet = False
        self._model: Model | None = None
        self._item: TensorInfo | TensorGroup | None = None
        self._cache: OrderedDict[str, TensorStats] = OrderedDict()
        self.stats: TensorStats | None = None
        self.plan_provider: Callable[[], Plan | None] | None = None  # the window's plan, for a layer's error
        self.layer_worker = Worker(self, name="layer-error")
        self.layer_worker.progress.connect(self._on_progress)
        self.layer_worker.result.connect(self._on_layer_result)
        self.layer_worker.error.connect(self._on_layer_error)
        self.layer_worker.cancelled.connect(self._on_cancelled)
        self._layer_cache: OrderedDict[tuple, list[ErrorStats]] = OrderedDict()
        self._layer_key: tuple | None = None  # (layer name, (tensor, planned type)...) on screen
        self.layer_errors: list[ErrorStats] | None = None  # the errors now on screen
        self._layer_sizes = (0, 0, "")  # (planned bytes, stored bytes, what the plan is) of the layer shown

        self.title = QLabel(self)
        self.title.setObjectName("detailTitle")
        f = QFont(self.title.font())
        f.setPointSizeF(f.pointSizeF() * 1.25)
        f.setBold(True)
        self.title.setFont(f)
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        info = QGridLayout()
        info.setHorizontalSpacing(12)
        info.setVerticalSpacing(3)
        self.info_labels: dict[str, QLabel] = {}
        self._info_keys: dict[str, QLabel] = {}
        for i, field in enumerate(INFO_FIELDS):
            key = QLabel(field + ":", self)
            key.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self._info_keys[field] = key
            val = _value_label(self)
            val.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            self.info_labels[field] = val
            info.addWidget(key, i, 0)
            info.addWidget(val, i, 1)
        info.setColumnStretch(1, 1)

        self.stats_box = QFrame(self)
        self.stats_box.setFrameShape(QFrame.Shape.StyledPanel)
        grid = QGridLayout(self.stats_box)
        grid.setHorizontalSpacing(12)
        grid.setVerticalSpacing(3)
        self.stat_labels: dict[str, QLabel] = {}
        for i, (key, text) in enumerate(STAT_FIELDS):
            r, c = divmod(i, 2)
            k = QLabel(text + ":", self.stats_box)
            k.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            v = _value_label(self.stats_box)
            self.stat_labels[key] = v
            grid.addWidget(k, r, 2 * c)
            grid.addWidget(v, r, 2 * c + 1)
        fm = self.fontMetrics()
        grid.setColumnMinimumWidth(1, fm.horizontalAdvance("-0.000123456  (99.9 %)") + 16)
        grid.setColumnMinimumWidth(2, fm.horizontalAdvance("Histogram of:") + 8)
        grid.setColumnStretch(4, 1)

        self.busy = BusyRow(self, self.cancel_jobs, "Stop computing the statistics or the layer's error")
        policy = self.busy.sizePolicy()
        policy.setRetainSizeWhenHidden(True)  # showing it does not move (and so redraw) the histogram
        self.busy.setSizePolicy(policy)
        self._pending = QTimer(self)
        self._pending.setSingleShot(True)
        self._pending.setInterval(PENDING_MS)
        self._pending.timeout.connect(self._show_pending)
        self._stats_timer = QTimer(self)
        self._stats_timer.setSingleShot(True)
        self._stats_timer.setInterval(STATS_DELAY_MS)
        self._stats_timer.timeout.connect(self._start_stats)

        self.plot = self._make_plot()
        self.hist_item = self.plot.plot(np.array([0.0, 1.0]), np.array([0]), stepMode="center", fillLevel=0,
                                        brush=(66, 133, 200, 150), pen=pg.mkPen((40, 90, 160), width=1))
        self.hist_item.clear()
        self.mean_line = pg.InfiniteLine(angle=90, movable=False,
                                         pen=pg.mkPen((200, 70, 50), width=1, style=Qt.PenStyle.DashLine))
        self.mean_line.setToolTip("mean")
        self.plot.addItem(self.mean_line)
        self.mean_line.hide()

        self.log_box = QCheckBox("Log count", self)
        self.log_box.setToolTip("Logarithmic count axis: shows the sparse tails of the distribution")
        self.log_box.toggled.connect(self._set_log)
        self.log_box.setChecked(True)  # the tails of a weight distribution are what quantization clips
        plot_bar = QHBoxLayout()
        self.plot_title = QLabel(self)
        plot_bar.addWidget(self.plot_title, 1)
        plot_bar.addWidget(self.log_box)

        self.layer_error = QLabel(self)
        self.layer_error.setWordWrap(True)
        self.layer_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.layer_table = QTableWidget(0, len(LAYER_COLUMNS), self)
        self.layer_table.setHorizontalHeaderLabels(list(LAYER_COLUMNS))
        self.layer_table.verticalHeader().setVisible(False)
        self.layer_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.layer_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.layer_table.setAlternatingRowColors(True)
        self.layer_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.layer_table.setToolTip("The layer's tensors: stored type, the type the plan gives each, its size at "
                                    "that type and its quantization error there (SNR: signal to noise power; "
                                    "relative error: RMS of the error over RMS of the values)")
        header = self.layer_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in range(1, len(LAYER_COLUMNS)):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)

        self.hint = QLabel("Select a tensor in the tree to see its details and value histogram.", self)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addLayout(info)
        lay.addWidget(self.stats_box)
        lay.addWidget(self.busy)
        lay.addLayout(plot_bar)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.layer_error)
        lay.addWidget(self.layer_table, 1)
        lay.addWidget(self.hint, 1)
        self.show_item(None)

    def _make_plot(self) -> pg.PlotWidget:
        plot = histogram_plot(self, "value", "Distribution of the tensor's values (dequantized). Drag to pan, "
                              "wheel to zoom, right-drag to stretch; the dashed line is the mean.", 180)
        # no grid: this plot is redrawn at every tensor selected, and the grid is half of each redraw's time
        plot.getPlotItem().showGrid(x=False, y=False)
        return plot

    # -- input -------------------------------------------------------------------------------------
    def set_model(self, model: Model | None) -> None:
        self._stop_job()
        self._model = model
        self._cache.clear()
        self._layer_cache.clear()
        self.show_item(None)

    def show_item(self, item: TensorInfo | TensorGroup | None) -> None:
        """The header facts at once (painted first); the statistics and the histogram follow once the
        selection rested :data:`STATS_DELAY_MS` (a held arrow key redraws no plot), from the cache or the
        worker.  The previous histogram stays until they arrive or :data:`PENDING_MS` passed, so a step
        through the tree redraws the plot once per tensor, not three times."""
        self._item = item
        self._stop_job()
        self._pending.stop()
        self._stats_timer.stop()
        self._set_busy(False)
        self.stats = None
        is_tensor = isinstance(item, TensorInfo)
        if not is_tensor:
            self._clear_plot()
        is_group = isinstance(item, TensorGroup)
        for w in (self.stats_box, self.plot, self.plot_title, self.log_box):
            if w.isHidden() == is_tensor:  # (no relayout when the kind of row stays the same)
                w.setVisible(is_tensor)
        for w in (self.layer_error, self.layer_table):
            if w.isHidden() == is_group:
                w.setVisible(is_group)
        self.hint.setVisible(not is_tensor and not is_group)
        self.title.setVisible(item is not None)
        for field in INFO_FIELDS:
            self.info_labels[field].setVisible(item is not None)
            self._info_keys[field].setVisible(item is not None)
        if item is None:
            self.hint.setText("Select a tensor in the tree to see its details and value histogram.")
            return
        if isinstance(item, TensorGroup):
            self._show_group(item)
            return
        self._show_info(item)
        for lab in self.stat_labels.values():
            lab.setText("…")
        self._stats_timer.start()

    def _start_stats(self) -> None:
        """The selection rested: show the cached statistics (or layer errors) or compute them."""
        item = self._item
        if isinstance(item, TensorGroup):
            self._start_layer_error()
            return
        if not isinstance(item, TensorInfo):
            return
        cached = self._cache.get(item.name)
        if cached is not None:
            self._show_stats(cached)
        elif self._model is not None:
            self.worker.start(_stats_job, self._model, item.name)
            self._pending.start()
        else:
            self._clear_plot()

    def _clear_plot(self) -> None:
        self.hist_item.clear()
        self.mean_line.hide()
        self.plot_title.setText("")

    def _show_pending(self) -> None:
        """The statistics take a while: blank the old histogram and show the progress row."""
        if self.worker.is_busy() and isinstance(self._item, TensorInfo):
            self._clear_plot()
            self._set_busy(True, "Computing statistics…")
        elif self.layer_worker.is_busy() and isinstance(self._item, TensorGroup):
            self._set_busy(True, "Measuring the layer's error…")

    def _show_info(self, t: TensorInfo) -> None:
        self.title.setText(t.name)
        self._info_keys["Shape"].setText("Shape:")
        values = {
            "Shape": shape_text(t.shape),
            "Type": t.dtype,
            "Parameters": grouped(t.n_params),
            "Size": f"{human_bytes(t.nbytes)}  ({grouped(t.nbytes)} bytes)",
            "File": t.file.name,
            "Offset": f"{grouped(t.offset)}  (0x{t.offset:X})",
        }
        for field, text in values.items():
            self.info_labels[field].setText(text)
            self.info_labels[field].setToolTip(str(t.file) if field == "File" else "")

    def _show_group(self, g: TensorGroup) -> None:
        self.title.setText(g.name)
        self._info_keys["Shape"].setText("Tensors:")
        files = sorted({t.file.name for t in g.tensors})
        values = {
            "Shape": str(len(g.tensors)),
            "Type": g.dtype_text,
            "Parameters": grouped(g.n_params),
            "Size": f"{human_bytes(g.nbytes)}  ({grouped(g.nbytes)} bytes)",
            "File": ", ".join(files),
            "Offset": "–",
        }
        for field, text in values.items():
            self.info_labels[field].setText(text)
            self.info_labels[field].setToolTip("")
        self._show_layer_rows(g)

    # -- a layer ---------------------------------------------------------------------------------------
    def _plan(self) -> Plan | None:
        return self.plan_provider() if self.plan_provider is not None else None

    def plan_changed(self) -> None:
        """The plan changed: a layer on screen shows its new planned types, sizes and error."""
        if isinstance(self._item, TensorGroup):
            self._stop_job()
            self._set_busy(False)
            self._show_layer_rows(self._item)

    def _show_layer_rows(self, g: TensorGroup) -> None:
        """The layer's tensors with their stored and planned types and sizes at once; the errors follow (cached,
        or computed once the selection rested)."""
        plan = self._plan()
        entries = {}
        if plan is not None:
            for t in g.tensors:
                try:
                    entries[t.name] = plan.entry(t.name)
                except WorkbenchError:
                    pass  # a tensor the plan does not hold (an adapter's): shown without a planned type
        pairs = tuple((t.name, entries[t.name].type) for t in g.tensors
                      if t.name in entries and is_float_type(t.dtype))
        self._layer_key = (g.name, pairs) if pairs else None
        self.layer_errors = None
        prefix = g.name + "."
        table = self.layer_table
        table.setRowCount(len(g.tensors))
        for r, t in enumerate(g.tensors):
            e = entries.get(t.name)
            short = t.name[len(prefix):] if t.name.startswith(prefix) else t.name
            cells = (short, t.dtype, e.type if e else "–", human_bytes(e.nbytes) if e else "–", "", "")
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c == 0:
                    item.setToolTip(t.name)
                if c >= 3:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(r, c, item)
        if plan is None or not entries:
            self.layer_error.setText("No quantization plan for this model: nothing to measure.")
            return
        planned = sum(e.nbytes for e in entries.values())
        self._layer_sizes = (planned, g.nbytes, plan.preset + (" with edits" if plan.rules or plan.overrides else ""))
        self.layer_error.setText(f"Under the plan ({self._layer_sizes[2]}): {human_bytes(planned)} (stored: "
                                 f"{human_bytes(g.nbytes)}). The layer's error follows…")
        cached = self._layer_cache.get(self._layer_key) if self._layer_key else None
        if cached is not None:
            self._show_layer_errors(cached)
        else:
            self._stats_timer.start()

    def _start_layer_error(self) -> None:
        key = self._layer_key
        if key is None or self._model is None:
            return
        cached = self._layer_cache.get(key)
        if cached is not None:
            self._show_layer_errors(cached)
            return
        self.layer_worker.start(analyze_tensors, self._model, list(key[1]))
        self._pending.start()

    def _on_layer_result(self, stats: list[ErrorStats]) -> None:
        key = self._layer_key
        if key is None or [(s.name, s.qtype) for s in stats] != list(key[1]):
            return  # belongs to a layer (or a plan) no longer shown
        self._layer_cache[key] = stats
        while len(self._layer_cache) > LAYER_CACHE_SIZE:
            self._layer_cache.popitem(last=False)
        self._set_busy(False)
        self._show_layer_errors(stats)

    def _on_layer_error(self, message: str) -> None:
        self._set_busy(False)
        self.layer_error.setText(f"Could not measure the layer's error: {message}")

    def _show_layer_errors(self, stats: list[ErrorStats]) -> None:
        self.layer_errors = stats
        by_name = {s.name: s for s in stats}
        for r in range(self.layer_table.rowCount()):
            s = by_name.get(self.layer_table.item(r, 0).toolTip())  # the row's full tensor name
            self.layer_table.item(r, 4).setText(_snr_text(s.snr_db) if s else "–")
            self.layer_table.item(r, 5).setText(f"{100 * s.rel_rmse:.2f} %" if s else "–")
        snr, rel = combined_error(stats)
        planned, stored, preset = self._layer_sizes
        self.layer_error.setText(f"Under the plan ({preset}): {human_bytes(planned)} (stored: {human_bytes(stored)}). "
                                 f"The layer's error against the stored weights: SNR {_snr_text(snr)}, relative "
                                 f"error {100 * rel:.2f} % (its {len(stats)} tensors' values taken together).")

    # -- worker --------------------------------------------------------------------------------------
    def _stop_job(self) -> None:
        """Cancel the running job because the selection moved on (not a user cancel: no message)."""
        self._quiet = True
        try:
            self.cancel_jobs()
        finally:
            self._quiet = False

    def cancel_jobs(self) -> None:
        self.worker.cancel()
        self.layer_worker.cancel()

    def _on_cancelled(self) -> None:
        if not self._quiet:
            self._clear_plot()
            self._set_busy(False, "Cancelled")

    def _set_busy(self, busy: bool, text: str = "") -> None:
        if not busy:
            self._pending.stop()
        if busy:
            self.busy.start(text)
            return
        self.busy.stop()
        if text and isinstance(self._item, TensorInfo) and self.stats is None:
            for lab in self.stat_labels.values():
                lab.setText("–")
            self.stat_labels["sampled"].setText(text)

    def _on_progress(self, done: int, total: int, _message: str) -> None:
        if self.busy.isVisible():
            self.busy.update_progress(done, total)

    def _on_result(self, stats: TensorStats) -> None:
        if not isinstance(self._item, TensorInfo) or stats.name != self._item.name:
            return  # belongs to a tensor no longer selected
        self._cache[stats.name] = stats
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        self._set_busy(False)
        self._show_stats(stats)

    def _set_log(self, on: bool) -> None:
        self.plot.setLogMode(y=on)
        # the fill is drawn down to a display-space level: 0 counts linear, 0.5 counts in log10
        self.hist_item.setFillLevel(-0.3 if on else 0)
        if self.stats is not None and len(self.stats.hist_counts):
            self._fit_range(self.stats)
        else:
            self.plot.getPlotItem().enableAutoRange()

    def _fit_range(self, s: TensorStats) -> None:
        """Show the whole histogram: the range is set once, from the data, instead of the view box working it out
        again on each paint (auto-range costs a second and third repaint per tensor)."""
        edges = np.asarray(s.hist_edges, dtype=np.float64)
        top = float(np.max(s.hist_counts)) if len(s.hist_counts) else 1.0
        log = self.log_box.isChecked()
        y = (-0.3, np.log10(max(top, 1.0)) + 0.1) if log else (0.0, max(top, 1.0) * 1.05)
        x0, x1 = float(edges[0]), float(edges[-1])
        pad = (x1 - x0) * 0.02 or 0.5
        self.plot.getPlotItem().getViewBox().setRange(xRange=(x0 - pad, x1 + pad), yRange=y, padding=0)

    def _on_error(self, message: str) -> None:
        self._clear_plot()
        self._set_busy(False, "Could not compute statistics")
        self.stat_labels["sampled"].setToolTip(message)
        self.hint.setText(message)
        self.hint.setVisible(True)
        self.plot.setVisible(False)

    def _show_stats(self, s: TensorStats) -> None:
        self.stats = s
        L = self.stat_labels
        L["min"].setText(float_text(s.min))
        L["max"].setText(float_text(s.max))
        L["mean"].setText(float_text(s.mean))
        L["std"].setText(float_text(s.std))
        L["nan"].setText(count_with_percent(s.nan, s.count))
        L["inf"].setText(count_with_percent(s.inf, s.count))
        L["zeros"].setText(count_with_percent(s.zeros, s.count))
        L["sampled"].setText("all values" if s.sampled >= s.count else
                             f"{grouped(s.sampled)} sampled values")
        self.plot_title.setText(f"Value distribution · {len(s.hist_counts)} bins")
        L["sampled"].setToolTip("" if s.sampled >= s.count else
                                "The histogram is drawn from an evenly strided sample; the statistics use every value.")
        if len(s.hist_counts):
            self.hist_item.setData(np.asarray(s.hist_edges, dtype=np.float64),
                                   np.asarray(s.hist_counts, dtype=np.float64))
            self._fit_range(s)
        else:
            self.hist_item.clear()
        if np.isfinite(s.mean):
            self.mean_line.setValue(s.mean)
            self.mean_line.show()
        else:
            self.mean_line.hide()
        self.stats_shown.emit(s)
