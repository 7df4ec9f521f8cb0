"""A table model over core ``ErrorStats`` results (error view and model analysis share it)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor

from workbench.analysis import ErrorStats

from ..formatting import float_text, grouped, human_bytes

SORT_ROLE = Qt.ItemDataRole.UserRole + 1    # numbers (inf/nan kept), never display strings
STATS_ROLE = Qt.ItemDataRole.UserRole + 2   # the row's ErrorStats

# key -> (header, tooltip)
COLUMNS: dict[str, tuple[str, str]] = {
    "plan": ("Plan", "Preset (or the current plan) this row was computed for"),
    "tensor": ("Tensor", "Tensor name"),
    "type": ("Type", "Quantization type"),
    "bpw": ("bpw", "Bits per weight of the type (block scales included)"),
    "size": ("Size", "Size of the tensor in this type"),
    "rmse": ("RMSE", "Root-mean-square error of the dequantized values"),
    "max_abs": ("Max |err|", "Largest absolute error of any value"),
    "rel_rmse": ("Rel. RMSE", "RMSE divided by the RMS of the original values"),
    "snr_db": ("SNR dB", "Signal-to-noise ratio: 10·log10(signal power / error power); higher is better"),
    "cosine": ("Cosine", "Cosine similarity of the original and dequantized tensor"),
}
NUMERIC = ("bpw", "size", "rmse", "max_abs", "rel_rmse", "snr_db", "cosine")


def db_text(x: float) -> str:
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return "–" if math.isnan(x) else f"{x:.2f}"


class ErrorStatsModel(QAbstractTableModel):
    """Rows are ``(label, ErrorStats)``; ``label`` fills the "plan" column.  ``colors`` (optional, per row)
    paint a swatch in the type column (the error view's curve colours)."""

    def __init__(self, columns: Sequence[str], parent=None):
        super().__init__(parent)
        self.columns = list(columns)
        self.rows: list[tuple[str, ErrorStats]] = []
        self.colors: list[QColor] = []

    def set_rows(self, rows: Sequence[tuple[str, ErrorStats]], colors: Sequence[QColor] = ()) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.colors = list(colors)
        self.endResetModel()

    def append_rows(self, rows: Sequence[tuple[str, ErrorStats]]) -> None:
        """Add rows at the end (streamed results; no colours)."""
        if not rows:
            return
        self.beginInsertRows(QModelIndex(), len(self.rows), len(self.rows) + len(rows) - 1)
        self.rows.extend(rows)
        self.endInsertRows()

    def column(self, key: str) -> int:
        return self.columns.index(key)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.columns)

    def value(self, row: int, key: str) -> Any:
        label, s = self.rows[row]
        return {"plan": label, "tensor": s.name, "type": s.qtype, "bpw": s.bits_per_weight, "size": s.nbytes,
                "rmse": s.rmse, "max_abs": s.max_abs, "rel_rmse": s.rel_rmse, "snr_db": s.snr_db,
                "cosine": s.cosine}[key]

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        key = self.columns[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            v = self.value(index.row(), key)
            if key == "bpw":
                return f"{v:.2f}"
            if key == "size":
                return human_bytes(v)
            if key == "snr_db":
                return db_text(v)
            if key == "cosine":
                return f"{v:.6f}"
            if key in ("rmse", "max_abs", "rel_rmse"):
                return f"{v:.4g}"  # four digits: the full value is one hover away (tooltip)
            return v
        if role == SORT_ROLE:
            return self.value(index.row(), key)
        if role == STATS_ROLE:
            return self.rows[index.row()][1]
        if role == Qt.ItemDataRole.ToolTipRole:
            s = self.rows[index.row()][1]
            exact = f"\n{COLUMNS[key][0]}: {float_text(self.value(index.row(), key))}" if key in NUMERIC else ""
            return f"{s.name} → {s.qtype}\n{grouped(s.n)} values · {grouped(s.nbytes)} bytes{exact}"
        if role == Qt.ItemDataRole.TextAlignmentRole and key in NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.DecorationRole and key == "type" and index.row() < len(self.colors):
            return self.colors[index.row()]
        return None

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        key = self.columns[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[key][0]
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMNS[key][1]
        if role == Qt.ItemDataRole.TextAlignmentRole and key in NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class ErrorStatsProxy(QSortFilterProxyModel):
    """Sorts on real numbers (``nan`` last), filters on the tensor name."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

    def lessThan(self, left: QModelIndex, right: QModelIndex) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if isinstance(a, float) and isinstance(b, float):
            if math.isnan(a) or math.isnan(b):
                return not math.isnan(a) and math.isnan(b)
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)
