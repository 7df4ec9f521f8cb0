"""App entry point, settings, recent files, welcome page, status warnings, and the metadata model's
lazy paging, filter and long-string handling."""
from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PySide6.QtCore import QModelIndex, QSettings, Qt
from PySide6.QtWidgets import QHeaderView

from workbench import MetaEntry, Model
from ui.pages.metadata_view import KEY, PAGE, VALUE, MetadataModel, value_text
from ui.controllers.recent_files import MAX_RECENT
from ui.widgets.tensor_tree import HEADERS


# -- app entry point --------------------------------------------------------------------------------
def test_no_display_returns_2_with_a_clear_message(monkeypatch, capsys):
    from ui import app

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert app.main(["some/model.gguf"]) == 2
    err = capsys.readouterr().err
    assert "No display found" in err and "QT_QPA_PLATFORM=offscreen" in err


def test_display_detection():
    from ui.app import display_available

    assert not display_available({}, "linux")
    assert display_available({"DISPLAY": ":0"}, "linux")
    assert display_available({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert display_available({"QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert display_available({}, "win32") and display_available({}, "darwin")


def test_self_test_opens_the_demo_and_exits_0(qtbot, capsys):
    from ui import app
    from ui.worker import stop_all_workers

    assert app.main(["--self-test"]) == 0
    assert "self-test: ok" in capsys.readouterr().out
    assert stop_all_workers(5000)


def test_parse_args():
    from ui.app import parse_args

    a = parse_args(["model.gguf"])
    assert a.path == "model.gguf" and not a.self_test
    assert parse_args([]).path is None


# -- window: welcome page, settings, recent files, status bar ---------------------------------------
def test_welcome_page_until_a_model_is_loaded(qtbot, window):
    from ui.pages.welcome import WELCOME_TEXT

    assert window.stack.currentWidget() is window.welcome
    assert window.welcome.label.text() == WELCOME_TEXT
    with qtbot.waitSignal(window.model_loaded, timeout=15_000):
        window.welcome.demo_button.click()
    assert window.stack.currentWidget() is window.splitter
    assert window.recent.paths() == []  # the demo lives in the cache: no Recent entry
    assert "llama" in window.status.summary_label.text()
    assert "451.2 K params" in window.status.summary_label.text()


def test_geometry_and_splitter_are_remembered(qtbot, make_window, settings, tmp_path):
    from ui.main_window import MainWindow

    w = make_window()
    w.resize(720, 520)  # within the offscreen screen (restoreGeometry keeps windows on screen)
    w.splitter.setSizes([250, 450])
    qtbot.waitUntil(lambda: w.width() == 720, timeout=3000)
    size = w.size()
    w.close()  # closeEvent saves
    path = settings.fileName()
    again = QSettings(path, QSettings.Format.IniFormat)
    assert not again.value("window/geometry").isEmpty()
    assert again.value("window/splitter") == w.splitter.saveState()
    w2 = MainWindow(settings=again)
    qtbot.addWidget(w2)
    try:
        assert w2.size() == size
        assert w2.splitter.saveState() == w.splitter.saveState()
    finally:
        w2.shutdown()


def test_recent_files_menu_order_limit_and_clear(qtbot, window, load, st_folder, st_folder_b, tmp_path):
    load(window, st_folder)
    load(window, st_folder_b)
    assert window.recent.paths()[:2] == [str(st_folder_b), str(st_folder)]
    data = [a.data() for a in window.recent_menu.actions() if a.data()]
    assert data[:2] == [str(st_folder_b), str(st_folder)]
    for i in range(MAX_RECENT + 3):
        window.recent.add(tmp_path / f"m{i}.gguf")
    assert len(window.recent.paths()) == MAX_RECENT
    assert window.recent.paths()[0].endswith(f"m{MAX_RECENT + 2}.gguf")
    window.recent_menu.clear_action.trigger()
    assert window.recent.paths() == []
    assert not window.recent_menu.clear_action.isEnabled()


def test_opening_a_recent_entry(qtbot, window, st_folder):
    window.recent.add(st_folder)
    act = next(a for a in window.recent_menu.actions() if a.data() == str(st_folder))
    with qtbot.waitSignal(window.model_loaded, timeout=15_000):
        act.trigger()
    assert window.model.path == Path(st_folder)


def test_model_warnings_show_in_the_status_bar(qtbot, window, load, peft_folder):
    model = load(window, peft_folder)
    assert model.warnings
    text = window.status.warning_label.full_text()
    assert "brand_new_option" in text and text.startswith("⚠")


def test_actions_and_headers_have_tooltips(window):
    for name in ("act_open_file", "act_open_folder", "act_open_demo", "act_quit", "act_focus_filter",
                 "act_expand", "act_collapse", "act_about"):
        act = getattr(window, name)
        assert act.toolTip() and act.toolTip() != act.text().replace("&", ""), name
    assert window.act_open_file.shortcut().toString() == "Ctrl+O"
    assert window.act_open_folder.shortcut().toString() == "Ctrl+Shift+O"
    assert window.act_quit.shortcut().toString() == "Ctrl+Q"
    tree_model = window.tree.proxy
    for col in range(len(HEADERS)):
        assert tree_model.headerData(col, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    meta_model = window.metadata.proxy
    for col in range(3):
        assert meta_model.headerData(col, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)


def test_focus_filter_shortcut(qtbot, window, load, st_folder):
    load(window, st_folder)
    window.act_focus_filter.trigger()
    assert window.tree.filter.edit.hasFocus() or window.focusWidget() is window.tree.filter.edit


def test_about_lists_versions():
    import workbench
    from ui.dialogs.about import about_text, versions

    v = versions()
    assert v["Model Workbench"] == workbench.__version__
    assert {"Qt", "numpy", "gguf"} <= set(v)
    assert workbench.__version__ in about_text() and np.__version__ in about_text()


# -- metadata model ---------------------------------------------------------------------------------
def _meta_model(tmp_path, entries) -> Model:
    return Model("gguf", tmp_path, [], [], OrderedDict([("GGUF", entries)]), "llama")


def test_long_arrays_are_summarized_and_fetched_in_pages(qtbot, tmp_path):
    n = 2 * PAGE + 234
    tokens = [f"tok{i}" for i in range(n)]
    model = _meta_model(tmp_path, [MetaEntry("tokenizer.ggml.tokens", "array[string]", tokens),
                                   MetaEntry("tokenizer.ggml.scores", "array[float32]",
                                             np.arange(n, dtype=np.float32))])
    m = MetadataModel()
    m.set_model(model)
    group = m.index(0, 0)
    toks = m.index(0, 0, group)
    assert m.index(0, VALUE, group).data().startswith(f"[{n} items] 'tok0', 'tok1'")
    assert m.hasChildren(toks) and m.rowCount(toks) == 0 and m.canFetchMore(toks)
    m.fetchMore(toks)
    assert m.rowCount(toks) == PAGE
    m.fetchMore(toks)
    m.fetchMore(toks)
    assert m.rowCount(toks) == n and not m.canFetchMore(toks)
    last = m.index(n - 1, 0, toks)
    assert last.data() == f"[{n - 1}]" and last.siblingAtColumn(VALUE).data() == f"tok{n - 1}"
    assert last.siblingAtColumn(1).data() == "string"  # element type from array[string]
    scores = m.index(1, 0, group)
    m.fetchMore(scores)
    assert m.index(3, VALUE, scores).data() == "3"


def test_array_paging_follows_scrolling(qtbot, window, tmp_path):
    n = 20 * PAGE
    model = _meta_model(tmp_path, [MetaEntry("tokens", "array[string]", [f"t{i}" for i in range(n)]),
                                   MetaEntry("after", "string", "x")])
    meta = window.metadata
    meta.set_model(model)
    window.stack.setCurrentWidget(window.splitter)
    window.tabs.setCurrentWidget(meta)
    qtbot.waitUntil(lambda: meta.view.viewport().height() > 200, timeout=3000)  # laid out
    idx = meta.find("tokens")
    qtbot.waitUntil(lambda: meta.view.isExpanded(idx.parent()), timeout=3000)  # the groups open once shown
    meta.view.expand(idx)
    loaded = meta.proxy.rowCount(idx)
    assert PAGE <= loaded < n  # a few pages at most, never the whole array
    meta.view.scrollTo(meta.proxy.index(loaded - 1, 0, idx))  # the last loaded item comes into view
    qtbot.waitUntil(lambda: meta.proxy.rowCount(idx) > loaded, timeout=3000)
    assert meta.proxy.rowCount(idx) < n


def test_value_text_rules():
    assert value_text(3, "MOSTLY_Q4_1") == "MOSTLY_Q4_1 (3)"
    assert value_text(1, "1 '<|im_start|>'") == "1 '<|im_start|>'"
    assert value_text(2.0, "lora_alpha / r") == "2 (lora_alpha / r)"
    assert value_text(["v", "q"]) == "['v', 'q']"
    assert value_text({"normal": 3, "control": 1}) == "{2 keys} normal: 3, control: 1"
    assert value_text(None) == "null" and value_text(True) == "true"
    assert value_text(np.int32(7)) == "7"
    assert value_text("a\nb") == "a ⏎ b"


def test_long_strings_are_elided_with_full_tooltip(qtbot, window, load, st_folder):
    from ui_models import CHAT_TEMPLATE

    load(window, st_folder)
    meta = window.metadata
    idx = meta.find("chat_template", "tokenizer_config.json")
    cell = idx.siblingAtColumn(VALUE)
    assert "\n" not in cell.data()
    assert cell.data(Qt.ItemDataRole.ToolTipRole) == CHAT_TEMPLATE
    assert meta.view.textElideMode() == Qt.TextElideMode.ElideRight
    assert meta.view.header().sectionResizeMode(KEY) == QHeaderView.ResizeMode.Interactive


def test_metadata_filter(qtbot, window, load, st_folder):
    load(window, st_folder)
    meta = window.metadata
    meta.filter.set_text("factor")
    groups = [meta.proxy.index(r, 0).data() for r in range(meta.proxy.rowCount())]
    assert groups == ["config.json"]
    g = meta.proxy.index(0, 0)
    assert [meta.proxy.index(r, 0, g).data() for r in range(meta.proxy.rowCount(g))] == ["rope_scaling"]
    meta.filter.set_text("LlamaForCausal")  # values match too, not just keys
    assert meta.find("architectures", "config.json").isValid()
    assert not meta.find("rope_scaling", "config.json").isValid()
    meta.filter.set_text("/^(bad|rope)_/")
    g = meta.proxy.index(0, 0)
    assert sorted(meta.proxy.index(r, 0, g).data() for r in range(meta.proxy.rowCount(g))) == \
        ["bad_words", "rope_scaling"]
    meta.filter.set_text("")
    assert meta.proxy.rowCount() == len(window.model.metadata)


def test_metadata_group_row_counts(qtbot, window, load, demo_path):
    load(window, demo_path)
    meta = window.metadata
    groups = {meta.proxy.index(r, 0).data(): meta.proxy.index(r, 0) for r in range(meta.proxy.rowCount())}
    assert "GGUF" in groups and "tokenizer" in groups
    g = groups["GGUF"]
    assert g.siblingAtColumn(VALUE).data() == f"{meta.proxy.rowCount(g)} keys"
    assert not meta.view.isExpanded(g)  # the tab is hidden: its tree is not expanded (nor laid out) yet
    window.tabs.setCurrentWidget(meta)
    qtbot.waitUntil(lambda: meta.view.isExpanded(g), timeout=3000)  # shown: every group expanded
    assert not meta.proxy.parent(g).isValid() and meta.proxy.parent(QModelIndex()) == QModelIndex()


def test_a_lora_adapter_gets_no_plan_and_the_plan_bar_says_why(qtbot, window, load, peft_folder, st_folder):
    load(window, peft_folder)
    assert window.plan.plan is None
    bar = window.plan_bar
    assert not bar.preset.isEnabled() and not bar.analyze_button.isEnabled()
    assert "LoRA adapter has no quantization plan" in bar.detail.text() and "Merge LoRA" in bar.detail.text()
    load(window, st_folder)  # positive control: a model gets its plan and the note goes away
    assert window.plan.plan is not None and bar.preset.isEnabled() and "LoRA" not in bar.detail.text()


def test_a_hidden_metadata_tree_expands_when_shown_and_scrolling_fetches_the_next_page(qtbot, tmp_path):
    from ui.pages.metadata_view import MetadataWidget

    n = 20 * PAGE + 7
    model = _meta_model(tmp_path, [MetaEntry("tokenizer.ggml.tokens", "array[string]", [f"t{i}" for i in range(n)])])
    w = MetadataWidget()
    qtbot.addWidget(w)
    w.resize(600, 400)
    w.set_model(model)
    toks = w.find("tokenizer.ggml.tokens", "GGUF")
    assert not w.view.isExpanded(toks.parent())  # hidden: nothing is expanded (nor laid out) yet
    w.show()
    qtbot.waitUntil(lambda: w.view.isExpanded(toks.parent()), timeout=3000)  # shown: the groups open
    w.view.expand(toks)
    qtbot.waitUntil(lambda: w.proxy.rowCount(toks) >= PAGE, timeout=3000)  # the first page(s) in view
    loaded = w.proxy.rowCount(toks)
    assert loaded < n
    w.view.scrollTo(w.proxy.index(loaded - 1, 0, toks))  # the last loaded item in view: the next page
    qtbot.waitUntil(lambda: w.proxy.rowCount(toks) > loaded, timeout=3000)
