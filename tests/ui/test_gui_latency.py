"""The latency work (issue 16 §1): what the GUI thread no longer does, checked by behaviour.

- the tensor tree answers from rows built once per model: every cell equals what the tensor itself says
  (formatted here from the TensorInfo, not by the model under test), and sorting follows the real keys;
- painting and sorting the tree call no Python of its model or widget (Qt answers from its items: no wait
  for the interpreter lock a worker holds), and a filter change runs the layer totals once;
- the opening job builds those rows on the loader's thread;
- the plan bar's preset sizes arrive from a worker (the picker is usable at once);
- a click paints the header facts while the statistics job is still running;
- worker threads hand the interpreter lock to the GUI thread quickly.
"""
from __future__ import annotations

import math
import re
import sys
import threading

import pytest
from PySide6.QtCore import QEvent, QModelIndex, QObject, Qt

from workbench import open_model
from workbench.plan import PRESETS
from workbench.units import human_bytes

from ui.widgets.tensor_tree import (FULL_NAME_ROLE, NAME, OBJECT_ROLE, PARAMS, PLAN, SHAPE, SIZE, SORT_ROLE,
                                    TYPE, TensorGroup, TensorTreeModel)


def natural(text: str) -> list:
    """``blk.9`` before ``blk.10`` (the reference, not the code's natural_key): digit runs compare as numbers;
    re.split with a group alternates text and digits, so the lists compare position by position."""
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(re.split(r"(\d+)", text))]


def _expected_cells(t) -> dict[int, str]:
    n = int(math.prod(t.shape)) if t.shape else 1
    return {SHAPE: " × ".join(str(d) for d in t.shape) if t.shape else "scalar", TYPE: t.dtype,
            PARAMS: f"{n:,}", SIZE: human_bytes(t.nbytes)}


def _walk(model: TensorTreeModel, parent=QModelIndex()):
    for r in range(model.rowCount(parent)):
        idx = model.index(r, 0, parent)
        yield idx, parent
        yield from _walk(model, idx)


