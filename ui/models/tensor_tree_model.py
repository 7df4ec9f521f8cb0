"""The tensor tree's item model: layer groups with their tensors, plus the planned type of each tensor."""
from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from workbench import Model, TensorInfo
from workbench.plan import Plan, PlanEntry

from ..formatting import grouped, human_bytes, shape_text

NAME, SHAPE, TYPE, PLAN, PARAMS, SIZE = range(6)
HEADERS = ("Name", "Shape", "Type", "Plan", "Parameters", "Size")
HEADER_TIPS = (
    "Tensor name; layers are grouped (blk.N, model.layers.N, ...). Hover a row for the full name.",
    "Shape in row-major (numpy) order: rows × columns",
    "Storage type: F32/F16/BF16 or a ggml quantization type such as Q4_K",
    "Type the quantization plan assigns (double-click or F2 to change).\n"
    "Bold: your override · italic: a rule · orange: the block does not fit the row, a fallback type is used.\n"
    "Hover a cell for the reason.",
    "Number of values (for a layer: the sum over its tensors)",
    "Bytes on disk (for a layer: the sum over its tensors)",
)
SORT_ROLE = Qt.ItemDataRole.UserRole + 1       # real numbers / keys, never display strings
FULL_NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # full tensor name, or the layer name for a group
OBJECT_ROLE = Qt.ItemDataRole.UserRole + 3     # the TensorInfo or TensorGroup behind the row
PLAN_ENTRY_ROLE = Qt.ItemDataRole.UserRole + 4  # the tensor's PlanEntry (None for groups / no plan)
OVERRIDE_ROLE = Qt.ItemDataRole.UserRole + 5   # the tensor's override type, or None

FALLBACK_COLOR = QColor(190, 95, 0)
_NUM_RE = re.compile(r"(\d+)")

TypeSetter = Callable[[list, "str | None"], None]  # (tensor names, type or None to clear)


def natural_key(text: str) -> tuple:
    """``blk.10`` after ``blk.9``: digits compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in _NUM_RE.split(text) if p)


def counts_text(counts: dict[str, int]) -> str:
    """``Q4_1, F32``; with more than two types ``Q4_0, F32 +4`` (most frequent first; the tooltip has all)."""
    names = [k for k, _ in sorted(counts.items(), key=lambda kv: -kv[1])]
    return ", ".join(names) if len(names) <= 2 else f"{names[0]}, {names[1]} +{len(names) - 2}"


def is_editable(entry: PlanEntry | None) -> bool:
    """Tensors llama-quantize never quantizes (norms, 1-D tensors...) keep their type."""
    return entry is not None and entry.reason != "not quantized"


@dataclass(frozen=True)
class TensorGroup:
    """One layer's tensors (``blk.3``) with their totals (computed once)."""

    name: str
    tensors: tuple[TensorInfo, ...]

    @cached_property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @cached_property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def dtype_counts(self) -> dict[str, int]:
        """Tensor count per type, most frequent first."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    @cached_property
    def dtype_text(self) -> str:
        return counts_text(self.dtype_counts())


class Row:
    """One row's display facts, computed once when the model opens (on the loader's thread): ``data()``
    answers from these instead of formatting per call."""

    __slots__ = ("name", "obj", "text", "keys", "rank", "tip", "children", "right", "plan_text")

    def __init__(self, name: str, obj, text: tuple, keys: tuple, tip: str, children: list["Row"]):
        self.name, self.obj, self.text, self.keys, self.tip, self.children = name, obj, text, keys, tip, children
        self.rank: list[int] = [0] * len(HEADERS)  # per column: position in the sorted order (ties equal)
        self.plan_text = ""  # a group's planned types (set with the plan)


class TreeRows:
    """The rows of a model's tensor tree plus, per column, the few longest texts (for sizing columns)."""

    def __init__(self, top: list[Row], widest: dict[int, list[str]], n_tensors: int):
        self.top, self.widest, self.n_tensors = top, widest, n_tensors


def _tensor_row(t: TensorInfo, in_group: bool) -> Row:
    n = math.prod(t.shape) if t.shape else 1
    layer = t.layer if in_group else None
    short = t.name[len(layer) + 1:] if layer else t.name
    shape = shape_text(t.shape)
    text = (short, shape, t.dtype, "", grouped(n), human_bytes(t.nbytes))
    keys = (natural_key(t.name), (n, tuple(t.shape)), t.dtype, None, n, t.nbytes)
    tip = f"{t.name}\n{shape} {t.dtype}, {grouped(t.nbytes)} bytes"
    return Row(t.name, t, text, keys, tip, [])


