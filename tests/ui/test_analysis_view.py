"""Tools ▸ Analyze Model: the results table, its sort order, the link back to the tree, presets, cancel."""
from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox

from workbench import Progress
from workbench.analysis import ErrorStats, analyze_plan
from workbench.plan import Plan
from workbench.progress import run
from ui.pages.analysis_view import analysis_job
from ui.controllers.plan_controller import DEFAULT_PRESET

TIMEOUT = 30_000


@pytest.fixture
def demo(window, load, demo_path):
    return load(window, demo_path)


def snr_column(view):
    col = view.model.column("snr_db")
    return [view.proxy.index(r, col).data(Qt.ItemDataRole.UserRole + 1) for r in range(view.proxy.rowCount())]


def test_analyze_the_plan_fills_a_sorted_table_that_links_to_the_tree(qtbot, window, demo):
    view = window.analysis
    window.plan.set_types(["blk.0.attn_q.weight"], "Q4_0")  # the analysis follows the edited plan
    with qtbot.waitSignal(view.analyzed, timeout=TIMEOUT):
        window.plan_actions.analyze()
    assert window.analysis_dock.isVisible()
    assert view.proxy.rowCount() == len(demo.tensors)
    snr = snr_column(view)
    assert snr == sorted(snr)  # worst first
    expected = {s.name: s for s in run(analyze_plan(window.plan.plan.copy()))}
    for row in range(view.model.rowCount()):
        s = view.model.rows[row][1]
        e = expected[s.name]
        assert (s.qtype, s.nbytes) == (e.qtype, e.nbytes)
        assert s.rmse == pytest.approx(e.rmse, rel=1e-12) and s.cosine == pytest.approx(e.cosine, rel=1e-12)
    assert expected["blk.0.attn_q.weight"].qtype == "Q4_0"
    assert view.view.isColumnHidden(view.model.column("plan"))
    # the table is answered by C++: a repaint and a sort call no Python of its model (no wait for the GIL)
    import ui.models.error_table as error_table
    from pycalls import calls_into
    rmse_col = view.model.column("rmse")
    with calls_into(error_table) as seen:
        view.view.viewport().repaint()
        view.view.sortByColumn(rmse_col, Qt.SortOrder.DescendingOrder)
        view.view.viewport().repaint()
    assert seen == []
    rmse = [view.proxy.index(r, view.model.column("rmse")).data(Qt.ItemDataRole.UserRole + 1)
            for r in range(view.proxy.rowCount())]
    assert rmse == sorted(rmse, reverse=True) and rmse[0] > rmse[-1]
    view.view.sortByColumn(view.model.column("snr_db"), Qt.SortOrder.AscendingOrder)
    # double-click a row: the tree selects that tensor
    idx = view.proxy.index(3, view.model.column("type"))
    name = view.row_names()[3]
    view.view.scrollTo(idx)
    rect = view.view.visualRect(idx)
    qtbot.mouseClick(view.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(view.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.tree.current().name == name
    # an edit afterwards marks the results as out of date
    window.plan.set_preset("Q8_0")
    assert "out of date" in view.summary.text()


def test_compare_presets_from_the_dialog(qtbot, window, demo):
    dlg = window.plan_actions.analyze_dialog()
    dlg.set_presets(["Q8_0", "Q4_0"])
    assert dlg.presets() == ["Q8_0", "Q4_0"]
    view = window.analysis
    with qtbot.waitSignal(view.analyzed, timeout=TIMEOUT) as blocker:
        dlg.box.button(QDialogButtonBox.StandardButton.Ok).click()
    assert list(blocker.args[0]) == ["Q8_0", "Q4_0"]
    assert view.model.rowCount() == 2 * len(demo.tensors)
    assert not view.view.isColumnHidden(view.model.column("plan"))
    for preset, stats in blocker.args[0].items():
        assert [s.qtype for s in stats] == [Plan(demo, preset).type_of(s.name) for s in stats]
    assert "Q8_0" in view.summary.text() and "Q4_0" in view.summary.text()
    view.filter.setText("ffn_down")
    assert set(view.row_names()) == {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}
    assert view.proxy.rowCount() == 4
    assert window.plan.plan.preset == DEFAULT_PRESET  # comparing presets does not touch the plan
    # the pivot: one row per tensor, one SNR column per preset, the values of the rows above
    assert view.tabs.isTabVisible(1) and view.pivot.rowCount() == len(demo.tensors)
    results = blocker.args[0]
    for name in ("blk.0.ffn_down.weight", "blk.1.attn_k.weight"):
        got = view.pivot_row(name)
        want = {f"{p} SNR dB": next(s.snr_db for s in results[p] if s.name == name) for p in ("Q8_0", "Q4_0")}
        assert got == pytest.approx({k: round(v, 2) for k, v in want.items()})
    # the per-layer chart: one curve per preset, each point the mean SNR of that layer's tensors
    curves = view.chart.getPlotItem().listDataItems()
    assert [c.name() for c in curves] == ["Q8_0", "Q4_0"]
    for c, p in zip(curves, ("Q8_0", "Q4_0")):
        x, y = c.getData()
        assert list(x) == [0.0, 1.0]
        for layer, mean in zip(x, y):
            vals = [s.snr_db for s in results[p] if s.name.startswith(f"blk.{int(layer)}.") and s.snr_db < float("inf")]
            assert mean == pytest.approx(sum(vals) / len(vals))


def test_layer_numbers_are_read_from_gguf_and_hugging_face_names():
    from ui.pages.analysis_view import layer_of

    assert layer_of("blk.12.attn_q.weight") == 12 and layer_of("model.layers.3.mlp.up_proj.weight") == 3
    assert layer_of("encoder.block.5.layer.0.SelfAttention.q.weight") == 5
    assert layer_of("token_embd.weight") is None and layer_of("output_norm.weight") is None


def test_cancel_a_running_analysis(qtbot, window, demo):
    view = window.analysis
    gate = threading.Event()
    closed = threading.Event()

    row = ErrorStats("blk.3.attn_q.weight", "Q4_0", 1024, 576, 4.5, 0.01, 0.05, 0.1, 20.0, 0.99)

    def slow_job(model, plan, presets, sink):
        try:
            sink.put(("Plan", row))  # one tensor done: it shows while the rest runs
            while not gate.wait(0.01):
                yield Progress(1, 10, "analyzing slowly")
            return {"Plan": []}
        finally:
            closed.set()

    view.job = slow_job
    window.plan_actions.analyze()
    qtbot.waitUntil(lambda: window.status.progress_bar.isVisible(), timeout=5000)
    assert view.worker.is_busy() and window.status.active_worker() is view.worker
    assert "analysis" in window.status.cancel_button.toolTip()
    qtbot.waitUntil(lambda: view.model.rowCount() == 1, timeout=5000)  # streamed before the job ends
    assert view.worker.is_busy() and view.row_names() == ["blk.3.attn_q.weight"]
    assert "1 tensor measured" in view.summary.text()
    with qtbot.waitSignal(view.worker.cancelled, timeout=5000):
        qtbot.mouseClick(window.status.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(closed.is_set, timeout=5000)  # the job's generator was closed
    gate.set()
    qtbot.waitUntil(lambda: not window.status.is_busy_visible(), timeout=5000)
    assert not view.worker.is_busy() and view.model.rowCount() == 1 and list(view.results) == ["Plan"]
    assert "cancelled: 1 tensor measured before it stopped (partial)" in view.summary.text()
    assert window.model is demo  # cancelling the analysis does not touch the model


def test_esc_cancels_the_analysis_and_a_new_model_clears_the_table(qtbot, window, load, demo, st_folder):
    view = window.analysis
    with qtbot.waitSignal(view.analyzed, timeout=TIMEOUT):
        window.plan_actions.analyze()
    assert view.model.rowCount() == len(demo.tensors)
    gate = threading.Event()

    def slow_job(model, plan, presets):
        while not gate.wait(0.01):
            yield Progress(1, 10, "analyzing slowly")
        return {"Plan": []}

    view.job = slow_job
    window.plan_actions.analyze()
    assert view.model.rowCount() == 0  # the old results went with the new run
    qtbot.waitUntil(lambda: view.worker.is_busy(), timeout=5000)
    assert window.act_cancel.shortcut().toString() == "Esc"
    with qtbot.waitSignal(view.worker.cancelled, timeout=5000):
        window.act_cancel.trigger()
    gate.set()
    assert view.model.rowCount() == 0 and not view.worker.is_busy()
    view.job = analysis_job
    with qtbot.waitSignal(view.analyzed, timeout=TIMEOUT):
        window.plan_actions.analyze()
    load(window, st_folder)
    assert view.model.rowCount() == 0 and "No analysis yet" in view.summary.text()


def test_integer_tensors_are_left_out_of_the_analysis(qtbot, window, load, tmp_path):
    import json

    import numpy as np
    from safetensors.numpy import save_file

    folder = tmp_path / "bert-like"
    folder.mkdir()
    rng = np.random.default_rng(1)
    save_file({"embeddings.position_ids": np.arange(64, dtype=np.int64)[None, :],
               "encoder.layer.0.dense.weight": rng.standard_normal((32, 64), dtype=np.float32),
               "encoder.layer.0.norm.weight": np.ones(64, np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    model = load(window, folder)
    view = window.analysis
    with qtbot.waitSignal(view.analyzed, timeout=TIMEOUT):
        window.plan_actions.analyze(["Q8_0", "Q4_0"])
    assert view.model.rowCount() == 2 * (len(model.tensors) - 1)
    assert "embeddings.position_ids" not in view.row_names()
    assert "1 tensor of an integer type" in view.summary.text()


def test_the_pivot_and_chart_are_not_rebuilt_on_every_row(qtbot, window, demo, monkeypatch):
    view = window.analysis
    rows = [ErrorStats(f"blk.{i}.attn_q.weight", "Q4_0", 1024, 576, 4.5, 0.01, 0.05, 0.1, 20.0 + i, 0.99)
            for i in range(30)]

    def job(model, plan, presets, sink):
        for i, r in enumerate(rows):
            for label in presets:
                sink.put((label, r))
            yield Progress(i + 1, len(rows), r.name)
        return {label: list(rows) for label in presets}

    calls = []
    real = view._refresh_views
    monkeypatch.setattr(view, "_refresh_views", lambda: (calls.append(view.tabs.currentIndex()), real()))
    view.job = job
    view.tabs.setCurrentIndex(0)
    with qtbot.waitSignal(view.analyzed, timeout=TIMEOUT):
        view.start(window.plan.plan, ["Q8_0", "Q4_0"])
    assert view.model.rowCount() == 60 and view.pivot.rowCount() == 30
    assert calls == [0]  # once, with the result: not per row while the table tab was shown
    view.tabs.setCurrentIndex(2)
    assert len(calls) == 1  # nothing new arrived since: no rebuild


def test_the_dialogs_importance_matrix_reaches_the_job(qtbot, window, demo, monkeypatch, tmp_path):
    view = window.analysis
    got = {}

    def job(model, plan, presets, sink, imatrix_path=None):
        got["imatrix_path"] = imatrix_path
        yield Progress(1, 1, "done")
        return {"Plan": []}

    view.job = job
    dlg = window.plan_actions.analyze_dialog()
    dlg.imatrix.setText(str(tmp_path / "m.imatrix.gguf"))
    with qtbot.waitSignal(view.analyzed, timeout=TIMEOUT):
        dlg.box.button(QDialogButtonBox.StandardButton.Ok).click()
    assert got["imatrix_path"] == str(tmp_path / "m.imatrix.gguf")
    assert "weighted by m.imatrix.gguf" in view._what


def test_the_analyze_dialog_offers_every_preset_before_their_sizes_arrive(qtbot, window, demo):
    assert window.plan_bar.preset_sizes == {}  # computed a moment after the model is shown
    dlg = window.plan_actions.analyze_dialog()
    names = [dlg.list.topLevelItem(i).text(0) for i in range(dlg.list.topLevelItemCount())]
    assert {"Q8_0", "Q4_0", "Q4_K_M"} <= set(names)
    qtbot.waitUntil(lambda: bool(window.plan_bar.preset_sizes), timeout=10_000)  # and then they arrive
    dlg.close()
