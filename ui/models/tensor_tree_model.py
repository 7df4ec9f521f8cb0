"""The tensor tree's item model: layer groups with their tensors, plus the planned type of each tensor.

A :class:`QStandardItemModel` that overrides none of Qt's virtuals: painting, sorting and filtering are
answered by C++ from items built once per model (on the loader's thread), so none of them needs the
interpreter lock a worker thread may be holding.
"""
from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QStandardItem, QStandardItemModel

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
# SORT_ROLE holds what C++ compares: Name/Shape/Type the row's rank in the natural order (an int), Parameters
# and Size the real numbers (floats: Qt compares a value with one of the same type only, and Python ints turn
# into int or long long by size), Plan the planned type's text.  Never display strings.
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
FULL_NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # full tensor name, or the layer name for a group
OBJECT_ROLE = Qt.ItemDataRole.UserRole + 3     # the TensorInfo or TensorGroup behind the row
PLAN_ENTRY_ROLE = Qt.ItemDataRole.UserRole + 4  # the tensor's PlanEntry (None for groups / no plan)
OVERRIDE_ROLE = Qt.ItemDataRole.UserRole + 5   # the tensor's override type, or None

FALLBACK_COLOR = QColor(190, 95, 0)
_NUM_RE = re.compile(r"(\d+)")
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
_READ_ONLY = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
_EDITABLE = _READ_ONLY | Qt.ItemFlag.ItemIsEditable
_RANKED = (NAME, SHAPE, TYPE)  # columns sorted by a precomputed rank
_DISPLAY, _TIP = Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole

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


def group_cells(group: TensorGroup, shown: list[TensorInfo] | None = None) -> tuple[str, str, str, str]:
    """A layer row's Shape, Parameters and Size texts and tooltip: of all its tensors, or of the ``shown``
    ones (what a filter lets through: "2 of 9 tensors")."""
    if shown is None or len(shown) == len(group.tensors):
        n, nbytes, count = group.n_params, group.nbytes, f"{len(group.tensors)} tensors"
        types = ", ".join(f"{c} × {d}" for d, c in group.dtype_counts().items())
        tip = f"{group.name}: {count}, {grouped(n)} parameters, {human_bytes(nbytes)}\nTypes: {types}"
        return count, grouped(n), human_bytes(nbytes), tip
    n = nbytes = 0
    for t in shown:
        n, nbytes = n + t.n_params, nbytes + t.nbytes
    count = f"{len(shown)} of {len(group.tensors)} tensors"
    tip = f"{group.name}: {count} shown by the filter, {grouped(n)} parameters, {human_bytes(nbytes)}"
    return count, grouped(n), human_bytes(nbytes), tip


class Row:
    """One row's display facts and sort keys, computed once when the model opens (on the loader's thread),
    then turned into the row's items."""

    __slots__ = ("name", "obj", "text", "keys", "rank", "tip", "children")

    def __init__(self, name: str, obj, text: tuple, keys: tuple, tip: str, children: list["Row"]):
        self.name, self.obj, self.text, self.keys, self.tip, self.children = name, obj, text, keys, tip, children
        self.rank: list[int] = [0] * len(HEADERS)  # per ranked column: position in the sorted order (ties equal)


class TreeRows:
    """A model's tensor tree ready to show: the top-level rows' items (children attached), per column the few
    longest texts (for sizing columns), and the number of tensors.  The items go into one model only."""

    def __init__(self, top: list[list[QStandardItem]], widest: dict[int, list[str]], n_tensors: int):
        self.top, self.widest, self.n_tensors = top, widest, n_tensors
        self.taken = False  # inserted into a model (which now owns the items)


def _tensor_row(t: TensorInfo, in_group: bool) -> Row:
    n = math.prod(t.shape) if t.shape else 1
    layer = t.layer if in_group else None
    short = t.name[len(layer) + 1:] if layer else t.name
    shape = shape_text(t.shape)
    text = (short, shape, t.dtype, "", grouped(n), human_bytes(t.nbytes))
    keys = (natural_key(t.name), (n, tuple(t.shape)), t.dtype, None, n, t.nbytes)
    tip = f"{t.name}\n{shape} {t.dtype}, {grouped(t.nbytes)} bytes"
    return Row(t.name, t, text, keys, tip, [])


