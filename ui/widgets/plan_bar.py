"""The bar above the tensor tree: preset picker (with each preset's size for this model), Rules…, Analyze…."""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QPushButton, QTreeView, QWidget

from workbench import Model, Progress, WorkbenchError
from workbench.plan import PRESETS, Plan

from ..formatting import human_bytes
from ..worker import Worker

PRESET_ROLE = Qt.ItemDataRole.UserRole + 1
SIZES_DELAY_MS = 250  # after a model is shown, before its preset sizes are computed (see PresetCombo)


def iter_preset_sizes(model: Model):
    """Job: ``preset -> (planned bytes, bits per weight)`` for this model (presets it cannot plan are left
    out), one Progress per preset.  A plan per preset is pure-Python work: it runs on a worker."""
    out = {}
    for i, preset in enumerate(PRESETS):
        yield Progress(i, len(PRESETS), f"Planning {preset}")
        try:
            plan = Plan(model, preset)
            out[preset] = (plan.nbytes, plan.bits_per_weight)
        except WorkbenchError:
            continue
    return out


def preset_sizes(model: Model) -> dict[str, tuple[int, float]]:
    """:func:`iter_preset_sizes` run to the end on the calling thread."""
    gen = iter_preset_sizes(model)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


class PresetCombo(QComboBox):
    """Shows the preset name; its list also shows the size and bits per weight each preset gives the model."""

    preset_chosen = Signal(str)  # only on user choice, not when the plan is shown
    sizes_ready = Signal(object)  # the model's preset sizes, computed on a worker after set_model

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.items = QStandardItemModel(0, 3, self)
        view = QTreeView(self)
        view.setHeaderHidden(True)
        view.setRootIsDecorated(False)
        view.setAllColumnsShowFocus(True)
        view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setModel(self.items)
        self.setView(view)
        self.setModelColumn(0)
        self.setToolTip("Preset: llama-quantize's per-tensor recipe (e.g. Q4_K_M raises attn_v and ffn_down of "
                        "some layers to Q6_K).\nThe list shows the planned size and bits per weight for this model.")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.activated.connect(lambda i: self.preset_chosen.emit(self.itemData(i, PRESET_ROLE)))
        self.worker = Worker(self, name="preset-sizes")
        self.worker.result.connect(self._on_sizes)
        self.sizes: dict[str, tuple[int, float]] = {}
        # The sizes job is pure Python: started a moment after the model is shown, so it does not compete for
        # the interpreter lock with the window laying out and painting the model it just opened.
        self._pending: Model | None = None
        self._delay = QTimer(self)
        self._delay.setSingleShot(True)
        self._delay.setInterval(SIZES_DELAY_MS)
        self._delay.timeout.connect(self._start_sizes)
        self._fill({}, None)

    def set_model(self, model: Model | None) -> None:
        """The presets at once; their sizes for ``model`` follow from a worker (``sizes_ready``)."""
        self.worker.cancel()
        self.sizes = {}
        self._fill({}, None)
        self._pending = model
        if model is not None:
            self._delay.start()
        else:
            self._delay.stop()

    def _start_sizes(self) -> None:
        model, self._pending = self._pending, None
        if model is not None:
            self.worker.start(iter_preset_sizes, model)

    def _on_sizes(self, sizes: dict) -> None:
        self.sizes = sizes
        self._fill(sizes, sizes)
        self.sizes_ready.emit(sizes)

    def _fill(self, sizes: dict, only: dict | None) -> None:
        """Rebuild the list in a detached model, then swap it in (one reset instead of a resize per row);
        ``only``: keep just these presets (the ones the model can be planned with)."""
        current = self.currentData(PRESET_ROLE)
        items = QStandardItemModel(0, 3, self)
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for preset in PRESETS:
            if only is not None and preset not in only:
                continue
            nbytes, bpw = sizes.get(preset, (None, None))
            row = [QStandardItem(preset), QStandardItem(human_bytes(nbytes) if nbytes is not None else ""),
                   QStandardItem(f"{bpw:.2f} bpw" if bpw is not None else "")]
            for it in row[1:]:
                it.setTextAlignment(right)
            row[0].setData(preset, PRESET_ROLE)
            items.appendRow(row)
        self.items = items  # the combo deletes the old model (its child) in setModel
        blocked = self.blockSignals(True)  # a swap is not a user's choice nor a change of plan
        try:
            self.setModel(items)
            self.setModelColumn(0)
            self.set_preset(current)
        finally:
            self.blockSignals(blocked)
        view: QTreeView = self.view()  # type: ignore[assignment]
        fm = view.fontMetrics()
        widths = [max((fm.horizontalAdvance(items.item(r, c).text()) for r in range(items.rowCount())), default=0)
                  + 16 for c in range(3)]
        for col, w in enumerate(widths):
            view.setColumnWidth(col, w)
        view.setMinimumWidth(sum(widths) + 40)

    def set_preset(self, preset: str | None) -> None:
        for row in range(self.count()):
            if self.itemData(row, PRESET_ROLE) == preset:
                self.setCurrentIndex(row)
                return
        self.setCurrentIndex(-1)


