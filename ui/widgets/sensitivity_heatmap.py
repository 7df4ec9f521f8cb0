"""The sensitivity heatmap of the Optimize tab: layers (rows) x tensor kinds (columns).

Each cell is one group (``blk.3.attn_v``); its colour is what the group adds to the mean KLD at its *planned*
type (``table.value(group, planned type)``, log colour scale: pale = harmless, dark red = hurts), and its text
is the planned type.  Right-click a cell (or press + / -) to raise or lower the group's type to the next type with
more / fewer bits among the table's types that fit every tensor of the group; ``change_requested(tensors, type)``
asks the window to override those tensors (one undoable step).
"""
from __future__ import annotations

import math

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPoint, Qt, Signal
from PySide6.QtGui import QAction, QColor, QFont, QKeySequence
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QMenu, QTableView, QVBoxLayout, QWidget, QLabel

from workbench.optimize.sensitivity import SensitivityTable, group_layer_kind
from workbench.plan import Plan, row_fits, tensor_nbytes

from .size_kld_chart import group_tensors, group_types

OUTSIDE = "other"  # the row of the groups outside the layers (token_embd, output)
# pale yellow -> orange -> dark red (low -> high sensitivity)
_STOPS = [(0.0, (255, 247, 214)), (0.5, (245, 140, 60)), (1.0, (150, 20, 30))]
NO_VALUE = QColor(225, 225, 225)
# columns: the layer's tensors in the order the data flows through them, then the rest as the model lists them
KIND_ORDER = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_q_a", "attn_q_b", "attn_kv_a_mqa",
              "attn_kv_b", "attn_output", "ffn_norm", "ffn_gate_inp", "ffn_gate", "ffn_up", "ffn_gate_exps",
              "ffn_up_exps", "ffn_down", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp",
              "token_embd", "output"]


def ramp(f: float) -> QColor:
    f = min(1.0, max(0.0, f))
    for (a, ca), (b, cb) in zip(_STOPS, _STOPS[1:]):
        if f <= b:
            t = (f - a) / (b - a)
            return QColor(*(round(x + (y - x) * t) for x, y in zip(ca, cb)))
    return QColor(*_STOPS[-1][1])


class HeatmapModel(QAbstractTableModel):
    KEY_ROLE = Qt.ItemDataRole.UserRole + 1
    VALUE_ROLE = Qt.ItemDataRole.UserRole + 2

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table: SensitivityTable | None = None
        self.plan: Plan | None = None
        self.rows: list[int | None] = []
        self.kinds: list[str] = []
        self.cells: dict[tuple[int, int], str] = {}  # (row, column) -> group key
        self.types: dict[str, str] = {}  # group -> planned type
        self.lo = self.hi = 0.0  # log10 range of the values at planned types

    def set_data(self, table: SensitivityTable | None, plan: Plan | None) -> None:
        self.beginResetModel()
        self.table, self.plan = table, plan
        self.rows, self.kinds, self.cells = [], [], {}
        self.types = group_types(plan) if plan is not None and table is not None else {}
        if table is not None:
            layers = sorted({g.layer for g in table.groups if g.layer is not None})
            self.rows = layers + ([None] if any(g.layer is None for g in table.groups) else [])
            kinds = list(dict.fromkeys(g.kind for g in table.groups))
            self.kinds = sorted(kinds, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER),
                                                      kinds.index(k)))
            for g in table.groups:
                self.cells[(self.rows.index(g.layer), self.kinds.index(g.kind))] = g.key
        logs = [math.log10(v) for v in (self.value(k) for k in self.cells.values()) if v is not None and v > 0]
        self.lo, self.hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
        self.endResetModel()

    def value(self, key: str) -> float | None:
        t = self.types.get(key)
        return None if t is None or self.table is None else self.table.value(key, t)

    def key_at(self, index: QModelIndex) -> str | None:
        return self.cells.get((index.row(), index.column())) if index.isValid() else None

    def index_of(self, key: str) -> QModelIndex:
        layer, kind = group_layer_kind(key)
        return self.index(self.rows.index(layer), self.kinds.index(kind))

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.kinds)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt override
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self.kinds[section] if section < len(self.kinds) else None
        if section < len(self.rows):
            layer = self.rows[section]
            return OUTSIDE if layer is None else f"layer {layer}"
        return None

    def _fraction(self, v: float) -> float:
        if v <= 0:
            return 0.0
        return 0.5 if self.hi <= self.lo else (math.log10(v) - self.lo) / (self.hi - self.lo)

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        key = self.key_at(index)
        if key is None:
            return None
        t = self.types.get(key, "")
        v = self.value(key)
        if role == Qt.ItemDataRole.DisplayRole:
            return t
        if role == self.KEY_ROLE:
            return key
        if role == self.VALUE_ROLE:
            return v
        if role == Qt.ItemDataRole.BackgroundRole:
            return NO_VALUE if v is None else ramp(self._fraction(v))
        if role == Qt.ItemDataRole.ForegroundRole:
            bg = NO_VALUE if v is None else ramp(self._fraction(v))
            return QColor(Qt.GlobalColor.white if bg.lightness() < 140 else Qt.GlobalColor.black)
        if role == Qt.ItemDataRole.FontRole and self.table is not None and (key, t) in self.table.measured:
            font = QFont()
            font.setBold(True)  # measured (the others are estimates)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return Qt.AlignmentFlag.AlignCenter
        if role == Qt.ItemDataRole.ToolTipRole:
            assert self.table is not None
            how = ("measured" if (key, t) in self.table.measured else "estimated") if v is not None else ""
            what = (f"adds {v:.4g} to the mean KLD ({how})" if v is not None
                    else f"no value at {t} (the table has {', '.join(self.table.types)})")
            return f"{key} at {t}: {what}\nRight-click (or + / -) to raise or lower its type"
        return None


