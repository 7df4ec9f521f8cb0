"""Tools ▸ Importance Matrix…: load (or compute) an importance matrix and show its per-tensor statistics.

The file is read and the statistics (``workbench.optimize.imatrix_stats``: what ``llama-imatrix
--show-statistics`` prints) are computed on a worker; the table sorts by any column and filters by name; the
chart draws one metric per layer, one curve per tensor kind.  *Compute…* (shown only when the core has
``workbench.optimize.imatrix_compute``) runs the engine over calibration text on the opened model, with
progress and Cancel; *Save As…* writes the matrix (llama-imatrix's GGUF format).  The last file is remembered.
"""
from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox,
                               QSplitter, QTableView, QVBoxLayout, QWidget)

from workbench.optimize.imatrix import Imatrix
from workbench.optimize.imatrix_stats import LayerStats, TensorStats, layer_statistics, statistics

from ..pages.analysis_view import PLAN_COLORS
from ..widgets.elided_label import ElidedLabel
from ..widgets.filter_edit import FilterEdit
from ..models.imatrix_table import STATS_ROLE, ImatrixStatsModel, ImatrixStatsProxy
from ..widgets.plots import curve_color, style_plot
from ..worker import Worker

SETTINGS_FILE = "imatrix/last_file"
FILE_FILTER = "Importance matrices (*.gguf *.dat *.imatrix);;All files (*)"
# chart metric -> (label, TensorStats attribute, scale, log axis)
METRICS = {"Σ(Act²)": ("sum", 1.0, True), "μ": ("mean", 1.0, True), "ZD (%)": ("zd", 100.0, False),
           "CosSim": ("cossim", 1.0, False), "E (norm) (%)": ("entropy_norm", 1.0, False),
           "% Active": ("active", 100.0, False)}


def compute_available() -> bool:
    """True when the core can compute an importance matrix (``workbench.optimize.imatrix_compute``)."""
    try:
        return importlib.util.find_spec("workbench.optimize.imatrix_compute") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class ImatrixResult:
    imatrix: Imatrix
    stats: list[TensorStats]
    layers: list[LayerStats]
    path: Path | None  # None: computed, not saved yet


def load_job(path) -> ImatrixResult:
    """Worker job: read the file and compute its statistics."""
    im = Imatrix.load(path)
    stats = statistics(im)
    return ImatrixResult(im, stats, layer_statistics(stats), im.path)


def compute_job(model, text_path: str | None, n_ctx: int, chunks: int | None, cancel: Callable[[], bool]):
    """Worker job: compute the model's importance matrix over the train part of the text file (or of the bundled
    text; a .json/.jsonl chat set through the model's chat template), as ``workbench imatrix`` does: a fifth is
    held out and never used."""
    from workbench.infer.tokenizer import load_tokenizer
    from workbench.optimize.imatrix_compute import compute_imatrix, load_calibration

    calib = load_calibration(text_path, load_tokenizer(model))
    text = calib.train
    dataset = Path(text_path).name if text_path else "calibration.txt"  # imatrix.datasets (saved files need one)
    im = yield from compute_imatrix(model, text, n_ctx, chunks, cancel, dataset=dataset)
    stats = statistics(im)
    return ImatrixResult(im, stats, layer_statistics(stats), None)


def layer_curves(stats: list[TensorStats], attr: str, scale: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind -> (block numbers, values) over the tensors inside the blocks, blocks in order."""
    per: dict[str, dict[int, float]] = {}
    for t in stats:
        if t.block >= 0:
            per.setdefault(t.kind, {})[t.block] = float(getattr(t, attr)) * scale
    return {k: (np.array(sorted(v), float), np.array([v[b] for b in sorted(v)], float)) for k, v in sorted(per.items())}


class ComputeImatrixDialog(QDialog):
    """The compute parameters: calibration text, context and chunks."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Compute Importance Matrix")
        self.text_edit = QLineEdit(self)
        self.text_edit.setPlaceholderText("the bundled calibration text")
        self.text_edit.setToolTip("A text file to run the model over (empty: the bundled calibration text)")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.text_edit, 1)
        row.addWidget(browse)
        self.ctx_spin = QSpinBox(self)
        self.ctx_spin.setRange(16, 32768)
        self.ctx_spin.setValue(512)
        self.ctx_spin.setToolTip("Tokens per chunk (llama-imatrix -c)")
        self.chunks_spin = QSpinBox(self)
        self.chunks_spin.setRange(0, 100000)
        self.chunks_spin.setValue(10)
        self.chunks_spin.setSpecialValueText("all")
        self.chunks_spin.setToolTip("At most this many chunks (llama-imatrix --chunks; 0: all the text)")
        form = QFormLayout(self)
        form.addRow("Text:", row)
        form.addRow("Context:", self.ctx_spin)
        form.addRow("Chunks:", self.chunks_spin)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Compute")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Calibration Text", self.text_edit.text(),
                                              "Text (*.txt *.md);;All files (*)")
        if path:
            self.text_edit.setText(path)

    def params(self) -> tuple[str | None, int, int | None]:
        return self.text_edit.text().strip() or None, self.ctx_spin.value(), self.chunks_spin.value() or None


