"""Editing GGUF metadata in the Metadata tab: value dialog, add/remove, undo/redo keys while the tree has
focus, bold edited keys, the modified marker, and Save As… to a new file read back with the core reader."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from gguf import GGUFValueType
from PySide6.QtCore import Qt

import workbench
from builders import write_gguf_model
from ui.pages.metadata_view import VALUE

JOB_TIMEOUT = 30_000


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("meta") / "fixture.gguf"
    write_gguf_model(path)
    return path


@pytest.fixture
def editor(win, load, gguf_path):
    load(win, gguf_path)
    win.tabs.setCurrentWidget(win.metadata)
    win.metadata.view.setFocus()
    return win.metadata_edit


def select(editor, key):
    editor.select(key)
    assert editor.selected_key() == key


def cell(win, key):
    idx = win.metadata.find(key, "GGUF")
    assert idx.isValid(), key
    return idx.siblingAtColumn(VALUE)


def edit_value(editor, key, text, vtype=None):
    select(editor, key)
    editor.act_edit.trigger()
    dlg = editor.dialog
    assert dlg is not None and dlg.key.text() == key and dlg.key.isReadOnly()
    if vtype is not None:
        dlg.type.setCurrentText(vtype)
    type_into(dlg, text)
    assert dlg.validate(), dlg.error.text()
    dlg.accept()


def type_into(dlg, text):
    """Put ``text`` into the value editor the dialog shows (a line, or a multi-line box for text and arrays)."""
    editor = dlg.value_label.buddy()
    assert editor.isVisible()
    if editor is dlg.text:
        dlg.text.setPlainText(text)
    else:
        dlg.line.setText(text)


def add_key(editor, key, vtype, text):
    editor.act_add.trigger()
    dlg = editor.dialog
    dlg.key.setText(key)
    dlg.type.setCurrentText(vtype)
    type_into(dlg, text)
    assert dlg.validate(), dlg.error.text()
    dlg.accept()


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_edit_undo_redo_and_save_as(qtbot, win, editor, gguf_path, tmp_path):
    view = win.metadata.view
    source_hash = sha(gguf_path)
    assert cell(win, "general.name").data() == "Fixture Llama"
    assert not editor.act_save.isEnabled() and editor.modified_label.text() == ""

    edit_value(editor, "general.name", "Renamed Llama")
    idx = cell(win, "general.name")
    assert idx.data() == "Renamed Llama" and idx.siblingAtColumn(0).data(Qt.ItemDataRole.FontRole).bold()
    assert "Fixture Llama" in idx.data(Qt.ItemDataRole.ToolTipRole)  # the old value
    assert editor.modified_label.text() == "● Modified (1 key)" and editor.act_save.isEnabled()
    assert win.tabs.tabText(win.tabs.indexOf(win.metadata)) == "Metadata •"

    add_key(editor, "general.url", "string", "https://example.com/llama")
    add_key(editor, "workbench.answer", "uint32", "42")
    assert cell(win, "workbench.answer").data() == "42"
    select(editor, "tokenizer.ggml.bos_token_id")
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Delete)  # Delete in the metadata tree removes the key
    font = cell(win, "tokenizer.ggml.bos_token_id").siblingAtColumn(0).data(Qt.ItemDataRole.FontRole)
    assert font.strikeOut()
    assert editor.edits.pending() == ({"general.name": editor.edits.values["general.name"],
                                       "general.url": editor.edits.values["general.url"],
                                       "workbench.answer": editor.edits.values["workbench.answer"]},
                                      ["tokenizer.ggml.bos_token_id"])

    # Ctrl+Z / Ctrl+Shift+Z while the tree has focus act on the metadata, not on the plan
    plan_steps = win.plan.undo_stack.count()
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # undo the removal
    assert not cell(win, "tokenizer.ggml.bos_token_id").siblingAtColumn(0).data(Qt.ItemDataRole.FontRole)
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # undo the added key
    assert not win.metadata.find("workbench.answer", "GGUF").isValid()
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert cell(win, "workbench.answer").data() == "42"
    qtbot.keyClick(view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert cell(win, "tokenizer.ggml.bos_token_id").siblingAtColumn(0).data(Qt.ItemDataRole.FontRole).strikeOut()
    assert win.plan.undo_stack.count() == plan_steps
    assert editor.modified_label.text() == "● Modified (4 keys)"

    out = tmp_path / "edited.gguf"
    job = editor.save_as(out)
    qtbot.waitUntil(lambda: not job.is_running(), timeout=JOB_TIMEOUT)
    assert job.state == "done", job.error
    assert job.outcome.paths == [out] and job.open_button.isVisible()  # offered: Open in Workbench
    assert sha(gguf_path) == source_hash  # the source is never modified

    got = workbench.open_model(out)
    src = workbench.open_model(gguf_path)
    meta = {e.key: e for e in got.metadata["GGUF"]}
    assert meta["general.name"].value == "Renamed Llama"
    assert meta["general.url"].value == "https://example.com/llama"
    assert meta["workbench.answer"].value == 42 and meta["workbench.answer"].vtype == "uint32"
    assert "tokenizer.ggml.bos_token_id" not in meta
    for t in src.tensors:
        np.testing.assert_array_equal(np.asarray(got.tensor(t.name).raw()), np.asarray(src.tensor(t.name).raw()))
    got.close()
    src.close()


def test_values_are_typed_and_validated(qtbot, win, editor):
    select(editor, "llama.context_length")  # uint32
    editor.act_edit.trigger()
    dlg = editor.dialog
    assert dlg.type.currentText() == "uint32" and dlg.value_label.buddy() is dlg.line and dlg.line.text() == "128"
    dlg.line.setText("-5")
    assert not dlg.validate() and "uint32" in dlg.error.text()
    assert not dlg.box.button(dlg.box.StandardButton.Ok).isEnabled()
    dlg.line.setText("0x100")
    assert dlg.validate()
    dlg.accept()
    assert editor.edits.values["llama.context_length"].value == 256
    assert editor.edits.values["llama.context_length"].vtype == GGUFValueType.UINT32
    # an array as JSON, a new key that exists already, a header field
    select(editor, "tokenizer.ggml.scores")
    editor.act_edit.trigger()
    dlg = editor.dialog
    assert dlg.type.currentText() == "array[float32]" and dlg.value_label.buddy() is dlg.text
    assert dlg.text.toPlainText() == "[0.0, 0.0, 0.0, -1.0, -2.0]"
    dlg.text.setPlainText("[1, 2, oops]")
    assert not dlg.validate() and "JSON" in dlg.error.text()
    dlg.reject()
    editor.act_add.trigger()
    dlg = editor.dialog
    dlg.key.setText("general.name")
    assert not dlg.validate() and "already has" in dlg.error.text()
    dlg.key.setText("split.count")
    assert not dlg.validate()
    dlg.reject()
    select(editor, "general.architecture")
    assert not editor.act_remove.isEnabled()  # GGUF readers need it


def test_only_gguf_metadata_is_editable(qtbot, win, load, st_folder):
    load(win, st_folder)
    edit = win.metadata_edit
    assert not edit.edits.editable and not edit.act_add.isEnabled() and not edit.bar.isVisible()
    # Ctrl+Z in the tree then still reaches the plan's undo
    win.plan.set_types(["lm_head.weight"], "Q8_0")
    win.tabs.setCurrentWidget(win.metadata)
    win.metadata.view.setFocus()
    qtbot.keyClick(win.metadata.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert win.plan.plan.overrides == {}


def test_save_as_onto_the_source_is_refused(qtbot, win, errors, editor, gguf_path):
    edit_value(editor, "general.name", "x")
    assert editor.save_as(gguf_path) is None
    assert errors and "never" in errors[0][1] and win.conversion.jobs.dialogs == []


def test_unsaved_edits_are_not_dropped_without_asking(qtbot, make_window, load, gguf_path, st_folder):
    answers, asked = [False], []

    def confirm(title, question):
        asked.append((title, question))
        return answers[0]

    w = make_window(confirm=confirm)
    load(w, gguf_path)
    assert w.open_path(st_folder) != -1 and asked == []  # nothing to lose: no question
    qtbot.waitUntil(lambda: w.model is not None and w.model.format != "gguf", timeout=JOB_TIMEOUT)
    load(w, gguf_path)
    w.metadata_edit.edits.set_value("general.name", workbench.convert.metadata_edit.TypedValue(
        GGUFValueType.STRING, "renamed"))
    assert w.open_path(st_folder) == -1  # the user said Cancel
    assert asked[-1][0] == "Open another model?" and "metadata edits" in asked[-1][1]
    assert w.model.format == "gguf" and w.metadata_edit.edits.is_modified()
    assert w.open_demo() == -1
    assert not w.may_discard(quitting=True) and asked[-1][0] == "Quit?"
    answers[0] = True
    load(w, st_folder)
    assert w.model.format != "gguf" and not w.metadata_edit.edits.is_modified()


def test_quitting_with_a_running_job_asks(make_window, monkeypatch):
    asked = []
    w = make_window(confirm=lambda title, question: asked.append(question) or False)
    monkeypatch.setattr(w.conversion.jobs, "running", lambda: ["job"])
    assert w.unsaved_work(quitting=False) == []  # opening a model does not stop jobs
    assert not w.close() and w.isVisible()  # the user kept the window
    assert "1 running conversion job, which would be cancelled" in asked[0]
    monkeypatch.setattr(w.conversion.jobs, "running", lambda: [])
