"""Cyclic garbage holding Qt objects is collected on the GUI thread only, never on a worker thread."""
from __future__ import annotations

import gc
import threading
import time

from PySide6.QtCore import QObject

from ui import gc_guard
from workbench import gcpolicy


class Probe(QObject):
    """A Qt object in a reference cycle; records on which thread its wrapper is collected."""

    def __init__(self, log: list):
        super().__init__()
        self.log = log
        self.me = self  # the cycle: only the cyclic collector frees it

    def __del__(self):
        self.log.append(threading.current_thread() is threading.main_thread())


def _churn(n: int = 50_000, kept: list | None = None) -> None:
    """Allocate enough container objects that an automatic collector would run in this thread (the collector
    counts allocations less deallocations: ``kept`` keeps them)."""
    made = [[i] for i in range(n)]
    if kept is not None:
        kept.append(made)


def test_the_collector_is_off_and_a_workers_request_runs_on_the_gui_thread(qtbot, _collect_on_gui_thread):
    assert not gc.isenabled()
    gc.collect()
    log: list[bool] = []
    Probe(log)  # garbage at once, but in a cycle
    assert log == []
    finished = threading.Event()

    def worker() -> None:
        _churn()  # an automatic collection would run here, on this thread
        gcpolicy.collect()  # what the comparison calls between levels: carried out on the GUI thread
        finished.set()

    t = threading.Thread(target=worker)
    t.start()
    qtbot.waitUntil(finished.is_set, timeout=5000)
    t.join()
    assert log == [True]


def test_the_timer_collects_what_the_automatic_collector_would_have(qtbot, _collect_on_gui_thread):
    gc.collect()
    log: list[bool] = []
    Probe(log)
    kept: list = []
    t = threading.Thread(target=_churn, args=(5 * gc.get_threshold()[0], kept))
    t.start()
    t.join()
    assert log == [] and gc.get_count()[0] > gc.get_threshold()[0]  # nothing collected on the worker thread
    qtbot.waitUntil(lambda: log == [True], timeout=3 * gc_guard.INTERVAL_MS + 2000)


def test_a_request_gives_up_when_the_gui_thread_does_not_answer(monkeypatch, _collect_on_gui_thread):
    monkeypatch.setattr(gc_guard, "REQUEST_TIMEOUT_S", 0.2)
    waited: list[float] = []

    def worker() -> None:
        t0 = time.monotonic()
        gcpolicy.collect()
        waited.append(time.monotonic() - t0)

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)  # the GUI thread is busy here (joining): the request must not wait forever
    assert not t.is_alive() and 0.15 < waited[0] < 3
