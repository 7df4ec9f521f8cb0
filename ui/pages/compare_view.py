"""The Compare tab: quantization levels of the opened model side by side against its base.

Up to four levels (presets, the window's current plan, or saved plan files) are run through the core's
:func:`workbench.infer.compare.compare` on the worker: one progress bar per level, Cancel at any time.  The
result is a sortable table (size, bpw, PPL, KLD, same-top, Δp, speed, memory), the per-token KLD
distribution of every level (empirical CDF on a log axis) and the texts every level generated for the prompt,
in columns, with the part after the first token that differs from the base's highlighted.  Sentence encoders
(bert) get the cosine of their embeddings to the base's instead.  Exports (CSV, JSON, Markdown) are the core
result's own ``to_csv``/``to_json``/``to_markdown``, written on the worker.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QFont, QGuiApplication, QPalette, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QAbstractItemView, QBoxLayout, QCheckBox, QComboBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMenu, QProgressBar, QPushButton,
                               QScrollArea, QSizePolicy, QSpinBox, QSplitter, QTableView, QTextEdit, QToolButton,
                               QTabWidget, QVBoxLayout, QWidget)

from workbench import Model, WorkbenchError
from workbench.infer.compare import _FLOPS, base_warning, estimate_seconds, machine_flops
from workbench.infer.compare import (DEFAULT_EVAL, DEFAULT_N_CTX, EVAL_MODES, PROGRESS_STEPS, CompareResult,
                                     LevelResult, compare)
from workbench.plan import PRESETS, Plan

from ..formatting import human_bytes
from ..widgets.plots import curve_color, histogram_plot, style_plot
from ..widgets.token_view import GeneratedTokensTable, TokenKldView
from ..widgets.type_toggles import swatch
from ..worker import Worker

MAX_LEVELS = 4
DEFAULT_LEVELS = ("Q8_0", "Q4_K_M", None, None)
DEFAULT_PROMPT = "The capital of France is"
# one colour per level row (curves, table swatches, text headers); the base is grey
LEVEL_COLORS = [QColor(c) for c in ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")]
BASE_COLOR = QColor("#7f7f7f")
KLD_FLOOR = 1e-7  # KLD values are drawn on a log axis: exact zeros at this floor
CDF_POINTS = 1500  # points per curve at most (the sorted values are subsampled evenly)
SORT_ROLE = Qt.ItemDataRole.UserRole + 1


# -- picking a level ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    kind: str  # "none" | "stored" | "preset" | "current" | "file" | "load" (the Load plan… entry)
    value: str | None = None  # the preset name or the plan file's path

    @property
    def label(self) -> str:
        if self.kind == "preset":
            return str(self.value)
        if self.kind == "file":
            return Path(str(self.value)).stem
        return {"none": "", "stored": "As stored", "current": "Current plan", "load": "Load plan…"}[self.kind]


NONE, STORED, CURRENT, LOAD = Level("none"), Level("stored"), Level("current"), Level("load")


def parse_level(level: Level | str | Plan | None) -> Level:
    """A :class:`Level` from a preset name, "current", "stored", a plan file path or None."""
    if level is None:
        return NONE
    if isinstance(level, Level):
        return level
    text = str(level).strip()
    if text.upper() in PRESETS:
        return Level("preset", text.upper())
    if text.lower() in ("current", "current plan"):
        return CURRENT
    if text.lower() in ("stored", "as stored"):
        return STORED
    if not text:
        return NONE
    return Level("file", os.path.abspath(os.path.expanduser(text)))


class LevelPicker(QComboBox):
    """Presets (with their size for this model), "Current plan", saved plan files and "Load plan…"; with
    ``allow_none`` a "—" entry, with ``allow_stored`` "As stored".  ``level_changed(Level)`` on a user choice.
    A plan file is only named here: it is read by the job that uses it, on the worker."""

    level_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None, *, allow_none: bool = False, allow_stored: bool = False,
                 default: Level | str | None = None):
        super().__init__(parent)
        self.allow_none, self.allow_stored = allow_none, allow_stored
        self.last_dir = ""
        self.sizes: dict[str, tuple[int, float]] = {}
        self._files: list[str] = []
        self._current = parse_level(default) if default is not None else (NONE if allow_none else STORED)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.activated.connect(self._on_activated)
        self._fill()

    def set_sizes(self, sizes: dict[str, tuple[int, float]] | None) -> None:
        """Another model: ``preset -> (bytes, bpw)``.  Plan files (made for the old model) are dropped."""
        self.sizes = dict(sizes or {})
        self._files = []
        cur = self._current
        if cur.kind == "file" or (cur.kind == "preset" and self.sizes and cur.value not in self.sizes):
            cur = NONE if self.allow_none else (STORED if self.allow_stored else CURRENT)
        self._current = cur
        self._fill()

    def _entries(self) -> list[tuple[str, Level]]:
        out: list[tuple[str, Level]] = []
        if self.allow_none:
            out.append(("—", NONE))
        if self.allow_stored:
            out.append(("As stored", STORED))
        for p in PRESETS:
            if self.sizes and p not in self.sizes:
                continue
            size = self.sizes.get(p)
            out.append((f"{p}  ·  {human_bytes(size[0])}  ·  {size[1]:.2f} bpw" if size else p, Level("preset", p)))
        out.append(("Current plan", CURRENT))
        out += [(f"{Path(f).name} (plan file)", Level("file", f)) for f in self._files]
        out.append(("Load plan…", LOAD))
        return out

    def _fill(self) -> None:
        self.blockSignals(True)
        self.clear()
        for text, level in self._entries():
            self.addItem(text, level)
            if level.kind == "file":
                self.setItemData(self.count() - 1, level.value, Qt.ItemDataRole.ToolTipRole)
        self.blockSignals(False)
        self._select(self._current)

    def _select(self, level: Level) -> None:
        for i in range(self.count()):
            if self.itemData(i) == level:
                self.setCurrentIndex(i)
                return

    def level(self) -> Level:
        return self._current

    def set_level(self, level: Level | str | None) -> None:
        level = parse_level(level)
        if level.kind == "file" and level.value not in self._files:
            self._files.append(str(level.value))
        self._current = level
        self._fill()

    def _on_activated(self, index: int) -> None:
        level = self.itemData(index)
        if level == LOAD:
            path, _ = QFileDialog.getOpenFileName(self, "Load Plan", self.last_dir, "Plans (*.json);;All files (*)")
            if not path:
                self._select(self._current)
                return
            self.last_dir = os.path.dirname(path)
            level = Level("file", path)
        if level != self._current:
            self.set_level(level)
            self.level_changed.emit(level)


# -- jobs ---------------------------------------------------------------------------------------------------

def read_text_job(path: str) -> tuple[str, str]:
    """Worker job: ``(path, text)`` of a calibration text file (undecodable bytes replaced)."""
    try:
        return path, Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise WorkbenchError(f"cannot read the calibration text: {exc.strerror}", path=path) from None


def write_text_job(path: str, text: str) -> str:
    """Worker job: write ``text`` to ``path`` (atomically); returns the path."""
    from workbench.fsutil import atomic_write_path

    try:
        with atomic_write_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise WorkbenchError(f"cannot write the export: {exc.strerror}", path=path,
                             hint="Choose a folder you can write to.") from None
    return path


# -- the table --------------------------------------------------------------------------------------------

def _stat(key: str) -> Callable[[LevelResult], Any]:
    return lambda r: (r.stats or {}).get(key)


def _cos(key: str) -> Callable[[LevelResult], Any]:
    return lambda r: (r.embedding_cosine or {}).get(key)


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{round(v, digits) + 0.0:.{digits}f}"  # + 0.0: a tiny negative KL shows as 0, not -0


def _pct(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{100 * v:.{digits}f} %"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    get: Callable[[LevelResult], Any]
    text: Callable[[Any], str]
    tip: str


COMMON_HEAD = [
    Column("level", "Level", lambda r: r.label, str, "The quantization level (the base first)"),
    Column("plan", "Plan", lambda r: r.plan, str, "The plan behind the level: preset, rules, overrides"),
    Column("size", "Size", lambda r: r.nbytes, human_bytes, "Size of the tensor data of a file of this level"),
    Column("bpw", "bpw", lambda r: r.bits_per_weight, _fixed(2), "Bits per weight"),
]
CAUSAL = COMMON_HEAD + [
    Column("ppl", "PPL", lambda r: r.ppl, _fixed(4), "Perplexity of the calibration text (lower is better)"),
    Column("ln_ppl_ratio", "ln(PPL ratio)", _stat("ln_ppl_ratio"), _fixed(5),
           "ln(PPL of the level / PPL of the base): 0 is no change"),
    Column("kld_mean", "KLD mean", _stat("kld_mean"), _fixed(6),
           "Mean KL divergence of the level's next-token distribution from the base's, per token"),
    Column("kld_p99", "KLD p99", _stat("kld_p99"), _fixed(5), "99th percentile of the per-token KL divergence"),
    Column("same_top", "Same top", _stat("same_top"), _pct(2),
           "How often the level's most likely next token is the base's"),
    Column("dp_rms", "Δp RMS", _stat("dp_rms"), _pct(3),
           "Root mean square change of the probability of the right token"),
    Column("prompt_tok_s", "Prompt tok/s", lambda r: r.prompt_tokens_per_s, _fixed(1),
           "Scoring throughput (prompt processing) of the numpy engine"),
    Column("gen_tok_s", "Gen tok/s", lambda r: r.gen_tokens_per_s, _fixed(1),
           "Generation speed of the numpy engine (after the first token)"),
    Column("memory", "Memory", lambda r: r.memory, human_bytes, "Weights the engine held in memory (float32)"),
]
EMBEDDING = COMMON_HEAD + [
    Column("cos_mean", "Cosine mean", _cos("mean"), _fixed(6),
           "Mean cosine similarity of the sentence embeddings to the base's (1 is identical)"),
    Column("cos_min", "Cosine min", _cos("min"), _fixed(6), "The least similar sentence"),
    Column("cos_max", "Cosine max", _cos("max"), _fixed(6), "The most similar sentence"),
    Column("prompt_tok_s", "Embed tok/s", lambda r: r.prompt_tokens_per_s, _fixed(1),
           "Embedding throughput of the numpy engine"),
    Column("memory", "Memory", lambda r: r.memory, human_bytes, "Weights the engine held in memory (float32)"),
]


class CompareTableModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.columns: list[Column] = CAUSAL
        self.rows: list[LevelResult] = []
        self.colors: list[QColor] = []

    def set_result(self, result: CompareResult | None, colors: list[QColor] | None = None) -> None:
        self.beginResetModel()
        if result is None:
            self.rows, self.colors = [], []
        else:
            self.columns = EMBEDDING if result.kind == "embedding" else CAUSAL
            self.rows = [result.base, *result.levels]
            self.colors = list(colors or [])
        self.endResetModel()

    def column(self, key: str) -> int:
        return next(i for i, c in enumerate(self.columns) if c.key == key)

    def value(self, row: int, key: str) -> Any:
        """The raw value of a cell (the core's number)."""
        return self.columns[self.column(key)].get(self.rows[row])

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.columns)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        col, r = self.columns[index.column()], self.rows[index.row()]
        v = col.get(r)
        if role == Qt.ItemDataRole.DisplayRole:
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                return "" if index.row() == 0 else "–"
            return col.text(v)
        if role == SORT_ROLE:
            return v
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if col.key in ("level", "plan"):
                return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.DecorationRole and col.key == "level" and index.row() < len(self.colors):
            return swatch(self.colors[index.row()])
        if role == Qt.ItemDataRole.FontRole and index.row() == 0:
            f = QFont()
            f.setItalic(True)  # the base: the reference the others are measured against
            return f
        if role == Qt.ItemDataRole.ToolTipRole:
            if index.row() == 0:
                return f"{r.label}: the base every level is compared with"
            if r.repetition:
                return f"{r.label}: its generated text ends in a repeating loop"
        return None

    def headerData(self, section: int, orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section].title
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.columns[section].tip
        return None