class SensitivityHeatmap(QWidget):
    """``change_requested(list[str], str)``: override these tensors to this type."""

    change_requested = Signal(list, str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = HeatmapModel(self)
        self.view = QTableView(self)
        self.view.setModel(self.model)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._menu)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.view.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.view.setShowGrid(True)
        self.legend = QLabel(self)
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.act_raise = QAction("Raise type (more bits)", self)
        self.act_raise.setShortcuts([QKeySequence("+"), QKeySequence("=")])
        self.act_lower = QAction("Lower type (fewer bits)", self)
        self.act_lower.setShortcut(QKeySequence("-"))
        for act, step in ((self.act_raise, +1), (self.act_lower, -1)):
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            act.triggered.connect(lambda _c=False, s=step: self.step_selected(s))
            self.view.addAction(act)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.legend)
        lay.addWidget(self.view, 1)
        self._update_legend()

    def set_data(self, table: SensitivityTable | None, plan: Plan | None) -> None:
        current = self.model.key_at(self.view.currentIndex())
        self.model.set_data(table, plan)
        if current is not None and current in self.model.cells.values():
            self.view.setCurrentIndex(self.model.index_of(current))
        self._update_legend()

    def _update_legend(self) -> None:
        m = self.model
        if m.table is None:
            self.legend.setText("No sensitivity table yet: run Optimize… to measure or estimate one.")
            return
        lo, hi = ramp(0.0).name(), ramp(1.0).name()
        rng = f"{10 ** m.lo:.2g} … {10 ** m.hi:.2g}" if m.hi > m.lo or m.lo else "-"
        self.legend.setText(
            f"Each cell: the type the plan gives that layer's tensor kind; colour: what it adds to the mean KLD "
            f"at that type (log scale, <span style='background:{lo}'>&nbsp;low&nbsp;</span> → "
            f"<span style='background:{hi};color:white'>&nbsp;high&nbsp;</span>, {rng}; grey: no value; bold: measured, the others estimated). "
            "Right-click a cell or press + / − to give it more or fewer bits.")

    # -- raising and lowering ---------------------------------------------------------------------------
    def candidates(self, key: str) -> list[str]:
        """The types this group may take, fewest bits first: the table's types and its reference that fit every
        tensor of the group (and its current type)."""
        m = self.model
        if m.table is None or m.plan is None:
            return []
        names = set(group_tensors(m.plan).get(key, []))
        shapes = [e.shape for e in m.plan.entries if e.name in names]
        if not shapes:
            return []
        types = list(dict.fromkeys([*m.table.types, m.table.reference]))
        fits = [t for t in types if all(row_fits(t, s) for s in shapes)]
        cur = m.types.get(key)
        if cur is not None and cur not in fits:
            fits.append(cur)
        return sorted(fits, key=lambda t: (tensor_nbytes(t, shapes[0]), t))

    def next_type(self, key: str, step: int) -> str | None:
        types = self.candidates(key)
        cur = self.model.types.get(key)
        if cur not in types:
            return None
        i = types.index(cur) + step
        return types[i] if 0 <= i < len(types) else None

    def step(self, key: str, step: int) -> str | None:
        """Raise (+1) or lower (-1) group ``key`` one type; returns the new type (None: already at the end)."""
        new = self.next_type(key, step)
        if new is not None and self.model.plan is not None:
            self.change_requested.emit(list(group_tensors(self.model.plan)[key]), new)
        return new

    def step_selected(self, step: int) -> str | None:
        key = self.model.key_at(self.view.currentIndex())
        return None if key is None else self.step(key, step)

    def _menu(self, pos: QPoint) -> None:
        index = self.view.indexAt(pos)
        key = self.model.key_at(index)
        if key is None:
            return
        self.view.setCurrentIndex(index)
        menu = self.build_menu(key)
        menu.exec(self.view.viewport().mapToGlobal(pos))

    def build_menu(self, key: str) -> QMenu:
        menu = QMenu(self)
        up, down = self.next_type(key, +1), self.next_type(key, -1)
        a = menu.addAction(f"Raise {key} to {up}" if up else "Raise (already the type with most bits)")
        a.setEnabled(up is not None)
        a.triggered.connect(lambda: self.step(key, +1))
        b = menu.addAction(f"Lower {key} to {down}" if down else "Lower (already the type with fewest bits)")
        b.setEnabled(down is not None)
        b.triggered.connect(lambda: self.step(key, -1))
        return menu
