"""A table model over an importance matrix's per-tensor statistics (core ``TensorStats``), with llama-imatrix's
columns and precision; it sorts by number (the sort role), filters by tensor name."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt

from workbench.optimize.imatrix_stats import TensorStats

SORT_ROLE = Qt.ItemDataRole.UserRole + 1    # numbers, never display strings
STATS_ROLE = Qt.ItemDataRole.UserRole + 2   # the row's TensorStats

# key -> (header, tooltip)
COLUMNS: dict[str, tuple[str, str]] = {
    "name": ("Name", "The tensor's GGUF name"),
    "layer": ("Layer", "The block the tensor belongs to (– outside the blocks)"),
    "kind": ("Tensor", "The tensor kind (the name part before .weight)"),
    "sum": ("Σ(Act²)", "Sum over the columns of the mean squared input activation (per token)"),
    "min": ("Min", "Smallest mean squared activation of a column"),
    "max": ("Max", "Largest mean squared activation of a column"),
    "mean": ("μ", "Mean of the columns' mean squared activations"),
    "std": ("σ", "Standard deviation of the columns' mean squared activations"),
    "active": ("% Active", "Share of columns whose mean squared activation is above 1e-5"),
    "n": ("N", "Columns (times the experts that saw tokens, for a MoE tensor)"),
    "entropy": ("Entropy", "Entropy (bits) of the activations normalized to sum 1: high = spread evenly"),
    "entropy_norm": ("E (norm)", "Entropy divided by its maximum, log2 N"),
    "zd": ("ZD", "Share of columns more than one σ above μ (llama-imatrix's ZD score)"),
    "cossim": ("CosSim", "Cosine similarity to the same tensor in the previous layer"),
}
NUMERIC = ("sum", "min", "max", "mean", "std", "active", "n", "entropy", "entropy_norm", "zd", "cossim")


def cell_text(t: TensorStats, key: str) -> str:
    """A cell as llama-imatrix prints it (the percentages are float32 products, as there)."""
    v = getattr(t, key)
    if key in ("name", "layer", "kind"):
        return str(v)
    if key == "n":
        return f"{v:,}"
    if key in ("active", "zd"):
        return f"{100 * np.float32(v):.2f}%"
    if key == "entropy_norm":
        return f"{v:.2f}%"
    if key in ("min", "max", "entropy", "cossim"):
        return f"{v:.4f}"
    return f"{v:,.2f}"


class ImatrixStatsModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.columns = list(COLUMNS)
        self.rows: list[TensorStats] = []
        self._text: list[list[str]] = []

    def column(self, key: str) -> int:
        return self.columns.index(key)

    def set_rows(self, rows: Sequence[TensorStats]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self._text = [[cell_text(t, k) for k in self.columns] for t in self.rows]  # once, not per paint
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation, role=Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self.columns):
            return None
        header, tip = COLUMNS[self.columns[section]]
        if role == Qt.ItemDataRole.DisplayRole:
            return header
        if role == Qt.ItemDataRole.ToolTipRole:
            return tip
        return None

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        t, key = self.rows[index.row()], self.columns[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text[index.row()][index.column()]
        if role == SORT_ROLE:
            if key == "layer":
                return t.block
            return getattr(t, key)
        if role == STATS_ROLE:
            return t
        if role == Qt.ItemDataRole.TextAlignmentRole and key in NUMERIC + ("layer",):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole and key == "name":
            return f"{t.name} ({t.n_experts} expert{'s' if t.n_experts != 1 else ''})" if t.n_experts > 1 else t.name
        return None


class ImatrixStatsProxy(QSortFilterProxyModel):
    """Sorts by :data:`SORT_ROLE`, filters on the name column."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterKeyColumn(0)
