"""Worker processes for the GIL-bound kernels (K and IQ types), sharing input and output memory.

The search kernels issue thousands of small numpy calls per chunk, so threads mostly wait for the
GIL.  For large inputs the rows are split into spans that worker processes quantize in place into a
shared output buffer.  Rows are independent, so the bytes are exactly those of the single-threaded
path.

The workers are plain ``python -c`` subprocesses speaking a tiny length-prefixed pickle protocol over
their pipes (not ``multiprocessing``, which re-imports the caller's main script in every child and
so breaks scripts without a ``__main__`` guard).  They start once and are reused; one feeder thread
per worker takes spans from a shared FIFO queue, so several quantizations can be in flight at once
(:func:`submit`: a conversion quantizes chunk k+1 while it writes chunk k) and the workers never wait
between chunks.  Shared-memory segments of chunk size are pooled, so a stream of chunks does not pay
for fresh zeroed pages per chunk; pooled segments unused for a few seconds are released.

On Linux the workers are forked from this process (after its imports): a fork takes milliseconds where a
fresh interpreter spends ~0.35 CPU-s importing numpy and the kernels, which weighs on a conversion of a
small model.  The forked worker closes every inherited file descriptor but its two pipes (an inherited
output file or lock would outlive this process), ignores Ctrl-C (the parent decides) and leaves with
``os._exit`` (no inherited exit handlers run).  ``WORKBENCH_WORKER_START=spawn``, a process holding more
than ``FORK_MAX_ANON`` of memory (an app with models loaded) or a failed fork starts a fresh interpreter
instead.
"""
from __future__ import annotations

import atexit
import gc
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

# The worker imports only the kernel modules: ``workbench`` is entered as a bare package (its folder, argv[1])
# instead of running its __init__, which loads every model format (about half a CPU-second per worker).
_CHILD_CODE = ("import sys, types; p = types.ModuleType('workbench'); p.__path__ = [sys.argv[1]]; "
               "sys.modules['workbench'] = p; from workbench.kernels.procpool import child_main; child_main()")
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
POOL_SEGMENT_MAX = 1 << 25  # segments up to this size (bytes) are kept for reuse...
POOL_FREE_MAX = 1 << 26  # ...as long as the free ones total at most this
POOL_IDLE_SECONDS = 3.0  # free segments unused this long are released
SPAN_MIN_ELEMENTS = 1 << 19  # values per job sent to a worker (amortizes the round trip)
# CPU priority (nice) workers started from now on take at least; the GUI sets it (kernels.keep_interpreter_free)
# so that its own background threads, which may hold the interpreter lock the GUI thread waits for, win a core
# over the workers' pure computation
worker_nice = 0

_lock = threading.Lock()
_fork_lock = threading.Lock()  # one fork at a time: a child must not inherit another child's pipe ends
_children: list["_Child"] = []
_jobs: "queue.Queue[_Span | None]" = queue.Queue()


def available() -> bool:
    """Worker processes need a Python interpreter (not a frozen app binary)."""
    return not getattr(sys, "frozen", False)


FORK_MAX_ANON = 256 << 20  # fork only a process holding at most this much anonymous memory (see _use_fork)


