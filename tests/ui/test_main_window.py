"""Main window end to end: tensor detail, metadata, errors, recent files, cancel, status bar."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from PySide6.QtCore import QObject, Signal

from workbench import Progress, open_model
from workbench.progress import run
from workbench.stats import tensor_stats


def test_selecting_a_tensor_shows_its_histogram_and_stats(qtbot, window, load, demo_path):
    load(window, demo_path)
    with qtbot.waitSignal(window.detail.stats_shown, timeout=10_000) as blocker:
        assert window.tree.select("blk.1.ffn_up.weight")
    shown = blocker.args[0]
    expected = run(tensor_stats(open_model(demo_path).tensor("blk.1.ffn_up.weight")))
    assert shown.name == "blk.1.ffn_up.weight"
    x, y = window.detail.hist_item.getOriginalDataset()  # the counts given to plot() (getData() is log10 in log mode)
    assert window.detail.log_box.isChecked()  # value histograms default to a log count axis
    np.testing.assert_array_equal(np.asarray(y), expected.hist_counts)
    np.testing.assert_allclose(np.asarray(x), expected.hist_edges)
    # the view shows the whole histogram: every bin, and the tallest bar (log10 of counts) below the top
    (x0, x1), (y0, y1) = window.detail.plot.getPlotItem().getViewBox().viewRange()
    assert x0 <= expected.hist_edges[0] and x1 >= expected.hist_edges[-1]
    assert y0 <= 0 and np.log10(max(expected.hist_counts)) < y1 < np.log10(max(expected.hist_counts)) + 0.5
    window.detail.log_box.setChecked(False)  # linear counts: the range follows
    (_x0, _x1), (y0, y1) = window.detail.plot.getPlotItem().getViewBox().viewRange()
    assert y0 <= 0 and max(expected.hist_counts) < y1 < 1.2 * max(expected.hist_counts)
    labels = window.detail.stat_labels
    assert float(labels["min"].text()) == pytest.approx(expected.min, rel=1e-5)  # shown to 6 digits
    assert float(labels["max"].text()) == pytest.approx(expected.max, rel=1e-5)
    assert labels["nan"].text().startswith("0")


def test_a_newer_selection_supersedes_the_running_job(qtbot, window, load, demo_path, drained):
    load(window, demo_path)
    shown = []
    window.detail.stats_shown.connect(lambda s: shown.append(s.name))
    window.tree.select("token_embd.weight")
    window.tree.select("blk.0.attn_norm.weight")
    qtbot.waitUntil(lambda: shown == ["blk.0.attn_norm.weight"], timeout=10_000)
    drained(window.detail.worker)  # the first job's late signals have been delivered (and dropped)
    assert shown == ["blk.0.attn_norm.weight"]
    assert window.detail.stats.name == "blk.0.attn_norm.weight"


def test_metadata_tree_shows_keys_and_summarized_arrays(qtbot, window, load, demo_path):
    load(window, demo_path)
    meta = window.metadata
    assert meta.value_of("general.architecture", "GGUF") == "llama"
    assert "MOSTLY_Q4_0" in meta.value_of("general.file_type", "GGUF")
    tokens = meta.value_of("tokenizer.ggml.tokens", "GGUF")
    assert tokens.startswith("[320 items]") and "<|endoftext|>" in tokens
    idx = meta.find("tokenizer.ggml.tokens", "GGUF")
    window.tabs.setCurrentWidget(meta)  # (a hidden tab's tree is expanded when it shows)
    qtbot.waitUntil(lambda: meta.view.isExpanded(idx.parent()), timeout=3000)
    meta.view.expand(idx)
    qtbot.waitUntil(lambda: meta.proxy.rowCount(idx) > 0, timeout=5000)
    assert meta.proxy.index(0, 2, idx).data() in ("'<|endoftext|>'", "<|endoftext|>")


def test_config_json_is_a_tree(qtbot, window, load, st_folder):
    load(window, st_folder)
    meta = window.metadata
    idx = meta.find("rope_scaling", "config.json")
    assert idx.isValid() and meta.proxy.hasChildren(idx)
    meta.view.expand(idx)
    keys = [meta.proxy.index(r, 0, idx).data() for r in range(meta.proxy.rowCount(idx))]
    assert keys == ["type", "factor", "extra"]


def test_corrupt_file_shows_an_error_and_keeps_the_model(qtbot, make_window, load, demo_path, tmp_path):
    errors = []
    window = make_window(show_error=lambda title, msg: errors.append((title, msg)))
    model = load(window, demo_path)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with qtbot.waitSignal(window.load_failed, timeout=10_000):
        window.open_path(bad)
    assert len(errors) == 1 and "broken.gguf" in errors[0][1]
    assert window.model is model and window.isVisible()
    assert str(bad) not in window.recent.paths()


def test_the_default_error_dialog_is_a_message_box(qtbot, window, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x01")
    with qtbot.waitSignal(window.load_failed, timeout=10_000):
        window.open_path(bad)
    box = window.error_box
    assert isinstance(box, QMessageBox) and box.isVisible() and "x.safetensors" in box.text()
    box.close()


def test_recent_files_and_status_bar(qtbot, window, load, st_folder):
    load(window, st_folder)
    assert window.recent.paths()[0] == str(st_folder)
    text = window.status.summary_label.text()
    assert "safetensors" in text and "LlamaForCausalLM" in text and "tensors" in text


def test_cancel_a_slow_load(qtbot, window, demo_path, drained):
    gate = threading.Event()

    def slow_open(path):
        while not gate.wait(0.01):
            yield Progress(0, 1, "reading")
        return open_model(path)

    window.open_job = slow_open
    window.open_path(demo_path)
    qtbot.waitUntil(lambda: window.loader.is_busy(), timeout=2000)
    with qtbot.waitSignal(window.loader.cancelled, timeout=5000):
        window.cancel_load()
    gate.set()
    drained(window.loader)  # whatever the cancelled job still sent has been delivered
    assert window.model is None and not window.loader.is_busy()


def test_qt_binding_keeps_bool_refcounts():
    """PySide6 6.12.0 drops a reference to True on every Signal.emit(); the app then crashes once
    enough signals have been emitted.  pyproject excludes that release; this guards the pin."""
    class Emitter(QObject):
        ping = Signal()

    e = Emitter()
    before = sys.getrefcount(True)
    for _ in range(500):
        e.ping.emit()
    assert sys.getrefcount(True) >= before - 5
