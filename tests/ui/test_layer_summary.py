"""A layer row in the tree: its tensors with stored and planned types and sizes, and the layer's error under the
plan, measured on a worker and checked here against the core's own error_stats run tensor by tensor."""
from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.analysis import error_stats
from workbench.plan import Plan


def run(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


@pytest.fixture
def layer(window, load, demo_path, qtbot):
    model = load(window, demo_path)
    assert window.tree.select("blk.1")
    detail = window.detail
    qtbot.waitUntil(lambda: detail.layer_errors is not None, timeout=10_000)
    return window, model


def by_column(table) -> list[dict[str, str]]:
    cols = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    return [{cols[c]: table.item(r, c).text() for c in range(len(cols))} | {"name": table.item(r, 0).toolTip()}
            for r in range(table.rowCount())]


def test_a_layer_row_lists_its_tensors_planned_types_sizes_and_errors(layer):
    window, model = layer
    detail, plan = window.detail, window.plan.plan
    assert detail.layer_table.isVisible() and not detail.plot.isVisible()
    rows = by_column(detail.layer_table)
    names = [t.name for t in model.tensors if t.name.startswith("blk.1.")]
    assert sorted(r["name"] for r in rows) == sorted(names)
    noise = signal = 0.0
    for r in rows:
        info, entry = model.info(r["name"]), plan.entry(r["name"])
        assert (r["Stored"], r["Planned"]) == (info.dtype, entry.type)
        truth = run(error_stats(model.tensor(r["name"]), entry.type, keep_sample=False))
        expect = "exact" if math.isinf(truth.snr_db) else f"{truth.snr_db:.1f} dB"
        assert r["SNR"] == expect and r["Rel. error"] == f"{100 * truth.rel_rmse:.2f} %"
        x = model.tensor(r["name"]).to_float32().astype(np.float64)
        noise += truth.rmse ** 2 * x.size
        signal += float(x.ravel() @ x.ravel())
    text = detail.layer_error.text()
    assert f"SNR {10 * np.log10(signal / noise):.1f} dB" in text
    assert f"relative error {100 * np.sqrt(noise / signal):.2f} %" in text
    planned = sum(plan.entry(n).nbytes for n in names)
    from workbench.units import human_bytes
    assert f"{human_bytes(planned)} (stored: {human_bytes(sum(model.info(n).nbytes for n in names))})" in text


def test_the_layer_follows_the_plan(layer, qtbot):
    """Another preset: the planned column and the error change to the new plan's."""
    window, model = layer
    detail = window.detail
    before = detail.layer_error.text()
    window.plan.replace(Plan(model, "Q8_0"), "Q8_0")
    qtbot.waitUntil(lambda: detail.layer_errors is not None and "(Q8_0)" in detail.layer_error.text()
                    and "SNR" in detail.layer_error.text(), timeout=10_000)
    rows = by_column(detail.layer_table)
    q8 = Plan(model, "Q8_0")
    assert [r["Planned"] for r in rows] == [q8.entry(r["name"]).type for r in rows]
    assert detail.layer_error.text() != before
    # a tensor row again shows the histogram, not the layer table
    assert window.tree.select("blk.1.attn_q.weight")
    assert detail.plot.isVisible() and not detail.layer_table.isVisible()
