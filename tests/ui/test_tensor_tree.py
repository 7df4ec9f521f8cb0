"""Tensor tree: drop a folder, groups and names, filtering (substring and regex), sorting."""
from __future__ import annotations

import threading

from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from ui_models import st_names
from ui.widgets.tensor_tree import NAME, PARAMS, SIZE, SORT_ROLE, TensorGroup

GROUPS = ["model.layers.0", "model.layers.1"]


def file_mime(*paths) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def test_drop_folder_fills_tree(qtbot, window, st_folder):
    mime = file_mime(st_folder)
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier, QEvent.Type.Drop)
    with qtbot.waitSignal(window.model_loaded, timeout=10000):
        QApplication.sendEvent(window, drop)
    assert window.stack.currentWidget() is window.splitter
    tree = window.tree
    assert sorted(tree.visible_tensor_names()) == sorted(st_names())
    assert tree.visible_group_names() == GROUPS
    # non-layer tensors come first at the top level, then the layer groups
    top = [tree.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole + 3) for r in range(tree.proxy.rowCount())]
    kinds = [isinstance(t, TensorGroup) for t in top]
    assert kinds == sorted(kinds)
    # a group row sums its tensors
    g = tree.proxy.index(kinds.index(True), 0)
    group = g.data(Qt.ItemDataRole.UserRole + 3)
    assert g.siblingAtColumn(PARAMS).data(SORT_ROLE) == sum(t.n_params for t in group.tensors)
    assert g.siblingAtColumn(SIZE).data(SORT_ROLE) == sum(t.nbytes for t in group.tensors)
    assert tree.proxy.rowCount(g) == 4
    # children are shown with their short name, full name in the tooltip
    child = tree.proxy.index(0, 0, g)
    assert not child.data().startswith("model.layers")
    assert child.data(Qt.ItemDataRole.ToolTipRole).startswith("model.layers.")


def test_drag_without_files_is_ignored(window):
    mime = QMimeData()
    mime.setText("just text")
    enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    window.dragEnterEvent(enter)
    assert not enter.isAccepted()


def test_loading_runs_off_the_gui_thread(qtbot, window, load, st_folder):
    from workbench import iter_open_model

    threads = []

    def recording_job(path):
        threads.append(threading.current_thread())
        return (yield from iter_open_model(path))

    window.open_job = recording_job
    load(window, st_folder)
    assert threads and threads[0] is not threading.main_thread()


def test_filter_substring_and_regex(qtbot, window, load, st_folder):
    load(window, st_folder)
    tree, f = window.tree, window.tree.filter
    f.set_text("q_proj")
    assert sorted(tree.visible_tensor_names()) == ["model.layers.0.self_attn.q_proj.weight",
                                                   "model.layers.1.self_attn.q_proj.weight"]
    assert tree.visible_group_names() == GROUPS  # parents of matches stay visible
    assert "Showing 2 of 11" in tree.count_label.text()

    f.set_text("/^model\\.layers\\.1\\..*(q|k)_proj/")
    assert sorted(tree.visible_tensor_names()) == ["model.layers.1.self_attn.k_proj.weight",
                                                   "model.layers.1.self_attn.q_proj.weight"]
    assert tree.visible_group_names() == ["model.layers.1"]

    f.set_text("MODEL.NORM")  # case-insensitive substring; the dot is literal
    assert sorted(tree.visible_tensor_names()) == ["model.norm.weight"]

    f.set_text("layers.0", regex=True)  # a whole matching layer shows all of its tensors
    assert len(tree.visible_tensor_names()) == 4

    before = tree.visible_tensor_names()
    f.set_text("/([unclosed/")
    assert not f.is_valid()
    assert "border" in f.edit.styleSheet()
    assert tree.visible_tensor_names() == before  # invalid pattern keeps the last filter
    f.set_text("")
    assert f.is_valid() and f.edit.styleSheet() == ""
    assert len(tree.visible_tensor_names()) == len(st_names())


def test_typing_in_filter_applies_after_debounce(qtbot, window, load, st_folder):
    load(window, st_folder)
    qtbot.keyClicks(window.tree.filter.edit, "up_proj")
    qtbot.waitUntil(lambda: len(window.tree.visible_tensor_names()) == 2, timeout=3000)


def _top_sizes(tree):
    return [tree.proxy.index(r, SIZE).data(SORT_ROLE) for r in range(tree.proxy.rowCount())]


