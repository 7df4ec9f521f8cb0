"""A grid of checkable buttons, one per quantization type (the error view's type picker)."""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor, QFont, QIcon, QPixmap
from PySide6.QtWidgets import QToolButton, QWidget

from .flow_layout import FlowLayout
from .plots import curve_color

from workbench.plan import TYPES

# one fixed colour per type, so a type keeps its colour from tensor to tensor (curves and table swatches);
# the types compared most often (Q8_0, Q6_K, Q5_K/Q5_0, Q4_K/Q4_0, Q3_K, Q2_K) get the most distinct ones
TYPE_COLORS: dict[str, QColor] = {t: QColor(c) for t, c in {
    "F32": "#7f7f7f", "F16": "#637939", "BF16": "#843c39", "Q8_0": "#1f77b4", "Q6_K": "#17becf",
    "Q5_K": "#2ca02c", "Q5_1": "#8c6d31", "Q5_0": "#9467bd", "Q4_K": "#ff7f0e", "Q4_1": "#8c564b",
    "Q4_0": "#d62728", "IQ4_NL": "#e377c2", "IQ4_XS": "#7b4173", "Q3_K": "#bcbd22", "Q2_K": "#222222"}.items()}
for _t in TYPES:
    TYPE_COLORS.setdefault(_t, QColor("#555555"))


def swatch(color: QColor, size: int = 10) -> QIcon:
    pm = QPixmap(size, size)
    pm.fill(color)
    return QIcon(pm)


class TypeToggles(QWidget):
    """``toggled()`` when the user changes the checked set; ``checked()`` lists the checked enabled types
    in :data:`TYPES` order.  Types whose block does not fit the tensor's rows are disabled.  The buttons
    wrap to the width available."""

    toggled = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.buttons: dict[str, QToolButton] = {}
        flow = FlowLayout(self, spacing=3)
        width = self.fontMetrics().horizontalAdvance("IQ4_XS") + 30
        for t in TYPES:
            b = QToolButton(self)
            b.setText(t)
            b.setIcon(swatch(curve_color(TYPE_COLORS[t], self.palette())))  # as its curve is drawn
            b.setCheckable(True)
            b.setMinimumWidth(width)
            b.setAutoRaise(False)
            b.setToolButtonStyle(b.toolButtonStyle().ToolButtonTextBesideIcon)
            b.clicked.connect(lambda _c=False: self.toggled.emit())
            self.buttons[t] = b
            flow.addWidget(b)
        self._bold = QFont(self.font())
        self._bold.setBold(True)

    def configure(self, fits: set[str], checked: list[str], planned: str | None) -> None:
        """Enable the fitting types, check ``checked`` (without emitting) and bold the planned type."""
        for t, b in self.buttons.items():
            b.setEnabled(t in fits)
            b.setChecked(t in checked and t in fits)
            b.setFont(self._bold if t == planned else self.font())
            tip = f"Show the error of {t}"
            if t == planned:
                tip += " (the planned type)"
            if t not in fits:
                tip = f"{t}'s block does not fit this tensor's rows"
            b.setToolTip(tip)

    def checked(self) -> list[str]:
        return [t for t, b in self.buttons.items() if b.isChecked() and b.isEnabled()]