def _items(row: Row) -> list[QStandardItem]:
    """One row's cells (and its children's, attached to the first): texts, tooltips, sort values, the name
    and the object behind it.  QStandardItems are no QObjects: they may be made on any thread until a model
    owns them."""
    items = []
    for col, text in enumerate(row.text):
        item = QStandardItem(text) if col != PLAN else QStandardItem()
        item.setFlags(_READ_ONLY)
        item.setData(row.name, FULL_NAME_ROLE)
        item.setData(row.obj, OBJECT_ROLE)
        if col != PLAN:
            item.setToolTip(row.tip)
            item.setData(row.rank[col] if col in _RANKED else float(row.keys[col]), SORT_ROLE)
            if col in (PARAMS, SIZE):
                item.setData(_RIGHT, Qt.ItemDataRole.TextAlignmentRole)
        items.append(item)
    first = items[0]
    for kid in row.children:
        first.appendRow(_items(kid))
    return items


def build_rows(model: Model) -> TreeRows:
    """Every row's texts, sort keys, ranks and items: no QObject, so it runs on a worker thread."""
    top: list[Row] = []
    for layer, tensors in model.layers().items():
        if layer is None:
            top.extend(_tensor_row(t, False) for t in tensors)
            continue
        g = TensorGroup(layer, tuple(tensors))
        kids = [_tensor_row(t, True) for t in tensors]
        n, nbytes = sum(k.keys[PARAMS] for k in kids), sum(k.obj.nbytes for k in kids)
        g.__dict__.update(n_params=n, nbytes=nbytes)  # fill the cached properties
        count, params, size, tip = group_cells(g)
        text = (g.name, count, g.dtype_text, "", params, size)
        keys = (natural_key(g.name), (n, ()), g.dtype_text, None, n, nbytes)
        top.append(Row(g.name, g, text, keys, tip, kids))
    rows = top + [k for r in top for k in r.children]
    widest: dict[int, list[str]] = {}
    for col in range(len(HEADERS)):
        if col in (NAME, PLAN):
            continue
        widest[col] = sorted({r.text[col] for r in rows}, key=len)[-4:]
    for col in _RANKED:
        ordered = sorted(rows, key=lambda r: r.keys[col])
        rank, prev = -1, object()
        for r in ordered:
            if r.keys[col] != prev:
                rank, prev = rank + 1, r.keys[col]
            r.rank[col] = rank
    n_tensors = sum(1 for r in rows if not isinstance(r.obj, TensorGroup))
    return TreeRows([_items(r) for r in top], widest, n_tensors)


_prepared: dict[int, tuple[weakref.ref, TreeRows]] = {}


def prepare(model: Model) -> TreeRows:
    """Build (once per model object) and remember the model's rows; safe to call on a worker thread."""
    rows = build_rows(model)
    _prepared.clear()  # one model is opened at a time: keep only the newest
    _prepared[id(model)] = (weakref.ref(model), rows)
    return rows


def prepared_rows(model: Model) -> TreeRows:
    """The rows :func:`prepare` built for ``model`` (if no model took them yet), or built now (on the calling
    thread)."""
    hit = _prepared.get(id(model))
    if hit is not None and hit[0]() is model and not hit[1].taken:
        return hit[1]
    return build_rows(model)


_NOTHING = object()  # unlike any entry
_NEW_CELL = (_NOTHING, None, False, None, False)  # what a new Plan cell shows: no text, read-only, plain
_STATE_ROLE = Qt.ItemDataRole.UserRole + 20  # (prefilled Plan cells) the state the cell shows


def _cell_state(entry: PlanEntry | None, override: str | None, setter: bool) -> tuple:
    """What a tensor's Plan cell shows: (entry, override, editable, font key, fallback colour)."""
    if entry is None:
        return (None, override, False, None, False)
    font = "bold" if override is not None else "italic" if entry.reason.startswith("rule ") else None
    return (entry, override, setter and is_editable(entry), font, "fallback" in entry.reason)


def _write_cell(item: QStandardItem, state: tuple, old: tuple, fonts: dict, fallback: QBrush) -> None:
    """Set into a Plan cell what differs between the ``state`` it is to show and the ``old`` one it shows."""
    entry = state[0]
    if state[0] != old[0]:
        item.setData(entry, PLAN_ENTRY_ROLE)
        if entry is None:
            item.setData(None, _DISPLAY)
            item.setData(None, _TIP)
            item.setData("", SORT_ROLE)
        else:
            if old[0] is None or old[0] is _NOTHING or old[0].type != entry.type:
                item.setText(entry.type)
                item.setData(entry.type, SORT_ROLE)
            edit = "\nDouble-click to choose another type." if is_editable(entry) else ""
            item.setToolTip(f"{entry.type}: {entry.reason}\n{human_bytes(entry.nbytes)} planned "
                            f"({grouped(entry.nbytes)} bytes){edit}")
    if state[1] != old[1]:
        item.setData(state[1], OVERRIDE_ROLE)
    if state[2] != old[2]:
        item.setFlags(_EDITABLE if state[2] else _READ_ONLY)
    if state[3] != old[3]:
        item.setData(fonts.get(state[3]), Qt.ItemDataRole.FontRole)
    if state[4] != old[4]:
        item.setData(fallback if state[4] else None, Qt.ItemDataRole.ForegroundRole)


