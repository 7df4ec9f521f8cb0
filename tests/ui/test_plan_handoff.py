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
