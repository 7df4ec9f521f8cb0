"""The tensor tree's item model: layer groups with their tensors, plus the planned type of each tensor."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from workbench import Model, TensorInfo
from workbench.plan import Plan, PlanEntry

from .formatting import grouped, human_bytes, shape_text

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
    """One layer's tensors (``blk.3``) with their totals."""

    name: str
    tensors: tuple[TensorInfo, ...]

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def dtype_counts(self) -> dict[str, int]:
        """Tensor count per type, most frequent first."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    @property
    def dtype_text(self) -> str:
        return counts_text(self.dtype_counts())


class TensorTreeModel(QAbstractItemModel):
    """Top level: non-layer tensors first, then one row per layer group whose children are tensors.
    Internal id 0 marks a top-level row; ``k > 0`` a child of top-level row ``k - 1``.

    With a plan (:meth:`set_plan`) the Plan column shows each tensor's planned type; editing it calls
    the type setter (which records an undoable command and updates the plan), then :meth:`refresh_plan`.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self._top: list[TensorInfo | TensorGroup] = []
        self._plan: Plan | None = None
        self._entries: dict[str, PlanEntry] = {}
        self.type_setter: TypeSetter | None = None
        self._bold = QFont()
        self._bold.setBold(True)
        self._italic = QFont()
        self._italic.setItalic(True)

    def set_model(self, model: Model | None) -> None:
        self.beginResetModel()
        self._top = []
        if model is not None:
            for layer, tensors in model.layers().items():
                if layer is None:
                    self._top.extend(tensors)
                else:
                    self._top.append(TensorGroup(layer, tuple(tensors)))
        self.endResetModel()

    def set_plan(self, plan: Plan | None) -> None:
        self._plan = plan
        self.refresh_plan()

    def refresh_plan(self) -> None:
        """The plan changed: re-read its entries and repaint the Plan column."""
        self._entries = {e.name: e for e in self._plan.entries} if self._plan is not None else {}
        if not self._top:
            return
        last = len(self._top) - 1
        self.dataChanged.emit(self.index(0, PLAN), self.index(last, PLAN))
        for row, item in enumerate(self._top):
            if isinstance(item, TensorGroup) and item.tensors:
                parent = self.index(row, 0)
                self.dataChanged.emit(self.index(0, PLAN, parent), self.index(len(item.tensors) - 1, PLAN, parent))

    def entry(self, name: str) -> PlanEntry | None:
        """The plan's entry for a tensor (None without a plan)."""
        return self._entries.get(name)

    # -- structure ---------------------------------------------------------------------------------
    def _item(self, index: QModelIndex) -> TensorInfo | TensorGroup | None:
        if not index.isValid():
            return None
        pid = index.internalId()
        if pid == 0:
            return self._top[index.row()]
        group = self._top[pid - 1]
        return group.tensors[index.row()]  # type: ignore[union-attr]

    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()) -> QModelIndex:
        if not self.hasIndex(row, column, parent):
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, 0)
        return self.createIndex(row, column, parent.row() + 1)

    def parent(self, index: QModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid() or index.internalId() == 0:
            return QModelIndex()
        return self.createIndex(index.internalId() - 1, 0, 0)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        if not parent.isValid():
            return len(self._top)
        if parent.column() != 0 or parent.internalId() != 0:
            return 0
        item = self._top[parent.row()]
        return len(item.tensors) if isinstance(item, TensorGroup) else 0

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return len(HEADERS)

    # -- data ------------------------------------------------------------------------------------
    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        item = self._item(index)
        if item is None:
            return None
        col = index.column()
        if col == PLAN:
            return self._plan_data(item, role)
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(item, col, index.internalId() != 0)
        if role == SORT_ROLE:
            return self._sort_key(item, col)
        if role == FULL_NAME_ROLE:
            return item.name
        if role == OBJECT_ROLE:
            return item
        if role == Qt.ItemDataRole.ToolTipRole:
            if isinstance(item, TensorGroup):
                types = ", ".join(f"{n} × {d}" for d, n in item.dtype_counts().items())
                return (f"{item.name}: {len(item.tensors)} tensors, {grouped(item.n_params)} parameters, "
                        f"{human_bytes(item.nbytes)}\nTypes: {types}")
            return f"{item.name}\n{shape_text(item.shape)} {item.dtype}, {grouped(item.nbytes)} bytes"
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (PARAMS, SIZE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.FontRole and isinstance(item, TensorGroup) and col == NAME:
            return self._bold
        return None

    def _group_plan_counts(self, group: TensorGroup) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in group.tensors:
            e = self._entries.get(t.name)
            if e is not None:
                counts[e.type] = counts.get(e.type, 0) + 1
        return counts

    def _plan_data(self, item: TensorInfo | TensorGroup, role: int) -> Any:
        if role in (FULL_NAME_ROLE, OBJECT_ROLE):
            return item.name if role == FULL_NAME_ROLE else item
        if isinstance(item, TensorGroup):
            if role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE):
                return counts_text(self._group_plan_counts(item)) if self._entries else ""
            if role == Qt.ItemDataRole.ToolTipRole and self._entries:
                size = sum(self._entries[t.name].nbytes for t in item.tensors if t.name in self._entries)
                types = ", ".join(f"{n} × {d}" for d, n in self._group_plan_counts(item).items())
                return f"{item.name} planned: {human_bytes(size)}\nTypes: {types}"
            return None
        entry = self._entries.get(item.name)
        if entry is None:
            return None
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole, SORT_ROLE):
            return entry.type
        if role == PLAN_ENTRY_ROLE:
            return entry
        if role == OVERRIDE_ROLE:
            return self._plan.overrides.get(item.name) if self._plan is not None else None
        if role == Qt.ItemDataRole.ToolTipRole:
            edit = "\nDouble-click to choose another type." if is_editable(entry) else ""
            return (f"{entry.type}: {entry.reason}\n{human_bytes(entry.nbytes)} planned "
                    f"({grouped(entry.nbytes)} bytes){edit}")
        if role == Qt.ItemDataRole.FontRole:
            if self._plan is not None and item.name in self._plan.overrides:
                return self._bold
            if entry.reason.startswith("rule "):
                return self._italic
        if role == Qt.ItemDataRole.ForegroundRole and "fallback" in entry.reason:
            return QBrush(FALLBACK_COLOR)
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        f = super().flags(index)
        if index.column() == PLAN and self.type_setter is not None:
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

    @staticmethod
    def _display(item: TensorInfo | TensorGroup, col: int, in_group: bool) -> str:
        if isinstance(item, TensorGroup):
            return (item.name, f"{len(item.tensors)} tensors", item.dtype_text, "", grouped(item.n_params),
                    human_bytes(item.nbytes))[col]
        if col == NAME:
            layer = item.layer
            return item.name[len(layer) + 1:] if in_group and layer else item.name
        return ("", shape_text(item.shape), item.dtype, "", grouped(item.n_params), human_bytes(item.nbytes))[col]

    @staticmethod
    def _sort_key(item: TensorInfo | TensorGroup, col: int) -> Any:
        if col == NAME:
            return natural_key(item.name)
        if col == SHAPE:
            return (item.n_params, tuple(item.shape) if isinstance(item, TensorInfo) else ())
        if col == TYPE:
            return item.dtype_text if isinstance(item, TensorGroup) else item.dtype
        if col == PARAMS:
            return item.n_params
        return item.nbytes

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole and section in (PARAMS, SIZE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def index_of(self, name: str) -> QModelIndex:
        """The (column 0) index of a tensor or group by its full name, or an invalid index."""
        for row, item in enumerate(self._top):
            if item.name == name:
                return self.index(row, 0)
            if isinstance(item, TensorGroup) and name.startswith(item.name + "."):
                for crow, t in enumerate(item.tensors):
                    if t.name == name:
                        return self.index(crow, 0, self.index(row, 0))
        return QModelIndex()
