"""The metadata tree: groups (GGUF, config.json, tokenizer, adapter, ...) -> keys -> nested values.

Nested dicts are subtrees; arrays longer than :data:`INLINE_ITEMS` are summarized in the cell and
expand lazily, :data:`PAGE` items at a time (``canFetchMore``/``fetchMore``), so a 150k-token
vocabulary costs nothing until someone scrolls through it.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from PySide6.QtCore import (QAbstractItemModel, QModelIndex, QPoint, QRegularExpression, QSortFilterProxyModel,
                            Qt, QTimer)
from PySide6.QtGui import QFont, QGuiApplication, QPalette
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTreeView, QVBoxLayout, QWidget

from workbench.formats.hf import json_type
from workbench import Model

from ..widgets.filter_edit import FilterEdit

KEY, TYPE, VALUE = range(3)
EDITED, ADDED, REMOVED = "edited", "added", "removed"
KEY_ROLE = Qt.ItemDataRole.UserRole + 1  # the top-level key of a row's group entry (None for nested rows)
HEADERS = ("Key", "Type", "Value")
HEADER_TIPS = ("Metadata key (GGUF key, config.json field, ...); [i] is an array index",
               "Stored type (GGUF value type or JSON type)",
               "Value; enums show their name and number. Hover for the full text, expand arrays and objects")
INLINE_ITEMS = 8       # arrays up to this long are shown whole in the cell
PAGE = 500             # array items added per fetchMore
CELL_CHARS = 300       # text put in a cell (the view elides further)
TOOLTIP_CHARS = 4000
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim > 0)


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0) else v


def scalar_text(v: Any, quote: bool = False) -> str:
    v = _scalar(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.7g}"
    if isinstance(v, str):
        return repr(v) if quote else v
    if isinstance(v, dict):
        return "{…}"
    if _is_array(v):
        return "[…]"
    return str(v)


def _preview(items, n: int, limit: int = 120) -> str:
    parts, used = [], 0
    for item in items:
        text = scalar_text(item, quote=True)
        parts.append(text)
        used += len(text) + 2
        if used > limit:
            break
    more = n > len(parts)
    return ", ".join(parts) + (", …" if more else "")


def value_text(value: Any, decoded: str | None = None) -> str:
    """What a Value cell shows (one line)."""
    value = _scalar(value)
    if decoded:
        if decoded.startswith(str(value)):
            return decoded
        if _IDENT_RE.match(decoded):
            return f"{decoded} ({scalar_text(value)})"
        return f"{scalar_text(value)} ({decoded})"
    if isinstance(value, dict):
        n = len(value)
        if n == 0:
            return "{}"
        pairs = (f"{k}: {scalar_text(v, quote=True)}" for k, v in value.items())
        return f"{{{n} keys}} " + _preview_pairs(pairs, n)
    if _is_array(value):
        n = len(value)
        head = value[:INLINE_ITEMS + 1]
        if isinstance(head, np.ndarray):
            head = head.tolist()
        if n <= INLINE_ITEMS and not any(isinstance(x, dict) or _is_array(x) for x in head):
            return "[" + ", ".join(scalar_text(x, quote=True) for x in head) + "]"
        return f"[{n} items] " + _preview(head, n)
    text = scalar_text(value)
    if isinstance(value, str):
        text = text.replace("\r\n", "\n").replace("\n", " ⏎ ").replace("\t", " ")
        if len(text) > CELL_CHARS:
            text = text[:CELL_CHARS] + "…"
    return text


def _preview_pairs(pairs, n: int, limit: int = 120) -> str:
    out, used = [], 0
    for p in pairs:
        out.append(p)
        used += len(p) + 2
        if used > limit:
            break
    return ", ".join(out) + (", …" if n > len(out) else "")


def _expandable(value: Any) -> bool:
    value = _scalar(value)
    if isinstance(value, dict):
        return bool(value)
    if _is_array(value):
        n = len(value)
        if n > INLINE_ITEMS:
            return True
        head = value.tolist() if isinstance(value, np.ndarray) else value
        return any(isinstance(x, dict) or _is_array(x) for x in head)
    return False


class _Node:
    """A row.  ``children`` is None until first needed; arrays fill it page by page."""

    __slots__ = ("parent", "row", "key", "vtype", "value", "decoded", "is_group", "children", "total", "mark",
                 "was")

    def __init__(self, parent, row, key, vtype, value, decoded=None, is_group=False):
        self.parent, self.row, self.key, self.vtype = parent, row, key, vtype
        self.value, self.decoded, self.is_group = value, decoded, is_group
        self.children: list[_Node] | None = None
        self.total = 0
        self.mark: str | None = None  # an unsaved edit: EDITED, ADDED or REMOVED
        self.was: str | None = None  # the value before the edit (tooltip)

    def ensure(self) -> list["_Node"]:
        """Build the children that are not paged (groups, dicts, short arrays)."""
        if self.children is None:
            self.children = []
            v = _scalar(self.value)
            if self.is_group:
                self.children = [_Node(self, i, e.key, e.vtype, e.value, e.decoded) for i, e in enumerate(v)]
                self.total = len(self.children)
            elif isinstance(v, dict):
                self.children = [_Node(self, i, str(k), json_type(x), x) for i, (k, x) in enumerate(v.items())]
                self.total = len(self.children)
            elif _expandable(v):
                self.total = len(v)  # paged: fetchMore appends
        return self.children

    def fetch(self, count: int) -> list["_Node"]:
        start = len(self.children or [])
        stop = min(self.total, start + count)
        items = self.value[start:stop]
        items = items.tolist() if isinstance(items, np.ndarray) else items
        etype = self.vtype[6:-1] if self.vtype.startswith("array[") and self.vtype.endswith("]") else None
        new = [_Node(self, start + i, f"[{start + i}]", etype or json_type(x), x) for i, x in enumerate(items)]
        self.children = (self.children or []) + new
        return new


class MetadataModel(QAbstractItemModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._root = _Node(None, 0, "", "", [])
        self._root.children = []
        self._bold = QFont()
        self._bold.setBold(True)
        self._struck = QFont()
        self._struck.setStrikeOut(True)

    def set_model(self, model: Model | None) -> None:
        self.beginResetModel()
        self._root.children = []
        if model is not None:
            self._root.children = [_Node(self._root, i, str(g), "", list(entries), is_group=True)
                                   for i, (g, entries) in enumerate(model.metadata.items())]
        self.endResetModel()

    def _node(self, index: QModelIndex) -> _Node:
        return index.internalPointer() if index.isValid() else self._root

    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()) -> QModelIndex:
        if column < 0 or column >= len(HEADERS) or row < 0:
            return QModelIndex()
        children = self._node(parent).ensure()
        if row >= len(children):
            return QModelIndex()
        return self.createIndex(row, column, children[row])

    def parent(self, index: QModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        p = index.internalPointer().parent
        if p is None or p is self._root:
            return QModelIndex()
        return self.createIndex(p.row, 0, p)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        if parent.column() > 0:
            return 0
        return len(self._node(parent).ensure())

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return len(HEADERS)

    def hasChildren(self, parent: QModelIndex = QModelIndex()) -> bool:
        if parent.column() > 0:
            return False
        node = self._node(parent)
        return node is self._root or node.is_group or _expandable(node.value)

    def canFetchMore(self, parent: QModelIndex) -> bool:
        if not parent.isValid():
            return False
        node = self._node(parent)
        return len(node.ensure()) < node.total

    def fetchMore(self, parent: QModelIndex) -> None:
        node = self._node(parent)
        start = len(node.ensure())
        n = min(PAGE, node.total - start)
        if n <= 0:
            return
        self.beginInsertRows(parent, start, start + n - 1)
        node.fetch(n)
        self.endInsertRows()

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        node: _Node = index.internalPointer()
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if node.is_group:
                n = len(node.children) if node.children is not None else len(node.value)
                return (node.key, "", f"{n} keys")[col]
            if col == KEY:
                return node.key
            if col == TYPE:
                return node.vtype
            return value_text(node.value, node.decoded)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(node, col)
        if role == Qt.ItemDataRole.FontRole and (node.is_group or node.mark in (EDITED, ADDED)):
            return self._bold
        if role == Qt.ItemDataRole.FontRole and node.mark == REMOVED:
            return self._struck
        if role == Qt.ItemDataRole.ForegroundRole and node.mark == REMOVED:
            return QGuiApplication.palette().brush(QPalette.ColorRole.PlaceholderText)
        if role == KEY_ROLE:
            return node.key if node.parent is not None and node.parent.is_group else None
        if role == Qt.ItemDataRole.ForegroundRole and col == VALUE and not node.is_group:
            if _scalar(node.value) is None:
                return QGuiApplication.palette().brush(QPalette.ColorRole.PlaceholderText)
        if role == Qt.ItemDataRole.UserRole:
            return node.value
        return None

    @staticmethod
    def _tooltip(node: _Node, col: int) -> str | None:
        if node.mark is not None:
            what = {EDITED: f"Edited (not saved yet); was: {node.was}", ADDED: "Added (not saved yet)",
                    REMOVED: "Removed (not saved yet)"}[node.mark]
            return what + "\nUndo with Ctrl+Z; File ▸ Save Metadata As… writes a new file"
        if node.is_group:
            return f"{node.key}: {len(node.value)} keys"
        if col == KEY:
            return node.key
        v = _scalar(node.value)
        if col == VALUE:
            if isinstance(v, str) and (len(v) > 60 or "\n" in v):
                return v if len(v) <= TOOLTIP_CHARS else v[:TOOLTIP_CHARS] + f"\n… ({len(v)} characters in all)"
            if _is_array(v):
                return f"{len(v)} items" + ("; expand the row to browse them" if _expandable(v) else "")
            if node.decoded:
                return f"{node.decoded} (stored value {scalar_text(v)})"
        return None

    # -- unsaved edits of a group's keys (ui.controllers.metadata_editor) ------------------------------
    def group_index(self, group: str) -> QModelIndex:
        for node in self._root.ensure():
            if node.key == group:
                return self.createIndex(node.row, 0, node)
        return QModelIndex()

    def show_edit(self, group: str, key: str, entry, mark: str | None, was: str | None = None) -> None:
        """Show ``entry`` (a MetaEntry, or None to drop an added row) for ``key`` of ``group`` with ``mark``."""
        gidx = self.group_index(group)
        if not gidx.isValid():
            return
        gnode: _Node = gidx.internalPointer()
        children = gnode.ensure()
        node = next((n for n in children if n.key == key), None)
        if entry is None:
            if node is not None:
                self.beginRemoveRows(gidx, node.row, node.row)
                del children[node.row]
                for i, n in enumerate(children):
                    n.row = i
                gnode.total = len(children)
                self.endRemoveRows()
            return
        if node is None:
            row = len(children)
            self.beginInsertRows(gidx, row, row)
            node = _Node(gnode, row, key, entry.vtype, entry.value, entry.decoded)
            children.append(node)
            gnode.total = len(children)
            node.mark, node.was = mark, was
            self.endInsertRows()
            self._group_changed(gidx)
            return
        idx = self.createIndex(node.row, 0, node)
        if node.children:  # the old value's items
            self.beginRemoveRows(idx, 0, len(node.children) - 1)
            node.children, node.total = None, 0
            self.endRemoveRows()
        node.children, node.total = None, 0
        node.vtype, node.value, node.decoded = entry.vtype, entry.value, entry.decoded
        node.mark, node.was = mark, was
        self.dataChanged.emit(idx, idx.siblingAtColumn(VALUE))
        self._group_changed(gidx)

    def _group_changed(self, gidx: QModelIndex) -> None:
        self.dataChanged.emit(gidx, gidx.siblingAtColumn(VALUE))

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS[section]
        return None


class MetadataWidget(QWidget):
    """Filter box + metadata tree."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.source = MetadataModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.source)
        self.proxy.setFilterKeyColumn(-1)  # key, type or value
        self.proxy.setRecursiveFilteringEnabled(True)
        self.proxy.setAutoAcceptChildRows(True)
        self.filter = FilterEdit("Filter metadata keys and values", self)
        self.filter.changed.connect(self._set_filter)
        self.view = QTreeView(self)
        self.view.setModel(self.proxy)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.view.setWordWrap(False)
        header = self.view.header()
        header.setStretchLastSection(True)
        fm = self.view.fontMetrics()
        header.setSectionResizeMode(KEY, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(KEY, fm.horizontalAdvance("tokenizer.ggml.padding_token_id") + 40)
        header.resizeSection(TYPE, fm.horizontalAdvance("array[string]") + 20)
        self.view.verticalScrollBar().valueChanged.connect(self._fetch_visible)
        self.view.expanded.connect(lambda _i: self._fetch_visible())
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.filter)
        lay.addWidget(self.view, 1)
        self._expand_pending = False  # a model's groups are expanded when the tab is next shown

    def set_model(self, model: Model | None) -> None:
        """Show ``model``'s metadata, its groups expanded (when the tab shows: expanding lays out the tree, ~5,000
        calls into the Python model, which would wait for the interpreter lock the jobs started by opening a
        model hold)."""
        self.source.set_model(model)
        self._expand_pending = model is not None
        if model is not None:
            self._fit_key_column(model)
            if self.isVisible():
                self._expand_groups()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self._expand_pending:
            QTimer.singleShot(0, self._expand_groups)  # once the view itself is visible

    def _expand_groups(self) -> None:
        if not self._expand_pending:
            return
        self._expand_pending = False
        for row in range(self.proxy.rowCount()):
            self.view.expand(self.proxy.index(row, 0))

    def _fit_key_column(self, model: Model) -> None:
        """Key column as wide as the longest top-level key (within reason)."""
        fm = self.view.fontMetrics()
        widest = max((fm.horizontalAdvance(e.key) for entries in model.metadata.values() for e in entries),
                     default=120)
        self.view.header().resizeSection(KEY, min(420, widest + 2 * self.view.indentation() + 24))

    def _set_filter(self, rx: QRegularExpression) -> None:
        self.proxy.setFilterRegularExpression(rx)

    def _fetch_visible(self) -> None:
        """Fetch the next page of an array whose last loaded item is scrolled into view (Qt itself
        only does this when the view is scrolled to its very bottom).  Not while the tab is hidden: finding
        the rows in view lays out the whole tree (~50 ms for a tokenizer's metadata, at each model opened)."""
        if not self.view.isVisible():
            return
        height = self.view.viewport().height()
        idx = self.view.indexAt(QPoint(4, 2))
        while idx.isValid() and self.view.visualRect(idx).top() < height:
            parent = idx.parent()
            if parent.isValid() and idx.row() == self.proxy.rowCount(parent) - 1 and self.proxy.canFetchMore(parent):
                self.proxy.fetchMore(parent)
                return
            idx = self.view.indexBelow(idx)

    def find(self, key: str, group: str | None = None) -> QModelIndex:
        """The proxy index (column 0) of a top-level key, optionally within one group."""
        for g in range(self.proxy.rowCount()):
            gidx = self.proxy.index(g, 0)
            if group is not None and gidx.data() != group:
                continue
            for r in range(self.proxy.rowCount(gidx)):
                idx = self.proxy.index(r, 0, gidx)
                if idx.data() == key:
                    return idx
        return QModelIndex()

    def value_of(self, key: str, group: str | None = None) -> str | None:
        idx = self.find(key, group)
        return idx.siblingAtColumn(VALUE).data() if idx.isValid() else None
