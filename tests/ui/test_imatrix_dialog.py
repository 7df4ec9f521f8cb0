"""Tools ▸ Importance Matrix…: the statistics table and chart against llama-imatrix's printed table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from workbench import Progress
from workbench.optimize.imatrix import Imatrix
from workbench.optimize.imatrix_stats import statistics

DATA = Path(__file__).parents[1] / "core" / "data"
TINY = DATA / "imatrix" / "tiny.imatrix.gguf"
MOE = DATA / "imatrix_stats" / "moe.imatrix.gguf"
PRINTED = json.loads((DATA / "imatrix_stats" / "llama_imatrix_stats.json").read_text())
LOAD_TIMEOUT = 15_000


@pytest.fixture
def dialog(qtbot, settings):
    from ui.dialogs.imatrix_dialog import ImatrixDialog

    made = []

    def make(model=None):
        d = ImatrixDialog(settings, lambda: model)
        qtbot.addWidget(d)
        made.append(d)
        return d

    yield make
    for d in made:
        d.shutdown()


def load(qtbot, d, path):
    with qtbot.waitSignal(d.loaded, timeout=LOAD_TIMEOUT):
        d.load(path)


def cells(d, row: int) -> dict[str, str]:
    return {k: d.proxy.index(row, c).data() for c, k in enumerate(d.model.columns)}


def test_values_equal_llama_imatrix(qtbot, dialog):
    d = dialog()
    load(qtbot, d, MOE)
    printed = {(r[0], r[1]): r for r in PRINTED["imatrix_stats/moe.imatrix.gguf"]["tensors"]}
    assert d.proxy.rowCount() == len(printed) == 10  # the entry no expert saw has no row, as in llama-imatrix
    for r in range(d.proxy.rowCount()):
        c = cells(d, r)
        want = printed[(c["layer"], c["kind"])]
        got = [c[k] for k in ("sum", "min", "max", "mean", "std", "active", "n", "entropy", "entropy_norm", "zd",
                              "cossim")]
        assert [g.replace(",", "") for g in got] == want[2:]
    assert "10 tensors with activations of 11 entries" in d.summary.text()


def test_sorting_filter_and_chart(qtbot, dialog):
    d = dialog()
    load(qtbot, d, TINY)
    core = statistics(Imatrix.load(TINY))
    assert d.row_names() == [t.name for t in sorted(core, key=lambda t: -t.sum)]  # default: Σ(Act²) descending
    d.view.sortByColumn(d.model.column("cossim"), Qt.SortOrder.AscendingOrder)
    assert [d.proxy.index(r, d.model.column("cossim")).data(Qt.ItemDataRole.UserRole + 1)
            for r in range(d.proxy.rowCount())] == sorted(t.cossim for t in core)
    d.view.horizontalHeader().sectionClicked.emit(d.model.column("layer"))  # a header click sorts too
    blocks = [d.proxy.index(r, d.model.column("layer")).data() for r in range(d.proxy.rowCount())]
    assert blocks in (["0"] * 7 + ["1"] * 7, ["1"] * 7 + ["0"] * 7)
    kinds = sorted({t.kind for t in core})
    assert d.curve_names() == kinds  # one curve per tensor kind
    d.filter.set_text("ffn_d")
    assert sorted(d.row_names()) == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    assert d.curve_names() == ["ffn_down"]  # the chart follows the filter
    d.filter.set_text("")
    d.metric_combo.setCurrentText("CosSim")
    item = d.chart.getPlotItem().listDataItems()[kinds.index("ffn_down")]
    x, y = item.getData()
    by = {t.block: t.cossim for t in core if t.kind == "ffn_down"}
    assert list(x) == [0, 1] and list(y) == pytest.approx([by[0], by[1]])


def test_layer_sorts_by_number(qtbot, dialog, tmp_path):
    from workbench.optimize.imatrix import ImatrixEntry

    one = ImatrixEntry(np.ones((1, 8), np.float32), np.array([1]))
    path = Imatrix({f"blk.{b}.attn_q.weight": one for b in (2, 10, 9)}, 1, 8, ["t"]).save(tmp_path / "m.gguf")
    d = dialog()
    load(qtbot, d, path)
    d.view.sortByColumn(d.model.column("layer"), Qt.SortOrder.AscendingOrder)
    assert [d.proxy.index(r, d.model.column("layer")).data() for r in range(3)] == ["2", "9", "10"]


def test_last_file_remembered_and_errors(qtbot, dialog, settings, tmp_path):
    d = dialog()
    load(qtbot, d, MOE)
    assert settings.value("imatrix/last_file") == str(MOE)
    again = dialog()  # a new dialog opens the last file by itself
    qtbot.waitUntil(lambda: again.result is not None, timeout=LOAD_TIMEOUT)
    assert again.path_label.full_text() == str(MOE)
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x00")
    with qtbot.waitSignal(d.worker.error, timeout=LOAD_TIMEOUT):
        d.load(bad)
    assert "Failed:" in d.summary.text() and "bad.dat" in d.summary.text()
    assert settings.value("imatrix/last_file") == str(MOE)


def test_compute_runs_with_progress_and_cancel(qtbot, dialog, monkeypatch, tmp_path):
    import workbench.optimize.imatrix_compute as ic
    from ui.dialogs import imatrix_dialog

    seen = {}

    def fake(model, text, n_ctx, chunks, cancel, dataset=""):
        seen.update(dataset=dataset, model=model, n_ctx=n_ctx, chunks=chunks, text=text, cancel=cancel)
        yield Progress(1, 2, "Chunk 1/2")
        while chunks == 99 and not cancel():
            yield Progress(1, 2, "Chunk 1/2")
        return Imatrix.load(TINY)

    monkeypatch.setattr(ic, "compute_imatrix", fake)
    assert imatrix_dialog.compute_available()
    no_model = dialog()
    assert not no_model.compute_button.isEnabled()
    from workbench import open_model
    from workbench.infer.compare import default_calibration_text
    from workbench.optimize.imatrix_compute import split_calibration

    model = open_model(Path(__file__).parents[1] / "core" / "data" / "infer" / "llama")
    d = dialog(model=model)
    assert d.compute_button.isEnabled() and not d.compute_button.isHidden()
    with qtbot.waitSignal(d.loaded, timeout=LOAD_TIMEOUT) as sig:
        d.compute(None, 256, 2)
    assert seen["dataset"] == "calibration.txt"  # the bundled text's name (an empty list cannot be saved)
    assert seen["model"] is model and (seen["n_ctx"], seen["chunks"]) == (256, 2)
    train, held = split_calibration(default_calibration_text())
    assert seen["text"] == train and held and held not in seen["text"]  # the held-out fifth is never used
    assert sig.args[0].path is None and d.save_button.isEnabled() and "not saved" in d.path_label.full_text()
    with qtbot.waitSignal(d.loaded, timeout=LOAD_TIMEOUT):  # Save As… writes it and shows the file
        d.save(tmp_path / "computed.gguf")
    assert d.path_label.full_text() == str(tmp_path / "computed.gguf")
    saved, tiny = Imatrix.load(tmp_path / "computed.gguf"), Imatrix.load(TINY)
    assert all(np.array_equal(saved.entries[k].sums, e.sums) for k, e in tiny.entries.items())
    with qtbot.waitSignal(d.worker.progress, timeout=LOAD_TIMEOUT):
        d.compute(None, 256, 99)
    assert not d.cancel_button.isHidden()
    with qtbot.waitSignal(d.worker.cancelled, timeout=LOAD_TIMEOUT):
        d.cancel_button.click()
    assert seen["cancel"]() and d.progress.isHidden()  # the job's cancel callable says so too
    assert d.worker.wait(LOAD_TIMEOUT)


def test_compute_hidden_without_core_module(qtbot, dialog, monkeypatch):
    from ui.dialogs import imatrix_dialog

    monkeypatch.setattr(imatrix_dialog, "compute_available", lambda: False)
    d = dialog(model="MODEL")
    assert d.compute_button.isHidden()


def test_tools_menu_opens_it(make_window):
    w = make_window()
    assert w.act_imatrix in w.menuBar().actions()[-2].menu().actions()  # Tools
    w.act_imatrix.trigger()
    assert w.imatrix_dialog is not None and w.imatrix_dialog.isVisible()
    assert w.show_imatrix() is w.imatrix_dialog  # one dialog, raised again
