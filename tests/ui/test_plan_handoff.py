"""The window's first plan is resolved on the loader's thread and handed over: the GUI thread does not resolve
it again (pure Python, tens of ms for a large model)."""
from __future__ import annotations

import threading

from workbench.plan import Plan


def test_the_first_plan_is_resolved_on_the_loader_thread_and_reused(qtbot, window, load, demo_path, monkeypatch):
    resolved_on = []
    real = Plan._resolve

    def recording(self):
        resolved_on.append(threading.current_thread() is threading.main_thread())
        return real(self)

    monkeypatch.setattr(Plan, "_resolve", recording)
    model = load(window, demo_path)
    assert resolved_on and not any(resolved_on)  # every resolution so far ran off the GUI thread
    plan = window.plan.plan
    assert plan.preset == "Q4_K_M" and plan.types() == Plan(model, "Q4_K_M").types()  # the same plan


def test_the_plan_cells_are_written_on_the_loader_thread(qtbot, window, load, demo_path, monkeypatch):
    """The tree's Plan cells are filled on the loader thread with the handed-over plan; the GUI thread finds
    them showing that plan and writes none of them (and the cells show the plan's types)."""
    import ui.models.tensor_tree_model as ttm

    on_gui = []
    real = ttm._write_cell

    def recording(item, state, old, fonts, fallback):
        on_gui.append(threading.current_thread() is threading.main_thread())
        return real(item, state, old, fonts, fallback)

    monkeypatch.setattr(ttm, "_write_cell", recording)
    model = load(window, demo_path)
    assert len(on_gui) == len(model.tensors) and not any(on_gui)
    tree = window.tree
    shown = {n: tree.source.index_of(n).siblingAtColumn(ttm.PLAN).data() for n in (t.name for t in model.tensors)}
    assert shown == Plan(model, "Q4_K_M").types()
    window.plan.set_types(["blk.0.attn_q.weight"], "Q8_0")  # an edit afterwards is written on the GUI thread
    assert on_gui[-1] is True and tree.source.index_of("blk.0.attn_q.weight").siblingAtColumn(ttm.PLAN).data() == "Q8_0"
