"""Edit ▸ Set Type: one entry per assignable type, for every selected (quantizable) tensor at once."""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Signal
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QMenu, QWidget

from workbench import TensorInfo
from workbench.plan import TYPES, Plan, row_fits


class SetTypeMenu(QMenu):
    """Rebuilt each time it opens from ``targets()`` (the tensors to change) and ``plan()``.

    A type is disabled when its block fits none of the targets; when it fits only some, the entry says so
    and the others fall back (as llama-quantize does).  The targets' common planned type is checked.
    Emits ``type_chosen(str)``.
    """

    type_chosen = Signal(str)

    def __init__(self, targets: Callable[[], list[TensorInfo]], plan: Callable[[], Plan | None],
                 parent: QWidget | None = None):
        super().__init__("Set &Type", parent)
        self._targets, self._plan = targets, plan
        self.setToolTipsVisible(True)
        self.menuAction().setToolTip("Override the planned type of the selected tensors (a selected layer: "
                                     "all of its quantizable tensors)")
        self._group = QActionGroup(self)
        self._group.setExclusive(True)
        self.aboutToShow.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        for act in self._group.actions():
            self._group.removeAction(act)
        self.clear()
        targets, plan = self._targets(), self._plan()
        if not targets or plan is None:
            empty = self.addAction("Select quantizable tensors first")
            empty.setEnabled(False)
            return
        types = plan.types()
        current = {types[t.name] for t in targets}
        for qtype in TYPES:
            fits = sum(1 for t in targets if row_fits(qtype, t.shape))
            label = qtype if fits == len(targets) else f"{qtype}   (fits {fits} of {len(targets)})"
            act = QAction(label, self)
            act.setData(qtype)
            act.setCheckable(True)
            act.setChecked(current == {qtype})
            act.setEnabled(fits > 0)
            act.setToolTip(f"Plan {qtype} for {self._what(targets)}" if fits == len(targets) else
                           f"{qtype}'s block does not fit the rows of {len(targets) - fits} of these tensors: "
                           "they fall back to another type")
            act.triggered.connect(lambda _c=False, q=qtype: self.type_chosen.emit(q))
            self._group.addAction(act)
            self.addAction(act)

    @staticmethod
    def _what(targets: list[TensorInfo]) -> str:
        return targets[0].name if len(targets) == 1 else f"the {len(targets)} selected tensors"

    def trigger_type(self, qtype: str) -> None:
        """Choose ``qtype`` as the user would (tests, scripts)."""
        self.rebuild()
        for act in self._group.actions():
            if act.data() == qtype and act.isEnabled():
                act.trigger()
                return
        raise ValueError(f"type {qtype} is not available for the selection")
