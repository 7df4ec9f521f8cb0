"""The plan's actions: undo/redo, set type / clear override, rules, plan files, model analysis.

Owns no widgets of its own; the main window puts these actions into its menus and the tree's context menu.
The window is reached only through :class:`PlanActionsHost` (what these actions use of it); this module never
imports the window.
The dialog-free functions (``save_plan(path)``, ``load_plan(path)``, ``export_tensor_types(path)``,
``set_type(qtype)``, ...) are what the actions call, and what tests and scripts use.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog, QDockWidget, QFileDialog, QStatusBar

from workbench import WorkbenchError
from workbench.fsutil import atomic_write_path
from workbench.plan import Plan

from ..dialogs.analyze_dialog import AnalyzeDialog
from ..dialogs.rules_dialog import RulesDialog
from ..widgets.set_type_menu import SetTypeMenu
from ..worker import Worker

if TYPE_CHECKING:
    from ..pages.analysis_view import AnalysisView
    from ..widgets.plan_bar import PlanBar
    from ..widgets.tensor_tree import TensorTreeWidget
    from .plan_controller import PlanController

PLAN_FILTER = "Model Workbench plan (*.json);;All files (*)"
TYPES_FILTER = "llama-quantize tensor types (*.txt);;All files (*)"


class PlanActionsHost(Protocol):
    """What :class:`PlanActions` uses of the window that composes it.  The host is also the QWidget that
    parents the actions and the rules/analyze dialogs."""

    plan: PlanController
    plan_bar: PlanBar
    tree: TensorTreeWidget
    analysis: AnalysisView
    analysis_dock: QDockWidget
    last_dir: str
    show_error: Callable[[str, str], None]  # (title, message)

    def make_action(self, text: str, tip: str, slot, shortcut=None) -> QAction: ...

    def addAction(self, action: QAction) -> None: ...  # noqa: N802 - Qt name

    def statusBar(self) -> QStatusBar: ...  # noqa: N802 - Qt name


class PlanActions(QObject):
    def __init__(self, window: PlanActionsHost):
        super().__init__(window)
        self.w = window
        self.controller = window.plan
        self.dialog: QDialog | None = None  # the open rules/analyze dialog (tests reach it here)
        # plan files are small, but file I/O still never runs on the GUI thread
        self.files = Worker(self, name="plan-files")
        self._file_done = lambda value: None
        self._file_error_title = ""
        self.files.result.connect(lambda value: self._file_done(value))
        self.files.error.connect(lambda message: self.w.show_error(self._file_error_title, message))
        stack = self.controller.undo_stack
        self.act_undo = stack.createUndoAction(window, "&Undo")
        self.act_undo.setShortcut(QKeySequence(QKeySequence.StandardKey.Undo))
        self.act_undo.setToolTip("Undo the last plan edit")
        self.act_redo = stack.createRedoAction(window, "&Redo")
        self.act_redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.act_redo.setToolTip("Redo the plan edit just undone")
        for act in (self.act_undo, self.act_redo):
            window.addAction(act)
        self.set_type_menu = SetTypeMenu(lambda: self.targets(), lambda: self.controller.plan, window)
        self.set_type_menu.type_chosen.connect(self.set_type)
        self.act_set_type = self.set_type_menu.menuAction()
        act = window.make_action
        self.act_clear = act("C&lear Override", "Give the selected tensors the type of the preset and rules again",
                             self.clear_override, QKeySequence.StandardKey.Delete)
        self.act_clear_all = act("Clear &All Overrides", "Remove every per-tensor override", self.clear_all_overrides)
        self.act_rules = act("&Rules…", "Regex rules choosing a type for matching tensors (llama-quantize "
                             "--tensor-type)", self.edit_rules, "Ctrl+R")
        self.act_save = act("&Save Plan…", "Save the plan (preset, rules, overrides) as JSON", self.save_plan_dialog,
                            QKeySequence.StandardKey.Save)
        self.act_load = act("&Load Plan…", "Load a plan saved for this model", self.load_plan_dialog, "Ctrl+L")
        self.act_export = act("&Export Tensor Types…", "Write the plan as llama-quantize's --tensor-type-file",
                              self.export_dialog)
        self.act_analyze = act("&Analyze Model…", "Quantize every tensor and measure its error under the plan "
                               "or several presets", self.analyze_dialog, "Ctrl+Shift+A")
        self.plan_actions = (self.act_set_type, self.act_clear, self.act_clear_all, self.act_rules, self.act_save,
                             self.act_load, self.act_export, self.act_analyze)
        self.controller.changed.connect(self.update_enabled)
        window.tree.selection_changed.connect(self.update_enabled)
        self.update_enabled()

    # -- state --------------------------------------------------------------------------------------
    def targets(self):
        """The tensors an edit applies to: the selected quantizable ones (a layer: all of its tensors)."""
        return self.w.tree.selected_tensors(editable_only=True)

    def update_enabled(self) -> None:
        plan = self.controller.plan
        for a in self.plan_actions:
            a.setEnabled(plan is not None)
        if plan is not None:
            targets = self.targets()
            self.act_set_type.setEnabled(bool(targets))
            self.act_clear.setEnabled(any(t.name in plan.overrides for t in targets))
            self.act_clear_all.setEnabled(bool(plan.overrides))

    # -- edits --------------------------------------------------------------------------------------
    def set_type(self, qtype: str) -> None:
        names = [t.name for t in self.targets()]
        if names:
            self.controller.set_types(names, qtype)

    def clear_override(self) -> None:
        plan = self.controller.plan
        if plan is not None:
            self.controller.set_types([t.name for t in self.targets() if t.name in plan.overrides], None)

    def clear_all_overrides(self) -> None:
        if self.controller.plan is not None:
            self.controller.set_types(list(self.controller.plan.overrides), None)

    def edit_rules(self) -> RulesDialog | None:
        """Open the rules dialog (window-modal, not blocking); OK applies the rules as one undoable step."""
        if self.controller.plan is None:
            return None
        dlg = RulesDialog(self.controller.plan, self.w)
        dlg.accepted.connect(lambda: self._apply_rules(dlg.rules()))
        return self._open(dlg)

    def _apply_rules(self, rules) -> None:
        try:
            self.controller.set_rules(rules)
        except WorkbenchError as exc:
            self.w.show_error("Invalid rules", str(exc))

    def analyze_dialog(self) -> AnalyzeDialog | None:
        plan = self.controller.plan
        if plan is None:
            return None
        dlg = AnalyzeDialog(plan, self.w.plan_bar.preset_sizes, self.w)
        dlg.accepted.connect(lambda: self.analyze(dlg.presets(), dlg.imatrix_path()))
        return self._open(dlg)

    def analyze(self, presets: list[str] | None = None, imatrix_path: str | None = None) -> int | None:
        """Analyze the current plan (``presets`` None) or each preset, weighted by ``imatrix_path`` when given;
        the results dock comes up."""
        if self.controller.plan is None:
            return None
        self.w.analysis_dock.show()
        self.w.analysis_dock.raise_()
        return self.w.analysis.start(self.controller.plan, presets, imatrix_path)

    def _open(self, dlg: QDialog) -> QDialog:
        self.dialog = dlg
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()
        return dlg

    # -- files (read and written on the worker, atomically, by the core) ------------------------------
    def _file_job(self, fn, args: tuple, title: str, on_done) -> int:
        self._file_done, self._file_error_title = on_done, title
        return self.files.start(fn, *args)

    def save_plan(self, path) -> int:
        """Save a snapshot of the plan in the background; returns the job id (``files.result`` when done)."""
        return self._file_job(self.controller.plan.copy().save, (path,), "Could not save the plan",
                              lambda _: self.w.statusBar().showMessage(f"Plan saved to {path}", 4000))

    def load_plan(self, path) -> int:
        """Read a plan in the background; it replaces the current one (one undoable step) when it arrives."""
        def done(plan: Plan) -> None:
            self.controller.replace(plan, f"Load plan {Path(path).name}")
            self.w.statusBar().showMessage(f"Plan loaded from {path}", 4000)

        return self._file_job(Plan.load, (self.controller.plan.model, path), "Could not load the plan", done)

    def export_tensor_types(self, path) -> int:
        text, preset = self.controller.plan.tensor_type_file(), self.controller.plan.preset
        return self._file_job(_write_text, (path, text), "Could not export the tensor types",
                              lambda _: self.w.statusBar().showMessage(
                                  f"Tensor types written to {path} (use with llama-quantize "
                                  f"--tensor-type-file … {preset})", 8000))

    def _ask(self, save: bool, title: str, suffix: str, file_filter: str) -> str:
        model = self.controller.plan.model
        start = os.path.join(self.w.last_dir or str(Path(model.path).parent), f"{model.name}{suffix}")
        fn = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = fn(self.w, title, start if save else os.path.dirname(start), file_filter)
        if path:
            self.w.last_dir = os.path.dirname(path)
        return path

    def save_plan_dialog(self) -> None:
        if self.controller.plan is not None and (path := self._ask(True, "Save Plan", ".plan.json", PLAN_FILTER)):
            self.save_plan(path)

    def load_plan_dialog(self) -> None:
        if self.controller.plan is not None and (path := self._ask(False, "Load Plan", "", PLAN_FILTER)):
            self.load_plan(path)

    def export_dialog(self) -> None:
        if self.controller.plan is not None and (path := self._ask(True, "Export Tensor Types", ".tensor-types.txt",
                                                                   TYPES_FILTER)):
            self.export_tensor_types(path)


def _write_text(path, text: str) -> None:
    with atomic_write_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
