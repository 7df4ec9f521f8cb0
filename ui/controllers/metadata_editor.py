"""Editing a GGUF's metadata in the Metadata tab: change a value, add a key, remove a key, undo/redo, and
Save As… to a new file (the source is never modified).

:class:`MetadataEdits` holds the pending edits (key -> :class:`TypedValue`, removed keys) with a
:class:`QUndoStack`; every value is typed the way ``workbench.convert.metadata_edit`` expects
(``parse_assignment("key=TYPE:VALUE")``), so a wrong value is refused in the dialog, not at save time.
:class:`MetadataEditActions` puts the actions on the Metadata tab (a small bar, the context menu, the
keys F2 / Insert / Delete / Ctrl+Z / Ctrl+Shift+Z while the tree has focus) and in the window's menus,
and runs ``set_metadata`` in a job window.  The window is reached only through :class:`MetadataEditHost`;
this module never imports the window.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import shiboken6
from gguf import GGUFValueType
from PySide6.QtCore import QEvent, QModelIndex, QObject, Qt, Signal, SignalInstance
from PySide6.QtGui import QAction, QKeyEvent, QKeySequence, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QStackedWidget, QStatusBar, QTabWidget, QToolButton,
                               QVBoxLayout, QWidget)

from workbench import MetaEntry, Model, WorkbenchError
from workbench.convert.metadata_edit import TypedValue, parse_assignment

from ..dialogs.job_dialog import JobRequest, Segment
from ..pages.metadata_view import ADDED, EDITED, KEY_ROLE, REMOVED, value_text

if TYPE_CHECKING:
    from ..pages.metadata_view import MetadataWidget
    from .conversion_actions import ConversionActions

GROUP = "GGUF"
PROTECTED = ("general.architecture",)  # GGUF readers need it
MAX_EDIT_ITEMS = 4096  # longer arrays (token lists) are not edited as text here
TYPES = ("string", "uint32", "int32", "float32", "bool", "uint64", "int64", "float64", "uint8", "int8", "uint16",
         "int16", "array[string]", "array[int32]", "array[uint32]", "array[float32]", "array[int64]", "array[bool]")
TEXT_TYPES = ("string",)  # edited in a multi-line box, as are arrays
_REMOVED = object()  # the state of a removed key


def type_label(tv: TypedValue) -> str:
    if tv.vtype == GGUFValueType.ARRAY:
        return f"array[{tv.sub_type.name.lower()}]" if tv.sub_type is not None else "array"
    return tv.vtype.name.lower()


def editable_key(key: str) -> bool:
    """Keys of the file's key/value section that may be edited (not the header fields, not split.*)."""
    return bool(key) and not key.startswith(("GGUF.", "split."))


def value_to_text(vtype: str, value: Any) -> str:
    """The text the value dialog starts with (what ``parse_assignment`` reads back for that type)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if vtype.startswith("array"):
        return json.dumps(list(value), ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.9g}" if vtype == "float32" else repr(value)
    return str(value)


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Same (type, value), arrays compared item by item."""
    (ta, va), (tb, vb) = a, b
    if ta != tb:
        return False
    if isinstance(va, (list, tuple, np.ndarray)) or isinstance(vb, (list, tuple, np.ndarray)):
        return np.asarray(va, dtype=object).tolist() == np.asarray(vb, dtype=object).tolist()
    return va == vb


def entry_of(key: str, tv: TypedValue) -> MetaEntry:
    return MetaEntry(key, type_label(tv), tv.value)


class _KeyCommand(QUndoCommand):
    def __init__(self, edits: "MetadataEdits", key: str, before, after, text: str):
        super().__init__(text)
        self.edits, self.key, self.before, self.after = edits, key, before, after

    def redo(self) -> None:
        self.edits._apply(self.key, self.after)

    def undo(self) -> None:
        self.edits._apply(self.key, self.before)