class PlanBar(QWidget):
    """``preset_chosen(str)``, ``rules_requested()``, ``analyze_requested()``."""

    preset_chosen = Signal(str)
    sizes_ready = Signal(object)  # ``preset -> (bytes, bpw)`` once computed for the model set
    rules_requested = Signal()
    analyze_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.label = QLabel("&Plan:", self)
        self.preset = PresetCombo(self)
        self.label.setBuddy(self.preset)
        self.preset.preset_chosen.connect(self.preset_chosen)
        self.preset.sizes_ready.connect(self.sizes_ready)
        self.detail = QLabel(self)
        self.detail.setToolTip("Rules and overrides on top of the preset (Edit ▸ Rules…, or the Plan column)")
        self.rules_button = QPushButton("Rules…", self)
        self.rules_button.setToolTip("Regex rules that choose a type for matching tensors (like llama-quantize "
                                     "--tensor-type)")
        self.rules_button.clicked.connect(self.rules_requested)
        self.analyze_button = QPushButton("Analyze…", self)
        self.analyze_button.setToolTip("Measure every tensor's quantization error under the plan or presets")
        self.analyze_button.clicked.connect(self.analyze_requested)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)
        lay.addWidget(self.label)
        lay.addWidget(self.preset)
        lay.addWidget(self.detail, 1)
        lay.addWidget(self.rules_button)
        lay.addWidget(self.analyze_button)
        self.show_plan(None)

    def set_model(self, model: Model | None) -> None:
        self.preset.set_model(model)

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        self.preset._delay.stop()  # no job starts after this
        self.preset._pending = None
        return self.preset.worker.shutdown(timeout_ms)

    @property
    def preset_sizes(self) -> dict[str, tuple[int, float]]:
        """``preset -> (bytes, bits per weight)`` for the model shown."""
        return self.preset.sizes

    def show_plan(self, plan: Plan | None) -> None:
        self.preset.set_preset(plan.preset if plan is not None else None)
        for w in (self.preset, self.rules_button, self.analyze_button):
            w.setEnabled(plan is not None)
        parts = []
        if plan is not None and plan.rules:
            parts.append(f"{len(plan.rules)} rule{'s' if len(plan.rules) != 1 else ''}")
        if plan is not None and plan.overrides:
            parts.append(f"{len(plan.overrides)} override{'s' if len(plan.overrides) != 1 else ''}")
        self.detail.setText(("+ " + ", ".join(parts)) if parts else "")
        self.detail.setToolTip("Rules and overrides on top of the preset (Edit ▸ Rules…, or the Plan column)")

    def show_unavailable(self, reason: str) -> None:
        """No plan for this model (e.g. a LoRA adapter): say why where the plan's details would be."""
        self.show_plan(None)
        self.detail.setText(reason)
        self.detail.setToolTip(reason)
