"""The inference memory budget setting (Edit ▸ Preferences…): how much memory the Generate and Compare jobs
may fill with dequantized layers; the weights themselves stay in their level's bytes.  Kept in QSettings."""
from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from workbench.infer.weights import default_memory_budget
from workbench.units import human_bytes

KEY = "inference/memory_budget_mb"  # 0: automatic (half the available memory)
MAX_MB = 1 << 20  # 1 TiB


def budget_mb(settings: QSettings) -> int:
    """The stored setting in MiB (0: automatic); a damaged value counts as automatic."""
    try:
        value = int(settings.value(KEY, 0))
    except (TypeError, ValueError):
        return 0
    return value if 0 <= value <= MAX_MB else 0


def memory_budget(settings: QSettings) -> int:
    """The budget in bytes for a generate or compare job."""
    mb = budget_mb(settings)
    return mb << 20 if mb else default_memory_budget()


class PreferencesDialog(QDialog):
    """Application preferences: the inference memory budget."""

    def __init__(self, settings: QSettings, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Preferences")
        self.budget_spin = QSpinBox(self)
        self.budget_spin.setRange(0, MAX_MB)
        self.budget_spin.setSingleStep(256)
        self.budget_spin.setSuffix(" MiB")
        self.budget_spin.setSpecialValueText(f"Automatic ({human_bytes(default_memory_budget())})")
        self.budget_spin.setValue(budget_mb(settings))
        self.budget_spin.setToolTip("Memory the Generate and Compare jobs may fill with dequantized layers (the "
                                    "weights stay in their level's bytes). Automatic: half the available memory. "
                                    "A budget of the model's float32 size or more runs at full speed.")
        note = QLabel("Used by the next Generate or Compare job.", self)
        note.setEnabled(False)
        form = QFormLayout()
        form.addRow("Inference &memory budget:", self.budget_spin)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def accept(self) -> None:
        self.settings.setValue(KEY, int(self.budget_spin.value()))
        super().accept()