def prefill_plan(rows: TreeRows, plan: Plan) -> int:
    """(Loader thread) Write ``plan`` into the Plan cells of rows not yet in a model, as the window's model would
    (with a type setter), and note in each cell what it shows: the model then writes only what differs from
    the plan it is given (nothing, when it is this plan).  Cells that need a font are left to the model (fonts
    belong to the GUI thread).  Returns how many cells were filled."""
    entries = {e.name: e for e in plan.entries}
    overrides = plan.overrides
    fallback = QBrush(FALLBACK_COLOR)
    filled = 0

    def fill(name: str, item: QStandardItem) -> None:
        nonlocal filled
        state = _cell_state(entries.get(name), overrides.get(name), True)
        if state[3] is None:
            _write_cell(item, state, _NEW_CELL, {}, fallback)
            item.setData(state, _STATE_ROLE)
            filled += 1

    for items in rows.top:
        obj = items[NAME].data(OBJECT_ROLE)
        if isinstance(obj, TensorGroup):
            for k, t in enumerate(obj.tensors):
                fill(t.name, items[NAME].child(k, PLAN))
        else:
            fill(obj.name, items[PLAN])
    return filled


class _Tensor:
    """What the model keeps of a tensor row: its name and Plan cell (to update the plan)."""

    __slots__ = ("name", "plan", "shown")

    def __init__(self, name: str, plan: QStandardItem):
        self.name, self.plan = name, plan
        self.shown: tuple | None = None  # (entry, override, editable, font, fallback) the Plan cell shows


class _Group:
    """A layer row: its group, its cells, and its tensors in model order."""

    __slots__ = ("group", "items", "tensors", "filtered")

    def __init__(self, group: TensorGroup, items: list[QStandardItem], tensors: list[_Tensor]):
        self.group, self.items, self.tensors = group, items, tensors
        self.filtered = False  # its Shape/Parameters/Size cells show a filter's totals


