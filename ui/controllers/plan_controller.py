"""The window's quantization plan and its undo history.

Every edit (preset, rules, overrides, loading a plan file) is one :class:`QUndoCommand` that stores the
plan's editable state before and after, so undo restores exactly the previous types.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from workbench import Model
from workbench.plan import Plan

DEFAULT_PRESET = "Q4_K_M"  # llama.cpp's usual recommendation; rows that do not fit fall back per tensor

_prepared: dict[int, tuple[weakref.ref, Plan]] = {}
_prepared_lock = threading.Lock()


def prepare_plan(model: Model, preset: str = DEFAULT_PRESET) -> Plan | None:
    """(Loader thread) The plan a newly opened model starts with, resolved there (pure Python, ~10-50 ms a model)
    and kept for :meth:`PlanController.set_model`, which then does not resolve it again on the GUI thread.
    None (and nothing kept) when the model cannot be planned: the GUI thread then finds out itself."""
    try:
        plan = Plan(model, preset)
        plan.entries
    except Exception:  # noqa: BLE001 - reported by set_model on the GUI thread, with its own message
        return None
    with _prepared_lock:
        _prepared.clear()  # one model opens at a time: keep only the newest
        _prepared[id(model)] = (weakref.ref(model), plan)
    return plan


def _take_prepared(model: Model, preset: str) -> Plan | None:
    with _prepared_lock:
        hit = _prepared.pop(id(model), None)
    if hit is not None and hit[0]() is model and hit[1].preset == preset:
        return hit[1]
    return None


@dataclass(frozen=True)
class PlanState:
    """What the user edits: everything else in a plan is derived from these and the model."""

    preset: str
    rules: tuple[tuple[str, str], ...]
    overrides: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, plan: Plan) -> "PlanState":
        return cls(plan.preset, tuple((p, t) for p, t in plan.rules), tuple(plan.overrides.items()))

    def apply(self, plan: Plan) -> None:
        plan.set_state(self.preset, self.rules, dict(self.overrides))


class _PlanCommand(QUndoCommand):
    def __init__(self, controller: "PlanController", text: str, before: PlanState, after: PlanState):
        super().__init__(text)
        self.controller, self.before, self.after = controller, before, after

    def redo(self) -> None:
        self.controller._apply(self.after)

    def undo(self) -> None:
        self.controller._apply(self.before)


class PlanController(QObject):
    """Holds ``plan`` (None without a model) and ``undo_stack``; emits ``changed()`` after every change."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.plan: Plan | None = None
        self.undo_stack = QUndoStack(self)

    def set_model(self, model: Model | None, preset: str = DEFAULT_PRESET) -> None:
        """A fresh plan for a newly opened model (history cleared).  Raises WorkbenchError if the
        model cannot be planned; the controller then has no plan."""
        self.undo_stack.clear()
        self.plan = None
        try:
            if model is not None:
                plan = _take_prepared(model, preset)
                if plan is None:
                    plan = Plan(model, preset)
                    plan.entries  # resolve now: a model the rules cannot handle fails here, not in a paint
                self.plan = plan
        finally:
            self.changed.emit()

    # -- edits (each one undoable) ----------------------------------------------------------------
    def set_preset(self, preset: str) -> None:
        if self.plan is not None and preset != self.plan.preset:
            after = PlanState.of(self.plan)
            after = PlanState(preset, after.rules, after.overrides)
            self._push(f"Preset {preset}", after)

    def set_rules(self, rules) -> None:
        if self.plan is None:
            return
        rules = tuple((str(p), str(t).upper()) for p, t in rules)
        Plan(self.plan.model, self.plan.preset, list(rules))  # validates: raises WorkbenchError before pushing
        before = PlanState.of(self.plan)
        if rules != before.rules:
            n = len(rules)
            self._push(f"Rules ({n} rule{'s' if n != 1 else ''})", PlanState(before.preset, rules, before.overrides))

    def set_types(self, names, qtype: str | None) -> None:
        """Override (or with None clear the override of) every tensor in ``names``."""
        if self.plan is None:
            return
        names = list(dict.fromkeys(names))
        overrides = dict(self.plan.overrides)
        for n in names:
            if qtype is None:
                overrides.pop(n, None)
            else:
                overrides[n] = qtype.upper()
        before = PlanState.of(self.plan)
        after = PlanState(before.preset, before.rules, tuple(overrides.items()))
        if dict(after.overrides) == dict(before.overrides):
            return
        what = names[0] if len(names) == 1 else f"{len(names)} tensors"
        self._push(f"Clear override of {what}" if qtype is None else f"Set {what} to {qtype.upper()}", after)

    def replace(self, plan: Plan, text: str = "Load plan") -> None:
        """Take over the editable state of ``plan`` (a loaded file), as one undoable step."""
        if self.plan is not None:
            self._push(text, PlanState.of(plan))

    # -- internals ----------------------------------------------------------------------------------
    def _push(self, text: str, after: PlanState) -> None:
        self.undo_stack.push(_PlanCommand(self, text, PlanState.of(self.plan), after))

    def _apply(self, state: PlanState) -> None:
        if self.plan is None:
            return
        state.apply(self.plan)  # states come from valid plans (set_rules validates before pushing)
        self.changed.emit()