def _anon_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def _use_fork() -> bool:
    """Fork the workers (Linux, not disabled by ``WORKBENCH_WORKER_START=spawn``) while this process is small.
    A forked worker shares its parent's memory of the moment: pages the parent frees later (a model an app
    closes) stay held by the worker for its whole life, so a big process starts fresh interpreters instead."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and os.environ.get("WORKBENCH_WORKER_START", "").strip().lower() != "spawn"
            and _anon_bytes() <= FORK_MAX_ANON)


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("worker process closed its pipe")
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(n))


def _attach(name: str) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    return shared_memory.SharedMemory(name=name)


# -- shared memory segments (parent side) ----------------------------------------------------------

class _Segments:
    """Shared-memory segments by size: released ones are kept (bounded, for a few seconds) and reused."""

    def __init__(self):
        self.free: list[tuple[float, shared_memory.SharedMemory]] = []  # (released at, segment)
        self.lock = threading.Lock()
        self.reaper: threading.Thread | None = None

    def acquire(self, nbytes: int) -> tuple[shared_memory.SharedMemory, bool]:
        """A segment of at least ``nbytes``, and whether it goes back to the pool after use."""
        nbytes = max(1, nbytes)
        if nbytes > POOL_SEGMENT_MAX:
            return shared_memory.SharedMemory(create=True, size=nbytes), False
        with self.lock:
            fits = [e for e in self.free if nbytes <= e[1].size <= 2 * nbytes]
            if fits:
                entry = min(fits, key=lambda e: e[1].size)
                self.free.remove(entry)
                return entry[1], True
        size = 1 << max(16, (nbytes - 1).bit_length())  # power-of-two sizes: chunks of a stream share them
        return shared_memory.SharedMemory(create=True, size=size), True

    def release(self, seg: shared_memory.SharedMemory, pooled: bool) -> None:
        if not pooled:
            _destroy(seg)
            return
        with self.lock:
            self.free.append((time.monotonic(), seg))
            while sum(e[1].size for e in self.free) > POOL_FREE_MAX:
                _destroy(self.free.pop(0)[1])
            if self.reaper is None:
                self.reaper = threading.Thread(target=self._reap, daemon=True, name="wb-procpool-reaper")
                self.reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(POOL_IDLE_SECONDS / 2)
            with self.lock:
                limit = time.monotonic() - POOL_IDLE_SECONDS
                old = [e for e in self.free if e[0] < limit]
                self.free = [e for e in self.free if e[0] >= limit]
                for e in old:
                    _destroy(e[1])
                if not self.free:
                    self.reaper = None
                    return

    def clear(self) -> None:
        with self.lock:
            for _, seg in self.free:
                _destroy(seg)
            self.free.clear()


def _destroy(seg: shared_memory.SharedMemory) -> None:
    try:
        seg.close()
    finally:
        seg.unlink()


_SEGMENTS = _Segments()


# -- jobs ------------------------------------------------------------------------------------------

class Pending:
    """One quantization running in the worker processes; :meth:`result` waits and returns the bytes."""

    def __init__(self, spans: int, release):
        self.remaining = spans
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._release = release
        self._out: np.ndarray | None = None
        if spans == 0:
            self.done.set()

    def _finish_span(self, exc: BaseException | None) -> None:
        with _lock:
            if exc is not None and self.error is None:
                self.error = exc
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            self.done.set()

    def ready(self) -> bool:
        return self.done.is_set()

    def result(self) -> np.ndarray:
        self.done.wait()
        if self._release is not None:
            release, self._release = self._release, None
            self._out = release(self.error is None)
        if self.error is not None:
            raise self.error
        return self._out

    def discard(self) -> None:
        """Wait for the workers and free the shared memory without reading the result (a cancelled job)."""
        try:
            self.result()
        except BaseException:  # noqa: BLE001 - the result is not wanted
            pass


class _Span:
    __slots__ = ("pending", "job")

    def __init__(self, pending: Pending, job: tuple):
        self.pending, self.job = pending, job


class _Child:
    def __init__(self):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # so a source checkout works uninstalled
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        # glibc: keep freed temporaries in the heap instead of returning them to the system after each
        # numpy call (the default trimming makes every multi-MB temporary fresh pages: ~40% slower)
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 25))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 27))
        env["WORKBENCH_WORKER_NICE"] = str(worker_nice)
        self.env = env
        self.proc = self._start()
        self.thread = threading.Thread(target=self._feed, daemon=True, name="wb-procpool")
        self.thread.start()

    def _start(self) -> "subprocess.Popen | _Forked":
        if _use_fork():
            try:
                return _Forked()
            except OSError:  # no memory to fork a big process, too many processes...: a fresh interpreter
                pass
        return subprocess.Popen([sys.executable, "-c", _CHILD_CODE, _PACKAGE_DIR], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=self.env)

    def _feed(self) -> None:
        while True:
            span = _jobs.get()
            if span is None:  # shutdown
                return
            if span.pending.error is not None:  # an earlier span of this call failed: skip the rest
                span.pending._finish_span(None)
                continue
            try:
                _send(self.proc.stdin, span.job)
                status, payload = _recv(self.proc.stdout)
                exc = None if status == "ok" else payload
            except BaseException as e:  # noqa: BLE001 - a dead worker: this call fails, a new worker goes on
                exc = RuntimeError(f"a quantization worker process failed: {e}")
                self.proc.kill()
                self.proc.wait()
                self.proc = self._start()
            span.pending._finish_span(exc)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except Exception:  # noqa: BLE001 - best effort at exit
            self.proc.kill()


class _Forked:
    """A worker forked from this process, with the part of ``subprocess.Popen``'s interface the pool uses."""

    def __init__(self):
        from .. import kernels  # noqa: F401  (every kernel module imported once here, not in each child)

        with _fork_lock:
            r_in, w_in = os.pipe()
            r_out, w_out = os.pipe()
            gc.freeze()  # the child's collector leaves the inherited objects (and their pages) alone
            try:
                with warnings.catch_warnings():  # 3.12+ warns of fork in a threaded process: the child only
                    warnings.simplefilter("ignore", DeprecationWarning)  # runs this module and numpy
                    pid = os.fork()
            except BaseException:
                gc.unfreeze()
                for fd in (r_in, w_in, r_out, w_out):
                    os.close(fd)
                raise
            if pid == 0:  # the child: never returns
                code = 1
                try:
                    _forked_main(r_in, w_out)
                    code = 0
                finally:
                    os._exit(code)
            gc.unfreeze()
            os.close(r_in)
            os.close(w_out)
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = open(w_in, "wb")
        self.stdout = open(r_out, "rb")

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _keep_freed_memory() -> None:
    """What MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ do for a spawned worker (see _Child), for a
    forked one whose allocator is already set up: glibc's mallopt, when there is a glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 27)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: its defaults
        pass


def _lower_priority(nice: int) -> None:
    """Run this worker at least ``nice`` (it inherits its starter's priority, which may already be lower)."""
    try:
        if nice > os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except (AttributeError, OSError):  # no priorities here (Windows): as started
        pass


def _forked_main(r: int, w: int) -> None:
    """The forked worker: its pipes become fds 0 and 1, every other inherited descriptor but stderr is closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the whole group: the parent decides
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if callable(signal.getsignal(sig)):  # a handler of the parent's (an app's) is not ours
            signal.signal(sig, signal.SIG_DFL)
    _keep_freed_memory()
    _lower_priority(worker_nice)
    os.dup2(r, 0)
    os.dup2(w, 1)
    os.closerange(3, max(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1 << 16))
    child_main(open(0, "rb", closefd=False), open(1, "wb", closefd=False))


def start(n: int) -> None:
    """Have ``n`` worker processes running (started in the background; returns at once)."""
    _ensure_children(n)


def _ensure_children(n: int) -> None:
    with _lock:
        _children[:] = [c for c in _children if c.alive()]
        while len(_children) < n:
            _children.append(_Child())


@atexit.register
def _shutdown() -> None:
    with _lock:
        for _ in _children:
            _jobs.put(None)
        for c in _children:
            c.close()
        _children.clear()
    _SEGMENTS.clear()


# -- the worker side -------------------------------------------------------------------------------

def _work(qtype: str, source: tuple, shape: tuple[int, int], out_name: str, out_cols: int,
          imatrix: np.ndarray | None, label: str, a: int, b: int, row0: int) -> None:
    from . import get_kernel
    from .base import CHUNK_ELEMENTS, quantize_span

    kernel = get_kernel(qtype)
    n = shape[1]
    shm_in = None
    shm_out = _attach(out_name)
    try:
        if source[0] == "file":  # rows a..b straight from the (page-cached) source file
            x = np.memmap(source[1], np.float32, mode="r", offset=source[2] + a * n * 4, shape=(b - a, n))
        else:
            shm_in = _attach(source[1])
            x = np.ndarray(shape, np.float32, buffer=shm_in.buf)[a:b]
        out = np.ndarray((shape[0], out_cols), np.uint8, buffer=shm_out.buf)[a:b]
        step = max(1, (kernel.chunk_elements or CHUNK_ELEMENTS) // n)
        for s in range(0, b - a, step):
            quantize_span(kernel, x, out, imatrix, label, (s, min(b - a, s + step)), row0 + a)
        del x, out
    finally:
        if shm_in is not None:
            shm_in.close()
        shm_out.close()


def _file_source(x: np.ndarray) -> tuple[str, int] | None:
    """(file name, byte offset) when C-contiguous float32 ``x`` is a view of a read-only file mapping
    (a model's tensor data): the workers then map those rows themselves instead of receiving a copy."""
    if not (x.flags.c_contiguous and x.dtype == np.float32 and x.dtype.byteorder in "=<|" and sys.byteorder == "little"):
        return None
    root = x
    while isinstance(root.base, np.ndarray):
        root = root.base
    if (not isinstance(root, np.memmap) or getattr(root, "mode", None) != "r" or not getattr(root, "filename", None)
            or not root.flags.c_contiguous):
        return None
    start = root.__array_interface__["data"][0]
    off = x.__array_interface__["data"][0] - start
    if off < 0 or off + x.nbytes > root.nbytes:
        return None
    return str(root.filename), int(root.offset) + off


def child_main(stdin=None, stdout=None) -> None:
    """The worker loop (runs in the child process), on its stdin/stdout unless given other streams."""
    if sys.version_info < (3, 13):  # the parent owns the segments: keep this process's tracker out of it
        from multiprocessing import resource_tracker

        resource_tracker.register = lambda *a, **k: None
        resource_tracker.unregister = lambda *a, **k: None
    if stdin is None:  # a spawned worker
        stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
        nice = os.environ.get("WORKBENCH_WORKER_NICE", "")
        if nice.isdigit():
            _lower_priority(int(nice))
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    while True:
        try:
            job = _recv(stdin)
        except EOFError:
            return
        try:
            _work(*job)
            _send(stdout, ("ok", None))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            _send(stdout, ("err", exc))


# -- the parent side -------------------------------------------------------------------------------

def submit(qtype: str, x: np.ndarray, out_cols: int, imatrix, label: str, workers: int, row0: int = 0) -> Pending:
    """Start quantizing float32 ``x`` [rows, n] in ``workers`` processes; returns at once (after copying
    ``x`` into shared memory).  ``Pending.result()`` gives the uint8 [rows, out_cols] bytes.  ``row0``: the
    tensor row of ``x[0]`` (error messages)."""
    rows, n = x.shape
    _ensure_children(workers)
    in_file = _file_source(x)
    seg_in = pooled_in = None
    if in_file is not None:
        source = ("file", *in_file)
    else:
        seg_in, pooled_in = _SEGMENTS.acquire(x.nbytes)
        np.ndarray(x.shape, np.float32, buffer=seg_in.buf)[:] = x
        source = ("shm", seg_in.name)
    seg_out, pooled_out = _SEGMENTS.acquire(rows * out_cols)
    step = max(1, SPAN_MIN_ELEMENTS // max(n, 1), -(-rows // (workers * 4)))
    spans = [(a, min(rows, a + step)) for a in range(0, rows, step)]

    def release(copy: bool) -> np.ndarray | None:
        try:
            return np.ndarray((rows, out_cols), np.uint8, buffer=seg_out.buf).copy() if copy else None
        finally:
            if seg_in is not None:
                _SEGMENTS.release(seg_in, pooled_in)
            _SEGMENTS.release(seg_out, pooled_out)

    pending = Pending(len(spans), release)
    for a, b in spans:
        _jobs.put(_Span(pending, (qtype, source, (rows, n), seg_out.name, out_cols, imatrix, label, a, b, row0)))
    return pending
