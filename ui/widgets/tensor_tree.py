"""The tensor tree: layer groups with their tensors, sortable and filterable, with the planned types."""
from __future__ import annotations

import inspect

from PySide6.QtCore import QModelIndex, QItemSelection, QItemSelectionModel, QRegularExpression, \
    QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QTreeView, QVBoxLayout, QWidget

from workbench import Model, TensorInfo
from workbench.plan import Plan

from ..controllers.plan_controller import DEFAULT_PRESET, prepare_plan
from .filter_edit import FilterEdit
from .plan_delegate import PlanTypeDelegate
# (the column and role names are re-exported for callers)
from ..models.tensor_tree_model import (FALLBACK_COLOR, FULL_NAME_ROLE, HEADERS, NAME, OBJECT_ROLE,  # noqa: F401
                                PARAMS, PLAN, SHAPE, SIZE, SORT_ROLE, TYPE, TensorGroup, TensorTreeModel,
                                TreeRows, is_editable, prefill_plan, prepare)

WARM_PRESET = DEFAULT_PRESET
PLAN_LEGEND = f"Plan: <b>override</b> · <i>rule</i> · <span style='color:{FALLBACK_COLOR.name()}'>fallback</span>"


def open_and_prepare(job, *args):
    """Loader job: run the opening ``job(*args)`` (a generator or a plain call), then build the tensor
    tree's rows (their items) for the model on the same worker thread, so the GUI thread only inserts them."""
    out = job(*args)
    model = (yield from out) if inspect.isgenerator(out) else out
    if isinstance(model, Model):
        # the window's first plan, resolved here (pure Python, ~10-50 ms a model) and handed to its controller,
        # and written into the rows' Plan cells, so the GUI thread finds them filled
        plan = prepare_plan(model, WARM_PRESET)
        rows = prepare(model)
        if plan is not None:
            prefill_plan(rows, plan)
    return model