class MetadataEdits(QObject):
    """Pending edits of one GGUF.  ``changed(key)`` after each change of a key's state (also on undo/redo),
    ``modified_changed(bool)``.  A key's state: None (as in the file), a TypedValue (set) or removed."""

    changed = Signal(str)
    modified_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.model: Model | None = None
        self.original: dict[str, MetaEntry] = {}
        self.values: dict[str, TypedValue] = {}  # set or added keys
        self.removed: set[str] = set()
        self.added: list[str] = []  # keys not in the file, in the order they were first added
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._clean_changed)  # bound methods: no calls during teardown
        self.reason = "Open a GGUF file to edit its metadata"

    def set_model(self, model: Model | None) -> None:
        self.undo_stack.clear()
        self.values.clear()
        self.removed.clear()
        self.added.clear()
        self.model = model
        self.original = {}
        if model is None:
            self.reason = "Open a GGUF file to edit its metadata"
        elif model.format != "gguf":
            self.reason = "Only GGUF metadata can be edited"
        elif len(model.files) > 1:
            self.reason = "The metadata of a split GGUF cannot be edited (merge the parts first)"
        else:
            self.reason = ""
            self.original = {e.key: e for e in model.metadata.get(GROUP, []) if editable_key(e.key)}
        self.modified_changed.emit(False)

    def _clean_changed(self, _clean: bool) -> None:
        self.modified_changed.emit(self.is_modified())

    @property
    def editable(self) -> bool:
        return self.model is not None and not self.reason

    def is_modified(self) -> bool:
        return bool(self.values or self.removed)

    def exists(self, key: str) -> bool:
        """The key is in the model as edited (in the file and not removed, or added)."""
        return key not in self.removed and (key in self.original or key in self.values)

    def state(self, key: str):
        if key in self.removed:
            return _REMOVED
        return self.values.get(key)

    def current(self, key: str) -> tuple[str, Any]:
        """(type label, value) of a key as edited."""
        if key in self.values:
            tv = self.values[key]
            return type_label(tv), tv.value
        e = self.original[key]
        return e.vtype, e.value

    def pending(self) -> tuple[dict[str, TypedValue], list[str]]:
        """What ``set_metadata`` gets: (set, remove)."""
        return dict(self.values), sorted(self.removed)

    # -- edits (each one undoable) -------------------------------------------------------------------
    def set_value(self, key: str, tv: TypedValue) -> None:
        if not self.editable:
            raise WorkbenchError(self.reason)
        if self.exists(key) and _same(self.current(key), (type_label(tv), tv.value)):
            return  # unchanged: no edit, no undo step
        if key not in self.original and key not in self.values:
            text = f"Add {key}"
        else:
            text = f"Set {key}"
        self.undo_stack.push(_KeyCommand(self, key, self.state(key), tv, text))

    def remove_key(self, key: str) -> None:
        if not self.editable:
            raise WorkbenchError(self.reason)
        if key in PROTECTED:
            raise WorkbenchError(f"{key} cannot be removed: GGUF readers need it")
        if not self.exists(key):
            raise WorkbenchError(f"the model has no key {key!r}")
        self.undo_stack.push(_KeyCommand(self, key, self.state(key), _REMOVED if key in self.original else None,
                                         f"Remove {key}"))

    def revert_all(self) -> None:
        """Undo everything (itself undoable step by step with redo)."""
        while self.undo_stack.canUndo():
            self.undo_stack.undo()

    def _apply(self, key: str, state) -> None:
        was = self.is_modified()
        self.values.pop(key, None)
        self.removed.discard(key)
        if state is _REMOVED:
            self.removed.add(key)
        elif isinstance(state, TypedValue):
            self.values[key] = state
            if key not in self.original and key not in self.added:
                self.added.append(key)
        if key in self.added and key not in self.values:
            self.added.remove(key)
        self.changed.emit(key)
        if was != self.is_modified():
            self.modified_changed.emit(self.is_modified())