class CompareProxy(QSortFilterProxyModel):
    """Sorts by the raw values; empty cells (the base's KLD...) always last."""

    def lessThan(self, left: QModelIndex, right: QModelIndex) -> bool:  # noqa: N802 - Qt override
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if a is None or b is None:
            asc = self.sortOrder() == Qt.SortOrder.AscendingOrder
            return (a is not None) if asc else (a is None and b is not None)
        if isinstance(a, str) or isinstance(b, str):
            return str(a).lower() < str(b).lower()
        return a < b


# -- the generated texts ------------------------------------------------------------------------------------

def divergence_color(pal: QPalette) -> QColor:
    """A translucent amber that reads on light and dark bases."""
    c = QColor(255, 170, 40) if pal.color(QPalette.ColorRole.Base).lightness() >= 128 else QColor(230, 140, 20)
    c.setAlpha(110)
    return c


class TextColumn(QWidget):
    """One level's generated text: a coloured header, a repetition badge and the text with the part after
    the first divergence from the base highlighted."""

    def __init__(self, result: LevelResult, color: QColor, is_base: bool, parent: QWidget | None = None):
        super().__init__(parent)
        self.result = result
        self.title = QLabel(self)
        self.title.setTextFormat(Qt.TextFormat.RichText)
        if is_base:
            note = "the base"
        elif result.divergence is None:
            note = "same as the base"
        else:
            note = f"differs from token {result.divergence + 1}"
        self.title.setText(f'<span style="color:{color.name()}">■</span> <b>{_esc(result.label)}</b>')
        self.title.setToolTip(result.plan)
        self.note = QLabel(note, self)
        self.note.setEnabled(False)  # the palette's muted text colour
        self.badge = QLabel("⚠ repeats", self)
        self.badge.setStyleSheet("QLabel { background: #c9301f; color: white; border-radius: 3px; "
                                 "padding: 0px 4px; font-weight: bold; }")
        self.badge.setToolTip("The text ends in a repeating loop (the same tokens over and over): a sign of a "
                              "damaged model, or of greedy decoding on a small one")
        self.badge.setVisible(bool(result.repetition))
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(self.title, 1)
        head.addWidget(self.badge)
        self.text = QTextEdit(self)
        self.text.setReadOnly(True)
        self.text.setAcceptRichText(False)
        self.text.setPlainText(result.generated_text)
        self.highlight_start: int | None = None
        if not is_base and result.divergence_char is not None and result.divergence_char < len(result.generated_text):
            self.highlight_start = result.divergence_char
            cur = QTextCursor(self.text.document())
            cur.setPosition(result.divergence_char)
            cur.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
            fmt = QTextCharFormat()
            fmt.setBackground(divergence_color(self.palette()))
            cur.mergeCharFormat(fmt)
            self.text.setToolTip(f"Highlighted: from the first token that differs from the base's "
                                 f"(token {result.divergence + 1})")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(head)
        lay.addWidget(self.note)
        lay.addWidget(self.text, 1)
        self.setMinimumWidth(110)

    def highlighted_from(self) -> int | None:
        """The first character drawn with the divergence background (read back from the document)."""
        doc = self.text.document()
        block = doc.begin()
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                frag = it.fragment()
                if frag.charFormat().background().style() != Qt.BrushStyle.NoBrush:
                    return frag.position()
                it += 1
            block = block.next()
        return None


