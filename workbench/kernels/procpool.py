"""Worker processes for the GIL-bound kernels (K and IQ types), sharing input and output memory.

The search kernels issue thousands of small numpy calls per chunk, so threads mostly wait for the
GIL.  For large tensors the rows are split into spans that worker processes quantize in place into a
shared output buffer.  Rows are independent, so the bytes are exactly those of the single-threaded
path.

The workers are plain ``python -c`` subprocesses speaking a tiny length-prefixed pickle protocol over
their pipes (not ``multiprocessing``, which re-imports the caller's main script in every child and
so breaks scripts without a ``__main__`` guard).  They start once and are reused.
"""
from __future__ import annotations

import atexit
import os
import pickle
import struct
import subprocess
import sys
import threading
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

_CHILD_CODE = "from workbench.kernels.procpool import child_main; child_main()"
_lock = threading.Lock()
_children: list["_Child"] = []


def available() -> bool:
    """Worker processes need a Python interpreter (not a frozen app binary)."""
    return not getattr(sys, "frozen", False)


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


class _Child:
    def __init__(self):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # so a source checkout works uninstalled
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)

    def run(self, job) -> None:
        _send(self.proc.stdin, job)
        status, payload = _recv(self.proc.stdout)
        if status != "ok":
            raise payload

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except Exception:  # noqa: BLE001 - best effort at exit
            self.proc.kill()


def _get_children(n: int) -> list[_Child]:
    with _lock:
        alive = [c for c in _children if c.proc.poll() is None]
        _children[:] = alive
        while len(_children) < n:
            _children.append(_Child())
        return _children[:n]


@atexit.register
def _shutdown() -> None:
    with _lock:
        for c in _children:
            c.close()
        _children.clear()


def _work(qtype: str, in_name: str, shape: tuple[int, int], out_name: str, out_cols: int,
          imatrix: np.ndarray | None, label: str, a: int, b: int) -> None:
    from . import get_kernel
    from .base import CHUNK_ELEMENTS, quantize_span

    kernel = get_kernel(qtype)
    shm_in = shared_memory.SharedMemory(name=in_name, track=False) if sys.version_info >= (3, 13) \
        else shared_memory.SharedMemory(name=in_name)
    shm_out = shared_memory.SharedMemory(name=out_name, track=False) if sys.version_info >= (3, 13) \
        else shared_memory.SharedMemory(name=out_name)
    try:
        x = np.ndarray(shape, np.float32, buffer=shm_in.buf)
        out = np.ndarray((shape[0], out_cols), np.uint8, buffer=shm_out.buf)
        step = max(1, CHUNK_ELEMENTS // shape[1])
        for s in range(a, b, step):
            quantize_span(kernel, x, out, imatrix, label, (s, min(b, s + step)))
        del x, out
    finally:
        shm_in.close()
        shm_out.close()


def child_main() -> None:
    """The worker loop (runs in the child process)."""
    if sys.version_info < (3, 13):  # the parent owns the segments: keep this process's tracker out of it
        from multiprocessing import resource_tracker

        resource_tracker.register = lambda *a, **k: None
        resource_tracker.unregister = lambda *a, **k: None
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
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


def quantize_in_processes(qtype: str, x: np.ndarray, out: np.ndarray, imatrix, label: str, workers: int) -> None:
    rows, n = x.shape
    children = _get_children(workers)
    shm_in = shared_memory.SharedMemory(create=True, size=max(1, x.nbytes))
    shm_out = shared_memory.SharedMemory(create=True, size=max(1, out.nbytes))
    try:
        np.ndarray(x.shape, np.float32, buffer=shm_in.buf)[:] = x
        edges = np.linspace(0, rows, workers * 4 + 1).astype(int)
        spans = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def feed(child: _Child) -> None:
            while True:
                with lock:
                    if not spans or errors:
                        return
                    a, b = spans.pop(0)
                try:
                    child.run((qtype, shm_in.name, (rows, n), shm_out.name, out.shape[1], imatrix, label, a, b))
                except BaseException as exc:  # noqa: BLE001
                    with lock:
                        errors.append(exc)
                    return

        threads = [threading.Thread(target=feed, args=(c,), daemon=True) for c in children]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        out[:] = np.ndarray(out.shape, np.uint8, buffer=shm_out.buf)
    finally:
        shm_in.close()
        shm_in.unlink()
        shm_out.close()
        shm_out.unlink()