class TensorTreeModel(QStandardItemModel):
    """Top level: non-layer tensors first, then one row per layer group whose children are tensors.

    Overrides none of Qt's virtuals: what the view, the sorting and the filtering ask is answered by C++
    from the items :func:`build_rows` made on the loader's thread.  With a plan (:meth:`set_plan`) the
    Plan column shows each tensor's planned type, set into the items when the plan changes; the view's
    delegate edits it through :attr:`type_setter` (which records an undoable command and updates the plan,
    then :meth:`refresh_plan`).
    """

    def __init__(self, parent=None):
        super().__init__(0, len(HEADERS), parent)
        self.setHorizontalHeaderLabels(list(HEADERS))
        for col, tip in enumerate(HEADER_TIPS):
            header = self.horizontalHeaderItem(col)
            header.setToolTip(tip)
            if col in (PARAMS, SIZE):
                header.setData(_RIGHT, Qt.ItemDataRole.TextAlignmentRole)
        self.rows: TreeRows = TreeRows([], {}, 0)
        self._model: Model | None = None
        self._plan: Plan | None = None
        self._entries: dict[str, PlanEntry] = {}
        self.type_setter: TypeSetter | None = None
        self._names: dict[str, QStandardItem] = {}  # full name -> Name cell
        self._top_tensors: list[_Tensor] = []        # top-level tensor rows, in model order
        self._groups: list[_Group] = []
        self._bold = QFont()
        self._bold.setBold(True)
        self._italic = QFont()
        self._italic.setItalic(True)
        self._fonts = {"bold": self._bold, "italic": self._italic}
        self._fallback = QBrush(FALLBACK_COLOR)

    def set_model(self, model: Model | None, rows: TreeRows | None = None) -> None:
        self._names, self._top_tensors, self._groups = {}, [], []
        self.removeRows(0, self.rowCount())  # deletes the previous model's items
        self._model = model
        if model is None:
            self.rows = TreeRows([], {}, 0)
            return
        if rows is None or rows.taken:
            rows = prepared_rows(model)
        rows.taken = True
        self.rows = rows
        for items in rows.top:
            first = items[0]
            obj = first.data(OBJECT_ROLE)
            self._names[obj.name] = first
            if isinstance(obj, TensorGroup):
                first.setFont(self._bold)  # before the row is inserted: no signal
                kids = []
                for k in range(first.rowCount()):
                    child = first.child(k, NAME)
                    self._names[obj.tensors[k].name] = child
                    kids.append(_Tensor(obj.tensors[k].name, first.child(k, PLAN)))
                self._groups.append(_Group(obj, items, kids))
            else:
                self._top_tensors.append(_Tensor(obj.name, items[PLAN]))
        for t in self._top_tensors + [t for g in self._groups for t in g.tensors]:
            t.shown = t.plan.data(_STATE_ROLE)  # what prefill_plan wrote there, if it did
        self._apply_plan(inserted=False)  # into the items before they are in the model: no signal at all
        root = self.invisibleRootItem()
        for items in rows.top:
            root.appendRow(items)

    # -- plan ------------------------------------------------------------------------------------------
    def set_plan(self, plan: Plan | None) -> None:
        self._plan = plan
        self.refresh_plan()

    def refresh_plan(self) -> None:
        """The plan changed: re-read its entries and update the Plan column."""
        self._entries = {e.name: e for e in self._plan.entries} if self._plan is not None else {}
        self._apply_plan()

    def entry(self, name: str) -> PlanEntry | None:
        """The plan's entry for a tensor (None without a plan)."""
        return self._entries.get(name)

    def _apply_plan(self, inserted: bool = True) -> None:
        """Set the plan into the Plan cells whose type, reason or editability changed (signals blocked: one
        ``dataChanged`` per top level and per layer afterwards, if the rows are ``inserted``)."""
        if not self._names or getattr(self._plan, "model", self._model) is not self._model:
            return  # (a plan for the model about to be shown: set_model applies it)
        overrides = self._plan.overrides if self._plan is not None else {}
        blocked = self.blockSignals(True)
        try:
            top_changed = self._apply_tensors(self._top_tensors, overrides)
            changed_groups = []
            for g in self._groups:
                if self._apply_tensors(g.tensors, overrides):
                    changed_groups.append(g)
                top_changed = self._apply_group(g) or top_changed
        finally:
            self.blockSignals(blocked)
        if not inserted:
            return
        if top_changed:
            self.dataChanged.emit(self.index(0, PLAN), self.index(self.rowCount() - 1, PLAN))
        for g in changed_groups:
            parent = g.items[NAME].index()
            self.dataChanged.emit(self.index(0, PLAN, parent), self.index(len(g.tensors) - 1, PLAN, parent))

    def _apply_tensors(self, tensors: list[_Tensor], overrides: dict[str, str]) -> bool:
        """Each tensor's Plan cell: only what differs from what it shows is set."""
        setter = self.type_setter is not None
        changed = False
        for t in tensors:
            state = _cell_state(self._entries.get(t.name), overrides.get(t.name), setter)
            old = t.shown or _NEW_CELL
            if state == old:
                continue
            t.shown, changed = state, True
            _write_cell(t.plan, state, old, self._fonts, self._fallback)
        return changed

    def _apply_group(self, g: _Group) -> bool:
        """A layer's Plan cell: its planned types (most frequent first) and, in the tooltip, the planned size."""
        counts: dict[str, int] = {}
        size = 0
        for t in g.tensors:
            e = t.shown[0]
            if e is not None:
                counts[e.type] = counts.get(e.type, 0) + 1
                size += e.nbytes
        text = counts_text(counts) if counts else ""
        tip = None
        if counts:
            types = ", ".join(f"{n} × {d}" for d, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            tip = f"{g.group.name} planned: {human_bytes(size)}\nTypes: {types}"
        item = g.items[PLAN]
        if item.text() == text and item.toolTip() == (tip or ""):
            return False
        item.setText(text)
        item.setData(text, SORT_ROLE)
        item.setData(tip, _TIP)
        return True

    # -- filter totals -----------------------------------------------------------------------------------
    def show_filtered(self, shown: dict[str, list[TensorInfo]]) -> None:
        """Layer rows of which a filter shows only some tensors (``shown``: layer name -> those tensors)
        show the totals of those; the others their own again."""
        for g in self._groups:
            part = shown.get(g.group.name)
            if part is None and not g.filtered:
                continue
            count, params, size, tip = group_cells(g.group, part)
            g.filtered = part is not None
            blocked = self.blockSignals(True)
            try:
                for col, text in ((SHAPE, count), (PARAMS, params), (SIZE, size)):
                    g.items[col].setText(text)
                    g.items[col].setToolTip(tip)
            finally:
                self.blockSignals(blocked)
            row = g.items[NAME].row()
            self.dataChanged.emit(self.index(row, SHAPE), self.index(row, SIZE), [_DISPLAY, _TIP])

    # -- lookups ---------------------------------------------------------------------------------------
    def index_of(self, name: str) -> QModelIndex:
        """The (column 0) index of a tensor or group by its full name, or an invalid index."""
        item = self._names.get(name)
        return item.index() if item is not None else QModelIndex()
