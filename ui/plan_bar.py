"""The bar above the tensor tree: preset picker (with each preset's size for this model), Rules…, Analyze…."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QPushButton, QTreeView, QWidget

from workbench import Model, WorkbenchError
from workbench.plan import PRESETS, Plan

from .formatting import human_bytes

PRESET_ROLE = Qt.ItemDataRole.UserRole + 1


def preset_sizes(model: Model) -> dict[str, tuple[int, float]]:
    """``preset -> (planned bytes, bits per weight)`` for this model (presets it cannot plan are left out)."""
    out = {}
    for preset in PRESETS:
        try:
            plan = Plan(model, preset)
            out[preset] = (plan.nbytes, plan.bits_per_weight)
        except WorkbenchError:
            continue
    return out


class PresetCombo(QComboBox):
    """Shows the preset name; its list also shows the size and bits per weight each preset gives the model."""

    preset_chosen = Signal(str)  # only on user choice, not when the plan is shown

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
        self.set_model(None)

    def set_model(self, model: Model | None) -> None:
        sizes = preset_sizes(model) if model is not None else {}
        self.sizes = sizes
        self.items.removeRows(0, self.items.rowCount())
        for preset in PRESETS:
            if model is not None and preset not in sizes:
                continue
            nbytes, bpw = sizes.get(preset, (None, None))
            row = [QStandardItem(preset), QStandardItem(human_bytes(nbytes) if nbytes is not None else ""),
                   QStandardItem(f"{bpw:.2f} bpw" if bpw is not None else "")]
            for it in row[1:]:
                it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            row[0].setData(preset, PRESET_ROLE)
            self.items.appendRow(row)
        view: QTreeView = self.view()  # type: ignore[assignment]
        for col in range(3):
            view.resizeColumnToContents(col)
        width = sum(view.columnWidth(c) for c in range(3)) + 40
        view.setMinimumWidth(width)

    def set_preset(self, preset: str | None) -> None:
        for row in range(self.count()):
            if self.itemData(row, PRESET_ROLE) == preset:
                self.setCurrentIndex(row)
                return
        self.setCurrentIndex(-1)


class PlanBar(QWidget):
    """``preset_chosen(str)``, ``rules_requested()``, ``analyze_requested()``."""

    preset_chosen = Signal(str)
    rules_requested = Signal()
    analyze_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.label = QLabel("&Plan:", self)
        self.preset = PresetCombo(self)
        self.label.setBuddy(self.preset)
        self.preset.preset_chosen.connect(self.preset_chosen)
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
