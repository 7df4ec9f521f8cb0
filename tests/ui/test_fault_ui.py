"""Faults in the GUI (issue 13 §2): a completion handler that raises shows the error and gives the window
back in its previous usable state; the convert dialog offers to remove what killed runs left in the output
folder, scanning and removing on a worker, never touching a live run's partial."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from ui import APP_NAME
from workbench import fsutil
from workbench.units import human_bytes

LOAD_TIMEOUT = 15_000


class Boom:
    """A stand-in for a part's ``set_model`` that raises for one model and delegates otherwise."""

    def __init__(self, real, when):
        self.real, self.when, self.raised = real, when, 0

    def __call__(self, model, *a, **kw):
        if self.when(model):
            self.raised += 1
            raise RuntimeError("boom in a handler")
        return self.real(model, *a, **kw)


def test_a_failing_result_handler_shows_the_error_and_the_welcome_page(qtbot, make_window, st_folder, monkeypatch):
    errors: list[tuple[str, str]] = []
    w = make_window(show_error=lambda title, message: errors.append((title, message)))
    boom = Boom(w.detail.set_model, lambda model: True)
    monkeypatch.setattr(w.detail, "set_model", boom)
    with qtbot.waitSignal(w.load_failed, timeout=LOAD_TIMEOUT) as failed:
        w.open_path(st_folder)
    assert boom.raised == 1
    assert failed.args == ["Unexpected error: RuntimeError: boom in a handler"]
    assert errors == [("Could not open model", "Unexpected error: RuntimeError: boom in a handler")]
    assert not w.statusBar().currentMessage().startswith("Opening")
    assert w.model is None and w.stack.currentWidget() is w.welcome and w.windowTitle() == APP_NAME
    assert not w.loader.is_busy()

    boom.when = lambda model: False  # usable: the next open works
    with qtbot.waitSignal(w.model_loaded, timeout=LOAD_TIMEOUT):
        w.open_path(st_folder)
    assert w.stack.currentWidget() is w.splitter and w.model is not None


def test_a_failing_handler_gives_back_the_previous_model_and_plan(qtbot, make_window, load, st_folder, st_folder_b,
                                                                   monkeypatch):
    errors: list[tuple[str, str]] = []
    w = make_window(show_error=lambda title, message: errors.append((title, message)))
    first = load(w, st_folder)
    w.plan.set_preset("Q8_0")  # an edit the failed open must not lose
    plan = w.plan.plan
    title = w.windowTitle()
    boom = Boom(w.metadata.set_model, lambda model: model is not first)  # fails after tree and detail took it
    monkeypatch.setattr(w.metadata, "set_model", boom)
    with qtbot.waitSignal(w.load_failed, timeout=LOAD_TIMEOUT):
        w.open_path(st_folder_b)
    assert boom.raised == 1 and errors[0][0] == "Could not open model" and "boom in a handler" in errors[0][1]
    assert w.model is first and w.windowTitle() == title and w.stack.currentWidget() is w.splitter
    assert w.plan.plan is plan and plan.preset == "Q8_0"
    assert w.detail._model is first and w.tree._total == len(first.tensors)  # the parts show the first again
    assert not w.statusBar().currentMessage().startswith("Opening")


DEAD_RUN = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from workbench import fsutil
    folder = Path(sys.argv[1])
    (folder / fsutil.partial_name("Model-F16.gguf")).write_bytes(b"g" * 3000)
    d = folder / fsutil.partial_name("model-hf")
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"s" * 2000)
    (folder / ".Model-F16.gguf.lock").write_text(fsutil.owner_tag())
    print(len(fsutil.owner_tag()), flush=True)
    os._exit(0)  # gone without cleaning up, as after kill -9
""")


@pytest.mark.parametrize("dialog", ["convert", "merge"])  # both dialogs that write an output folder
def test_the_output_dialogs_offer_to_remove_leftovers_of_dead_runs(qtbot, window, load, st_folder, tmp_path,
                                                                   monkeypatch, dialog):
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", DEAD_RUN, str(out)], capture_output=True, text=True, check=True)
    total = 3000 + 2000 + int(r.stdout)
    live = out / fsutil.partial_name("Live.gguf")  # a run of this (live) process: never offered
    live.write_bytes(b"l" * 100)
    threads = []
    real = fsutil.dead_partials

    def recording(folder):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(folder)

    monkeypatch.setattr(fsutil, "dead_partials", recording)
    load(window, st_folder)
    dlg = getattr(window.conversion, f"{dialog}_dialog")()
    note = dlg.leftovers
    with qtbot.waitSignal(note.scanned, timeout=LOAD_TIMEOUT, check_params_cb=lambda found: len(found) == 3):
        dlg.out_dir.setText(str(out))
    assert note.isVisibleTo(dlg)
    assert note.button.text() == f"Remove 3 leftover files ({human_bytes(total)})"
    assert "3 leftover files" in note.label.text()

    with qtbot.waitSignal(note.removed, timeout=LOAD_TIMEOUT) as removed:
        note.button.click()
    assert removed.args == [3, total]
    assert sorted(p.name for p in out.iterdir()) == [live.name]
    assert not note.isVisibleTo(dlg)
    assert threads and not any(threads)  # scanned and removed on a worker, never on the GUI thread

    with qtbot.waitSignal(note.scanned, timeout=LOAD_TIMEOUT, check_params_cb=lambda found: found == []):
        dlg.out_dir.setText(str(tmp_path))  # a folder without leftovers: no note
    assert not note.isVisibleTo(dlg)
    dlg.reject()
