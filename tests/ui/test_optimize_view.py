"""The Optimize tab: size-versus-KLD chart, sensitivity heatmap and the Optimize dialog (issue 15 §4).

The sensitivity tables here are built by hand over the demo model's groups with made-up but distinct values, so
every prediction below is a sum the test computes itself from the plan entries and the table.
"""
from __future__ import annotations

import pytest
from PySide6.QtCore import QPointF, Qt

from workbench import WorkbenchError
from workbench.optimize.sensitivity import Group, SensitivityTable
from workbench.plan import PRESETS, Plan

TYPES = ["F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL"]
ERR = {"F16": 0.0, "Q8_0": 1e-5, "Q5_1": 2e-3, "Q5_0": 3e-3, "Q4_1": 6e-3, "Q4_0": 9e-3, "IQ4_NL": 7e-3}
KIND = {"attn_q": 1.0, "attn_k": 1.5, "attn_v": 4.0, "attn_output": 2.0, "ffn_gate": 1.2, "ffn_up": 1.1,
        "ffn_down": 3.0, "token_embd": 0.5, "output": 6.0}


def gkey(gguf_name: str) -> str:
    return gguf_name[:-len(".weight")]


def make_table(model) -> SensitivityTable:
    plan = Plan(model, "Q8_0")
    groups = [Group(gkey(e.gguf_name), [e.name], e.n_params) for e in plan.entries if len(e.shape) == 2]
    measured = {}
    for g in groups:
        layer = int(g.key.split(".")[1]) if g.key.startswith("blk.") else 0
        kind = g.key.split(".")[-1]
        for t in TYPES:
            measured[(g.key, t)] = ERR[t] * KIND[kind] * (1 + layer)
    return SensitivityTable(model=str(model.path), reference="Q8_0", types=list(TYPES), groups=groups,
                            measured=measured, n_tokens=512)


def hand_prediction(table: SensitivityTable, plan: Plan) -> float:
    total = 0.0
    for e in plan.entries:
        if len(e.shape) == 2:
            total += table.measured[(gkey(e.gguf_name), e.type)]
    return total


@pytest.fixture
def opt(window, load, demo_path, qtbot):
    """The window with the demo model, its presets' sizes computed, a hand-made table, the Optimize tab shown."""
    model = load(window, demo_path)
    view = window.optimize_view
    assert not view.presets and not view.preset_worker.is_busy()  # not computed while the tab is hidden
    window.tabs.setCurrentWidget(window.optimize_page)  # shown: the presets' sizes are computed
    qtbot.waitUntil(lambda: bool(view.presets), timeout=10_000)
    view.set_table(make_table(model))
    return window


def test_chart_points_are_the_tables_predictions_for_presets(opt):
    view = opt.optimize_view
    table, model = view.table, opt.model
    scatter = view.chart.scatters["preset"]
    drawn = {name: (s.pos().x(), s.pos().y()) for s in scatter.points()
             for name in view.chart.points[int(s.data())].label.split(" = ")}  # "Q4_0 = Q2_K": the same plan
    presets = [p for p in PRESETS if p not in ("F32", "F16", "BF16")]  # predicted 0 (above the reference)
    assert set(drawn) == set(presets)
    for name in presets:
        plan = Plan(model, name)
        x, y = drawn[name]
        assert x == pytest.approx(plan.bits_per_weight)
        assert 10 ** y == pytest.approx(hand_prediction(table, plan), rel=1e-9)
    # the file-size axis: x is the plan's size in MiB
    view.chart.set_x_mode("size")
    scatter = view.chart.scatters["preset"]
    xs = {name: s.pos().x() for s in scatter.points() for name in view.chart.points[int(s.data())].label.split(" = ")}
    assert xs["Q4_0"] == pytest.approx(Plan(model, "Q4_0").nbytes / 2**20)


def _click_point(qtbot, chart, label):
    for kind, item in chart.scatters.items():
        for spot in item.points():
            if chart.points[int(spot.data())].label == label:
                vb = chart.plot.getPlotItem().getViewBox()
                scene = vb.mapViewToScene(QPointF(spot.pos().x(), spot.pos().y()))
                pos = chart.plot.mapFromScene(scene)
                qtbot.mouseClick(chart.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)
                return
    raise AssertionError(f"no point {label}")