def _is_encoder(model: Model) -> bool:
    """Whether the model is a sentence encoder (bert): read from its metadata only."""
    from workbench.infer.weights import model_arch

    try:
        return model_arch(model) == "bert"
    except WorkbenchError:
        return False


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the view -------------------------------------------------------------------------------------------

class CompareView(QWidget):
    """``compared(CompareResult)`` once a result is shown; ``exported(str)`` after an export was written."""

    compared = Signal(object)
    exported = Signal(str)
    _flops_measured = Signal()  # from the thread that times this machine's matrix products once

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.job = compare  # the job factory (injectable: tests)
        self.memory_budget: Callable[[], int | None] = lambda: None  # the window sets it from the preferences
        self.worker = Worker(self, name="compare")
        self.worker.progress.connect(self._on_progress)
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(self._on_error)
        self.worker.cancelled.connect(self._on_cancelled)
        self.calib_worker = Worker(self, name="compare-calibration")  # reads a chosen calibration file
        self.calib_worker.result.connect(self._on_calibration_read)
        self.calib_worker.error.connect(self._on_io_error)
        self.export_worker = Worker(self, name="compare-export")  # writes exports
        self.export_worker.result.connect(self._on_exported)
        self.export_worker.error.connect(self._on_io_error)
        self.model: Model | None = None
        self.plan: Plan | None = None
        self.result: CompareResult | None = None
        self.curves: list[pg.PlotDataItem] = []
        self.columns: list[TextColumn] = []
        self.calibration: tuple[str, str] | None = None  # (path, text) of a chosen file; None: the bundled text
        self.last_dir = ""
        self._cancel = threading.Event()
        self._rows_running: list[int] = []  # the level rows of the running job, in the job's order
        self._started = 0.0
        self.encoder = False

        self._build_setup()
        self._build_results()
        self._flops_measured.connect(self._show_estimate)
        for w in (self.ctx_spin, self.windows_spin, self.tokens_spin):
            w.valueChanged.connect(self._show_estimate)
        for p in self.pickers:
            p.level_changed.connect(lambda _lv: self._show_estimate())
        self.hint = QLabel("Open a model to compare its quantization levels.", self)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.setup)
        lay.addWidget(self.results, 1)
        lay.addWidget(self.hint, 1)
        self.set_model(None)

    # -- construction ---------------------------------------------------------------------------------
    def _bar(self) -> QProgressBar:
        bar = QProgressBar(self)
        bar.setRange(0, PROGRESS_STEPS)
        bar.setValue(0)
        bar.setTextVisible(False)
        bar.setMaximumHeight(10)
        bar.setMinimumWidth(60)
        bar.setToolTip("Progress of this level: loading the weights, scoring the windows, generating")
        return bar

    def _build_setup(self) -> None:
        self.setup = QWidget(self)
        levels = QGroupBox("Levels", self.setup)
        grid = QGridLayout(levels)
        grid.setVerticalSpacing(3)
        self.base_combo = QComboBox(levels)
        self.base_combo.addItems(["F32", "F16"])
        self.base_combo.setToolTip("The reference: the stored weights in float32 (F32), or rounded to F16")
        self.base_bar = self._bar()
        grid.addWidget(QLabel("Base", levels), 0, 0)
        grid.addWidget(self.base_combo, 0, 1)
        grid.addWidget(self.base_bar, 0, 2)
        self.pickers: list[LevelPicker] = []
        self.bars: list[QProgressBar] = []
        for i in range(MAX_LEVELS):
            picker = LevelPicker(levels, allow_none=True, default=DEFAULT_LEVELS[i])
            picker.setToolTip("A level to compare: a preset (its size for this model is shown), the current plan, "
                              "or a saved plan file; — leaves the row out")
            bar = self._bar()
            self.pickers.append(picker)
            self.bars.append(bar)
            label = QLabel(f"Level {i + 1}", levels)
            grid.addWidget(label, i + 1, 0)
            grid.addWidget(picker, i + 1, 1)
            grid.addWidget(bar, i + 1, 2)
        grid.setColumnStretch(2, 1)
        grid.setRowStretch(MAX_LEVELS + 1, 1)  # rows stay together at the top when the box is tall

        settings = QGroupBox("Settings", self.setup)
        form = QFormLayout(settings)
        form.setVerticalSpacing(3)
        self.prompt_edit = QLineEdit(DEFAULT_PROMPT, settings)
        self.prompt_edit.setToolTip("Every level continues this prompt greedily (empty: no generation)")
        self.prompt_edit.setPlaceholderText("empty: no generation")
        self.calib_combo = QComboBox(settings)
        self.calib_combo.setToolTip("The text the perplexity and KL divergence are measured on")
        self.calib_combo.activated.connect(self._on_calib_activated)
        self._fill_calibration()
        self.ctx_spin = QSpinBox(settings)
        self.ctx_spin.setRange(16, 32768)
        self.ctx_spin.setSingleStep(64)
        self.ctx_spin.setValue(DEFAULT_N_CTX)
        self.ctx_spin.setToolTip("Tokens per window; the second half of each window is scored (as llama-perplexity)")
        self.windows_spin = QSpinBox(settings)
        self.windows_spin.setRange(0, 10000)
        self.windows_spin.setValue(4)
        self.windows_spin.setSpecialValueText("all")
        self.windows_spin.setToolTip("How many windows of the text to score (all: the whole text)")
        self.tokens_spin = QSpinBox(settings)
        self.tokens_spin.setRange(1, 4096)
        self.tokens_spin.setValue(32)
        self.tokens_spin.setToolTip("Tokens each level generates from the prompt")
        self.chat_box = QCheckBox("Chat template", settings)
        self.chat_box.setToolTip("Wrap the prompt in the model's chat template (as a user message) before "
                                 "generating; off: the prompt is continued as plain text")
        nums = QHBoxLayout()
        nums.setContentsMargins(0, 0, 0, 0)
        for text, w in (("Context", self.ctx_spin), ("Windows", self.windows_spin), ("Max tokens", self.tokens_spin)):
            lab = QLabel(text, settings)
            lab.setBuddy(w)
            nums.addWidget(lab)
            nums.addWidget(w)
            nums.addSpacing(10)
        nums.addWidget(self.chat_box)
        self.eval_combo = QComboBox(settings)
        for mode, label in EVAL_MODES.items():
            self.eval_combo.addItem(label, mode)
        self.eval_combo.setCurrentIndex(self.eval_combo.findData(DEFAULT_EVAL))
        self.eval_combo.setToolTip("As llama.cpp CPU runs it: activations rounded to the weight type's dot-product "
                                   "partner (Q8_0, Q8_1, Q8_K, F16), F16 KV cache, 16-bit base log-probabilities: "
                                   "the numbers llama-perplexity prints.\nExact: what the weights alone cost.")
        nums.addStretch(1)
        form.addRow("Prompt", self.prompt_edit)
        form.addRow("Calibration", self.calib_combo)
        form.addRow("Evaluation", self.eval_combo)  # its own row: the numbers' row is full in a narrow pane
        form.addRow(nums)

        self.run_button = QPushButton("Run", self.setup)
        self.run_button.setToolTip("Compare the chosen levels with the base (in the background)")
        self.run_button.clicked.connect(self.run)
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel", self.setup)
        self.cancel_button.setToolTip("Stop the comparison (Esc)")
        self.cancel_button.clicked.connect(self.cancel)
        self.overall = QProgressBar(self.setup)
        self.overall.setTextVisible(False)
        self.overall.setMaximumHeight(12)
        self.status = QLabel(self.setup)
        self.status.setWordWrap(True)  # a failure's whole sentence is read, not cut at the pane's edge
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.overall, 1)
        buttons.addWidget(self.status, 2)
        form.addRow(buttons)
        self.base_note = QLabel(settings)  # the base is a quantized file's weights: say what that means
        self.base_note.setWordWrap(True)
        self.base_note.setStyleSheet("color: #8a5a00;")
        self.base_note.setVisible(False)
        form.addRow(self.base_note)

        row = QHBoxLayout(self.setup)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(levels, 2)
        row.addWidget(settings, 3)
        self._setup_row, self._setup_boxes = row, (levels, settings)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Levels beside Settings when they fit, else Settings below (the pane stays usable when narrow)."""
        levels, settings = self._setup_boxes
        side_by_side = event.size().width() >= levels.minimumSizeHint().width() + settings.minimumSizeHint().width() + 40
        direction = QBoxLayout.Direction.LeftToRight if side_by_side else QBoxLayout.Direction.TopToBottom
        if self._setup_row.direction() != direction:
            self._setup_row.setDirection(direction)
        super().resizeEvent(event)

    def _build_results(self) -> None:
        self.results = QWidget(self)
        self.summary = QLabel(self.results)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.export_button = QToolButton(self.results)
        self.export_button.setText("Export")
        self.export_button.setToolTip("Save the comparison as CSV, JSON or Markdown")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.export_button)
        for fmt, text in (("csv", "CSV…"), ("json", "JSON…"), ("md", "Markdown…")):
            menu.addAction(text, lambda f=fmt: self.export_dialog(f))
        self.export_button.setMenu(menu)
        self.copy_button = QPushButton("Copy Markdown", self.results)
        self.copy_button.setToolTip("Put the comparison on the clipboard as a Markdown table")
        self.copy_button.clicked.connect(self.copy_markdown)
        head = QHBoxLayout()
        head.addWidget(self.summary, 1)
        head.addWidget(self.export_button, 0, Qt.AlignmentFlag.AlignTop)
        head.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)

        self.table_model = CompareTableModel(self)
        self.proxy = CompareProxy(self)
        self.proxy.setSourceModel(self.table_model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView(self.results)
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # the job's order (base first) until clicked
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setToolTip("Click a header to sort; hover a header for what it measures")

        self.plot = histogram_plot(self.results, "KL divergence per token (log scale)",
                                   "Per-token KL divergence of each level from the base, as a cumulative "
                                   "distribution: curves further left are closer to the base. Wheel to zoom.", 140)
        pi = self.plot.getPlotItem()
        pi.getAxis("left").setLabel("share of tokens ≤ x")
        pi.setLogMode(x=True, y=False)
        pal = self.palette()
        bg = pal.color(QPalette.ColorRole.Base)
        bg.setAlpha(190)
        # the legend sits above the curves: the y range leaves room over 1 (see _plot)
        self.legend = pi.addLegend(offset=(8, 4), labelTextColor=pal.color(QPalette.ColorRole.WindowText),
                                   brush=pg.mkBrush(bg), pen=pg.mkPen(pal.color(QPalette.ColorRole.Mid)),
                                   verSpacing=-6, colCount=2)
        style_plot(self.plot, pal)

        self.texts = QWidget(self.results)
        self.texts_layout = QHBoxLayout(self.texts)
        self.texts_layout.setContentsMargins(0, 0, 0, 0)
        self.texts_scroll = QScrollArea(self.results)
        self.texts_scroll.setWidgetResizable(True)
        self.texts_scroll.setWidget(self.texts)
        self.texts_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.prompt_label = QLabel(self.results)
        self.prompt_label.setTextFormat(Qt.TextFormat.RichText)
        self.prompt_label.setWordWrap(True)
        texts_box = QWidget(self.results)
        tl = QVBoxLayout(texts_box)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.setSpacing(2)
        tl.addWidget(self.prompt_label)
        tl.addWidget(self.texts_scroll, 1)
        self.texts_box = texts_box

        self.token_view = TokenKldView(self.results)
        self.gen_tokens = GeneratedTokensTable(self.results)
        self.views = QTabWidget(self.results)
        self.views.setDocumentMode(True)
        self.views.addTab(texts_box, "Generated text")
        self.views.addTab(self.gen_tokens, "Generated tokens")
        self.views.addTab(self.token_view, "Calibration tokens")
        self.views.setTabToolTip(0, "Each level's greedy continuation of the prompt, highlighted from its first "
                                    "difference from the base")
        self.views.setTabToolTip(1, "The continuations token by token, aligned under the base's")
        self.views.setTabToolTip(2, "The calibration text coloured by a level's KL divergence at each token; hover "
                                    "a token for the base's and the level's top 5 candidates")
        self.bottom = QSplitter(Qt.Orientation.Horizontal, self.results)
        self.bottom.addWidget(self.plot)
        self.bottom.addWidget(self.views)
        self.bottom.setStretchFactor(0, 2)
        self.bottom.setStretchFactor(1, 3)
        self.bottom.setSizes([400, 600])  # the plot keeps room for its legend beside the wide token views
        self.bottom.setChildrenCollapsible(False)
        self.splitter = QSplitter(Qt.Orientation.Vertical, self.results)
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(self.bottom)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        row = self.fontMetrics().height() + 6
        self.table.setMinimumHeight(3 * row)
        self.splitter.setSizes([6 * row + 8, 320])
        lay = QVBoxLayout(self.results)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(head)
        lay.addWidget(self.splitter, 1)

    def _fill_calibration(self) -> None:
        self.calib_combo.clear()
        self.calib_combo.addItem("Bundled text (prose, code, dialogue)", "bundled")
        if self.calibration is not None:
            path, text = self.calibration
            self.calib_combo.addItem(f"{Path(path).name} ({len(text):,} characters)", "file")
            self.calib_combo.setItemData(1, path, Qt.ItemDataRole.ToolTipRole)
        self.calib_combo.addItem("Choose file…", "choose")
        self.calib_combo.setCurrentIndex(1 if self.calibration is not None else 0)

    # -- input ------------------------------------------------------------------------------------------
    def set_model(self, model: Model | None, sizes: dict[str, tuple[int, float]] | None = None) -> None:
        """Another model (or none): the running job is cancelled and the results cleared."""
        self.cancel()
        self.model = model
        self.encoder = model is not None and _is_encoder(model)
        if model is not None and sizes is None:
            from ..widgets.plan_bar import preset_sizes

            sizes = preset_sizes(model)
        for p in self.pickers:
            p.set_sizes(sizes or {})
        self.clear()
        self._limit_context(model)
        self.setup.setVisible(model is not None)
        self.results.setVisible(False)
        self.hint.setVisible(model is None)
        self._set_running(False)
        warning = base_warning(model) if model is not None and not self.encoder else None
        self.base_note.setText(f"⚠ {warning[0].upper()}{warning[1:]}." if warning else "")
        self.base_note.setVisible(bool(warning))
        self._show_estimate()

    def _time_machine(self) -> None:
        from ..worker import lower_background_priority

        lower_background_priority()  # started by the GUI thread, this thread would share its priority
        machine_flops()
        try:
            self._flops_measured.emit()
        except RuntimeError:  # the view was closed meanwhile
            pass

    def _show_estimate(self) -> None:
        """The idle status line: what Run will take, roughly (the machine's matmul rate is timed once, off the
        GUI thread)."""
        if self.model is None or self.is_running():
            if self.model is None:
                self.status.setText("")
            return
        if not _FLOPS:
            if not getattr(self, "_timing", False):
                self._timing = True
                threading.Thread(target=self._time_machine, daemon=True, name="compare-flops").start()
            self.status.setText("Choose the levels and press Run.")
            return
        n_levels = len(self.chosen())
        if self.encoder or not n_levels:
            self.status.setText("Choose the levels and press Run.")
            return
        windows = self.windows_spin.value()
        n_ctx = self.ctx_spin.value()
        text_tokens = len(self.calibration[1]) // 4 if self.calibration else 3500  # ~4 characters a token
        n_tokens = min(windows * n_ctx, text_tokens) if windows else text_tokens
        seconds = estimate_seconds(self.model, n_levels, n_tokens=n_tokens, max_tokens=self.tokens_spin.value())
        self.status.setText(f"Choose the levels and press Run (about {_duration(seconds)}).")

    def _limit_context(self, model: Model | None) -> None:
        """The context spin box stops at the model's trained context (read from the metadata already loaded)."""
        limit = 32768
        if model is not None:
            arch = model.meta("general.architecture")
            for key in ("max_position_embeddings", "n_positions", f"{arch}.context_length", "n_ctx"):
                value = model.meta(key)
                if isinstance(value, int) and not isinstance(value, bool) and value >= self.ctx_spin.minimum():
                    limit = min(limit, value)
                    break
        self.ctx_spin.setMaximum(limit)
        self.ctx_spin.setToolTip("Tokens per window; the second half of each window is scored (as llama-perplexity)"
                                 + (f"; at most the model's context of {limit} tokens" if limit < 32768 else ""))

    def set_plan(self, plan: Plan | None) -> None:
        """The window's current plan (the "Current plan" level; a copy is taken when a run starts)."""
        self.plan = plan

    def set_levels(self, levels) -> None:
        """Fill the level rows (preset names, "current", plan file paths, None for an empty row)."""
        levels = list(levels)[:MAX_LEVELS]
        levels += [None] * (MAX_LEVELS - len(levels))
        for p, lv in zip(self.pickers, levels):
            p.set_level(lv)

    def set_calibration(self, path: str | None) -> None:
        """Use the text of ``path`` (read on the worker) or, with None, the bundled text."""
        if path is None:
            self.calibration = None
            self._fill_calibration()
            return
        self.status.setText(f"Reading {Path(path).name}…")
        self.calib_worker.start(read_text_job, str(path))

    def _on_calib_activated(self, index: int) -> None:
        what = self.calib_combo.itemData(index)
        if what == "bundled":
            self.calibration = None
            self._fill_calibration()
        elif what == "choose":
            self._fill_calibration()  # back to the current choice until a file is read
            path, _ = QFileDialog.getOpenFileName(self, "Calibration Text", self.last_dir,
                                                  "Text (*.txt *.md *.py *.json);;All files (*)")
            if path:
                self.last_dir = os.path.dirname(path)
                self.set_calibration(path)

    # -- running ------------------------------------------------------------------------------------------
    def chosen(self) -> list[tuple[int, Level]]:
        """``(row, level)`` of the rows with a level."""
        return [(i, p.level()) for i, p in enumerate(self.pickers) if p.level().kind != "none"]

    def _level_arg(self, level: Level):
        if level.kind == "preset":
            return str(level.value)
        if level.kind == "file":
            return str(level.value)  # read by the job (resolve_level) on the worker
        if level.kind == "current":
            if self.plan is None:
                raise WorkbenchError("there is no current plan for this model")
            return self.plan.copy()
        raise WorkbenchError(f"cannot compare the level {level.label!r}")

    def run(self) -> int | None:
        """Start the comparison of the chosen levels; returns the job id (None when nothing can run)."""
        if self.model is None:
            return None
        chosen = self.chosen()
        if not chosen:
            self.status.setText("Choose at least one level.")
            return None
        try:
            levels = [self._level_arg(lv) for _i, lv in chosen]
        except WorkbenchError as exc:
            self.status.setText(str(exc))
            return None
        self.clear()
        self._cancel.set()  # the previous job, if any
        self._cancel = threading.Event()
        self._rows_running = [i for i, _lv in chosen]
        prompt = self.prompt_edit.text()
        kwargs = dict(base=self.base_combo.currentText(), text=self.calibration[1] if self.calibration else None,
                      prompt=prompt if prompt.strip() else None, n_ctx=self.ctx_spin.value(),
                      max_windows=self.windows_spin.value() or None, max_tokens=self.tokens_spin.value(),
                      chat=self.chat_box.isChecked(), eval_mode=self.eval_combo.currentData(),
                      cancel=self._cancel.is_set)
        budget = self.memory_budget()
        if budget is not None:
            kwargs["memory_budget"] = budget
        self._set_running(True)
        self.status.setToolTip("")
        self._started = time.monotonic()
        self.status.setText("Starting…")
        return self.worker.start(self.job, self.model, levels, **kwargs)

    def cancel(self) -> None:
        self._cancel.set()
        if self.worker.is_busy():
            self.worker.cancel()  # emits cancelled: the view goes idle at once

    def is_running(self) -> bool:
        return self.worker.is_busy()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running and self.model is not None)
        self.cancel_button.setEnabled(running)
        for w in (*self.pickers, self.base_combo, self.calib_combo):
            w.setEnabled(not running)
        for w in (self.prompt_edit, self.ctx_spin, self.windows_spin, self.tokens_spin, self.chat_box):
            w.setEnabled(not running and not self.encoder)  # a sentence encoder embeds sentences: no windows, no text
        if not running:
            self.overall.setRange(0, 1)
            self.overall.setValue(0)
        else:
            self.overall.setRange(0, 0)  # busy until the first progress
            for b in (self.base_bar, *self.bars):
                b.setValue(0)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        step, within = divmod(done, PROGRESS_STEPS)
        bars = [self.base_bar] + [self.bars[i] for i in self._rows_running]
        for i, bar in enumerate(bars):
            bar.setValue(PROGRESS_STEPS if i < step else within if i == step else 0)
        if total > 0:
            self.overall.setRange(0, total)
            self.overall.setValue(done)
        self.status.setText(message)

    def _on_result(self, result: CompareResult) -> None:
        self._set_running(False)
        for bar in [self.base_bar] + [self.bars[i] for i in self._rows_running]:
            bar.setValue(PROGRESS_STEPS)
        self.status.setText(f"Done in {time.monotonic() - self._started:.1f} s.")
        self.show_result(result)

    def _on_error(self, message: str) -> None:
        self._set_running(False)
        self.status.setText("Comparison failed: " + message)
        self.status.setToolTip(message)  # the label shows one line

    def _on_cancelled(self) -> None:
        self._cancel.set()  # also when cancelled from elsewhere (Esc in the status bar): the core job stops too
        self._set_running(False)
        for b in (self.base_bar, *self.bars):
            b.setValue(0)
        self.clear()
        if self.model is not None:
            self.status.setText("Cancelled.")

    # -- results ------------------------------------------------------------------------------------------
    def clear(self) -> None:
        self.result = None
        self.table_model.set_result(None)
        self.legend.clear()
        for c in self.curves:
            self.plot.removeItem(c)
        self.curves = []
        for col in self.columns:
            self.texts_layout.removeWidget(col)
            col.deleteLater()
        self.columns = []
        self.summary.setText("")
        self.prompt_label.setText("")
        self.token_view.set_result(None)
        self.gen_tokens.set_result(None)
        self.results.setVisible(False)
        self.export_button.setEnabled(False)
        self.copy_button.setEnabled(False)

    def level_colors(self) -> list[QColor]:
        """Colours of the rows of the last run, in the result's order (base first)."""
        return [BASE_COLOR] + [LEVEL_COLORS[i] for i in self._rows_running]

    def show_result(self, result: CompareResult) -> None:
        self.clear()
        self.result = result
        colors = self.level_colors()
        if len(colors) != 1 + len(result.levels):  # a result not from a run of this view (tests)
            colors = [BASE_COLOR] + LEVEL_COLORS[:len(result.levels)]
        self.table_model.set_result(result, colors)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
        plan_differs = any(r.plan != r.label for r in [result.base, *result.levels])
        self.table.setColumnHidden(self.table_model.column("plan"), not plan_differs)
        embedding = result.kind == "embedding"
        self.bottom.setVisible(not embedding)
        if embedding:
            self.summary.setText(f"<b>{result.architecture}</b> sentence encoder: embeddings of the calibration "
                                 f"sentences compared with the base (<b>{_esc(result.base.label)}</b>) by cosine "
                                 f"similarity.")
        else:
            self.summary.setText(
                f"Base <b>{_esc(result.base.label)}</b> · {result.n_tokens_scored:,} tokens scored in "
                f"{result.n_windows} window{'s' if result.n_windows != 1 else ''} of {result.n_ctx} "
                f"(the second half of each), evaluated {_esc(result.eval_label)}")
            self._plot(result, colors)
            self._texts(result, colors)
            self.token_view.set_result(result)
            self.gen_tokens.set_result(result, divergence_color(self.palette()))
            self.views.setTabVisible(0, result.prompt is not None)
            self.views.setTabVisible(1, result.prompt is not None)
            if result.prompt is None:
                self.views.setCurrentWidget(self.token_view)
        self.results.setVisible(True)
        self.export_button.setEnabled(True)
        self.copy_button.setEnabled(True)
        self.compared.emit(result)

    def _plot(self, result: CompareResult, colors: list[QColor]) -> None:
        pal = self.plot.palette()
        for r, color in zip(result.levels, colors[1:]):
            v = np.asarray(r.kld_values, dtype=np.float64)
            if v.size == 0:
                continue
            idx = np.unique(np.linspace(0, v.size - 1, min(v.size, CDF_POINTS)).round().astype(np.int64))
            x = np.maximum(v[idx], KLD_FLOOR)
            y = (idx + 1) / v.size
            curve = self.plot.plot(x, y, pen=pg.mkPen(curve_color(color, pal), width=2), name=r.label)
            self.curves.append(curve)
        pi = self.plot.getPlotItem()
        pi.enableAutoRange(x=True)
        rows = (len(self.curves) + 1) // 2
        pi.setYRange(0.0, 1.0 + 0.12 * max(rows, 1), padding=0.02)  # room for the legend over the curves

    def _texts(self, result: CompareResult, colors: list[QColor]) -> None:
        has_text = result.prompt is not None
        if not has_text:
            return
        self.prompt_label.setText(f"Prompt: <i>{_esc(result.prompt)}</i> → greedy continuation of each level "
                                  f"(<span style='background:{divergence_color(self.palette()).name()}'>"
                                  f"highlighted</span>: from the first token that differs from the base's)")
        for i, (r, color) in enumerate(zip([result.base, *result.levels], colors)):
            col = TextColumn(r, color, i == 0, self.texts)
            self.texts_layout.addWidget(col, 1)
            self.columns.append(col)

    # -- export ---------------------------------------------------------------------------------------------
    def export_text(self, fmt: str) -> str:
        if self.result is None:
            raise WorkbenchError("there is no comparison to export")
        return {"csv": self.result.to_csv, "json": self.result.to_json, "md": self.result.to_markdown}[fmt]()

    def export(self, fmt: str, path: str | os.PathLike) -> int:
        """Write the result as ``fmt`` ("csv", "json" or "md") to ``path`` on the worker; ``exported(path)``."""
        text = self.export_text(fmt)
        self.status.setText(f"Writing {os.path.basename(os.fspath(path))}…")
        return self.export_worker.start(write_text_job, os.fspath(path), text)

    def export_dialog(self, fmt: str) -> None:
        if self.result is None:
            return
        ext, filt = {"csv": ("csv", "CSV (*.csv)"), "json": ("json", "JSON (*.json)"),
                     "md": ("md", "Markdown (*.md)")}[fmt]
        stem = Path(self.result.model).stem or "model"
        start = os.path.join(self.last_dir or os.path.dirname(self.result.model), f"{stem}-compare.{ext}")
        path, _ = QFileDialog.getSaveFileName(self, "Export Comparison", start, filt)
        if path:
            self.last_dir = os.path.dirname(path)
            self.export(fmt, path)

    def copy_markdown(self) -> None:
        if self.result is not None:
            QGuiApplication.clipboard().setText(self.result.to_markdown())
            self.status.setText("Copied the comparison as Markdown.")

    def _on_calibration_read(self, value: tuple[str, str]) -> None:
        self.calibration = value
        self._fill_calibration()
        self.status.setText(f"Calibration text: {Path(value[0]).name} ({len(value[1]):,} characters)")

    def _on_exported(self, path: str) -> None:
        self.status.setText(f"Saved {path}")
        self.exported.emit(path)

    def _on_io_error(self, message: str) -> None:
        self.status.setText(message)

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        self._cancel.set()
        ok = self.worker.shutdown(timeout_ms)
        ok = self.calib_worker.shutdown(timeout_ms) and ok
        return self.export_worker.shutdown(timeout_ms) and ok


def _duration(seconds: float) -> str:
    """"40 s", "3 min", "1 h 20 min": a rough duration, rounded to what a user plans with."""
    if seconds < 60:
        return f"{max(5, int(round(seconds / 5.0)) * 5)} s"
    minutes = int(round(seconds / 60.0))
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