class MetadataValueDialog(QDialog):
    """Edit one key's value (``key`` given) or add a key.  ``result_value()`` -> (key, TypedValue)."""

    def __init__(self, edits: MetadataEdits, key: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.edits = edits
        self.adding = key is None
        self.setWindowTitle("Add Metadata Key" if self.adding else "Edit Metadata Value")
        self.key = QLineEdit(key or "", self)
        self.key.setReadOnly(not self.adding)
        self.key.setPlaceholderText("e.g. general.url")
        self.key.setToolTip("The GGUF key (dotted, e.g. general.description)")
        self.type = QComboBox(self)
        self.type.setToolTip("The GGUF value type; a changed key keeps its type unless you choose another")
        self.type.addItems(list(TYPES))
        self.line = QLineEdit(self)
        self.line.setToolTip("The value (numbers, true/false)")
        line_page = QWidget(self)
        lp = QVBoxLayout(line_page)
        lp.setContentsMargins(0, 0, 0, 0)
        lp.addWidget(self.line)
        lp.addStretch(1)
        self.text = QPlainTextEdit(self)
        self.text.setToolTip("The value: text as is (several lines allowed), arrays as a JSON list")
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(line_page)
        self.line_page = line_page
        self.stack.addWidget(self.text)
        self.error = QLabel("", self)
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b00020;")
        self.hint = QLabel("", self)
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: palette(placeholder-text);")
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("&Key:", self.key)
        form.addRow("&Type:", self.type)
        self.value_label = QLabel("&Value:", self)
        self.value_label.setBuddy(self.line)
        form.addRow(self.value_label, self.stack)
        self.box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        self.box.accepted.connect(self.accept)
        self.box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form, 1)
        lay.addWidget(self.hint)
        lay.addWidget(self.error)
        lay.addWidget(self.box)
        if key is not None:
            vtype, value = edits.current(key)
            if vtype not in TYPES:
                self.type.addItem(vtype)
            self.type.setCurrentText(vtype)
            self._set_text(value_to_text(vtype, value))
        else:
            self.type.setCurrentText("string")
        self.type.currentTextChanged.connect(self._type_changed)
        self._type_changed(self.type.currentText(), keep=True)
        self.key.textChanged.connect(lambda _t: self.validate())
        self.line.textChanged.connect(lambda _t: self.validate())
        self.text.textChanged.connect(self.validate)
        self.validate()
        (self.key if self.adding else self.value_label.buddy()).setFocus()

    def _multiline(self, vtype: str) -> bool:
        return vtype in TEXT_TYPES or vtype.startswith("array")

    def _set_text(self, text: str) -> None:
        self.line.setText(text)
        self.text.setPlainText(text)

    def value_text(self) -> str:
        return self.text.toPlainText() if self.stack.currentWidget() is self.text else self.line.text().strip()

    def _type_changed(self, vtype: str, keep: bool = False) -> None:
        text = self.value_text() if not keep else None
        multi = self._multiline(vtype)
        self.stack.setCurrentWidget(self.text if multi else self.line_page)
        self.value_label.setBuddy(self.text if multi else self.line)
        if text is not None:
            self._set_text(text)
        if self.isVisible() or keep:
            self.resize(max(self.width(), 560), 360 if multi else self.minimumSizeHint().height())
        hints = {"bool": "true or false", "string": "Any text; line breaks are kept"}
        self.hint.setText("A JSON list, e.g. [\"a\", \"b\"] or [1, 2]" if vtype.startswith("array")
                          else hints.get(vtype, "A number (0x… for hexadecimal)" if "int" in vtype else "A number"))
        self.validate()

    def result_value(self) -> tuple[str, TypedValue]:
        """Parse the fields as ``parse_assignment("KEY=TYPE:VALUE")``; raises WorkbenchError."""
        key = self.key.text().strip()
        if not key:
            raise WorkbenchError("the key is empty")
        if any(c.isspace() for c in key) or "=" in key:
            raise WorkbenchError(f"{key!r} is not a valid key: no spaces or '='")
        if not editable_key(key):
            raise WorkbenchError(f"{key} cannot be edited here")
        if self.adding and self.edits.exists(key):
            raise WorkbenchError(f"the model already has {key}", hint="Edit its value instead (double-click it).")
        k, value = parse_assignment(f"{key}={self.type.currentText()}:{self.value_text()}")
        assert isinstance(value, TypedValue)
        return k, value

    def validate(self) -> bool:
        try:
            self.result_value()
        except WorkbenchError as exc:
            self.error.setText(str(exc))
            ok = False
        else:
            self.error.setText("")
            ok = True
        self.error.setVisible(not ok)
        self.box.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)
        return ok

    def accept(self) -> None:
        if self.validate():
            super().accept()