def build_rows(model: Model) -> TreeRows:
    """Every row's texts, sort keys and ranks: pure Python, no Qt, so it runs on a worker thread."""
    top: list[Row] = []
    for layer, tensors in model.layers().items():
        if layer is None:
            top.extend(_tensor_row(t, False) for t in tensors)
            continue
        g = TensorGroup(layer, tuple(tensors))
        kids = [_tensor_row(t, True) for t in tensors]
        n, nbytes = sum(k.keys[PARAMS] for k in kids), sum(k.obj.nbytes for k in kids)
        g.__dict__.update(n_params=n, nbytes=nbytes)  # fill the cached properties
        types = ", ".join(f"{c} × {d}" for d, c in g.dtype_counts().items())
        text = (g.name, f"{len(kids)} tensors", g.dtype_text, "", grouped(n), human_bytes(nbytes))
        keys = (natural_key(g.name), (n, ()), g.dtype_text, None, n, nbytes)
        tip = f"{g.name}: {len(kids)} tensors, {grouped(n)} parameters, {human_bytes(nbytes)}\nTypes: {types}"
        top.append(Row(g.name, g, text, keys, tip, kids))
    rows = top + [k for r in top for k in r.children]
    widest: dict[int, list[str]] = {}
    for col in range(len(HEADERS)):
        if col == PLAN:
            continue
        if col != NAME:
            widest[col] = sorted({r.text[col] for r in rows}, key=len)[-4:]
        ordered = sorted(rows, key=lambda r: r.keys[col])
        rank, prev = -1, object()
        for r in ordered:
            if r.keys[col] != prev:
                rank, prev = rank + 1, r.keys[col]
            r.rank[col] = rank
    return TreeRows(top, widest, sum(1 for r in rows if not r.children and not isinstance(r.obj, TensorGroup)))


_prepared: dict[int, tuple[weakref.ref, TreeRows]] = {}


def prepare(model: Model) -> TreeRows:
    """Build (once per model object) and remember the model's rows; safe to call on a worker thread."""
    rows = build_rows(model)
    _prepared.clear()  # one model is opened at a time: keep only the newest
    _prepared[id(model)] = (weakref.ref(model), rows)
    return rows


def prepared_rows(model: Model) -> TreeRows:
    """The rows :func:`prepare` built for ``model``, or built now (on the calling thread)."""
    hit = _prepared.get(id(model))
    if hit is not None and hit[0]() is model:
        return hit[1]
    return build_rows(model)


