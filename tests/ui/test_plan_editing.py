"""The quantization plan in the window: Plan column editing, multi-selection, presets, rules, undo/redo,
plan files and the status total.  Every expectation comes from the core ``Plan``."""
from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QComboBox, QDialogButtonBox

from workbench.plan import TYPES, Plan, row_fits
from ui.formatting import human_bytes
from ui.controllers.plan_controller import DEFAULT_PRESET
from ui.widgets.tensor_tree import FULL_NAME_ROLE, OBJECT_ROLE, PLAN, TensorGroup

EDITABLE = "blk.0.ffn_up.weight"        # 352 × 128, Q4_1 in the demo
NORM = "blk.0.attn_norm.weight"         # never quantized


def plan_column(tree) -> dict[str, str]:
    """What the tree shows in the Plan column, for every tensor row."""
    out = {}

    def walk(parent: QModelIndex) -> None:
        for row in range(tree.proxy.rowCount(parent)):
            idx = tree.proxy.index(row, 0, parent)
            if not isinstance(idx.data(OBJECT_ROLE), TensorGroup):
                out[idx.data(FULL_NAME_ROLE)] = idx.siblingAtColumn(PLAN).data()
            walk(idx)

    walk(QModelIndex())
    return out


def plan_index(tree, name: str) -> QModelIndex:
    return tree.proxy.mapFromSource(tree.source.index_of(name)).siblingAtColumn(PLAN)


def status_text(plan: Plan) -> str:
    edited = "+" if plan.rules or plan.overrides else ""
    return f"Plan {plan.preset}{edited}: {human_bytes(plan.nbytes)} · {plan.bits_per_weight:.2f} bpw"


@pytest.fixture
def demo(window, load, demo_path):
    return load(window, demo_path)


def test_a_loaded_model_gets_the_default_plan(window, demo):
    expected = Plan(demo, DEFAULT_PRESET)
    assert window.plan.plan.preset == DEFAULT_PRESET
    assert plan_column(window.tree) == expected.types()
    assert window.status.plan_label.text() == status_text(expected)
    assert window.plan_bar.preset.currentText() == DEFAULT_PRESET
    assert "fallback" in plan_index(window.tree, EDITABLE).data(Qt.ItemDataRole.ToolTipRole)


def test_setting_a_type_through_the_plan_column(qtbot, window, demo):
    tree = window.tree
    idx = plan_index(tree, EDITABLE)
    assert idx.flags() & Qt.ItemFlag.ItemIsEditable
    before = window.status.plan_label.text()
    assert tree.set_plan_type(idx, "Q8_0")
    expected = Plan(demo, DEFAULT_PRESET, overrides={EDITABLE: "Q8_0"})
    assert window.plan.plan.overrides == {EDITABLE: "Q8_0"}
    assert idx.data() == "Q8_0" and idx.data(Qt.ItemDataRole.FontRole).bold()  # overrides are bold
    assert plan_column(tree) == expected.types()
    assert window.status.plan_label.text() == status_text(expected) != before
    assert window.plan.plan.nbytes == expected.nbytes
    # clearing the override (None) goes back to the preset's type
    assert tree.set_plan_type(idx, None)
    assert window.plan.plan.overrides == {} and idx.data() == Plan(demo, DEFAULT_PRESET).type_of(EDITABLE)


def test_the_delegate_lists_only_fitting_types_and_commits(qtbot, window, demo):
    tree = window.tree
    idx = plan_index(tree, "blk.0.ffn_down.weight")  # row of 352: no K-quant block fits
    tree.view.setCurrentIndex(idx)
    tree.view.edit(idx)
    combo = tree.view.indexWidget(idx)
    assert isinstance(combo, QComboBox)
    listed = [combo.itemData(i) for i in range(combo.count())]
    assert listed == [t for t in TYPES if row_fits(t, (128, 352))] and "Q4_K" not in listed
    combo.setCurrentIndex(combo.findData("Q4_0"))
    combo.activated.emit(combo.currentIndex())
    qtbot.waitUntil(lambda: tree.view.indexWidget(idx) is None, timeout=2000)
    assert window.plan.plan.overrides == {"blk.0.ffn_down.weight": "Q4_0"}
    assert idx.data() == "Q4_0"