@pytest.mark.parametrize("which", ["gguf", "folder", "twelve"])
def test_tree_cells_equal_the_tensors_own_facts(qtbot, which, demo_path, st_folder, tmp_path):
    if which == "twelve":  # blk.10 after blk.9, also in the tensors' names
        from builders import write_llama_gguf
        write_llama_gguf(tmp_path / "twelve.gguf", ("twelve", 12, 32, 64, 2, 2, 32, False))
    model = open_model({"gguf": demo_path, "folder": st_folder, "twelve": tmp_path / "twelve.gguf"}[which])
    tm = TensorTreeModel()
    tm.set_model(model)
    by_name = {t.name: t for t in model.tensors}
    seen, groups, name_ranks, number_types = [], [], [], set()
    for idx, parent in _walk(tm):
        obj = idx.data(OBJECT_ROLE)
        assert idx.data(FULL_NAME_ROLE) == obj.name
        name_ranks.append((idx.data(SORT_ROLE), obj.name))
        number_types |= {type(idx.siblingAtColumn(c).data(SORT_ROLE)) for c in (PARAMS, SIZE)}
        if isinstance(obj, TensorGroup):
            groups.append(obj)
            n = sum(int(math.prod(t.shape)) for t in obj.tensors)
            nbytes = sum(t.nbytes for t in obj.tensors)
            assert idx.data() == obj.name
            assert idx.siblingAtColumn(SHAPE).data() == f"{len(obj.tensors)} tensors"
            assert idx.siblingAtColumn(PARAMS).data() == f"{n:,}"
            assert idx.siblingAtColumn(SIZE).data() == human_bytes(nbytes)
            assert idx.siblingAtColumn(PARAMS).data(SORT_ROLE) == n
            assert idx.siblingAtColumn(SIZE).data(SORT_ROLE) == nbytes
            assert obj.n_params == n and obj.nbytes == nbytes
            assert idx.data(Qt.ItemDataRole.ToolTipRole).startswith(f"{obj.name}: {len(obj.tensors)} tensors")
            continue
        t = by_name[obj.name]
        assert obj is t
        seen.append(t.name)
        in_group = parent.isValid()
        shown = idx.data()
        assert t.name.endswith(shown) and (shown == t.name) != in_group
        if in_group:
            assert t.name == parent.data(FULL_NAME_ROLE) + "." + shown
        for col, text in _expected_cells(t).items():
            assert idx.siblingAtColumn(col).data() == text, (t.name, col)
        n = int(math.prod(t.shape)) if t.shape else 1
        assert idx.siblingAtColumn(PARAMS).data(SORT_ROLE) == n
        assert idx.siblingAtColumn(SIZE).data(SORT_ROLE) == t.nbytes
        assert idx.data(Qt.ItemDataRole.ToolTipRole) == f"{t.name}\n{idx.siblingAtColumn(SHAPE).data()} {t.dtype}, " \
                                                       f"{t.nbytes:,} bytes"
        alignment = idx.siblingAtColumn(SIZE).data(Qt.ItemDataRole.TextAlignmentRole)
        assert Qt.AlignmentFlag(alignment) & Qt.AlignmentFlag.AlignRight
    assert sorted(seen) == sorted(by_name) and groups
    # the Name column sorts by a rank: ascending ranks follow the natural order, equal ranks equal names
    name_ranks.sort(key=lambda rn: rn[0])
    for (ra, a), (rb, b) in zip(name_ranks, name_ranks[1:]):
        assert natural(a) <= natural(b) and (ra == rb) == (natural(a) == natural(b)), (a, b)
    # numbers are one type: Qt compares an int with an int only (Python ints above 2**31 become long long)
    assert number_types == {float}
    # out of range: no index (bounds are checked without hasIndex)
    assert not tm.index(tm.rowCount(), 0).isValid() and not tm.index(0, 6).isValid() and not tm.index(-1, 0).isValid()


def test_sorting_by_precomputed_ranks_follows_the_real_keys(qtbot, window, load, demo_path):
    model = load(window, demo_path)
    tree = window.tree
    for col, key in ((SIZE, lambda t: t.nbytes), (PARAMS, lambda t: int(math.prod(t.shape))),
                     (NAME, lambda t: natural(t.name)), (TYPE, lambda t: t.dtype)):
        for order in (Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder):
            tree.sort_by(col, order)
            g = next(tree.proxy.index(r, 0) for r in range(tree.proxy.rowCount())
                     if isinstance(tree.proxy.index(r, 0).data(OBJECT_ROLE), TensorGroup))
            shown = [g.model().index(r, 0, g).data(OBJECT_ROLE) for r in range(tree.proxy.rowCount(g))]
            keys = [key(t) for t in shown]
            assert keys == sorted(keys, reverse=order == Qt.SortOrder.DescendingOrder), (col, order)
            assert len(shown) == len(g.data(OBJECT_ROLE).tensors)
    assert model is window.model


def test_the_tree_rows_are_built_on_the_loaders_thread(qtbot, window, load, demo_path, monkeypatch):
    import ui.models.tensor_tree_model as ttm

    threads = []
    real = ttm.build_rows

    def recording(model):
        threads.append(threading.current_thread())
        return real(model)

    monkeypatch.setattr(ttm, "build_rows", recording)
    load(window, demo_path)
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert window.tree.visible_tensor_names()  # the window showed the rows built there


