"""One generic background worker: runs a core job generator on a thread pool.

A *job* is a callable that returns either a generator (``yield Progress(...)`` ... ``return result``,
the shape of every long core operation) or a plain value.  The callable itself runs on the pool
thread, so file I/O and tensor math never happen on the GUI thread.

Every :meth:`Worker.start` gets a new job id and supersedes (cancels) the job before it; signals of
superseded or cancelled jobs are dropped, so a slow old result can never overwrite a newer one.
Cancel is cooperative: a flag checked between yields, after which the generator is closed (its
``finally`` blocks run, e.g. a writer removes its temporary file).
"""
from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable

from PySide6.QtCore import QObject, QThreadPool, QTimer, Signal, Slot

from workbench import Cancelled, Progress, WorkbenchError

log = logging.getLogger(__name__)

_INT_MAX = 2**31 - 1
BACKGROUND_NICE = 10  # background threads run this much "nicer" than the GUI thread (Linux: per thread)
_PROGRESS_INTERVAL = 0.03  # seconds between progress signals of one job
_workers: "weakref.WeakSet[Worker]" = weakref.WeakSet()
_pool: QThreadPool | None = None


def thread_pool() -> QThreadPool:
    """The pool all workers share (not the global instance, so shutting down waits only for ours)."""
    global _pool
    if _pool is None:
        _pool = QThreadPool()
        _pool.setMaxThreadCount(max(2, min(4, QThreadPool.globalInstance().maxThreadCount())))
    return _pool


_scanned: frozenset = frozenset()  # the threads the last call looked at


