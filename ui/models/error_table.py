"""A table model over core ``ErrorStats`` results (error view and model analysis share it)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from PySide6.QtCore import QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel

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


class ErrorStatsModel(QStandardItemModel):
    """Rows are ``(label, ErrorStats)``; ``label`` fills the "plan" column.  ``colors`` (optional, per row)
    paint a swatch in the type column (the error view's curve colours).

    Every cell is a ``QStandardItem`` filled once when its row arrives, and no method Qt calls while painting,
    sorting or filtering is overridden here: a repaint never calls into Python, so it never waits for the
    interpreter lock a running analysis holds (a Python ``data()`` took it a hundred times per repaint)."""

    def __init__(self, columns: Sequence[str], parent=None):
        super().__init__(0, len(columns), parent)
        self.columns = list(columns)
        self.rows: list[tuple[str, ErrorStats]] = []
        self.colors: list[QColor] = []
        right = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for c, key in enumerate(self.columns):
            head = QStandardItem(COLUMNS[key][0])
            head.setToolTip(COLUMNS[key][1])
            if key in NUMERIC:
                head.setData(right, Qt.ItemDataRole.TextAlignmentRole)
            self.setHorizontalHeaderItem(c, head)

    def set_rows(self, rows: Sequence[tuple[str, ErrorStats]], colors: Sequence[QColor] = ()) -> None:
        self.rows = list(rows)
        self.colors = list(colors)
        self.setRowCount(0)
        self._add(self.rows, self.colors)

    def append_rows(self, rows: Sequence[tuple[str, ErrorStats]]) -> None:
        """Add rows at the end (streamed results; no colours)."""
        if not rows:
            return
        self.rows.extend(rows)
        self._add(rows, ())

    def _add(self, rows: Sequence[tuple[str, ErrorStats]], colors: Sequence[QColor]) -> None:
        root = self.invisibleRootItem()
        for i, (label, s) in enumerate(rows):
            root.appendRow(self._cells(label, s, colors[i] if i < len(colors) else None))

    def _cells(self, label: str, s: ErrorStats, color: QColor | None) -> list[QStandardItem]:
        tip = f"{s.name} → {s.qtype}\n{grouped(s.n)} values · {grouped(s.nbytes)} bytes"
        right = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        cells = []
        for key in self.columns:
            v = _value(label, s, key)
            item = QStandardItem(_text(key, v))
            item.setEditable(False)
            item.setData(_sort_key(v), SORT_ROLE)
            item.setData(s, STATS_ROLE)
            if key in NUMERIC:
                item.setToolTip(f"{tip}\n{COLUMNS[key][0]}: {float_text(v)}")
                item.setData(right, Qt.ItemDataRole.TextAlignmentRole)
            else:
                item.setToolTip(tip)
            if key == "type" and color is not None:
                item.setData(color, Qt.ItemDataRole.DecorationRole)
            cells.append(item)
        return cells

    def column(self, key: str) -> int:
        return self.columns.index(key)

    def value(self, row: int, key: str) -> Any:
        label, s = self.rows[row]
        return _value(label, s, key)


def _value(label: str, s: ErrorStats, key: str) -> Any:
    return {"plan": label, "tensor": s.name, "type": s.qtype, "bpw": s.bits_per_weight, "size": s.nbytes,
            "rmse": s.rmse, "max_abs": s.max_abs, "rel_rmse": s.rel_rmse, "snr_db": s.snr_db,
            "cosine": s.cosine}[key]


def _text(key: str, v: Any) -> str:
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
    return str(v)


def _sort_key(v: Any) -> Any:
    """What the proxy compares (in C++): the value itself; NaN (which compares with nothing) as +inf, last."""
    return math.inf if isinstance(v, float) and math.isnan(v) else v


class ErrorStatsProxy(QSortFilterProxyModel):
    """Sorts on real numbers (Qt compares :data:`SORT_ROLE` in C++), filters on the tensor name."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