def test_preset_sizes_arrive_from_a_worker(qtbot, window, load, demo_path, monkeypatch):
    import ui.widgets.plan_bar as plan_bar

    threads, gate = [], threading.Event()
    real_plan = plan_bar.Plan

    def gated_plan(model, preset, *a, **kw):
        threads.append(threading.current_thread())
        if threading.current_thread() is not threading.main_thread():
            gate.wait(10)
        return real_plan(model, preset, *a, **kw)

    monkeypatch.setattr(plan_bar, "Plan", gated_plan)
    combo = window.plan_bar.preset
    with qtbot.waitSignal(window.model_loaded, timeout=20_000):
        window.open_path(demo_path)
    # the window shows the model while the sizes are still being computed: the presets are listed already
    assert combo.sizes == {} and combo.findText("Q4_0") >= 0
    assert combo.model().index(combo.findText("Q4_0"), 1).data() == ""
    with qtbot.waitSignal(window.plan_bar.sizes_ready, timeout=20_000) as blocker:
        gate.set()
    sizes = blocker.args[0]
    assert threads and all(t is not threading.main_thread() for t in threads)
    model = window.model
    for preset in ("Q4_0", "Q8_0", "Q4_K_M"):
        plan = real_plan(model, preset)
        assert sizes[preset] == (plan.nbytes, plan.bits_per_weight)
        assert combo.model().index(combo.findText(preset), 1).data() == human_bytes(plan.nbytes)
    assert set(sizes) <= set(PRESETS)
    # the Compare and Generate level pickers got them too
    picker = window.compare_view.pickers[0]
    assert picker.sizes == sizes


class _PaintRecorder(QObject):
    """Counts a widget's paints, and the ones made before ``stats_shown``."""

    def __init__(self, widget, detail):
        super().__init__(widget)
        self.painted, self.before_stats, self.stats_seen = 0, 0, False
        detail.stats_shown.connect(self._stats)
        widget.installEventFilter(self)

    def _stats(self, _s) -> None:
        self.stats_seen = True

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Paint:
            self.painted += 1
            self.before_stats += not self.stats_seen
        return False


def test_a_click_paints_the_header_before_the_stats_job_finishes(qtbot, window, load, demo_path, monkeypatch):
    import ui.pages.tensor_detail as td

    gate, started = threading.Event(), threading.Event()
    real_job = td._stats_job

    def gated_job(model, name):
        started.set()
        gate.wait(10)
        return real_job(model, name)

    load(window, demo_path)
    monkeypatch.setattr(td, "_stats_job", gated_job)
    detail = window.detail
    window.tabs.setCurrentWidget(detail)
    rec = _PaintRecorder(detail.title, detail)
    name = "blk.1.ffn_down.weight"
    assert window.tree.select(name)
    assert detail.title.text() == name and detail.info_labels["Type"].text()
    # the header is painted before any statistics: the job starts once the selection rested, and is held
    qtbot.waitUntil(lambda: rec.before_stats > 0, timeout=5000)
    qtbot.waitUntil(started.is_set, timeout=5000)
    assert detail.worker.is_busy() and detail.stats is None and not rec.stats_seen
    # the statistics take long: the progress row shows (after PENDING_MS), then the result replaces it
    qtbot.waitUntil(detail.busy.isVisible, timeout=5000)
    with qtbot.waitSignal(detail.stats_shown, timeout=10_000) as blocker:
        gate.set()
    assert blocker.args[0].name == name and not detail.busy.isVisible()


def test_a_held_arrow_key_starts_no_statistics_job_until_the_selection_rests(qtbot, window, load, demo_path,
                                                                           monkeypatch):
    import ui.pages.tensor_detail as td

    asked = []
    real_job = td._stats_job

    def recording_job(model, name):
        asked.append(name)
        return real_job(model, name)

    load(window, demo_path)
    monkeypatch.setattr(td, "_stats_job", recording_job)
    detail, tree = window.detail, window.tree
    names = [n for n in tree.visible_tensor_names() if n.startswith("blk.0.")][:4]
    tree.expand_all()
    with qtbot.waitSignal(detail.stats_shown, timeout=10_000) as blocker:
        for n in names:  # faster than STATS_DELAY_MS: each one supersedes the last before it rests
            assert tree.select(n)
            assert detail.title.text() == n  # the header follows every step
    assert blocker.args[0].name == names[-1] and asked == [names[-1]]


