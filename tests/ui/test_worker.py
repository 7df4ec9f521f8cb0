"""The generic background worker: results, progress, errors, superseding, cancel, shutdown."""
from __future__ import annotations

import logging
import sys
import threading

import pytest

from ui.worker import Worker, stop_all_workers
from workbench import FormatError, Progress


@pytest.fixture
def worker(qtbot):
    w = Worker(name="test")
    yield w
    assert w.shutdown(5000)


def counting_job(n: int, result):
    for i in range(n):
        yield Progress(i + 1, n, f"step {i + 1}")
    return result


def blocking_job(gate: threading.Event, closed: threading.Event, result="slow"):
    """Yields progress until ``gate`` is set; records that the generator was closed (cancel)."""
    try:
        i = 0
        while not gate.wait(0.005):
            i += 1
            yield Progress(i, 0, "waiting")
        return result
    finally:
        closed.set()


def test_result_progress_and_finished(qtbot, worker):
    progress, results = [], []
    worker.progress.connect(lambda d, t, m: progress.append((d, t, m)))
    worker.result.connect(results.append)
    with qtbot.waitSignals([worker.result, worker.finished], timeout=5000, order="strict"):
        job_id = worker.start(counting_job, 3, {"answer": 42})
    assert results == [{"answer": 42}]
    assert job_id == 1 and not worker.is_busy()
    assert progress and progress[0] == (1, 3, "step 1")  # later steps may be throttled


def test_plain_function_runs_on_a_pool_thread(qtbot, worker):
    main = threading.current_thread()
    with qtbot.waitSignal(worker.result, timeout=5000) as blocker:
        worker.start(lambda: threading.current_thread())
    assert blocker.args[0] is not main


def test_workbench_error_message(qtbot, worker):
    def failing():
        yield Progress(0, 1)
        raise FormatError("header is truncated", path="/tmp/x.gguf")

    with qtbot.waitSignal(worker.error, timeout=5000) as blocker:
        worker.start(failing)
    assert blocker.args == ["/tmp/x.gguf: header is truncated"]


def test_unexpected_error_is_reported_and_logged(qtbot, worker, caplog):
    def buggy():
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="ui.worker"):
        with qtbot.waitSignal(worker.error, timeout=5000) as blocker:
            worker.start(buggy)
    assert blocker.args == ["Unexpected error: ValueError: boom"]
    assert "Traceback" in caplog.text and "boom" in caplog.text


def test_superseded_job_result_is_dropped(qtbot, worker):
    gate, closed = threading.Event(), threading.Event()
    results = []
    worker.result.connect(results.append)
    with qtbot.waitSignal(worker.progress, timeout=5000):  # the first job is running
        first = worker.start(blocking_job, gate, closed, "first")
    with qtbot.waitSignal(worker.result, timeout=5000):
        second = worker.start(counting_job, 2, "second")
    gate.set()
    assert worker.wait(5000)
    qtbot.waitUntil(lambda: not worker._tasks, timeout=5000)  # every queued signal delivered
    assert second == first + 1
    assert results == ["second"]
    assert closed.is_set()  # the superseded generator was closed, its finally ran


def test_cancel_stops_the_generator(qtbot, worker):
    gate, closed = threading.Event(), threading.Event()
    results = []
    worker.result.connect(results.append)
    with qtbot.waitSignal(worker.progress, timeout=5000):
        worker.start(blocking_job, gate, closed)
    with qtbot.waitSignals([worker.cancelled, worker.finished], timeout=5000):
        worker.cancel()
    assert not worker.is_busy()
    assert worker.wait(5000)
    qtbot.waitUntil(lambda: not worker._tasks, timeout=5000)  # whatever the thread still sent has arrived
    assert closed.is_set() and results == []


def test_stop_all_workers_waits_for_threads(qtbot):
    gate, closed = threading.Event(), threading.Event()
    w = Worker()
    with qtbot.waitSignal(w.progress, timeout=5000):
        w.start(blocking_job, gate, closed)
    assert stop_all_workers(5000)
    assert closed.is_set()


def test_huge_progress_counts_fit_qt_ints(qtbot, worker):
    seen = []
    worker.progress.connect(lambda d, t, m: seen.append((d, t)))

    def big():
        yield Progress(3_000_000_000, 6_000_000_000, "big")
        return None

    with qtbot.waitSignal(worker.result, timeout=5000):
        worker.start(big)
    assert seen == [(500_000, 1_000_000)]


