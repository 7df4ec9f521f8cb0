"""Edit ▸ Preferences…: the inference memory budget is remembered in QSettings and reaches the Generate and
Compare jobs (and through them load_engine)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from ui.dialogs.memory_budget import KEY
from workbench.errors import WorkbenchError

TINY = Path(__file__).resolve().parents[1] / "core" / "data" / "infer" / "llama"
TIMEOUT = 30_000


def test_preferences_budget_is_remembered_and_reaches_the_jobs(qtbot, make_window, settings, load, monkeypatch,
                                                               tmp_path):
    import workbench.infer.engines as engines

    monkeypatch.setattr("ui.dialogs.memory_budget.default_memory_budget", lambda: 777 << 20)
    window = make_window()
    assert window.generate_panel.memory_budget() == 777 << 20  # automatic until set
    dialog = window.show_preferences()
    assert dialog.budget_spin.value() == 0 and dialog.budget_spin.text().startswith("Automatic")
    dialog.budget_spin.setValue(1536)
    dialog.accept()
    settings.sync()
    assert QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat).value(KEY) in (1536, "1536")
    again = make_window()
    assert again.show_preferences().budget_spin.value() == 1536  # remembered
    assert again.compare_view.memory_budget() == 1536 << 20

    seen = []
    real = engines.load_engine

    def spy(model, plan=None, **kw):
        seen.append(kw.get("memory_budget"))
        return (yield from real(model, plan, **kw))

    monkeypatch.setattr(engines, "load_engine", spy)
    load(window, TINY)
    panel = window.generate_panel
    qtbot.waitUntil(lambda: panel.tokenizer is not None, timeout=TIMEOUT)
    panel.tokens_spin.setValue(2)
    with qtbot.waitSignal(panel.generated, timeout=TIMEOUT):
        assert panel.start() is not None
    assert seen == [1536 << 20]
    view = window.compare_view
    got = {}

    def compare_spy(model, levels, **kw):  # the kwargs the view gives the core's compare()
        got.update(kw)
        raise WorkbenchError("stop here")
        yield  # pragma: no cover

    view.job = compare_spy
    view.set_levels(["Q8_0"])
    with qtbot.waitSignal(view.worker.error, timeout=TIMEOUT):
        view.run()
    assert got["memory_budget"] == 1536 << 20