def lower_background_priority() -> int:
    """Give every thread of this process but the GUI thread and Qt's own a lower CPU priority; returns how many
    were lowered.

    On two busy cores a woken GUI thread otherwise waits for a time slice behind the job's threads (the pool
    thread, the kernels' threads, BLAS's threads); niced, they yield the core at once.  Threads a niced thread
    starts (and processes it forks) inherit the priority; the others (BLAS's, started at import) are found in
    /proc/self/task at each job's start.  Only Linux has per-thread priorities; elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return 0
    global _scanned
    main = threading.main_thread().native_id
    own = threading.get_native_id()
    try:
        tids = frozenset(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return 0
    # a job starts on every tensor clicked: the other threads are looked at again only when some came or went
    todo = tids - {main} if tids != _scanned else {own} - {main}
    _scanned = tids
    lowered = 0
    for tid in todo:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
                if f.read().startswith("Q"):  # Qt's own threads (the X11 event reader, D-Bus...): left alone
                    continue
            if os.getpriority(os.PRIO_PROCESS, tid) < BACKGROUND_NICE:
                os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
                lowered += 1
        except OSError:  # the thread ended meanwhile, or a sandbox forbids it: no harm
            continue
    return lowered


def _fit_int(done: float, total: float) -> tuple[int, int]:
    """Qt signals carry 32-bit ints: scale huge counts (elements of a 2G-value tensor) down."""
    done, total = max(0.0, float(done)), max(0.0, float(total))
    if total > _INT_MAX or done > _INT_MAX:
        scale = max(total, done) / 1_000_000
        return int(done / scale), int(total / scale)
    return int(done), int(total)


class _Task:
    """One run of a job on a pool thread.  Talks to its worker only through the worker's signals."""

    def __init__(self, worker: "Worker", job_id: int, fn: Callable, args: tuple, kwargs: dict):
        # A weak reference: the pool thread drops the task when the run ends, and a strong reference could
        # make it release the last reference to the worker (a QObject) there, destroying it off the GUI thread
        # while the GUI thread deletes objects connected to it: a deadlock between Qt's connection lock and
        # the interpreter lock.
        self._worker = weakref.ref(worker)
        self.job_id = job_id
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.cancel_event = threading.Event()
        self.done_event = threading.Event()

    @property
    def worker(self) -> "Worker | None":
        return self._worker()

    def _emit(self, signal_name: str, *args: Any) -> None:
        worker = self._worker()
        if worker is None:  # the worker is gone: nobody listens, stop at the next step
            self.cancel_event.set()
            return
        try:
            getattr(worker, signal_name).emit(self.job_id, *args)
        except RuntimeError:  # the worker's C++ object is gone (window closed without shutdown)
            self.cancel_event.set()
        finally:
            del worker  # no strong reference kept on this thread

    def run(self) -> None:
        lower_background_priority()
        try:
            self._run()
        finally:
            # the job and its arguments go back to the GUI thread with the last signal and are released there
            # (they may hold the last reference to a Qt object, which must not be destroyed on this thread)
            leftovers = (self.fn, self.args, self.kwargs)
            self.fn = self.args = self.kwargs = None
            self._emit("_sig_done", leftovers)
            del leftovers
            # only now is this thread done: it holds none of the job's objects (the GUI thread may drop them),
            # and shutdown(), which waits for this, never lets a window be destroyed while its worker is still
            # being signalled from here
            self.done_event.set()

    def _run(self) -> None:
        try:
            out = self.fn(*self.args, **self.kwargs)
            if not inspect.isgenerator(out):
                self._emit("_sig_result", out)
                return
            last = 0.0
            while True:
                if self.cancel_event.is_set():
                    out.close()
                    self._emit("_sig_cancelled")
                    return
                try:
                    p = next(out)
                except StopIteration as stop:
                    result = stop.value
                    break
                now = time.monotonic()
                if isinstance(p, Progress) and now - last >= _PROGRESS_INTERVAL:
                    last = now
                    self._emit("_sig_progress", *_fit_int(p.done, p.total), str(p.message))
            if self.cancel_event.is_set():
                self._emit("_sig_cancelled")
            else:
                self._emit("_sig_result", result)
        except Cancelled:
            self._emit("_sig_cancelled")
        except WorkbenchError as exc:
            self._emit("_sig_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not take the app down; it is logged in full
            log.error("Unexpected error in background job %s:\n%s", getattr(self.fn, "__name__", self.fn),
                      traceback.format_exc())
            self._emit("_sig_error", f"Unexpected error: {type(exc).__name__}: {exc}")


class Worker(QObject):
    """Runs one job at a time (per worker) in the background and reports on the GUI thread.

    Public signals concern the *current* job only: ``started()``, ``progress(done, total, message)``,
    ``result(object)``, ``error(str)``, ``cancelled()`` and, after any of the last three,
    ``finished()``.
    """

    started = Signal()
    progress = Signal(int, int, str)
    result = Signal(object)
    error = Signal(str)
    cancelled = Signal()
    finished = Signal()

    # emitted from pool threads, delivered (queued) on this object's thread
    _sig_progress = Signal(int, int, int, str)
    _sig_result = Signal(int, object)
    _sig_error = Signal(int, str)
    _sig_cancelled = Signal(int)
    _sig_done = Signal(int, object)

    def __init__(self, parent: QObject | None = None, name: str = "worker"):
        super().__init__(parent)
        self.setObjectName(name)
        self._next_id = 0
        self._current: int | None = None
        self._tasks: dict[int, _Task] = {}
        self._sig_progress.connect(self._on_progress)
        self._sig_result.connect(self._on_result)
        self._sig_error.connect(self._on_error)
        self._sig_cancelled.connect(self._on_cancelled)
        self._sig_done.connect(self._on_done)
        _workers.add(self)

    # -- API ---------------------------------------------------------------------------------------
    @property
    def job_id(self) -> int | None:
        """Id of the current job, or None when idle."""
        return self._current

    def is_busy(self) -> bool:
        return self._current is not None

    def start(self, fn: Callable, *args: Any, **kwargs: Any) -> int:
        """Run ``fn(*args, **kwargs)`` in the background, superseding the current job.  Returns the job id."""
        for task in self._tasks.values():
            task.cancel_event.set()
        self._next_id += 1
        job_id = self._next_id
        task = _Task(self, job_id, fn, args, kwargs)
        self._tasks[job_id] = task
        self._current = job_id
        self.started.emit()
        thread_pool().start(task.run)
        return job_id

    def cancel(self) -> None:
        """Cancel the current job.  ``cancelled`` and ``finished`` are emitted at once; the thread stops
        at its next progress step and whatever it still reports is dropped."""
        if self._current is None:
            return
        task = self._tasks.get(self._current)
        if task is not None:
            task.cancel_event.set()
        self._current = None
        self.cancelled.emit()
        self.finished.emit()

    def wait(self, timeout_ms: int = 5000) -> bool:
        """Block until every thread this worker started has returned (for shutdown and tests)."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        for task in list(self._tasks.values()):
            if not task.done_event.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Cancel everything and wait for the threads; True when all of them stopped in time."""
        for task in self._tasks.values():
            task.cancel_event.set()
        self._current = None
        return self.wait(timeout_ms)

    # -- delivery (GUI thread) -------------------------------------------------------------------
    @Slot(int, int, int, str)
    def _on_progress(self, job_id: int, done: int, total: int, message: str) -> None:
        if job_id == self._current:
            failure = _deliver(self.progress, done, total, message)
            if failure is not None:  # a progress handler failed: the job stops and its owner hears an error
                task = self._tasks.get(job_id)
                if task is not None:
                    task.cancel_event.set()
                self._current = None
                self._end_with_error(_error_text(failure))

    @Slot(int, object)
    def _on_result(self, job_id: int, value: object) -> None:
        if job_id == self._current:
            self._current = None
            failure = _deliver(self.result, value)
            if failure is None:
                self.finished.emit()
            else:  # a result handler failed: the job's owner hears it as an error
                self._end_with_error(_error_text(failure))

    def _end_with_error(self, message: str) -> None:
        _deliver(self.error, message)
        self.finished.emit()

    @Slot(int, str)
    def _on_error(self, job_id: int, message: str) -> None:
        if job_id == self._current:
            self._current = None
            self._end_with_error(message)

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        if job_id == self._current:
            self._current = None
            self.cancelled.emit()
            self.finished.emit()

    @Slot(int)
    def _on_done(self, job_id: int, leftovers: Any = None) -> None:
        """The job's last signal: its objects are released here, on the GUI thread.  The pool thread may still
        be between sending them and dropping its own reference; until it has, they are kept (and looked at
        again shortly), so the last reference is never the pool thread's."""
        task = self._tasks.pop(job_id, None)
        if task is not None and not task.done_event.is_set():
            _keep_until_released(task, leftovers)


_held: list[tuple["_Task", Any]] = []


def _keep_until_released(task: "_Task", leftovers: Any) -> None:
    _held.append((task, leftovers))
    if len(_held) == 1:
        QTimer.singleShot(5, _release_held)


def _release_held() -> None:
    """(GUI thread) Drop what the pool threads no longer hold; look again in a moment for the rest."""
    _held[:] = [(t, x) for t, x in _held if not t.done_event.is_set()]
    if _held:
        QTimer.singleShot(5, _release_held)


def _deliver(signal, *args: Any) -> BaseException | None:
    """Emit ``signal`` and return the first exception one of its (directly connected) slots raised, logged
    in full, or None.  PySide reports a slot's exception through ``sys.excepthook`` during the emit and goes
    on; caught here, a failing completion handler reaches the error path (a dialog, the window restored)
    instead of leaving the window half-updated, e.g. on "Opening…"."""
    failures: list[BaseException] = []
    previous = sys.excepthook

    def hook(typ, value, tb) -> None:
        log.error("Error in a handler of a background job's signal:\n%s",
                  "".join(traceback.format_exception(typ, value, tb)))
        failures.append(value)

    sys.excepthook = hook
    try:
        signal.emit(*args)
    finally:
        sys.excepthook = previous
    return failures[0] if failures else None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, WorkbenchError):
        return str(exc)
    return f"Unexpected error: {type(exc).__name__}: {exc}"


def stop_all_workers(timeout_ms: int = 5000) -> bool:
    """Cancel the jobs of every worker and wait for the pool to drain (on application exit)."""
    for w in list(_workers):
        try:
            for task in w._tasks.values():
                task.cancel_event.set()
            w._current = None
        except RuntimeError:
            pass
    return thread_pool().waitForDone(timeout_ms)
