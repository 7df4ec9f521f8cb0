"""The "Quantization error" tab: overlaid histograms and statistics equal the core's, stale results dropped."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import Qt

from workbench import Progress, open_model
from workbench.analysis import error_stats, shared_histograms
from workbench.plan import Plan
from workbench.progress import run
from ui.pages.error_view import BINS, default_types, error_job
from ui.controllers.plan_controller import DEFAULT_PRESET

TENSOR = "blk.0.ffn_up.weight"  # 352 × 128, Q4_1 in the demo


@pytest.fixture
def error_tab(window, load, demo_path):
    load(window, demo_path)
    window.tabs.setCurrentWidget(window.error_view)
    return window.error_view


def core_stats(path, name, types):
    model = open_model(path)
    return [run(error_stats(model.tensor(name), t)) for t in types]


def test_three_types_overlay_three_curves_equal_to_the_core(qtbot, window, error_tab, demo_path):
    types = ["Q8_0", "Q5_0", "Q4_0"]
    error_tab.set_types(types)
    with qtbot.waitSignal(error_tab.shown, timeout=20_000, check_params_cb=lambda s: len(s) == 3) as blocker:
        window.tree.select(TENSOR)
    shown = blocker.args[0]
    expected = core_stats(demo_path, TENSOR, types)
    assert [s.qtype for s in shown] == types
    edges, counts = shared_histograms(expected, BINS)
    assert len(error_tab.curves) == 3
    legend = [label.text for _item, label in error_tab.legend.items]
    assert [t.split()[0] for t in legend] == types
    for curve, c in zip(error_tab.curves, counts):
        x, y = curve.getOriginalDataset()  # the arrays given to plot() (getData() is log10 in log mode)
        assert isinstance(y, np.ndarray)
        np.testing.assert_array_equal(y, c)
        np.testing.assert_allclose(x, edges)
    pens = {curve.opts["pen"].color().name() for curve in error_tab.curves}
    assert len(pens) == 3  # distinct colours
    table = error_tab.table_model
    assert table.rowCount() == 3
    for row, e in enumerate(expected):
        for key in ("bpw", "size", "rmse", "max_abs", "rel_rmse", "snr_db", "cosine"):
            want = {"bpw": e.bits_per_weight, "size": e.nbytes}.get(key, getattr(e, key, None))
            assert table.value(row, key) == pytest.approx(want, rel=1e-12), key
    assert table.index(0, table.column("snr_db")).data() == f"{expected[0].snr_db:.2f}"


def test_default_types_and_toggling_a_type(qtbot, window, error_tab, demo_path):
    planned = Plan(open_model(demo_path), DEFAULT_PRESET).type_of(TENSOR)
    defaults = default_types(planned, (352, 128))
    assert set(defaults) == {planned, "Q8_0", "Q4_0"}
    with qtbot.waitSignal(error_tab.shown, timeout=20_000, check_params_cb=lambda s: len(s) == len(defaults)):
        window.tree.select(TENSOR)
    assert error_tab.toggles.buttons[planned].font().bold()
    assert not error_tab.toggles.buttons["Q4_K"].isEnabled()  # the row of 128 does not fit a K-quant block
    with qtbot.waitSignal(error_tab.shown, timeout=20_000) as blocker:
        qtbot.mouseClick(error_tab.toggles.buttons["IQ4_NL"], Qt.MouseButton.LeftButton)
    assert [s.qtype for s in blocker.args[0]] == [t for t in error_tab.types()] and "IQ4_NL" in error_tab.types()
    assert len(error_tab.curves) == len(defaults) + 1
    # the choice follows the user to the next tensor
    with qtbot.waitSignal(error_tab.shown, timeout=20_000) as blocker:
        window.tree.select("blk.1.ffn_gate.weight")
    assert "IQ4_NL" in [s.qtype for s in blocker.args[0]]


def test_selecting_another_tensor_drops_stale_results(qtbot, window, error_tab, drained):
    gate = threading.Event()
    started = []

    def slow_job(model, name, types):
        started.append(name)
        if name == "token_embd.weight":
            while not gate.wait(0.01):
                yield Progress(0, 1, "waiting")
        return (yield from error_job(model, name, types))

    error_tab.job = slow_job
    shown = []
    error_tab.shown.connect(lambda stats: shown.append({s.name for s in stats}))
    window.tree.select("token_embd.weight")
    qtbot.waitUntil(lambda: started == ["token_embd.weight"], timeout=5000)
    window.tree.select(TENSOR)
    qtbot.waitUntil(lambda: shown == [{TENSOR}], timeout=20_000)
    gate.set()
    qtbot.waitUntil(lambda: not error_tab.worker.is_busy(), timeout=5000)
    drained(error_tab.worker)  # the first job's late result has been delivered (and dropped)
    assert shown == [{TENSOR}]
    assert {s.name for s in error_tab.stats} == {TENSOR}


def test_a_layer_or_nothing_shows_a_hint(qtbot, window, error_tab):
    window.tree.select("blk.0")
    assert error_tab.hint.isVisible() and not error_tab.splitter.isVisible()
    assert not error_tab.worker.is_busy()


def test_the_normalized_scale_gives_every_type_the_same_width(qtbot, window, error_tab, demo_path):
    types = ["Q8_0", "Q4_0"]
    error_tab.set_types(types)
    with qtbot.waitSignal(error_tab.shown, timeout=20_000, check_params_cb=lambda s: len(s) == 2):
        window.tree.select(TENSOR)
    widths = []
    for curve in error_tab.curves:  # shared range: Q8_0 is far narrower than Q4_0
        x, y = curve.getOriginalDataset()
        widths.append(np.ptp(x[:-1][y > 0]))
    assert widths[0] < widths[1] / 4
    with qtbot.waitSignal(error_tab.shown, timeout=5000):
        error_tab.scale.setCurrentIndex(error_tab.scale.findData("normalized"))
    expected = core_stats(demo_path, TENSOR, types)
    edges = np.linspace(-6.0, 6.0, BINS + 1)
    for curve, e in zip(error_tab.curves, expected):
        x, y = curve.getOriginalDataset()
        z = np.clip(e.sample.astype(np.float64) / e.rmse, -6.0, 6.0)  # by hand: error in units of its RMSE
        np.testing.assert_array_equal(y, np.histogram(z, bins=edges)[0])
        np.testing.assert_allclose(x, edges)
    spread = [np.ptp(c.getOriginalDataset()[0][:-1][c.getOriginalDataset()[1] > 0]) for c in error_tab.curves]
    assert spread[0] > spread[1] / 2  # now comparable widths
    assert error_tab.plot.getPlotItem().getAxis("bottom").labelText == "error ÷ the type's RMSE"


def test_a_click_costs_the_hidden_error_tab_nothing(qtbot, window, load, demo_path, monkeypatch):
    load(window, demo_path)
    window.tabs.setCurrentIndex(0)  # the Tensor tab
    view = window.error_view
    built = []
    real = view._render_item
    monkeypatch.setattr(view, "_render_item", lambda: (built.append(view._item.name if view._item else None), real()))
    for name in ("blk.0.ffn_up.weight", "blk.1.attn_q.weight", TENSOR):
        window.tree.select(name)
    assert built == [] and not view.worker.is_busy()
    with qtbot.waitSignal(view.shown, timeout=20_000):
        window.tabs.setCurrentWidget(view)  # shown: the last choice is built and computed, once
    assert built == [TENSOR] and view.title.text() == TENSOR