def test_sort_by_size_header_click(qtbot, window, load, st_folder):
    load(window, st_folder)
    tree = window.tree
    header = tree.view.header()
    x = header.sectionViewportPosition(SIZE) + header.sectionSize(SIZE) // 2
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, header.height() // 2))
    assert header.sortIndicatorSection() == SIZE
    sizes = _top_sizes(tree)
    assert sizes == sorted(sizes) or sizes == sorted(sizes, reverse=True)
    tree.sort_by(SIZE, Qt.SortOrder.DescendingOrder)
    sizes = _top_sizes(tree)
    assert sizes == sorted(sizes, reverse=True)
    # children of a group are sorted too, by real byte counts (not display strings)
    g = next(tree.proxy.index(r, 0) for r in range(tree.proxy.rowCount())
             if isinstance(tree.proxy.index(r, 0).data(Qt.ItemDataRole.UserRole + 3), TensorGroup))
    child_sizes = [tree.proxy.index(r, SIZE, g).data(SORT_ROLE) for r in range(tree.proxy.rowCount(g))]
    assert child_sizes == sorted(child_sizes, reverse=True)
    assert all(isinstance(s, float) and s == int(s) for s in child_sizes)  # byte counts (one type C++ compares)


def test_sort_by_name_is_natural(qtbot, window, load, demo_path):
    load(window, demo_path)
    tree = window.tree
    tree.sort_by(NAME)
    names = [tree.proxy.index(r, 0).data() for r in range(tree.proxy.rowCount())]
    assert names.index("blk.0") < names.index("blk.1")
    assert names == sorted(names, key=lambda n: n.lower())  # short demo: natural == alphabetical here


def test_expand_and_collapse_all(qtbot, window, load, st_folder):
    load(window, st_folder)
    view, proxy = window.tree.view, window.tree.proxy
    groups = [proxy.index(r, 0) for r in range(proxy.rowCount()) if proxy.rowCount(proxy.index(r, 0))]
    window.act_expand.trigger()
    assert all(view.isExpanded(g) for g in groups)
    window.act_collapse.trigger()
    assert not any(view.isExpanded(g) for g in groups)


def test_sort_by_name_puts_blk_9_before_blk_10(qtbot, window, load, tmp_path):
    """Twelve layers: alphabetical order would put blk.10 and blk.11 between blk.1 and blk.2."""
    from builders import write_llama_gguf

    path = tmp_path / "twelve.gguf"
    write_llama_gguf(path, ("twelve", 12, 32, 64, 2, 2, 32, False))
    load(window, path)
    tree = window.tree
    natural = [f"blk.{i}" for i in range(12)]
    for order, expected in ((Qt.SortOrder.AscendingOrder, natural), (Qt.SortOrder.DescendingOrder, natural[::-1])):
        tree.sort_by(NAME, order)
        groups = [n for n in (tree.proxy.index(r, 0).data() for r in range(tree.proxy.rowCount()))
                  if n.startswith("blk.")]
        assert groups == expected, order
    # the same inside a name: a filter that matches across layers keeps the natural order of the matches
    tree.sort_by(NAME)
    tree.filter.set_text("ffn_down")
    assert tree.visible_tensor_names() == [f"blk.{i}.ffn_down.weight" for i in range(12)]


def test_a_filtered_layer_row_shows_the_totals_of_what_the_filter_shows(qtbot, window, load, demo_path):
    from workbench import open_model
    from ui.widgets.tensor_tree import PARAMS, SHAPE, SIZE
    from ui.formatting import grouped, human_bytes

    load(window, demo_path)
    tree = window.tree
    model = open_model(demo_path)
    layer = [t for t in model.tensors if t.name.startswith("blk.0.")]

    def layer_row():
        for r in range(tree.proxy.rowCount()):
            idx = tree.proxy.index(r, 0)
            if idx.data() == "blk.0":
                return idx
        raise AssertionError("no blk.0 row")

    whole = layer_row()
    assert whole.siblingAtColumn(SHAPE).data() == f"{len(layer)} tensors"  # positive control: no filter
    tree.filter.set_text("ffn_")
    qtbot.waitUntil(lambda: "Showing" in tree.count_label.text(), timeout=5000)
    shown = [t for t in layer if "ffn_" in t.name]
    idx = layer_row()
    assert idx.siblingAtColumn(SHAPE).data() == f"{len(shown)} of {len(layer)} tensors"
    assert idx.siblingAtColumn(PARAMS).data() == grouped(sum(t.n_params for t in shown))
    assert idx.siblingAtColumn(SIZE).data() == human_bytes(sum(t.nbytes for t in shown))
    tree.filter.set_text("")
    qtbot.waitUntil(lambda: "Showing" not in tree.count_label.text(), timeout=5000)
    assert layer_row().siblingAtColumn(SHAPE).data() == f"{len(layer)} tensors"