def test_clicking_a_point_applies_its_plan_and_undo_restores(opt, qtbot):
    view, ctl = opt.optimize_view, opt.plan
    before = ctl.plan.types()
    assert ctl.plan.preset != "Q5_0"
    with qtbot.waitSignal(view.chart.point_activated, timeout=3000) as blocker:
        _click_point(qtbot, view.chart, "Q5_0")
    assert blocker.args[0].label == "Q5_0"
    assert ctl.plan.preset == "Q5_0"
    assert ctl.plan.types() == Plan(opt.model, "Q5_0").types() != before
    qtbot.keyClick(opt, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert ctl.plan.types() == before


def test_current_and_optimized_points(opt):
    view, ctl = opt.optimize_view, opt.plan
    current = [p for p in view.chart.points if p.kind == "current"]
    assert len(current) == 1 and current[0].kld == pytest.approx(hand_prediction(view.table, ctl.plan))

    class Res:  # the optimizer's result shape
        plan = Plan(opt.model, "Q8_0", overrides={"blk.0.attn_v.weight": "Q4_0"})
        nbytes, predicted_kld = plan.nbytes, 0.123
        frontier = [(1000, 0.5), (2000, 0.1)]

    class Run:
        table, result = view.table, Res()

    view.add_run(Run())
    pts = [p for p in view.chart.points if p.kind == "optimized"]
    assert [(p.nbytes, p.kld) for p in pts] == [(Res.plan.nbytes, 0.123)]
    view.apply_point(pts[0])
    assert ctl.plan.type_of("blk.0.attn_v.weight") == "Q4_0"
    assert ctl.plan.type_of("blk.1.attn_v.weight") == Plan(opt.model, "Q8_0").type_of("blk.1.attn_v.weight")


def test_compared_levels_are_measured_points(opt, qtbot):
    from workbench.infer.compare import CompareResult, LevelResult

    view, ctl = opt.optimize_view, opt.plan
    base = LevelResult("F32", "stored", 1000, 32.0, 1000)
    q4 = LevelResult("Q4_0", "Q4_0", 276480, 4.9, 0, stats={"kld_mean": 0.0421})
    cur = LevelResult("Current plan", "Q4_K_M", 347648, 6.16, 0, stats={"kld_mean": 0.0123})
    with qtbot.waitSignal(opt.compared):
        opt.compare_view.compared.emit(CompareResult("m", "llama", "causal", 64, 1, 32, None, base, [q4, cur]))
    pts = {p.label: p for p in view.chart.points if p.kind == "compared"}
    assert {k: (p.nbytes, p.bpw, p.kld) for k, p in pts.items()} == {
        "Q4_0": (276480, 4.9, 0.0421), "Current plan": (347648, 6.16, 0.0123)}
    y = {view.chart.points[int(s.data())].label: s.pos().y() for s in view.chart.scatters["compared"].points()}
    assert 10 ** y["Q4_0"] == pytest.approx(0.0421)
    view.apply_point(pts["Q4_0"])  # a level named after a preset applies that preset
    assert ctl.plan.preset == "Q4_0"
    n = ctl.undo_stack.count()
    view.apply_point(pts["Current plan"])  # no plan to apply: nothing happens
    assert ctl.undo_stack.count() == n


def test_heatmap_cells_show_planned_types_and_step_one_group(opt, qtbot):
    view, ctl = opt.optimize_view, opt.plan
    hm = view.heatmap
    m = hm.model
    types = ctl.plan.types()
    for (r, c), key in m.cells.items():
        assert m.data(m.index(r, c)) == types[key + ".weight"]
    # the colour follows the value at the planned type: the most sensitive group is the darkest cell
    vals = {k: m.value(k) for k in m.cells.values()}
    worst = max(vals, key=vals.get)
    best = min(vals, key=vals.get)
    dark = m.data(m.index_of(worst), Qt.ItemDataRole.BackgroundRole).lightness()
    light = m.data(m.index_of(best), Qt.ItemDataRole.BackgroundRole).lightness()
    assert dark < light
    key = "blk.1.attn_q"
    assert types[key + ".weight"] == "Q5_0"  # Q4_K_M on 128-column rows falls back to Q5_0
    # raise: the next type with more bits among the table's types (Q5_0 -> Q5_1); only that group changes
    hm.view.setCurrentIndex(m.index_of(key))
    hm.view.setFocus()
    qtbot.keyClick(hm.view, Qt.Key.Key_Plus)
    after = ctl.plan.types()
    changed = {n for n in after if after[n] != types[n]}
    assert changed == {key + ".weight"} and after[key + ".weight"] == "Q5_1"
    assert m.data(m.index_of(key)) == "Q5_1"
    # lower twice from Q5_1 through the context menu's action: Q5_0 (22 bytes per 32 weights), Q4_1 (20)
    for expected in ("Q5_0", "Q4_1"):
        menu = hm.build_menu(key)
        menu.actions()[1].trigger()
        assert ctl.plan.type_of(key + ".weight") == expected
    assert ctl.plan.type_of("blk.0.attn_q.weight") == types["blk.0.attn_q.weight"]
    qtbot.keyClick(opt, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert ctl.plan.type_of(key + ".weight") == "Q5_0"
    # a group at Q8_0 goes up to F16 (more bytes, though its name sorts first), and no further
    v1 = "blk.1.attn_v"
    assert ctl.plan.type_of(v1 + ".weight") == "Q8_0"
    assert hm.step(v1, +1) == "F16" and ctl.plan.type_of(v1 + ".weight") == "F16"
    assert hm.step(v1, +1) is None and ctl.plan.type_of(v1 + ".weight") == "F16"


def test_dialog_passes_budget_and_types_to_the_job(opt, qtbot, tmp_path):
    view = opt.optimize_view
    dialog = opt.show_optimize()
    seen = {}
    table = view.table

    def fake_job(model, options, sink, cancel):
        from workbench import Progress

        seen["model"], seen["options"] = model, options
        sink.put(SensitivityTable(table.model, table.reference, table.types, table.groups, {}))
        yield Progress(1, 3, "measuring")
        sink.put(("blk.0.attn_v", "Q4_0", 0.25))
        yield Progress(2, 3, "measuring")

        class Res:
            plan = Plan(model, "Q4_0")
            nbytes, predicted_kld, frontier = plan.nbytes, 0.01, [(plan.nbytes, 0.01)]

        from ui.dialogs.optimize_dialog import OptimizeRun
        return OptimizeRun(table, Res(), options)

    dialog.job = fake_job
    assert "Q4_K" not in dialog.type_checks  # K-quant blocks do not fit the demo's 128-column rows
    assert {"Q8_0", "Q4_0", "IQ4_NL"} <= set(dialog.type_checks)
    dialog.budget_combo.setCurrentIndex(dialog.budget_combo.findData("size"))
    dialog.size_spin.setValue(1.5)
    for t, box in dialog.type_checks.items():
        box.setChecked(t in ("Q8_0", "Q4_0"))
    dialog.estimate_radio.setEnabled(True)
    dialog.estimate_radio.setChecked(True)
    streamed, at_progress = [], []
    dialog.streamed.connect(streamed.append)
    dialog.worker.progress.connect(lambda d, t, m: at_progress.append((d, len(streamed))))
    with qtbot.waitSignal(dialog.finished_result, timeout=5000):
        dialog.run()
    opts = seen["options"]
    assert seen["model"] is opt.model
    assert opts.budget == "size" and opts.target_bytes == int(1.5 * 2**20) and opts.target_bpw is None
    assert opts.types == ["Q8_0", "Q4_0"] and opts.measure is False
    assert streamed[1] == ("blk.0.attn_v", "Q4_0", 0.25)
    assert any(n > 0 for _d, n in at_progress)  # drained on progress while the job runs, not only at the end
    assert [p.kind for p in view.chart.points].count("optimized") == 1
    # bpw and fit budgets
    dialog.budget_combo.setCurrentIndex(dialog.budget_combo.findData("fit"))
    dialog.ctx_spin.setValue(2048)
    o = dialog.options()
    assert (o.fit_bytes, o.n_ctx, o.target_bytes) == (int(1.5 * 2**20), 2048, None)
    dialog.budget_combo.setCurrentIndex(dialog.budget_combo.findData("bpw"))
    dialog.bpw_spin.setValue(5.25)
    assert dialog.options().target_bpw == 5.25


def test_real_estimate_job_fills_the_chart(opt, qtbot):
    """The dialog's real job (estimate only, no forward pass) on the demo model: the optimized plan fits the
    budget, is drawn with the frontier, and applies as one undoable step."""
    from ui.dialogs.optimize_dialog import available

    if not all(available().values()):
        pytest.fail("workbench.optimize has no estimate/measure/optimize")
    view, ctl = opt.optimize_view, opt.plan
    dialog = opt.show_optimize()
    budget = int(round(0.29 * 2**20))  # between Q4_0's 270 KiB and Q5_0's 320 KiB
    dialog.budget_combo.setCurrentIndex(dialog.budget_combo.findData("size"))
    dialog.size_spin.setValue(0.29)
    dialog.estimate_radio.setChecked(True)
    with qtbot.waitSignal(dialog.finished_result, timeout=20_000) as blocker:
        dialog.run()
    run = blocker.args[0]
    assert run.result.nbytes <= budget
    assert view.table is run.table and not run.table.measured
    (point,) = [p for p in view.chart.points if p.kind == "optimized"]
    assert point.nbytes == run.result.nbytes == run.result.plan.nbytes
    assert len(view.chart.frontier) > 1
    before = ctl.plan.types()
    view.apply_point(point)
    assert ctl.plan.types() == run.result.plan.types() != before
    assert ctl.plan.nbytes <= budget
    ctl.undo_stack.undo()
    assert ctl.plan.types() == before


def test_hover_names_the_point_and_tables_round_trip(opt, qtbot, tmp_path):
    view = opt.optimize_view
    chart = view.chart
    item = chart.scatters["preset"]
    spot = next(s for s in item.points() if chart.points[int(s.data())].label == "Q5_0")
    # the tip pyqtgraph shows when the pointer is over the spot (offscreen Qt delivers no hover events)
    tip = item.opts["tip"](x=spot.pos().x(), y=spot.pos().y(), data=spot.data())
    assert tip.startswith("Q5_0 (preset)") and f"{Plan(opt.model, 'Q5_0').bits_per_weight:.2f} bits" in tip
    assert "mean KLD" in tip and "Click to apply" in tip
    path = tmp_path / "sens.json"
    view.save(path)
    before = view.table
    view.set_table(None)
    assert view.heatmap.model.rowCount() == 0 and not view.chart.scatters
    loaded = view.load(path)
    assert loaded.measured == before.measured and [g.key for g in loaded.groups] == [g.key for g in before.groups]
    assert view.heatmap.model.rowCount() == 3  # layers 0 and 1, and the groups outside the layers
    other = SensitivityTable("elsewhere.gguf", "Q8_0", ["Q4_0"], [Group("blk.0.attn_q", ["no.such.tensor"], 1)])
    bad = tmp_path / "other.json"
    bad.write_text(other.to_json(), encoding="utf-8")
    with pytest.raises(WorkbenchError, match="no.such.tensor"):
        view.load(bad)
    view.add_streamed(other)  # a late item of a job started on another model: ignored
    assert view.table is loaded


@pytest.fixture(scope="module")
def demo_ggufs(tmp_path_factory, demo_path):
    """The demo model requantized by the CLI to Q4_0 and Q5_0, and a GGUF of another model (one tensor fewer)."""
    from workbench.cli import main

    out = tmp_path_factory.mktemp("files")
    paths = {}
    for preset in ("Q4_0", "Q5_0"):
        paths[preset] = out / f"demo-{preset}.gguf"
        assert main(["convert", str(demo_path), "--type", preset, "-o", str(paths[preset]), "-q"]) == 0
    return paths


def test_gguf_files_of_the_model_are_points_and_clicking_plans_their_types(opt, qtbot, demo_ggufs, tmp_path):
    from workbench.formats import open_model

    view, ctl = opt.optimize_view, opt.plan
    with qtbot.waitSignal(view.files_worker.result, timeout=10_000):
        view.add_files([demo_ggufs["Q4_0"], demo_ggufs["Q5_0"]])
    pts = {p.label: p for p in view.chart.points if p.kind == "file"}
    assert set(pts) == {"demo-Q4_0", "demo-Q5_0"}
    for preset, path in demo_ggufs.items():
        m = open_model(path)
        try:
            truth = {t.name: t.dtype for t in m.tensors}
            nbytes = sum(t.nbytes for t in m.tensors)
        finally:
            m.close()
        p = pts[f"demo-{preset}"]
        assert p.nbytes == nbytes and p.bpw == pytest.approx(8 * nbytes / ctl.plan.n_params)
        # the KLD the table predicts for the file's own tensor types, summed by hand
        expect = sum(view.table.measured[(gkey(n), t)] for n, t in truth.items()
                     if n.endswith(".weight") and (gkey(n), t) in view.table.measured)
        assert p.kld == pytest.approx(expect)
        assert "demo-" + preset in [lb.toPlainText() for lb in view.chart.labels]
    # clicking a file's point plans exactly the file's types, one undoable step
    before = ctl.plan.types()
    view.apply_point(pts["demo-Q4_0"])
    m = open_model(demo_ggufs["Q4_0"])
    try:
        assert {e.gguf_name: e.type for e in ctl.plan.entries} == {e.gguf_name: m.info(e.gguf_name).dtype
                                                                    for e in ctl.plan.entries}
    finally:
        m.close()
    qtbot.keyClick(opt, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert ctl.plan.types() == before
    # a file of another model is read but not drawn, and the tab says why
    other = tmp_path / "other.gguf"
    other.write_bytes(b"not a gguf at all")
    with qtbot.waitSignal(view.files_worker.result, timeout=10_000):
        view.add_files([other])
    assert "other.gguf" in view.summary.text()
    from builders import write_gguf_model

    another = tmp_path / "another-model.gguf"
    write_gguf_model(another)
    with qtbot.waitSignal(view.files_worker.result, timeout=10_000):
        view.add_files([another])
    assert "another-model.gguf is not a GGUF of the opened model: it has no tensor" in view.summary.text()
    assert {p.label for p in view.chart.points if p.kind == "file"} == {"demo-Q4_0", "demo-Q5_0"}


def test_a_gguf_opened_before_is_a_point_of_the_next_models_chart(opt, qtbot, load, demo_ggufs, demo_path):
    """Open the Q5_0 file, then the demo model again: the Q5_0 file is drawn on the demo model's chart."""
    view = opt.optimize_view
    load(opt, demo_ggufs["Q5_0"])
    assert str(demo_ggufs["Q5_0"]) in view.files
    model = load(opt, demo_path)
    qtbot.waitUntil(lambda: bool(view.presets), timeout=10_000)
    view.set_table(make_table(model))
    assert [p.label for p in view.chart.points if p.kind == "file"] == ["demo-Q5_0"]
    assert view.files[str(demo_ggufs["Q5_0"])].mismatch(opt.plan.plan) is None


def test_the_status_bars_cancel_stops_the_jobs_measuring_loop(opt, qtbot):
    """Cancel from the status bar (not the dialog's button) reaches the event the job's inner loops watch."""
    import threading

    from workbench import Progress

    dialog = opt.show_optimize()
    seen: dict = {}
    running = threading.Event()

    def fake_job(model, options, sink, cancel):
        yield Progress(0, 1, "measuring")
        running.set()
        seen["stopped"] = cancel.wait(5)  # a measuring loop between progress steps
        return None

    dialog.job = fake_job
    for t, box in dialog.type_checks.items():
        box.setChecked(t in ("Q8_0", "Q4_0"))
    dialog.run()
    qtbot.waitUntil(running.is_set, timeout=5000)
    qtbot.waitUntil(lambda: opt.status.active_worker() is dialog.worker, timeout=5000)
    opt.status.cancel_active()
    qtbot.waitUntil(lambda: "stopped" in seen, timeout=6000)
    assert seen["stopped"] is True


def test_a_hidden_chart_draws_when_shown(opt, qtbot):
    """Points set while another tab shows are drawn when the Optimize tab comes back, and not before."""
    view = opt.optimize_view
    opt.tabs.setCurrentIndex(0)
    assert not view.chart.isVisible()
    view.set_table(None)  # no table: no predicted points
    assert "preset" in view.chart.scatters  # not drawn yet: the old drawing stays until the tab shows
    opt.tabs.setCurrentWidget(opt.optimize_page)
    assert "preset" not in view.chart.scatters
    view.set_table(make_table(opt.model))
    assert "preset" in view.chart.scatters