class ImatrixDialog(QDialog):
    """``loaded(ImatrixResult)`` once a file's (or a computation's) statistics are shown."""

    loaded = Signal(object)

    def __init__(self, settings: QSettings, model_provider: Callable[[], object] = lambda: None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Importance Matrix")
        self.settings = settings
        self.model_provider = model_provider
        self.result: ImatrixResult | None = None
        self._cancel = threading.Event()
        self.worker = Worker(self, name="imatrix")
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(self._on_error)
        self.worker.progress.connect(self._on_progress)
        self.worker.cancelled.connect(lambda: self._set_message("Cancelled."))
        self.worker.finished.connect(lambda: self._busy(False))

        self.path_label = ElidedLabel("No importance matrix loaded", self)
        self.open_button = QPushButton("&Open…", self)
        self.open_button.setToolTip("Read an importance matrix (llama-imatrix's .gguf or legacy .dat)")
        self.open_button.clicked.connect(self.open_dialog)
        self.compute_button = QPushButton("&Compute…", self)
        self.compute_button.clicked.connect(self.compute_dialog)
        self.compute_button.setVisible(compute_available())
        self.save_button = QPushButton("&Save As…", self)
        self.save_button.setToolTip("Write the importance matrix in llama-imatrix's GGUF format")
        self.save_button.clicked.connect(self.save_dialog)
        self.save_button.setEnabled(False)
        top = QHBoxLayout()
        top.addWidget(self.path_label, 1)
        for b in (self.open_button, self.compute_button, self.save_button):
            top.addWidget(b)
        self.summary = QLabel(self)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar(self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.cancel)
        prow = QHBoxLayout()
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        self.filter = FilterEdit("Filter tensors", self)

        self.model = ImatrixStatsModel(self)
        self.proxy = ImatrixStatsProxy(self)
        self.proxy.setSourceModel(self.model)
        self.filter.changed.connect(self.proxy.setFilterRegularExpression)
        self.filter.changed.connect(lambda _rx: self._draw_chart())  # the chart shows the rows shown
        self.view = QTableView(self)
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(self.model.column("sum"), Qt.SortOrder.DescendingOrder)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 4)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setAlternatingRowColors(True)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)

        self.metric_combo = QComboBox(self)
        self.metric_combo.addItems(list(METRICS))
        self.metric_combo.setToolTip("What the chart shows per layer")
        self.metric_combo.currentTextChanged.connect(lambda _t: self._draw_chart())
        self.chart = pg.PlotWidget(self)
        self.chart.setAcceptDrops(False)
        self.chart.setMinimumHeight(160)
        self.chart.setToolTip("The chosen statistic per layer, one curve per tensor kind (of the rows the filter "
                              "shows); tensors sharing an input (q/k/v, gate/up) have the same curve")
        pi = self.chart.getPlotItem()
        pi.setLabel("bottom", "layer")
        pi.showGrid(x=True, y=True, alpha=0.25)
        pi.setMenuEnabled(False)
        self.legend = pi.addLegend(offset=(8, 4), labelTextColor=self.palette().color(QPalette.ColorRole.WindowText))
        style_plot(self.chart, self.palette())
        chart_box = QWidget(self)
        cl = QVBoxLayout(chart_box)
        cl.setContentsMargins(0, 0, 0, 0)
        crow = QHBoxLayout()
        crow.addWidget(QLabel("Chart:", chart_box))
        crow.addWidget(self.metric_combo)
        crow.addStretch(1)
        cl.addLayout(crow)
        cl.addWidget(self.chart, 1)
        split = QSplitter(Qt.Orientation.Vertical, self)
        split.addWidget(self.view)
        split.addWidget(chart_box)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.summary)
        lay.addLayout(prow)
        lay.addWidget(self.filter)
        lay.addWidget(split, 1)
        self.resize(1100, 720)
        self._busy(False)
        self.refresh_compute()
        last = str(self.settings.value(SETTINGS_FILE, "") or "")
        if last and Path(last).is_file():
            self.load(last)
        else:
            self._set_message("Open an importance matrix (llama-imatrix's .gguf or .dat) to see its statistics.")

    # -- actions ------------------------------------------------------------------------------------------
    def refresh_compute(self) -> None:
        """Compute… needs an opened model (and the core's compute module)."""
        has_model = self.model_provider() is not None
        self.compute_button.setEnabled(has_model and not self.worker.is_busy())
        self.compute_button.setToolTip("Run the opened model over calibration text and accumulate its importance "
                                       "matrix" if has_model else "Open a model first to compute its importance matrix")

    def open_dialog(self) -> None:
        start = str(self.settings.value(SETTINGS_FILE, "") or "")
        path, _ = QFileDialog.getOpenFileName(self, "Open Importance Matrix", start, FILE_FILTER)
        if path:
            self.load(path)

    def load(self, path) -> int:
        """Read ``path`` and show its statistics (in the background); returns the job id."""
        self._cancel.clear()
        self._busy(True, f"Reading {Path(path).name}…")
        return self.worker.start(load_job, str(path))

    def compute_dialog(self) -> None:
        dlg = ComputeImatrixDialog(self)
        if dlg.exec() == QDialog.DialogCode.Accepted:
            self.compute(*dlg.params())

    def compute(self, text_path: str | None = None, n_ctx: int = 512, chunks: int | None = None) -> int | None:
        """Compute the opened model's importance matrix in the background; returns the job id."""
        model = self.model_provider()
        if model is None or not compute_available():
            return None
        self._cancel = threading.Event()
        self._busy(True, "Computing the importance matrix…")
        return self.worker.start(compute_job, model, text_path, n_ctx, chunks, self._cancel.is_set)

    def save_dialog(self) -> None:
        if self.result is None:
            return
        start = str(self.result.path or Path(str(self.settings.value(SETTINGS_FILE, "") or "")).parent /
                    "imatrix.gguf")
        path, _ = QFileDialog.getSaveFileName(self, "Save Importance Matrix", start, "GGUF (*.gguf)")
        if path:
            self.save(path)

    def save(self, path) -> int:
        im = self.result.imatrix
        self._busy(True, f"Writing {Path(path).name}…")
        return self.worker.start(lambda: (im.save(path), load_job(path))[1])

    def cancel(self) -> None:
        self._cancel.set()
        self.worker.cancel()

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        self._cancel.set()
        return self.worker.shutdown(timeout_ms)

    # -- results ------------------------------------------------------------------------------------------
    def _on_result(self, result: ImatrixResult) -> None:
        self.result = result
        self.model.set_rows(result.stats)
        self.view.resizeColumnsToContents()
        self.view.horizontalHeader().setSectionResizeMode(self.model.column("name"), QHeaderView.ResizeMode.Stretch)
        im = result.imatrix
        if result.path is not None:
            self.settings.setValue(SETTINGS_FILE, str(result.path))
            self.path_label.setText(str(result.path))
        else:
            self.path_label.setText("Computed (not saved): Save As… writes it")
        self.save_button.setEnabled(True)
        kinds = len({t.kind for t in result.stats})
        chunks = f"{im.chunk_count} chunks" + (f" of {im.chunk_size} tokens" if im.chunk_size else "")
        text = (f"{len(result.stats)} tensors with activations of {len(im)} entries · {kinds} kinds · "
                f"{len(result.layers)} layers · {chunks}" + (" · legacy .dat" if im.legacy else ""))
        if im.datasets:
            text += f" · text: {', '.join(im.datasets)}"
        self._set_message(text)
        self._draw_chart()
        self.loaded.emit(result)

    def _on_error(self, message: str) -> None:
        self._set_message(f"Failed: {message}")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))
        if message:
            self._set_message(message)

    def _busy(self, busy: bool, message: str = "") -> None:
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.open_button.setEnabled(not busy)
        self.save_button.setEnabled(not busy and self.result is not None)
        if busy:
            self.progress.setRange(0, 0)
            self._set_message(message)
            self.compute_button.setEnabled(False)
        else:
            self.refresh_compute()

    def _set_message(self, text: str) -> None:
        self.summary.setText(text)

    def _draw_chart(self) -> None:
        pi = self.chart.getPlotItem()
        pi.clear()
        self.legend.clear()
        if self.result is None:
            return
        label = self.metric_combo.currentText()
        attr, scale, log = METRICS[label]
        curves = layer_curves(self.visible_stats(), attr, scale)
        pi.setLogMode(y=log)
        pi.setLabel("left", label + (" (log)" if log else ""))
        self.legend.setColumnCount(max(1, min(8, len(curves))))  # one row above the curves
        pal = self.chart.palette()
        lows, highs = [], []
        for k, (kind, (x, y)) in enumerate(curves.items()):
            if log:  # log axis: a zero value cannot be drawn
                keep = y > 0
                x, y = x[keep], y[keep]
            if y.size:
                v = np.log10(y) if log else y
                lows.append(float(v.min()))
                highs.append(float(v.max()))
            color = curve_color(PLAN_COLORS[k % len(PLAN_COLORS)], pal)
            pi.plot(x, y, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=5, symbolBrush=color, symbolPen=None,
                    name=kind)
        if lows:  # room above the curves for the legend
            lo, hi = min(lows), max(highs)
            span = max(hi - lo, 1.0 if log else abs(hi) * 0.1 or 1.0)
            pi.setYRange(lo - 0.05 * span, hi + 0.3 * span, padding=0)

    def visible_stats(self) -> list[TensorStats]:
        """The rows the filter shows."""
        return [self.proxy.index(r, 0).data(STATS_ROLE) for r in range(self.proxy.rowCount())]

    # -- for tests ----------------------------------------------------------------------------------------
    def curve_names(self) -> list[str]:
        return [item.name() for item in self.chart.getPlotItem().listDataItems()]

    def row_names(self) -> list[str]:
        """Tensor names in view order (sorted and filtered)."""
        return [self.proxy.index(r, self.model.column("name")).data() for r in range(self.proxy.rowCount())]