class _Keys(QObject):
    """Takes the editing keys of the metadata tree before the window's shortcuts (plan undo, Delete) see them."""

    def __init__(self, actions: "MetadataEditActions"):
        super().__init__(actions)
        self.actions = actions
        self.bindings = {QKeySequence("F2"): actions.act_edit, QKeySequence("Insert"): actions.act_add, QKeySequence("Delete"): actions.act_remove,
                         QKeySequence("Ctrl+Z"): actions.act_undo, QKeySequence("Ctrl+Shift+Z"): actions.act_redo,
                         QKeySequence("Ctrl+Y"): actions.act_redo}

    def _action(self, event: QKeyEvent) -> QAction | None:
        seq = QKeySequence(event.keyCombination())
        act = self.bindings.get(seq)
        return act if act is not None and self.actions.edits.editable else None

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.ShortcutOverride and self._action(event) is not None:
            event.accept()  # deliver as a key press to the tree, not as the window's shortcut
            return True
        if event.type() == QEvent.Type.KeyPress:
            act = self._action(event)
            if act is not None:
                if act.isEnabled():
                    act.trigger()
                return True
        return False


class MetadataEditHost(Protocol):
    """What :class:`MetadataEditActions` uses of the window that composes it.  The host is also the QWidget
    that parents the value dialogs."""

    metadata: MetadataWidget  # the Metadata tab, which gets the edit bar and keys
    tabs: QTabWidget  # the Metadata tab's title shows that edits are pending
    conversion: ConversionActions  # Save As runs in its job windows
    last_dir: str
    model_loaded: SignalInstance  # (Model)
    show_error: Callable[[str, str], None]  # (title, message)

    def make_action(self, text: str, tip: str, slot, shortcut=None) -> QAction: ...

    def statusBar(self) -> QStatusBar: ...  # noqa: N802 - Qt name


