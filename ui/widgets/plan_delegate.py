"""Editor of the tree's Plan column: a combo box of the types whose block fits the tensor's rows."""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QAbstractItemModel, QModelIndex, Qt, QTimer
from PySide6.QtWidgets import QComboBox, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from workbench.plan import TYPES, row_fits, tensor_nbytes

from ..formatting import human_bytes
from ..models.tensor_tree_model import OBJECT_ROLE, OVERRIDE_ROLE, PLAN_ENTRY_ROLE

CLEAR = ""  # item data of the "clear override" entry


def fitting_types(shape: tuple[int, ...]) -> list[str]:
    """Assignable types whose block size divides the row length."""
    return [t for t in TYPES if row_fits(t, shape)]


class PlanTypeDelegate(QStyledItemDelegate):
    """Opens a combo box with its list already shown; choosing an entry commits at once, through
    ``set_type(index, type or None)`` (the model has no Python ``setData``: it is answered by C++)."""

    def __init__(self, parent: QWidget | None = None,
                 set_type: Callable[[QModelIndex, "str | None"], bool] | None = None):
        super().__init__(parent)
        self.set_type = set_type

    def createEditor(self, parent: QWidget, option: QStyleOptionViewItem, index: QModelIndex) -> QWidget:
        combo = QComboBox(parent)
        combo.setToolTip("Planned type of this tensor; only types whose block fits its rows are listed")
        info, entry = index.data(OBJECT_ROLE), index.data(PLAN_ENTRY_ROLE)
        if index.data(OVERRIDE_ROLE) is not None:
            combo.addItem("Clear override", CLEAR)
            combo.setItemData(0, "Go back to the type the preset and rules choose", Qt.ItemDataRole.ToolTipRole)
        for t in fitting_types(info.shape):
            combo.addItem(f"{t}  ({human_bytes(tensor_nbytes(t, info.shape))})", t)
        current = combo.findData(entry.type if entry is not None else None)
        if current >= 0:
            combo.setCurrentIndex(current)
        combo.activated.connect(lambda _i, c=combo: self._commit(c))
        QTimer.singleShot(0, combo, combo.showPopup)
        return combo

    def _commit(self, combo: QComboBox) -> None:
        self.commitData.emit(combo)
        self.closeEditor.emit(combo, QStyledItemDelegate.EndEditHint.NoHint)

    def setEditorData(self, editor: QWidget, index: QModelIndex) -> None:
        pass  # the current item is chosen in createEditor; a model refresh must not reset the choice

    def setModelData(self, editor: QWidget, model: QAbstractItemModel, index: QModelIndex) -> None:
        value = editor.currentData()
        entry = index.data(PLAN_ENTRY_ROLE)
        if self.set_type is None:
            return
        if value == CLEAR:
            self.set_type(index, None)
        elif value and (entry is None or value != entry.type):  # the same type again: nothing to do
            self.set_type(index, value)

    def updateEditorGeometry(self, editor: QWidget, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        rect = option.rect
        rect.setWidth(max(rect.width(), editor.sizeHint().width()))
        editor.setGeometry(rect)
