"""The Compare tab: a comparison run through the view shows the core's numbers, curves and texts; cancel,
exports, levels from the current plan and plan files, encoders, and the window's wiring."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QTextCursor

from workbench import open_model
from workbench.infer.compare import PROGRESS_STEPS, CompareResult, LevelResult, compare
from workbench.infer.weights import plan_label
from workbench.plan import Plan
from workbench.progress import run
from ui.pages.compare_view import CAUSAL, EMBEDDING, KLD_FLOOR, CompareView, Level

TINY = Path(__file__).resolve().parents[1] / "core" / "data" / "infer" / "llama"
TIMEOUT = 60_000
SETTINGS = dict(n_ctx=64, max_windows=2, max_tokens=16)
DETERMINISTIC = ("label", "plan", "nbytes", "bits_per_weight", "memory", "ppl", "generated_ids", "generated_text",
                 "divergence", "divergence_char", "repetition")


@pytest.fixture(scope="module")
def tiny():
    return open_model(TINY)


@pytest.fixture(scope="module")
def expected(tiny):
    return run(compare(tiny, ["Q8_0", "Q4_0"], **SETTINGS))


@pytest.fixture
def view(qtbot, tiny):
    v = CompareView()
    qtbot.addWidget(v)
    v.resize(1200, 800)
    v.show()
    v.set_model(tiny)
    v.ctx_spin.setValue(SETTINGS["n_ctx"])
    v.windows_spin.setValue(SETTINGS["max_windows"])
    v.tokens_spin.setValue(SETTINGS["max_tokens"])
    yield v
    v.shutdown()


def run_view(qtbot, view, levels):
    view.set_levels(levels)
    with qtbot.waitSignal(view.compared, timeout=TIMEOUT) as blocker:
        view.run()
    return blocker.args[0]


def test_a_comparison_shows_the_core_result(qtbot, view, expected, monkeypatch):
    monkeypatch.setattr("ui.worker._PROGRESS_INTERVAL", 0.0)  # every progress step reaches the view
    messages, bars = [], []

    def on_progress(done, total, message):
        messages.append(message)
        bars.append([view.base_bar.value()] + [b.value() for b in view.bars])

    view.worker.progress.connect(on_progress)
    view.set_levels(["Q8_0", None, "Q4_0"])  # an empty row between: rows 1 and 3 run
    with qtbot.waitSignal(view.compared, timeout=TIMEOUT) as blocker:
        view.run()
    result: CompareResult = blocker.args[0]
    assert result is view.result
    # the same numbers as the core's own run
    for got, want in zip([result.base, *result.levels], [expected.base, *expected.levels]):
        for key in DETERMINISTIC:
            a, b = getattr(got, key), getattr(want, key)
            assert (a == pytest.approx(b, rel=1e-6)) if isinstance(b, float) else a == b, key
        assert got.kld_values == pytest.approx(want.kld_values, rel=1e-5, abs=1e-9)
    assert [r.label for r in result.levels] == ["Q8_0", "Q4_0"]
    # per-level progress: the messages name the levels, the bars of the running rows fill in order
    assert any("Q8_0" in m for m in messages) and any("Q4_0" in m for m in messages)
    assert any("base" in m for m in messages)
    assert view.base_bar.value() == view.bars[0].value() == view.bars[2].value() == PROGRESS_STEPS
    assert view.bars[1].value() == 0 and view.bars[3].value() == 0  # rows that did not run
    for base, b0, b1, b2, b3 in bars:
        assert b1 == 0 and b3 == 0
        assert (base == PROGRESS_STEPS or b0 == 0) and (b0 == PROGRESS_STEPS or b2 == 0)  # one after the other
    assert any(0 < b0 < PROGRESS_STEPS for _base, b0, _b1, _b2, _b3 in bars)  # a level's bar in between
    assert view.run_button.isEnabled() and not view.cancel_button.isEnabled()

    # the table: one row per level (base first) holding the result's values, displayed with their units
    m = view.table_model
    assert m.rowCount() == 3 and [c.key for c in m.columns] == [c.key for c in CAUSAL]
    for row, r in enumerate([result.base, *result.levels]):
        s = r.stats or {}
        want = {"level": r.label, "size": r.nbytes, "bpw": r.bits_per_weight, "ppl": r.ppl, "memory": r.memory,
                "ln_ppl_ratio": s.get("ln_ppl_ratio"), "kld_mean": s.get("kld_mean"), "kld_p99": s.get("kld_p99"),
                "same_top": s.get("same_top"), "dp_rms": s.get("dp_rms"), "prompt_tok_s": r.prompt_tokens_per_s,
                "gen_tok_s": r.gen_tokens_per_s}
        for key, value in want.items():
            assert m.value(row, key) == value, (row, key)
    q4 = result.levels[1]
    idx = lambda key: view.proxy.index(2, m.column(key))  # noqa: E731
    assert idx("kld_mean").data() == f"{q4.stats['kld_mean']:.6f}"
    assert idx("same_top").data() == f"{100 * q4.stats['same_top']:.2f} %"
    assert idx("ppl").data() == f"{q4.ppl:.4f}"
    assert view.proxy.index(0, m.column("kld_mean")).data() == ""  # the base has no KLD
    assert view.table.isColumnHidden(m.column("plan"))  # plan == label for presets
    # sorting by a column orders the rows by value, the base's empty cell last
    view.table.sortByColumn(m.column("kld_mean"), Qt.SortOrder.DescendingOrder)
    labels = [view.proxy.index(r, 0).data() for r in range(3)]
    worst = max(result.levels, key=lambda r: r.stats["kld_mean"])
    assert labels[0] == worst.label and labels[-1] == "F32"

    # the plot: one CDF curve per level over its sorted KLD values (log x), distinct colours
    assert len(view.curves) == 2
    for curve, r in zip(view.curves, result.levels):
        x, y = curve.getOriginalDataset()
        v = np.asarray(r.kld_values)
        np.testing.assert_allclose(x, np.maximum(v, KLD_FLOOR))  # fewer values than CDF_POINTS: all of them
        np.testing.assert_allclose(y, np.arange(1, v.size + 1) / v.size)
    assert len({c.opts["pen"].color().name() for c in view.curves}) == 2
    assert [label.text.split()[0] for _item, label in view.legend.items] == ["Q8_0", "Q4_0"]
    assert view.plot.getPlotItem().ctrl.logXCheck.isChecked()

    # the texts: base + one column per level, the divergent part highlighted from divergence_char
    assert [c.result.label for c in view.columns] == ["F32", "Q8_0", "Q4_0"]
    for col, r in zip(view.columns, [result.base, *result.levels]):
        assert col.text.toPlainText() == r.generated_text
        assert col.badge.isVisibleTo(view) == r.repetition
    assert view.columns[0].highlighted_from() is None
    diverged = [c for c in view.columns[1:] if c.result.divergence is not None]
    assert diverged  # random tiny weights: at least Q4_0 differs from the base
    for col in diverged:
        assert col.highlighted_from() == col.result.divergence_char
        assert col.note.text() == f"differs from token {col.result.divergence + 1}"


def test_cancel_stops_the_job_and_shows_nothing(qtbot, view, tiny, drained):
    seen = {}
    gate = threading.Event()

    def slow_job(model, levels, cancel, **kw):
        seen["cancel"] = cancel
        job = compare(model, levels, cancel=cancel, **kw)
        yield next(job)
        gate.wait(20)  # held here until the test has cancelled
        seen["after"] = cancel()
        return (yield from job)

    view.job = slow_job
    view.set_levels(["Q8_0", "Q4_0"])
    with qtbot.waitSignal(view.worker.progress, timeout=TIMEOUT):
        view.run()
    assert view.is_running() and view.cancel_button.isEnabled()
    with qtbot.waitSignal(view.worker.cancelled, timeout=5000):
        view.cancel_button.click()
    gate.set()
    assert view.worker.wait(10_000)  # the thread stopped
    assert seen["cancel"]() and seen.get("after", True)  # the core job's cancel flag is set
    drained(view.worker)  # anything the stopped job still sent has been delivered (and dropped)
    assert view.result is None and not view.results.isVisible()
    assert view.table_model.rowCount() == 0 and view.curves == [] and view.columns == []
    assert not view.is_running() and view.run_button.isEnabled() and not view.cancel_button.isEnabled()
    assert all(b.value() == 0 for b in (view.base_bar, *view.bars))
    assert view.status.text() == "Cancelled."


def test_exports_write_the_core_texts(qtbot, view, tmp_path):
    result = run_view(qtbot, view, ["Q4_0"])
    for fmt, want in (("csv", result.to_csv()), ("json", result.to_json()), ("md", result.to_markdown())):
        path = tmp_path / f"out.{fmt}"
        with qtbot.waitSignal(view.exported, timeout=10_000) as blocker:
            view.export(fmt, path)
        assert blocker.args[0] == str(path)
        assert path.read_text(encoding="utf-8") == want
    assert json.loads((tmp_path / "out.json").read_text())["levels"][0]["label"] == "Q4_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.json", "out.md"]  # no temp files left
    view.copy_button.click()
    assert QGuiApplication.clipboard().text() == result.to_markdown()
    # a folder that cannot be written: an error message, no signal
    with qtbot.assertNotEmitted(view.exported):
        with qtbot.waitSignal(view.export_worker.error, timeout=10_000):
            view.export("csv", tmp_path / "out.csv" / "x.csv")
    assert "cannot write" in view.status.text() or "Not a directory" in view.status.text()


def test_current_plan_and_plan_file_levels(qtbot, view, tiny, tmp_path):
    current = Plan(tiny, "Q4_0", overrides={"model.layers.0.mlp.down_proj.weight": "Q8_0"})
    view.set_plan(current)
    saved = Plan(tiny, "Q8_0", rules=[("ffn_up", "Q4_0")])
    path = tmp_path / "my-plan.json"
    saved.save(path)
    view.windows_spin.setValue(1)
    view.prompt_edit.setText("")  # no generation: no text columns
    result = run_view(qtbot, view, ["current", str(path)])
    assert [r.plan for r in result.levels] == [plan_label(current), plan_label(saved)]
    assert result.levels[0].nbytes == current.nbytes and result.levels[1].nbytes == saved.nbytes
    assert result.levels[1].label == "my-plan"
    assert not view.table.isColumnHidden(view.table_model.column("plan"))
    assert view.columns == [] and not view.texts_box.isVisible() and len(view.curves) == 2
    assert view.pickers[1].currentText() == "my-plan.json (plan file)"
    # editing the plan afterwards does not change what the run used (a copy was taken)
    current.set_state("Q8_0", [], {})
    assert result.levels[0].plan == "Q4_0 + 1 override"


def test_embedding_results_show_cosines_and_no_plot_or_texts(qtbot, view):
    def level(label, cos, kind_stats=None):
        return LevelResult(label=label, plan=label, nbytes=1000, bits_per_weight=8.5, memory=4000,
                           prompt_tokens_per_s=100.0, embedding_cosine=cos)

    result = CompareResult(model="m", architecture="bert", kind="embedding", n_ctx=0, n_windows=0, n_tokens_scored=0,
                           prompt=None, base=level("F32", {"mean": 1.0, "min": 1.0, "max": 1.0}),
                           levels=[level("Q8_0", {"mean": 0.9995, "min": 0.998, "max": 0.99999})])
    with qtbot.waitSignal(view.compared):
        view.show_result(result)
    m = view.table_model
    assert [c.key for c in m.columns] == [c.key for c in EMBEDDING]
    assert m.value(1, "cos_mean") == 0.9995 and view.proxy.index(1, m.column("cos_min")).data() == "0.998000"
    assert not view.bottom.isVisible() and view.curves == [] and view.columns == []
    assert "sentence encoder" in view.summary.text()
    # an encoder's settings: no prompt, windows or generation, the levels and the text stay
    assert view.prompt_edit.isEnabled()
    view.set_model(open_model(TINY.parent / "bert"))
    assert not view.prompt_edit.isEnabled() and not view.ctx_spin.isEnabled() and not view.tokens_spin.isEnabled()
    assert view.pickers[0].isEnabled() and view.calib_combo.isEnabled() and view.run_button.isEnabled()


def test_level_pickers_list_presets_with_sizes_and_a_new_model_clears(qtbot, view, tiny, st_folder):
    picker = view.pickers[0]
    texts = [picker.itemText(i) for i in range(picker.count())]
    q8 = Plan(tiny, "Q8_0")
    assert texts[0] == "—" and "Current plan" in texts and texts[-1] == "Load plan…"
    assert any(t.startswith("Q8_0") and f"{q8.bits_per_weight:.2f} bpw" in t for t in texts)
    assert [p.level() for p in view.pickers] == [Level("preset", "Q8_0"), Level("preset", "Q4_K_M"),
                                                 Level("none"), Level("none")]
    run_view(qtbot, view, ["Q8_0"])
    assert view.results.isVisible()
    # another model while a run is going: the job is cancelled and the results cleared
    view.run()
    assert view.is_running()
    view.set_model(open_model(st_folder))
    assert not view.is_running() and view.result is None and not view.results.isVisible()
    assert view.table_model.rowCount() == 0 and view.run_button.isEnabled()


def test_the_window_has_compare_and_generate_tabs(qtbot, window, load):
    tabs = [window.tabs.tabText(i) for i in range(window.tabs.count())]
    assert tabs[3:5] == ["Compare", "Generate"]
    assert window.act_tab_compare.shortcut().toString() == "Ctrl+4"
    assert window.act_tab_generate.shortcut().toString() == "Ctrl+5"
    window.act_tab_generate.trigger()
    assert window.tabs.currentWidget() is window.generate_page
    tools = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Tools")
    assert window.act_compare_levels in tools.actions()
    view_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    assert window.act_tab_compare in view_menu.actions() and window.act_tab_generate in view_menu.actions()
    window.act_compare_levels.trigger()
    assert window.tabs.currentWidget() is window.compare_page
    model = load(window, TINY)
    window.tabs.setCurrentIndex(0)
    assert window.compare_view.model is model and window.generate_panel.model is model
    assert window.compare_view.plan is window.plan.plan
    with qtbot.waitSignal(window.compared, timeout=TIMEOUT) as blocker:
        window.compare_with(["Q4_0"], n_ctx=32, max_windows=1, max_tokens=4)
    assert [r.label for r in blocker.args[0].levels] == ["Q4_0"] and blocker.args[0].n_ctx == 32
    assert window.tabs.currentWidget() is window.compare_page  # compare_with shows the Compare tab
    # Esc (the status bar's Cancel) stops a comparison, the core job included
    window.compare_with(["Q8_0"], n_ctx=64, max_windows=2)
    assert window.compare_view.is_running()
    window.act_cancel.trigger()
    assert not window.compare_view.is_running() and window.compare_view._cancel.is_set()
    assert window.compare_view.status.text() == "Cancelled."
    # a run still going when the window closes is cancelled and its thread stopped
    window.compare_with(["Q8_0"], n_ctx=64, max_windows=2)
    assert window.compare_view.is_running()
    window.close()
    assert not window.compare_view.is_running() and window.compare_view.worker.wait(10_000)


def test_a_calibration_file_is_read_in_the_background_and_used(qtbot, view, tiny, tmp_path):
    from workbench.infer.compare import default_calibration_text

    text = default_calibration_text()[2000:4000]
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    with qtbot.waitSignal(view.calib_worker.result, timeout=10_000):
        view.set_calibration(str(path))
    assert view.calibration == (str(path), text)
    assert view.calib_combo.currentText() == f"notes.txt ({len(text):,} characters)"
    view.windows_spin.setValue(1)
    view.prompt_edit.setText("")
    result = run_view(qtbot, view, ["Q4_0"])
    want = run(compare(tiny, ["Q4_0"], text=text, prompt=None, n_ctx=64, max_windows=1))
    assert result.levels[0].ppl == pytest.approx(want.levels[0].ppl, rel=1e-6)
    assert result.base.ppl == pytest.approx(want.base.ppl, rel=1e-6)
    # back to the bundled text
    view.set_calibration(None)
    assert view.calibration is None and view.calib_combo.currentIndex() == 0
    # a file that cannot be read: the message, and the choice stays
    with qtbot.waitSignal(view.calib_worker.error, timeout=10_000):
        view.set_calibration(str(tmp_path / "missing.txt"))
    assert "cannot read" in view.status.text() and view.calibration is None


def test_the_chat_template_option_reaches_the_core(qtbot, view):
    seen = {}

    def spy(model, levels, **kw):
        seen.update(kw)
        return (yield from compare(model, levels, **kw))

    view.job = spy
    assert not view.chat_box.isChecked()  # plain continuation by default, as `workbench compare`
    view.chat_box.setChecked(True)
    result = run_view(qtbot, view, ["Q8_0"])
    assert seen["chat"] is True
    direct = run(compare(TINY, ["Q8_0"], chat=True, **SETTINGS))
    assert result.base.generated_ids == direct.base.generated_ids
    plain = run(compare(TINY, ["Q8_0"], chat=False, **SETTINGS))
    assert plain.base.generated_ids != direct.base.generated_ids  # the template changed the prompt


def test_the_evaluation_choice_reaches_the_core_and_the_summary(qtbot, view, tiny, expected):
    # the default is llama.cpp's CPU evaluation, as `workbench compare`
    assert view.eval_combo.currentData() == "llama-cpu"
    view.eval_combo.setCurrentIndex(view.eval_combo.findData("exact"))
    result = run_view(qtbot, view, ["Q8_0"])
    assert result.eval_mode == "exact" and "exactly" in view.summary.text()
    direct = run(compare(tiny, ["Q8_0"], eval_mode="exact", **SETTINGS))
    assert result.levels[0].kld_values == pytest.approx(direct.levels[0].kld_values, rel=1e-5, abs=1e-9)
    # the two modes really differ: rounding the activations costs Q8_0 more than its weights alone
    assert np.mean(direct.levels[0].kld_values) < np.mean(expected.levels[0].kld_values)


def test_compare_and_generate_use_the_whole_window(qtbot, window, load):
    window.resize(1280, 800)
    window.show()
    load(window, TINY)
    qtbot.waitExposed(window)
    assert window.tree_pane.isVisible()  # positive control: the tensor tabs keep the tree beside them
    tree_width = window.tree_pane.width()
    for page in (window.compare_page, window.generate_page):
        window.tabs.setCurrentWidget(page)
        qtbot.waitUntil(lambda: window.tabs.width() > 1200, timeout=5000)
        assert not window.tree_pane.isVisible()
    window.tabs.setCurrentIndex(0)
    assert window.tree_pane.isVisible()
    qtbot.waitUntil(lambda: window.tree_pane.width() == tree_width, timeout=5000)  # the user's split comes back


def test_the_context_stops_at_the_models_trained_context(view, tiny):
    assert tiny.meta("max_position_embeddings") == 256
    assert view.ctx_spin.maximum() == 256
    view.ctx_spin.setValue(4096)
    assert view.ctx_spin.value() == 256
    view.set_model(None)
    assert view.ctx_spin.maximum() == 32768


def test_before_a_run_the_view_estimates_its_time_and_warns_of_a_quantized_base(qtbot, view, tmp_path):
    from builders import write_gguf_model
    from workbench.infer import compare as C

    qtbot.waitUntil(lambda: "about" in view.status.text(), timeout=10_000)  # once the machine is timed
    C._FLOPS[:] = [1e9]  # a known rate: the estimate follows the formula's inputs
    view.windows_spin.setValue(3)
    view.ctx_spin.setValue(64)
    view.tokens_spin.setValue(16)
    view.windows_spin.setValue(2)  # a change recomputes the estimate with the known rate
    want = C.estimate_seconds(view.model, len(view.chosen()), n_tokens=128, max_tokens=16, flops=1e9)
    from ui.pages.compare_view import _duration
    assert view.status.text() == f"Choose the levels and press Run (about {_duration(want)})."
    view.set_levels(["Q8_0"])
    view.windows_spin.setValue(3)  # any change recomputes
    one = C.estimate_seconds(view.model, 1, n_tokens=192, max_tokens=16, flops=1e9)
    assert f"about {_duration(one)}" in view.status.text()
    assert not view.base_note.isVisible()  # F16/F32 weights: nothing to warn about
    path = tmp_path / "q.gguf"
    write_gguf_model(path)  # mostly block-quantized tensors
    qmodel = open_model(path)
    view.set_model(qmodel)
    quantized = sum(t.n_params for t in qmodel.tensors if t.dtype not in ("F32", "F16", "BF16"))
    assert 2 * quantized > qmodel.n_params  # mostly block-quantized: the base is dequantized weights
    assert view.base_note.isVisible() and "weights, dequantized" in view.base_note.text()
    assert "better than the base" in view.base_note.text()


def test_duration_rounding():
    from ui.pages.compare_view import _duration

    assert [_duration(s) for s in (1, 42, 61, 149, 3599, 3660, 5400)] == \
        ["5 s", "40 s", "1 min", "2 min", "1 h 00 min", "1 h 01 min", "1 h 30 min"]


def test_token_views_show_each_tokens_kld_candidates_and_the_aligned_continuations(qtbot, view, expected):
    from ui.widgets.token_view import kld_color

    view.show_result(expected)
    tv, grid = view.token_view, view.gen_tokens
    assert [tv.level.itemText(i) for i in range(tv.level.count())] == ["Q8_0", "Q4_0"]
    tv.level.setCurrentIndex(1)
    lv = expected.levels[1]
    doc = tv.text.document()
    assert doc.toPlainText() == expected.view_context + "".join(p or "∅" for p in expected.view_pieces)
    for i in (0, len(expected.view_ids) // 2, len(expected.view_ids) - 1):
        a, b = tv.spans[i]
        assert doc.toPlainText()[a:b] == (expected.view_pieces[i] or "∅")
        assert tv.token_at(a) == i and tv.token_at(b - 1) == i
        cur = QTextCursor(doc)
        cur.setPosition(a + 1)
        assert cur.charFormat().background().color() == kld_color(lv.token_kld[i])
        html = tv.tooltip_html(i)
        for r in (expected.base, lv):
            assert f"{100 * r.top_probs[i][0]:.1f}%" in html and f"{100 * r.top_probs[i][4]:.1f}%" in html
    assert tv.token_at(0) is None  # the context before the scored tokens
    # the continuations: one row per level under the base, highlighted exactly where the ids differ
    rows = [expected.base, *expected.levels]
    assert grid.rowCount() == 3 and grid.columnCount() == max(len(r.generated_ids) for r in rows)
    base = expected.base.generated_ids
    for ri, r in enumerate(rows):
        want = [] if ri == 0 else [j for j, t in enumerate(r.generated_ids) if j >= len(base) or base[j] != t]
        assert grid.differing(ri) == want
    assert any(grid.differing(ri) for ri in (1, 2)) or all(r.generated_ids == base for r in rows)


def test_kld_colours_run_from_white_to_red_on_a_log_scale():
    from ui.widgets.token_view import kld_color

    assert kld_color(0.0).name() == kld_color(1e-4).name() == "#ffffff"
    assert kld_color(1.0).name() == kld_color(50.0).name() == "#ff503c"
    mid = kld_color(1e-2)  # halfway on the log scale: yellow
    assert (mid.red(), mid.green()) == (255, 255) and mid.blue() == 120
    greens = [kld_color(v).green() for v in (1e-3, 1e-2, 3e-2, 0.1, 0.3)]
    assert greens == sorted(greens, reverse=True)