class MetadataEditActions(QObject):
    """The metadata editing actions of a window (``dialog``: the open value dialog, for tests)."""

    def __init__(self, window: MetadataEditHost):
        super().__init__(window)
        self.w = window
        self.widget = window.metadata
        self.edits = MetadataEdits(self)
        self.dialog: MetadataValueDialog | None = None
        self.last_saved: Path | None = None
        act = window.make_action
        self.act_edit = act("&Edit Value…", "Change the selected key's value (F2 or double-click in the "
                            "Metadata tab)", self.edit_selected)
        self.act_edit.setShortcut(QKeySequence("F2"))
        self.act_add = act("&Add Key…", "Add a metadata key (Insert in the Metadata tab)", self.add_dialog)
        self.act_add.setShortcut(QKeySequence("Insert"))
        self.act_remove = act("&Remove Key", "Remove the selected key (Delete in the Metadata tab)",
                              self.remove_selected)
        self.act_remove.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.act_undo = self.edits.undo_stack.createUndoAction(self, "&Undo")
        self.act_undo.setToolTip("Undo the last metadata edit (Ctrl+Z in the Metadata tab)")
        self.act_undo.setShortcut(QKeySequence("Ctrl+Z"))
        self.act_redo = self.edits.undo_stack.createRedoAction(self, "&Redo")
        self.act_redo.setToolTip("Redo the metadata edit just undone (Ctrl+Shift+Z in the Metadata tab)")
        self.act_redo.setShortcut(QKeySequence("Ctrl+Shift+Z"))
        self.act_revert = act("Re&vert All", "Undo every metadata edit", self.edits.revert_all)
        self.act_save = act("Save &Metadata As…", "Write a copy of the GGUF with the edited metadata (the opened "
                            "file is never modified)", self.save_as_dialog, "Ctrl+Shift+S")
        for a in (self.act_edit, self.act_add, self.act_remove, self.act_undo, self.act_redo):
            # shown in menus; the tree's key filter triggers them (window-wide they would clash with the plan's)
            a.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.menu_actions = (self.act_edit, self.act_add, self.act_remove, None, self.act_undo, self.act_redo,
                             self.act_revert)

        view = self.widget.view
        view.setExpandsOnDoubleClick(False)
        view.doubleClicked.connect(self._double_clicked)
        view.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        for a in (self.act_edit, self.act_add, self.act_remove, self.act_undo, self.act_redo, self.act_save):
            view.addAction(a)
        self.keys = _Keys(self)
        view.installEventFilter(self.keys)
        view.selectionModel().currentChanged.connect(self._current_changed)
        self.bar = self._build_bar()
        self.widget.layout().insertWidget(1, self.bar)

        self.edits.changed.connect(self._show_key)
        self.edits.modified_changed.connect(self._modified_changed)
        self.edits.undo_stack.indexChanged.connect(self._index_changed)
        window.model_loaded.connect(self.set_model)
        self.set_model(None)

    def _build_bar(self) -> QWidget:
        bar = QWidget(self.widget)
        lay = QHBoxLayout(bar)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        for a, text in ((self.act_edit, "Edit…"), (self.act_add, "Add Key…"), (self.act_remove, "Remove"),
                        (self.act_undo, "Undo"), (self.act_redo, "Redo")):
            lay.addWidget(self._bar_button(bar, a, text))
        lay.addStretch(1)
        self.modified_label = QLabel("", bar)
        self.modified_label.setStyleSheet("color: #b35900; font-weight: bold;")
        self.modified_label.setToolTip("Edits are kept until you save them to a new file with Save As…")
        lay.addWidget(self.modified_label)
        lay.addWidget(self._bar_button(bar, self.act_save, "Save As…"))
        return bar

    @staticmethod
    def _bar_button(bar: QWidget, action: QAction, text: str) -> QToolButton:
        """A button with a fixed short text that follows ``action`` (undo's text changes with every edit)."""
        b = QToolButton(bar)
        b.setText(text)
        b.setAutoRaise(True)
        b.clicked.connect(action.trigger)

        def sync() -> None:
            if not (shiboken6.isValid(action) and shiboken6.isValid(b)):  # the window is being torn down
                return
            b.setEnabled(action.isEnabled())
            b.setToolTip(action.text().replace("&", "") + (f"\n{action.toolTip()}" if action.toolTip() else ""))

        action.changed.connect(sync)
        sync()
        return b

    # -- state ---------------------------------------------------------------------------------------
    def _current_changed(self, *_args) -> None:
        self.update_enabled()

    def _modified_changed(self, _modified: bool) -> None:
        self.update_enabled()

    def _index_changed(self, _index: int) -> None:
        self.update_enabled()

    def set_model(self, model: Model | None) -> None:
        self.edits.set_model(model)
        self.last_saved = None
        self.bar.setVisible(model is not None and model.format == "gguf")
        self.update_enabled()

    def selected_key(self) -> str | None:
        idx = self.widget.view.currentIndex()
        if not idx.isValid():
            return None
        key = idx.siblingAtColumn(0).data(KEY_ROLE)
        parent = idx.parent()
        if key is None or not parent.isValid() or parent.data() != GROUP:
            return None
        return key if (key in self.edits.original or key in self.edits.values) else None

    def update_enabled(self) -> None:
        editable = self.edits.editable
        key = self.selected_key() if editable else None
        self.act_add.setEnabled(editable)
        self.act_edit.setEnabled(key is not None and self.edits.exists(key) and self._small_enough(key))
        self.act_remove.setEnabled(key is not None and self.edits.exists(key) and key not in PROTECTED)
        self.act_revert.setEnabled(self.edits.is_modified())
        self.act_save.setEnabled(editable and self.edits.is_modified())
        n = len(self.edits.values) + len(self.edits.removed)
        self.modified_label.setText(f"● Modified ({n} key{'s' if n != 1 else ''})" if n else "")
        tab = self.w.tabs.indexOf(self.widget)
        self.w.tabs.setTabText(tab, "Metadata •" if n else "Metadata")
        for a in (self.act_edit, self.act_add, self.act_remove):
            if not editable:
                a.setStatusTip(self.edits.reason)

    def _small_enough(self, key: str) -> bool:
        _vtype, value = self.edits.current(key)
        return not (isinstance(value, (list, tuple, np.ndarray)) and len(value) > MAX_EDIT_ITEMS)

    def _show_key(self, key: str) -> None:
        e = self.edits
        orig = e.original.get(key)
        was = value_text(orig.value, orig.decoded) if orig is not None else None
        if key in e.removed:
            self.widget.source.show_edit(GROUP, key, orig, REMOVED, was)
        elif key in e.values:
            self.widget.source.show_edit(GROUP, key, entry_of(key, e.values[key]), EDITED if orig else ADDED, was)
        else:
            self.widget.source.show_edit(GROUP, key, orig, None)
        self.update_enabled()

    # -- commands ------------------------------------------------------------------------------------
    def _double_clicked(self, idx: QModelIndex) -> None:
        key = self.selected_key() if idx.isValid() else None
        if key is not None and self.edits.editable and self.act_edit.isEnabled():
            self.edit_selected()
        elif idx.isValid():
            view = self.widget.view
            first = idx.siblingAtColumn(0)
            view.setExpanded(first, not view.isExpanded(first))

    def edit_selected(self) -> MetadataValueDialog | None:
        key = self.selected_key()
        if key is None or not self.edits.exists(key):
            return None
        if not self._small_enough(key):
            self.w.show_error("Cannot edit this value", f"{key} holds more than {MAX_EDIT_ITEMS} items; "
                              "it can be removed but not edited here.")
            return None
        return self._open(MetadataValueDialog(self.edits, key, self.w))

    def add_dialog(self) -> MetadataValueDialog | None:
        if not self.edits.editable:
            return None
        return self._open(MetadataValueDialog(self.edits, None, self.w))

    def _open(self, dlg: MetadataValueDialog) -> MetadataValueDialog:
        self.dialog = dlg

        def done() -> None:
            key, tv = dlg.result_value()
            self.edits.set_value(key, tv)
            self.select(key)

        dlg.accepted.connect(done)
        dlg.finished.connect(dlg.deleteLater)
        dlg.open()
        return dlg

    def remove_selected(self) -> None:
        key = self.selected_key()
        if key is None:
            return
        try:
            self.edits.remove_key(key)
        except WorkbenchError as exc:
            self.w.show_error("Cannot remove the key", str(exc))

    def select(self, key: str) -> None:
        idx = self.widget.find(key, GROUP)
        if idx.isValid():
            self.widget.view.setCurrentIndex(idx)
            self.widget.view.scrollTo(idx)

    # -- saving ----------------------------------------------------------------------------------------
    def default_save_path(self) -> str:
        model = self.edits.model
        src = Path(model.files[0])
        folder = self.w.last_dir or str(src.parent)
        return os.path.join(folder, f"{src.stem}-edited.gguf")

    def save_as_dialog(self) -> None:
        if not (self.edits.editable and self.edits.is_modified()):
            return
        path, _ = QFileDialog.getSaveFileName(self.w, "Save Metadata As", self.default_save_path(),
                                              "GGUF (*.gguf);;All files (*)")
        if path:
            if not path.lower().endswith(".gguf"):
                path += ".gguf"
            self.w.last_dir = os.path.dirname(path)
            self.save_as(path, overwrite=True)  # the file dialog has asked about replacing

    def save_as(self, path, overwrite: bool = False):
        """Write the source with the edits to ``path`` in a job window; returns the JobDialog (None if refused)."""
        model = self.edits.model
        src = Path(model.files[0])
        out = Path(path)
        if out.exists() and os.path.samefile(out, src):
            self.w.show_error("Cannot save the metadata", f"{out} is the opened file itself. The source is never "
                              "modified: choose a new file name.")
            return None
        values, remove = self.edits.pending()
        segments = [Segment(t.name, t.nbytes, t.nbytes) for t in model.tensors]
        request = JobRequest("Save Metadata As", f"{src.name} + {len(values) + len(remove)} edited keys → {out}",
                             _save_job, (src, out, values, remove), dict(overwrite=overwrite), segments=segments,
                             total_bytes=sum(s.nbytes for s in segments), done_title="Saved")
        dlg = self.w.conversion.run(request)
        dlg.succeeded.connect(lambda outcome: self._saved(outcome.paths[0]))
        return dlg

    def _saved(self, path: Path) -> None:
        self.last_saved = path
        self.w.statusBar().showMessage(f"Metadata saved to {path} (Open in Workbench to work on it)", 8000)


def _save_job(src, out, values, remove, *, overwrite, cancel):
    from workbench.convert import set_metadata

    return set_metadata(src, out, values, remove, overwrite=overwrite, cancel=cancel)