def test_workers_hand_the_interpreter_lock_over_quickly(qtbot):
    from ui.app import GUI_SWITCH_INTERVAL_S, ensure_app

    ensure_app()
    assert sys.getswitchinterval() <= GUI_SWITCH_INTERVAL_S <= 0.001


def test_the_status_bar_moves_its_progress_bar_in_visible_steps_only(qtbot):
    from ui.widgets.status_bar import STEPS, StatusBar
    from ui.worker import Worker

    bar = StatusBar()
    qtbot.addWidget(bar)
    worker = Worker(bar)
    bar.track(worker)
    worker._current = 1  # a job of this worker runs (as far as the bar can tell)
    bar._active = worker
    values = []
    real = bar.progress_bar.setValue
    bar.progress_bar.setValue = lambda v: (values.append(v), real(v))  # each new value is a synchronous repaint
    total = 10 * STEPS
    for done in range(total + 1):
        bar._progress(worker, done, total, "Quantizing")
    assert bar.progress_bar.value() == total and bar.currentMessage() == "Quantizing"
    assert values == list(range(10, total + 1, 10))  # every 1/STEPS of the way, not every step
    worker._current = None


class _PaintCounter(QObject):
    def __init__(self, widget):
        super().__init__(widget)
        self.painted = 0
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        self.painted += event.type() == QEvent.Type.Paint
        return False


def test_painting_and_sorting_the_tree_call_no_python_of_its_model(qtbot, window, load, demo_path):
    """Qt answers the tree from its items: a repaint and a sort make no Python call of the tree's model,
    widget or delegate, so they never wait for the interpreter lock a worker thread holds."""
    import ui.models.tensor_tree_model as tree_model
    import ui.widgets.plan_delegate as plan_delegate
    import ui.widgets.tensor_tree as tensor_tree
    from pycalls import calls_into

    load(window, demo_path)
    tree = window.tree
    tree.expand_all()
    painted = _PaintCounter(tree.view.viewport())
    layer = tree.proxy.index(next(r for r in range(tree.proxy.rowCount())
                                  if tree.proxy.rowCount(tree.proxy.index(r, 0))), 0)
    assert tree.view.isExpanded(layer) and tree.proxy.index(0, PLAN, layer).data()  # the plan is shown
    with calls_into(tree_model, tensor_tree, plan_delegate) as seen:
        tree.view.viewport().repaint()
        tree.view.sortByColumn(SIZE, Qt.SortOrder.DescendingOrder)  # what a click on the header does
        tree.view.viewport().repaint()
        tree.view.sortByColumn(PLAN, Qt.SortOrder.AscendingOrder)
        tree.view.sortByColumn(NAME, Qt.SortOrder.AscendingOrder)
        tree.view.viewport().repaint()
    assert painted.painted == 3
    assert seen == []
    # a filter change computes, once, the totals of the layers it shows in part; painting them calls nothing
    with calls_into(tree_model, tensor_tree, plan_delegate) as seen:
        tree.filter.set_text("ffn_")
        tree.view.viewport().repaint()
    layers = [i for i in (tree.proxy.index(r, 0) for r in range(tree.proxy.rowCount()))
              if isinstance(i.data(OBJECT_ROLE), TensorGroup)]
    assert layers and all(tree.proxy.rowCount(i) < len(i.data(OBJECT_ROLE).tensors) for i in layers)  # in part
    assert painted.painted == 4
    assert seen.count("_update_count") == 1 and seen.count("group_cells") == len(layers)
    assert set(seen) <= {"_set_filter", "_update_count", "<listcomp>", "show_filtered", "group_cells"}, seen
    with calls_into(tree_model, tensor_tree, plan_delegate) as seen:
        tree.view.viewport().repaint()
    assert seen == [] and painted.painted == 5
