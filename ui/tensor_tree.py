"""The tensor tree: layer groups with their tensors, sortable and filterable."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (QAbstractItemModel, QModelIndex, QRegularExpression,
                            QSortFilterProxyModel, Qt, Signal)
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTreeView, QVBoxLayout, QWidget

from workbench import Model, TensorInfo

from .filter_edit import FilterEdit
from .formatting import grouped, human_bytes, shape_text

NAME, SHAPE, TYPE, PARAMS, SIZE = range(5)
HEADERS = ("Name", "Shape", "Type", "Parameters", "Size")
HEADER_TIPS = (
    "Tensor name; layers are grouped (blk.N, model.layers.N, ...). Hover a row for the full name.",
    "Shape in row-major (numpy) order: rows × columns",
    "Storage type: F32/F16/BF16 or a ggml quantization type such as Q4_K",
    "Number of values (for a layer: the sum over its tensors)",
    "Bytes on disk (for a layer: the sum over its tensors)",
)
SORT_ROLE = Qt.ItemDataRole.UserRole + 1       # real numbers / keys, never display strings
FULL_NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # full tensor name, or the layer name for a group
OBJECT_ROLE = Qt.ItemDataRole.UserRole + 3     # the TensorInfo or TensorGroup behind the row

_NUM_RE = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """``blk.10`` after ``blk.9``: digits compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in _NUM_RE.split(text) if p)


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
        """``Q4_1, F32``; with more than three types ``Q4_0, F32, … (6 types)``."""
        names = list(self.dtype_counts())
        return ", ".join(names) if len(names) <= 3 else f"{names[0]}, {names[1]}, … ({len(names)} types)"


class TensorTreeModel(QAbstractItemModel):
    """Top level: non-layer tensors first, then one row per layer group whose children are tensors.
    Internal id 0 marks a top-level row; ``k > 0`` a child of top-level row ``k - 1``."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._top: list[TensorInfo | TensorGroup] = []
        self._bold = QFont()
        self._bold.setBold(True)

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

    @staticmethod
    def _display(item: TensorInfo | TensorGroup, col: int, in_group: bool) -> str:
        if isinstance(item, TensorGroup):
            return (item.name, f"{len(item.tensors)} tensors", item.dtype_text, grouped(item.n_params),
                    human_bytes(item.nbytes))[col]
        if col == NAME:
            layer = item.layer
            return item.name[len(layer) + 1:] if in_group and layer else item.name
        return ("", shape_text(item.shape), item.dtype, grouped(item.n_params), human_bytes(item.nbytes))[col]

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


class TensorFilterProxy(QSortFilterProxyModel):
    """Sorts on :data:`SORT_ROLE` with Python comparison; filters on the full name, recursively."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterRole(FULL_NAME_ROLE)
        self.setFilterKeyColumn(NAME)
        self.setRecursiveFilteringEnabled(True)
        self.setAutoAcceptChildRows(True)  # a matching layer shows all of its tensors

    def lessThan(self, left: QModelIndex, right: QModelIndex) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)


class TensorTreeWidget(QWidget):
    """Filter box + tree.  Emits ``selected(object)``: a TensorInfo, a TensorGroup, or None."""

    selected = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.source = TensorTreeModel(self)
        self.proxy = TensorFilterProxy(self)
        self.proxy.setSourceModel(self.source)
        self.filter = FilterEdit("Filter tensors (text or /regex/)", self)
        self.filter.changed.connect(self._set_filter)
        self.count_label = QLabel(self)
        self.count_label.setObjectName("tensorCount")
        self.view = QTreeView(self)
        self.view.setModel(self.proxy)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.header().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # file order until a click
        self.view.setSortingEnabled(True)
        self.view.header().setSectionsMovable(False)
        self.view.selectionModel().currentRowChanged.connect(self._current_changed)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.filter)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.count_label)
        self._size_columns()
        self._total = 0
        self._update_count()

    def _size_columns(self, model: Model | None = None) -> None:
        """Name stretches; the other columns fit the model's widest cell (or a typical one)."""
        fm = self.view.fontMetrics()
        header = self.view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        texts: dict[int, set[str]] = {SHAPE: {"4096 × 4096"}, TYPE: {"Q4_K"}, PARAMS: {"16,777,216"},
                                      SIZE: {"1023.9 MiB"}}
        if model is not None:
            texts = {col: {HEADERS[col]} for col in texts}
            for row in range(self.source.rowCount()):
                idx = self.source.index(row, 0)
                items = [idx] + [self.source.index(r, 0, idx) for r in range(self.source.rowCount(idx))]
                for it in items:
                    for col in texts:
                        texts[col].add(it.siblingAtColumn(col).data())
        for col, values in texts.items():
            width = max(fm.horizontalAdvance(v) for v in values) + 24
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(col, min(width, 220))

    # -- model ---------------------------------------------------------------------------------------
    def set_model(self, model: Model | None) -> None:
        self.source.set_model(model)
        self._size_columns(model)
        self._total = len(model.tensors) if model is not None else 0
        self._update_count()
        self.selected.emit(None)

    def _set_filter(self, rx: QRegularExpression) -> None:
        self.proxy.setFilterRegularExpression(rx)
        if rx.pattern():
            self.view.expandAll()
        self._update_count()

    def _update_count(self) -> None:
        shown = len(self.visible_tensor_names())
        if self._total == 0:
            self.count_label.setText("No model loaded")
        elif shown == self._total:
            self.count_label.setText(f"{self._total} tensors")
        else:
            self.count_label.setText(f"Showing {shown} of {self._total} tensors")

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self.selected.emit(current.data(OBJECT_ROLE) if current.isValid() else None)

    # -- queries and commands (menus, tests, screenshot script) -------------------------------------
    def visible_rows(self) -> list[tuple[str, bool]]:
        """``(full name, is_group)`` for every row the filter lets through, in view order."""
        out: list[tuple[str, bool]] = []

        def walk(parent: QModelIndex) -> None:
            for row in range(self.proxy.rowCount(parent)):
                idx = self.proxy.index(row, 0, parent)
                obj = idx.data(OBJECT_ROLE)
                out.append((obj.name, isinstance(obj, TensorGroup)))
                walk(idx)

        walk(QModelIndex())
        return out

    def visible_tensor_names(self) -> list[str]:
        return [name for name, is_group in self.visible_rows() if not is_group]

    def visible_group_names(self) -> list[str]:
        return [name for name, is_group in self.visible_rows() if is_group]

    def select(self, name: str) -> bool:
        """Select a tensor (or layer) by full name; clears a filter that hides it.  True if found."""
        src = self.source.index_of(name)
        if not src.isValid():
            return False
        idx = self.proxy.mapFromSource(src)
        if not idx.isValid():
            self.filter.set_text("")
            idx = self.proxy.mapFromSource(src)
        self.view.setCurrentIndex(idx)
        self.view.scrollTo(idx, QAbstractItemView.ScrollHint.PositionAtCenter)
        return True

    def current(self) -> TensorInfo | TensorGroup | None:
        idx = self.view.currentIndex()
        return idx.data(OBJECT_ROLE) if idx.isValid() else None

    def expand_all(self) -> None:
        self.view.expandAll()

    def collapse_all(self) -> None:
        self.view.collapseAll()

    def sort_by(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.view.sortByColumn(column, order)