class TensorFilterProxy(QSortFilterProxyModel):
    """Sorts on :data:`SORT_ROLE` (ranks and numbers, compared by C++) and filters on the full name,
    recursively.  Overrides no virtual: sorting and filtering call no Python."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterRole(FULL_NAME_ROLE)
        self.setFilterKeyColumn(NAME)
        self.setRecursiveFilteringEnabled(True)
        self.setAutoAcceptChildRows(True)  # a matching layer shows all of its tensors


class TensorTreeWidget(QWidget):
    """Filter box + tree.  Emits ``selected(object)`` for the current row (a TensorInfo, a TensorGroup, or
    None) and ``selection_changed()`` when the (extended) selection changes."""

    selected = Signal(object)
    selection_changed = Signal()

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
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.view.header().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # file order until a click
        self.view.setSortingEnabled(True)
        self.view.header().setSectionsMovable(False)
        self.view.selectionModel().currentRowChanged.connect(self._current_changed)
        self.view.selectionModel().selectionChanged.connect(lambda *_: self.selection_changed.emit())
        self.delegate = PlanTypeDelegate(self.view, self.set_plan_type)
        self.view.setItemDelegateForColumn(PLAN, self.delegate)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked)
        edit_key = QShortcut(QKeySequence(Qt.Key.Key_F2), self.view, self.edit_plan)
        edit_key.setContext(Qt.ShortcutContext.WidgetShortcut)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)  # actions added by the window
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.filter)
        lay.addWidget(self.view, 1)
        self.plan_legend = QLabel(PLAN_LEGEND, self)
        self.plan_legend.setToolTip("How the Plan column marks where a type comes from; hover a cell for its reason")
        self.plan_legend.setVisible(False)
        bottom = QHBoxLayout()
        bottom.addWidget(self.count_label, 1)
        bottom.addWidget(self.plan_legend)
        lay.addLayout(bottom)
        self._size_columns()
        self._total = 0
        self._update_count()

    def _size_columns(self, rows: TreeRows | None = None) -> None:
        """Name stretches; the other columns fit the model's widest cell (or a typical one).  The widest
        texts were picked when the rows were built: only a handful are measured here."""
        fm = self.view.fontMetrics()
        header = self.view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        texts: dict[int, set[str]] = {SHAPE: {"4096 × 4096"}, TYPE: {"Q4_K"}, PARAMS: {"16,777,216"},
                                      SIZE: {"1023.9 MiB"}}
        if rows is not None and rows.top:
            texts = {col: {HEADERS[col], *rows.widest.get(col, ())} for col in texts}
        texts[PLAN] = {"Q5_0, Q8_0 +2"}  # a layer's typical planned types (the plan changes, the width not)
        for col, values in texts.items():
            width = max(fm.horizontalAdvance(v) for v in values) + 24
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(col, min(width, 220))

    # -- model ---------------------------------------------------------------------------------------
    def set_model(self, model: Model | None, rows: TreeRows | None = None) -> None:
        """Show ``model``; ``rows``: its rows built beforehand (:func:`prepare`, on a worker), else the
        ones prepared for it, else built now."""
        self.source.set_model(model, rows)
        self._size_columns(self.source.rows if model is not None else None)
        self._total = len(model.tensors) if model is not None else 0
        self._update_count()
        self.selected.emit(None)

    def set_plan(self, plan: Plan | None, type_setter=None) -> None:
        """Show ``plan`` in the Plan column; edits there call ``type_setter(names, type_or_None)``."""
        self.source.type_setter = type_setter
        self.source.set_plan(plan)
        self.plan_legend.setVisible(plan is not None)

    def refresh_plan(self) -> None:
        self.source.refresh_plan()

    def set_plan_type(self, index: QModelIndex, type_name: str | None) -> bool:
        """The Plan cell of ``index``'s row (of the view's or the source model) gets ``type_name`` (None or
        "" clears the override) through the type setter; False if that cell is not editable."""
        index = index.siblingAtColumn(PLAN)
        setter = self.source.type_setter
        if setter is None or not index.isValid() or not index.flags() & Qt.ItemFlag.ItemIsEditable:
            return False
        setter([index.data(FULL_NAME_ROLE)], str(type_name) if type_name else None)
        return True

    def _set_filter(self, rx: QRegularExpression) -> None:
        self.proxy.setFilterRegularExpression(rx)
        if rx.pattern():
            self.view.expandAll()
        self._update_count()

    def _update_count(self) -> None:
        """The count under the tree and, with a filter, the totals of the layer rows it shows in part
        (computed once here: the cells then hold them, nothing is computed while painting)."""
        shown, partial = self._total, {}
        if self._total and self.proxy.filterRegularExpression().pattern():
            shown = 0
            proxy = self.proxy
            for row in range(proxy.rowCount()):
                idx = proxy.index(row, NAME)
                obj = idx.data(OBJECT_ROLE)
                if not isinstance(obj, TensorGroup):
                    shown += 1
                    continue
                n = proxy.rowCount(idx)
                shown += n
                if n < len(obj.tensors):
                    partial[obj.name] = [proxy.index(r, NAME, idx).data(OBJECT_ROLE) for r in range(n)]
        self.source.show_filtered(partial)
        if self._total == 0:
            self.count_label.setText("No model loaded")
        elif shown == self._total:
            self.count_label.setText(f"{self._total} tensors")
        else:
            self.count_label.setText(f"Showing {shown} of {self._total} tensors")

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        self.selected.emit(current.siblingAtColumn(NAME).data(OBJECT_ROLE) if current.isValid() else None)

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

    def select_names(self, names) -> int:
        """Select several tensors/layers by full name (the first becomes current); returns how many."""
        sel = QItemSelection()
        first, found = None, 0
        for name in names:
            src = self.source.index_of(name)
            idx = self.proxy.mapFromSource(src) if src.isValid() else QModelIndex()
            if idx.isValid():
                sel.select(idx, idx)
                first = idx if first is None else first
                found += 1
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
        if first is not None:
            self.view.selectionModel().setCurrentIndex(first, QItemSelectionModel.SelectionFlag.NoUpdate)
        self.view.selectionModel().select(sel, flags)
        return found

    def selected_tensors(self, editable_only: bool = False) -> list[TensorInfo]:
        """Tensors of the selected rows in model order; a selected layer stands for all of its tensors.
        With ``editable_only`` only tensors whose planned type may change (quantizable ones)."""
        out: dict[str, TensorInfo] = {}

        def model_order(idx: QModelIndex) -> tuple[int, int]:
            src = self.proxy.mapToSource(idx)
            return (src.parent().row(), src.row()) if src.parent().isValid() else (src.row(), -1)

        for idx in sorted(self.view.selectionModel().selectedRows(NAME), key=model_order):
            obj = idx.data(OBJECT_ROLE)
            tensors = obj.tensors if isinstance(obj, TensorGroup) else (obj,)
            for t in tensors:
                if editable_only and not is_editable(self.source.entry(t.name)):
                    continue
                out.setdefault(t.name, t)
        return list(out.values())

    def edit_plan(self) -> bool:
        """F2: open the type editor in the current row's Plan cell (whichever cell has the focus)."""
        idx = self.view.currentIndex()
        if not idx.isValid():
            return False
        idx = idx.siblingAtColumn(PLAN)
        if not idx.flags() & Qt.ItemFlag.ItemIsEditable:
            return False
        self.view.selectionModel().setCurrentIndex(idx, QItemSelectionModel.SelectionFlag.NoUpdate)
        self.view.edit(idx)
        return True

    def current(self) -> TensorInfo | TensorGroup | None:
        idx = self.view.currentIndex()
        return idx.siblingAtColumn(NAME).data(OBJECT_ROLE) if idx.isValid() else None

    def expand_all(self) -> None:
        self.view.expandAll()

    def collapse_all(self) -> None:
        self.view.collapseAll()

    def sort_by(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.view.sortByColumn(column, order)