class TensorTreeModel(QAbstractItemModel):
    """Top level: non-layer tensors first, then one row per layer group whose children are tensors.
    Internal id 0 marks a top-level row; ``k > 0`` a child of top-level row ``k - 1``.

    ``data()`` answers from :class:`Row` objects built once per model (:func:`prepare`, on the loader's
    thread): a click or a repaint costs lookups, not formatting.  With a plan (:meth:`set_plan`) the Plan
    column shows each tensor's planned type; editing it calls the type setter (which records an
    undoable command and updates the plan), then :meth:`refresh_plan`.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self._top: list[Row] = []
        self.rows: TreeRows = TreeRows([], {}, 0)
        self._plan: Plan | None = None
        self._entries: dict[str, PlanEntry] = {}
        self.type_setter: TypeSetter | None = None
        self._bold = QFont()
        self._bold.setBold(True)
        self._italic = QFont()
        self._italic.setItalic(True)
        self._fallback = QBrush(FALLBACK_COLOR)
        self._right = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self._n_cols = len(HEADERS)

    def set_model(self, model: Model | None, rows: TreeRows | None = None) -> None:
        self.beginResetModel()
        self.rows = (rows or prepared_rows(model)) if model is not None else TreeRows([], {}, 0)
        self._top = self.rows.top
        self._update_group_plans()
        self.endResetModel()

    def set_plan(self, plan: Plan | None) -> None:
        self._plan = plan
        self.refresh_plan()

    def _update_group_plans(self) -> None:
        for row in self._top:
            if row.children:
                row.plan_text = counts_text(self._group_plan_counts(row.obj)) if self._entries else ""

    def refresh_plan(self) -> None:
        """The plan changed: re-read its entries and repaint the Plan column."""
        self._entries = {e.name: e for e in self._plan.entries} if self._plan is not None else {}
        self._update_group_plans()
        if not self._top:
            return
        last = len(self._top) - 1
        self.dataChanged.emit(self.index(0, PLAN), self.index(last, PLAN))
        for row, item in enumerate(self._top):
            if item.children:
                parent = self.index(row, 0)
                self.dataChanged.emit(self.index(0, PLAN, parent), self.index(len(item.children) - 1, PLAN, parent))

    def entry(self, name: str) -> PlanEntry | None:
        """The plan's entry for a tensor (None without a plan)."""
        return self._entries.get(name)

    # -- structure ---------------------------------------------------------------------------------
    def row_of(self, index: QModelIndex) -> Row | None:
        """The :class:`Row` behind a (source) index."""
        if not index.isValid():
            return None
        pid = index.internalId()
        if pid == 0:
            return self._top[index.row()]
        return self._top[pid - 1].children[index.row()]

    def _item(self, index: QModelIndex) -> TensorInfo | TensorGroup | None:
        row = self.row_of(index)
        return row.obj if row is not None else None

    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()) -> QModelIndex:
        # bounds checked here, not with hasIndex() (which calls rowCount/columnCount back through Python)
        if not 0 <= column < self._n_cols or row < 0:
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, 0) if row < len(self._top) else QModelIndex()
        if parent.internalId() != 0 or parent.column() != 0:
            return QModelIndex()
        prow = parent.row()
        return self.createIndex(row, column, prow + 1) if row < len(self._top[prow].children) else QModelIndex()

    def parent(self, index: QModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        pid = index.internalId()
        return QModelIndex() if pid == 0 else self.createIndex(pid - 1, 0, 0)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        if not parent.isValid():
            return len(self._top)
        if parent.column() != 0 or parent.internalId() != 0:
            return 0
        return len(self._top[parent.row()].children)

    def hasChildren(self, parent: QModelIndex = QModelIndex()) -> bool:
        return self.rowCount(parent) > 0

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return self._n_cols

    # -- data ------------------------------------------------------------------------------------
    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        pid = index.internalId()
        row = self._top[index.row()] if pid == 0 else self._top[pid - 1].children[index.row()]
        col = index.column()
        if col == PLAN:
            return self._plan_data(row, role)
        if role == Qt.ItemDataRole.DisplayRole:
            return row.text[col]
        if role == SORT_ROLE:
            return row.keys[col]
        if role == FULL_NAME_ROLE:
            return row.name
        if role == OBJECT_ROLE:
            return row.obj
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.tip
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (PARAMS, SIZE):
            return self._right
        if role == Qt.ItemDataRole.FontRole and row.children and col == NAME:
            return self._bold
        return None

    def _group_plan_counts(self, group: TensorGroup) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in group.tensors:
            e = self._entries.get(t.name)
            if e is not None:
                counts[e.type] = counts.get(e.type, 0) + 1
        return counts

    def _plan_data(self, row: Row, role: int) -> Any:
        if role in (FULL_NAME_ROLE, OBJECT_ROLE):
            return row.name if role == FULL_NAME_ROLE else row.obj
        item = row.obj
        if isinstance(item, TensorGroup):
            if role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE):
                return row.plan_text
            if role == Qt.ItemDataRole.ToolTipRole and self._entries:
                size = sum(self._entries[t.name].nbytes for t in item.tensors if t.name in self._entries)
                types = ", ".join(f"{n} × {d}" for d, n in self._group_plan_counts(item).items())
                return f"{item.name} planned: {human_bytes(size)}\nTypes: {types}"
            return None
        entry = self._entries.get(row.name)
        if entry is None:
            return None
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole, SORT_ROLE):
            return entry.type
        if role == PLAN_ENTRY_ROLE:
            return entry
        if role == OVERRIDE_ROLE:
            return self._plan.overrides.get(row.name) if self._plan is not None else None
        if role == Qt.ItemDataRole.ToolTipRole:
            edit = "\nDouble-click to choose another type." if is_editable(entry) else ""
            return (f"{entry.type}: {entry.reason}\n{human_bytes(entry.nbytes)} planned "
                    f"({grouped(entry.nbytes)} bytes){edit}")
        if role == Qt.ItemDataRole.FontRole:
            if self._plan is not None and row.name in self._plan.overrides:
                return self._bold
            if entry.reason.startswith("rule "):
                return self._italic
        if role == Qt.ItemDataRole.ForegroundRole and "fallback" in entry.reason:
            return self._fallback
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        f = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable if index.isValid() else Qt.ItemFlag.NoItemFlags
        if index.isValid() and index.column() == PLAN and self.type_setter is not None:
            item = self._item(index)
            if isinstance(item, TensorInfo) and is_editable(self._entries.get(item.name)):
                f |= Qt.ItemFlag.ItemIsEditable
        return f

    def setData(self, index: QModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        """Plan column: ``value`` is a type name, or None / "" to clear the override."""
        if role != Qt.ItemDataRole.EditRole or index.column() != PLAN or self.type_setter is None:
            return False
        if not self.flags(index) & Qt.ItemFlag.ItemIsEditable:
            return False
        item = self._item(index)
        self.type_setter([item.name], str(value) if value else None)
        return True

    def less_than(self, left: QModelIndex, right: QModelIndex) -> bool:
        """Sort order from the precomputed ranks (the Plan column, which changes with the plan, by its text)."""
        col = left.column()
        a, b = self.row_of(left), self.row_of(right)
        if col != PLAN:
            return a.rank[col] < b.rank[col]
        x, y = self._plan_data(a, SORT_ROLE) or "", self._plan_data(b, SORT_ROLE) or ""
        return x < y

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole and section in (PARAMS, SIZE):
            return self._right
        return None

    def index_of(self, name: str) -> QModelIndex:
        """The (column 0) index of a tensor or group by its full name, or an invalid index."""
        for row, item in enumerate(self._top):
            if item.name == name:
                return self.index(row, 0)
            if item.children and name.startswith(item.name + "."):
                for crow, t in enumerate(item.children):
                    if t.name == name:
                        return self.index(crow, 0, self.index(row, 0))
        return QModelIndex()