def test_f2_edits_the_plan_cell_of_the_current_row(qtbot, window, demo):
    tree = window.tree
    tree.select(EDITABLE)  # the Name cell is current
    tree.view.setFocus()
    qtbot.keyClick(tree.view, Qt.Key.Key_F2)
    idx = plan_index(tree, EDITABLE)
    assert isinstance(tree.view.indexWidget(idx), QComboBox)
    qtbot.keyClick(tree.view.indexWidget(idx), Qt.Key.Key_Escape)
    tree.select(NORM)
    assert not tree.edit_plan()  # never quantized: no editor


def test_tensors_that_are_never_quantized_are_not_editable(window, demo):
    idx = plan_index(window.tree, NORM)
    assert not idx.flags() & Qt.ItemFlag.ItemIsEditable
    assert not window.tree.set_plan_type(idx, "Q8_0")
    assert window.plan.plan.overrides == {}


def test_set_type_for_a_multi_selection_and_a_layer(qtbot, window, demo):
    names = ["blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.0.ffn_up.weight", NORM]
    assert window.tree.select_names(names) == 4
    actions = window.plan_actions
    assert actions.act_set_type in window.tree.view.actions()  # also in the context menu
    assert sorted(t.name for t in actions.targets()) == sorted(names[:3])  # the norm is skipped
    actions.set_type_menu.trigger_type("Q8_0")
    expected = Plan(demo, DEFAULT_PRESET, overrides={n: "Q8_0" for n in names[:3]})
    assert window.plan.plan.overrides == expected.overrides
    assert plan_column(window.tree) == expected.types()
    assert window.status.plan_label.text() == status_text(expected)
    assert actions.act_clear.isEnabled()
    # K-quants fit none of these rows: the menu disables them
    actions.set_type_menu.rebuild()
    enabled = {a.data() for a in actions.set_type_menu.actions() if a.isEnabled()}
    assert "Q4_K" not in enabled and "Q8_0" in enabled
    # a selected layer stands for its quantizable tensors
    window.tree.select_names(["blk.1"])
    actions.set_type("Q4_0")
    layer = [t.name for t in demo.tensors if t.name.startswith("blk.1.") and "norm" not in t.name]
    assert all(window.plan.plan.overrides[n] == "Q4_0" for n in layer)
    # Clear Override on a mixed selection
    window.tree.select_names(names)
    actions.act_clear.trigger()
    assert set(window.plan.plan.overrides) == set(layer) - {"blk.1.attn_q.weight"}


def test_preset_picker_changes_the_plan(qtbot, window, demo):
    combo = window.plan_bar.preset
    i = combo.findText("Q8_0")
    assert i >= 0
    combo.setCurrentIndex(i)
    combo.activated.emit(i)  # what a user's choice emits
    assert window.plan.plan.preset == "Q8_0"
    assert plan_column(window.tree) == Plan(demo, "Q8_0").types()
    assert window.status.plan_label.text() == status_text(Plan(demo, "Q8_0"))
    # the list shows each preset's size for this model (computed on a worker after the model opened)
    qtbot.waitUntil(lambda: bool(combo.sizes), timeout=10_000)
    row = combo.findText("Q4_0")
    assert combo.model().index(row, 1).data() == human_bytes(Plan(demo, "Q4_0").nbytes)


def test_rules_dialog_validates_and_applies(qtbot, window, demo):
    dlg = window.plan_actions.edit_rules()
    ok = dlg.box.button(QDialogButtonBox.StandardButton.Ok)
    dlg.add_rule(r"ffn_(up|gate)", "Q8_0")
    dlg.add_rule("([bad", "Q4_0")
    assert not dlg.is_valid() and not ok.isEnabled()
    assert dlg.table.item(1, 0).background().color().red() == 255 and "Invalid" in dlg.table.item(1, 0).toolTip()
    dlg.table.setCurrentCell(1, 0)
    dlg.remove_current()
    dlg.add_rule("attn_v", "Q4_1")
    dlg.table.setCurrentCell(1, 0)
    dlg.move_current(-1)
    assert dlg.rules() == [("attn_v", "Q4_1"), (r"ffn_(up|gate)", "Q8_0")]
    assert dlg.table.item(1, 2).text() == "4"  # ffn_up and ffn_gate of two layers
    assert dlg.is_valid() and ok.isEnabled()
    ok.click()
    rules = [("attn_v", "Q4_1"), (r"ffn_(up|gate)", "Q8_0")]
    assert window.plan.plan.rules == rules
    assert plan_column(window.tree) == Plan(demo, DEFAULT_PRESET, rules).types()
    assert plan_index(window.tree, "blk.0.ffn_up.weight").data(Qt.ItemDataRole.FontRole).italic()