def test_a_stale_result_that_arrives_after_the_user_moved_on_is_dropped(qtbot, worker):
    """A plain-function job cannot be interrupted: its result really reaches the worker after a newer job
    started, and must not be shown (nor end the newer job)."""
    release_first, first_running = threading.Event(), threading.Event()
    second_gate, second_closed = threading.Event(), threading.Event()

    def first_job():
        first_running.set()
        release_first.wait(10)
        return "stale"

    results, delivered = [], []
    worker.result.connect(results.append)
    worker._sig_result.connect(lambda job_id, value: delivered.append((job_id, value)))
    first = worker.start(first_job)
    qtbot.waitUntil(first_running.is_set, timeout=5000)
    with qtbot.waitSignal(worker.progress, timeout=5000):  # the user moved on: a second job is running
        second = worker.start(blocking_job, second_gate, second_closed, "fresh")
    # the stale result arrives while the second job still runs; _sig_done follows it from the same thread and
    # takes the job out of the worker's table (waited for by that state: a pytest-qt blocker on a signal sent
    # from another thread can be handed a second queued emission after it was torn down)
    release_first.set()
    qtbot.waitUntil(lambda: first not in worker._tasks, timeout=5000)
    assert delivered == [(first, "stale")]  # positive control: the stale result did reach the worker
    assert results == [] and worker.job_id == second and worker.is_busy()
    with qtbot.waitSignal(worker.result, timeout=5000):
        second_gate.set()
    assert results == ["fresh"] and not worker.is_busy()


def test_a_stale_error_is_dropped_too(qtbot, worker):
    release_first, first_running = threading.Event(), threading.Event()

    def failing_late():
        first_running.set()
        release_first.wait(10)
        raise FormatError("late failure", path="/tmp/old.gguf")

    errors, results, delivered = [], [], []
    worker.error.connect(errors.append)
    worker.result.connect(results.append)
    worker._sig_error.connect(lambda job_id, message: delivered.append(job_id))
    first = worker.start(failing_late)
    qtbot.waitUntil(first_running.is_set, timeout=5000)
    with qtbot.waitSignal(worker.result, timeout=5000):
        worker.start(counting_job, 1, "second")
    release_first.set()
    qtbot.waitUntil(lambda: first not in worker._tasks, timeout=5000)  # its last signal has been handled
    assert delivered == [first]  # positive control: the late error reached the worker
    assert results == ["second"] and errors == []


def test_a_failing_progress_handler_ends_the_job_on_the_error_path(qtbot, worker, caplog):
    gate, closed = threading.Event(), threading.Event()
    calls, errors, results, cancelled = [], [], [], []

    def handler(done, total, message):
        calls.append(done)
        raise RuntimeError("boom in a progress handler")

    worker.progress.connect(handler)
    worker.error.connect(errors.append)
    worker.result.connect(results.append)
    worker.cancelled.connect(lambda: cancelled.append(True))
    with caplog.at_level(logging.ERROR, logger="ui.worker"):
        with qtbot.waitSignals([worker.error, worker.finished], timeout=5000, order="strict"):
            worker.start(blocking_job, gate, closed)
    assert errors == ["Unexpected error: RuntimeError: boom in a progress handler"]
    assert not worker.is_busy() and "boom in a progress handler" in caplog.text
    assert worker.wait(5000)  # the job stops although its gate never opened
    assert closed.is_set()  # its generator was closed (its finally ran)
    qtbot.waitUntil(lambda: not worker._tasks, timeout=5000)  # whatever the thread still sent has arrived
    assert calls == [1] and results == [] and cancelled == []  # nothing after the failure reaches the owner
    worker.progress.disconnect(handler)
    with qtbot.waitSignal(worker.result, timeout=5000):  # the worker stays usable
        worker.start(counting_job, 1, "next")
    assert results == ["next"]


def test_a_jobs_objects_and_its_worker_are_released_on_the_gui_thread(qtbot):
    """The pool thread must not drop the last reference to a job's objects or to the worker (a QObject):
    destroying Qt objects there can deadlock against the GUI thread's deletions."""
    import gc
    import threading

    released = []

    class Tracked:
        def __del__(self):
            released.append(threading.current_thread() is threading.main_thread())

    def job(obj):
        yield Progress(1, 1, "working")
        return None

    worker = Worker()
    worker.start(job, Tracked())
    qtbot.waitUntil(lambda: not worker._tasks, timeout=5000)
    gc.collect()
    qtbot.waitUntil(lambda: bool(released), timeout=5000)  # (kept until the pool thread let go of them)
    assert released == [True]
    worker.start(lambda: 1)
    qtbot.waitUntil(lambda: not worker._tasks, timeout=5000)
    import weakref
    probe = weakref.ref(worker)
    del worker
    gc.collect()
    assert probe() is None  # no task (kept by the pool's functor) holds the worker alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_background_threads_run_at_a_lower_priority_than_the_gui_thread(qtbot):
    """A job's thread, and a thread that was running before the job (as BLAS's are), yield the CPU to the GUI."""
    import os
    import threading

    from ui.worker import BACKGROUND_NICE

    idle = threading.Event()
    started = threading.Event()
    other_tid = []

    def bystander():
        other_tid.append(threading.get_native_id())
        started.set()
        idle.wait(10)

    t = threading.Thread(target=bystander)
    t.start()
    started.wait(5)
    seen = {}

    def job():
        seen["own"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return 1

    worker = Worker()
    try:
        with qtbot.waitSignal(worker.result, timeout=5000):
            worker.start(job)
        assert seen["own"] == BACKGROUND_NICE
        assert os.getpriority(os.PRIO_PROCESS, other_tid[0]) == BACKGROUND_NICE
        assert os.getpriority(os.PRIO_PROCESS, threading.main_thread().native_id) < BACKGROUND_NICE
    finally:
        idle.set()
        t.join()