def test_undo_and_redo_restore_exact_types(qtbot, window, demo):
    pa, tree = window.plan_actions, window.tree
    assert pa.act_undo.shortcut() == QKeySequence(QKeySequence.StandardKey.Undo)
    assert QKeySequence("Ctrl+Shift+Z") in pa.act_redo.shortcuts()
    history = [plan_column(tree)]
    window.plan.set_preset("Q5_0")
    history.append(plan_column(tree))
    tree.select_names(["blk.0.attn_q.weight", "blk.0.attn_k.weight"])
    pa.set_type("Q8_0")
    history.append(plan_column(tree))
    window.plan.set_rules([("ffn_down", "Q4_0")])
    history.append(plan_column(tree))
    tree.select_names(["blk.0.attn_q.weight"])
    pa.clear_override()
    history.append(plan_column(tree))
    assert len({json.dumps(h, sort_keys=True) for h in history}) == len(history)  # every step changed something
    states = [window.plan.plan.to_json()]
    for expected in reversed(history[:-1]):
        pa.act_undo.trigger()
        assert plan_column(tree) == expected
        states.append(window.plan.plan.to_json())
    assert not pa.act_undo.isEnabled()
    assert window.plan.plan.to_json() == Plan(demo, DEFAULT_PRESET).to_json()
    for expected in history[1:]:
        pa.act_redo.trigger()
        assert plan_column(tree) == expected
    assert window.status.plan_label.text() == status_text(window.plan.plan)
    assert window.plan_bar.preset.currentText() == "Q5_0"


def test_plan_json_round_trip_and_tensor_type_export(qtbot, make_window, load, demo_path, tmp_path):
    errors = []
    window = make_window(show_error=lambda t, m: errors.append((t, m)))
    model = load(window, demo_path)
    window.plan.set_preset("Q5_1")
    window.plan.set_rules([("attn_v", "Q8_0")])
    window.plan.set_types(["blk.1.ffn_up.weight"], "Q4_0")
    saved = window.plan.plan.to_json()
    types = plan_column(window.tree)
    path = tmp_path / "demo.plan.json"
    files = window.plan_actions.files
    with qtbot.waitSignal(files.result, timeout=5000):
        window.plan_actions.save_plan(path)  # on the worker, not the GUI thread
    assert json.loads(path.read_text()) == saved
    window.plan.set_preset("Q8_0")
    window.plan.set_types(["blk.1.ffn_up.weight"], None)
    assert plan_column(window.tree) != types
    with qtbot.waitSignal(files.result, timeout=5000):
        window.plan_actions.load_plan(path)
    assert window.plan.plan.to_json() == saved and plan_column(window.tree) == types
    assert plan_column(window.tree) == Plan.load(model, path).types()
    window.plan_actions.act_undo.trigger()  # loading is one undoable step
    assert window.plan.plan.preset == "Q8_0"
    out = tmp_path / "types.txt"
    with qtbot.waitSignal(files.result, timeout=5000):
        window.plan_actions.export_tensor_types(out)
    assert out.read_text() == window.plan.plan.tensor_type_file()
    # a plan that names tensors this model does not have is refused with a message
    bad = tmp_path / "other.plan.json"
    bad.write_text(json.dumps({**saved, "overrides": {"no.such.tensor": "Q8_0"}}))
    with qtbot.waitSignal(files.error, timeout=5000):
        window.plan_actions.load_plan(bad)
    assert errors and "no.such.tensor" in errors[-1][1]
    assert window.plan.plan.preset == "Q8_0"


def test_plan_edits_need_a_model(window):
    assert window.plan.plan is None
    assert not window.plan_actions.act_rules.isEnabled() and not window.plan_actions.act_analyze.isEnabled()
    assert window.plan_actions.edit_rules() is None
    assert not window.status.plan_label.isVisibleTo(window)
