"""The kernel registry and the shared machinery: shapes, checks, chunking and threads.

Each ggml type is a subclass that implements only ``quantize_rows`` / ``dequantize_rows`` over a
chunk of whole rows; this base splits big tensors into chunks (bounded temporary memory) and spreads
the chunks over threads (numpy releases the GIL), so results do not depend on chunking or threads.
"""
from __future__ import annotations

import functools
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Iterable, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import UnsupportedError, WorkbenchError

CHUNK_ELEMENTS = 1 << 18  # float32 values per chunk: temporaries stay a few MB per thread
# ...per chunk of the streaming kernels when several threads share them: every numpy call hands the GIL
# over, and on small chunks the hand-overs cost more than the second thread gains (Q4_0 on two threads:
# 1.9 GB/s at 2**18 values per chunk, 3.2 GB/s at 2**20)
THREADED_CHUNK_ELEMENTS = 1 << 20
PROCESS_MIN_ELEMENTS = 1 << 21  # GIL-bound kernels use worker processes from this tensor size up...
INTERACTIVE_PROCESS_MIN_ELEMENTS = 1 << 16  # ...or this one in a process that keeps its interpreter free,
INTERACTIVE_WORKER_NICE = 19  # whose worker processes yield a core to its threads (which may hold the lock)
STREAM_PROCESS_MIN_ELEMENTS = 1 << 18  # ...and from this block size up in a stream (quantize_stream)
STREAM_BLOCK_ELEMENTS = 1 << 22  # values per block a large tensor is sent to the worker processes in


class Kernel:
    """One ggml type.  Subclasses set ``qtype`` via ``class X(Kernel, qtype=...)``."""

    registry: ClassVar[dict[str, type["Kernel"]]] = {}
    qtype: ClassVar[GGMLQuantizationType]
    name: ClassVar[str]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    uses_imatrix: ClassVar[bool] = False  # whether ggml's quantizer takes quant weights for this type
    # searches made of many small numpy calls hold the GIL much of the time: threads barely scale,
    # so large tensors of these types are spread over worker processes instead
    gil_bound: ClassVar[bool] = False
    # float32 values per quantize_rows call (None: CHUNK_ELEMENTS); a search with a fixed cost per call that
    # does not grow with its size (Q3_K's refinement) takes bigger chunks, one whose many passes over its
    # arrays gain from keeping them in the L2 cache (Q4_K, Q5_K) smaller ones
    chunk_elements: ClassVar[int | None] = None
    # quantize_rows itself raises NonFinite on NaN or Inf input (found in its block extremes, which NaN and
    # Inf always reach), sparing a separate pass over the values
    checks_finite: ClassVar[bool] = False

    def __init_subclass__(cls, qtype: GGMLQuantizationType | None = None, **kw):
        super().__init_subclass__(**kw)
        if qtype is not None:
            cls.qtype = qtype
            cls.name = qtype.name
            cls.block_size, cls.type_size = GGML_QUANT_SIZES[qtype]
            Kernel.registry[cls.name] = cls

    # -- to implement ---------------------------------------------------------------------------
    @classmethod
    def quantize_rows(cls, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        """float32 [rows, n] (n a multiple of block_size) -> uint8 [rows, n // block_size * type_size]."""
        raise NotImplementedError

    @classmethod
    def dequantize_rows(cls, q: np.ndarray, n: int) -> np.ndarray:
        """uint8 [rows, row_bytes] -> float32 [rows, n] (implement this or ``dequantize_into``)."""
        if cls.dequantize_into.__func__ is Kernel.dequantize_into.__func__:
            raise NotImplementedError
        out = np.empty((q.shape[0], n), np.float32)
        cls.dequantize_into(q, n, out)
        return out

    @classmethod
    def dequantize_into(cls, q: np.ndarray, n: int, out: np.ndarray) -> None:
        """``dequantize_rows`` written into ``out`` (float32 [rows, n], C-contiguous).  Kernels override it
        to decode straight into the output, without a temporary result and its copy."""
        out[...] = cls.dequantize_rows(q, n)

    # -- shared ---------------------------------------------------------------------------------
    @classmethod
    def row_bytes(cls, n: int) -> int:
        if n % cls.block_size:
            raise UnsupportedError(f"row length {n} is not a multiple of the {cls.name} block size {cls.block_size}")
        return n // cls.block_size * cls.type_size


def get_kernel(qtype) -> type[Kernel]:
    name = qtype.name if isinstance(qtype, GGMLQuantizationType) else str(qtype).upper()
    try:
        return Kernel.registry[name]
    except KeyError:
        raise UnsupportedError(f"quantization type {name} is not supported",
                               hint="Supported: " + ", ".join(Kernel.registry)) from None


def default_threads() -> int:
    """Threads (and worker processes) a kernel call uses when not told: ``WORKBENCH_THREADS`` (set by the
    CLI's ``--threads``, see :mod:`workbench.threads`) or one per core."""
    env = os.environ.get("WORKBENCH_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return _cores()


@functools.cache
def _cores() -> int:
    return max(1, os.cpu_count() or 1)  # asked once: a conversion asks for every chunk


_process_min = PROCESS_MIN_ELEMENTS


def keep_interpreter_free(on: bool = True) -> None:
    """For a process whose interpreter lock must stay free (the GUI's: its thread waits for the lock while a
    kernel thread holds it in many small numpy calls), GIL-bound kernels (K and IQ types) on more than one
    thread run in the worker processes from small tensors up, not on threads of this process; and workers
    started from now on run at nice 19, below this process's background threads (which may hold the lock)."""
    global _process_min
    from . import procpool

    _process_min = INTERACTIVE_PROCESS_MIN_ELEMENTS if on else PROCESS_MIN_ELEMENTS
    procpool.worker_nice = INTERACTIVE_WORKER_NICE if on else 0


def _chunk_elements(kernel: type[Kernel], threads: int) -> int:
    """Values per chunk: the kernel's own size, or bigger chunks for a streaming kernel on several threads."""
    if kernel.chunk_elements:
        return kernel.chunk_elements
    return THREADED_CHUNK_ELEMENTS if threads > 1 and not kernel.gil_bound else CHUNK_ELEMENTS


def _chunks(rows: int, n: int, elements: int | None = None) -> list[tuple[int, int]]:
    step = max(1, (elements or CHUNK_ELEMENTS) // max(n, 1))
    return [(s, min(rows, s + step)) for s in range(0, rows, step)]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A persistent pool per thread count: kernels keep per-thread scratch arrays warm between calls."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wb-kernel")
        return pool


def _run(jobs, fn, threads: int) -> None:
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            fn(job)
        return
    for _ in _pool(threads).map(fn, jobs):
        pass


def _check_imatrix(kernel, imatrix, n: int, name: str | None):
    if imatrix is None:
        return None
    imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    if imatrix.shape[0] != n:
        raise WorkbenchError(f"{name or 'tensor'}: importance matrix has {imatrix.shape[0]} values "
                             f"but rows have {n}", hint="Use an imatrix computed for this model.")
    return imatrix if kernel.uses_imatrix else None


def _rows2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    return x.reshape(-1, x.shape[-1])


def quantize(x, qtype, imatrix=None, *, threads: int | None = None, name: str | None = None,
             row0: int = 0) -> np.ndarray:
    """Quantize float32 ``x`` [rows, n] (or 1-D) to ggml ``qtype``: the bytes ggml_quantize_chunk writes.

    ``imatrix`` is the per-column importance [n] (llama-imatrix's values), used by the types whose
    ggml quantizer takes quant weights.  NaN or Inf in ``x`` raise a WorkbenchError naming ``name``.
    """
    kernel = get_kernel(qtype)
    x = _rows2d(x)
    rows, n = x.shape
    out = np.empty((rows, kernel.row_bytes(n)), np.uint8)
    imatrix = _check_imatrix(kernel, imatrix, n, name)
    label = name or "tensor"
    threads = default_threads() if threads is None else threads
    if threads > 1 and kernel.gil_bound and x.size >= _process_min:
        from . import procpool

        if procpool.available():  # blocks through the worker processes, copied in while others run
            step = max(1, min(STREAM_BLOCK_ELEMENTS, -(-x.size // threads)) // n)  # every worker gets some
            blocks = (x[a:a + step] for a in range(0, rows, step))
            for a, q in zip(range(0, rows, step), quantize_stream(blocks, qtype, imatrix, threads=threads, name=name,
                                                                  row0=row0, process_min=0)):
                out[a:a + q.shape[0]] = q
            return out
    _run(_chunks(rows, n, _chunk_elements(kernel, threads)),
         lambda span: quantize_span(kernel, x, out, imatrix, label, span, row0), threads)
    return out


def start_workers(qtypes: Iterable, threads: int | None = None) -> None:
    """Start the worker processes now if any of ``qtypes`` will use them: they take a moment to start,
    which a job can spend on its own set-up (reading the tokenizer, writing metadata) instead."""
    threads = default_threads() if threads is None else threads
    if threads > 1 and any(get_kernel(t).gil_bound for t in qtypes if str(t).upper() in Kernel.registry):
        from . import procpool

        if procpool.available():
            procpool.start(threads)


_STREAM_POOL: ThreadPoolExecutor | None = None


class _Done:
    def __init__(self, value):
        self.value = value

    def ready(self) -> bool:
        return True

    def result(self):
        return self.value

    def discard(self):
        pass


class _InThread:
    def __init__(self, future):
        self.future = future

    def ready(self) -> bool:
        return self.future.done()

    def result(self):
        return self.future.result()

    def discard(self):
        if not self.future.cancel():
            self.future.exception()  # wait: the block's memory must not outlive the stream


def in_processes(qtype, threads: int | None = None) -> bool:
    """Whether :func:`submit` sends large blocks of ``qtype`` to the worker processes (GIL-bound kernels
    on more than one thread), leaving the main process free for other work.  False for unknown types."""
    threads = default_threads() if threads is None else threads
    kernel = Kernel.registry.get(qtype.name if isinstance(qtype, GGMLQuantizationType) else str(qtype).upper())
    if kernel is None or threads <= 1 or not kernel.gil_bound:
        return False
    from . import procpool

    return procpool.available()


def submit(x, qtype, imatrix=None, *, threads: int | None = None, name: str | None = None, row0: int = 0,
           process_min: int | None = None):
    """Start quantizing one float32 block [rows, n] and return at once with a handle: ``handle.result()``
    waits and gives exactly the bytes of :func:`quantize`, ``handle.ready()`` tells whether it would return at
    once, ``handle.discard()`` waits and drops them (the block's memory must not outlive the job).
    GIL-bound kernels (K and IQ types) run in the worker processes from ``process_min`` values up (default
    ``STREAM_PROCESS_MIN_ELEMENTS``), the others on the stream threads; with one thread the block is
    quantized before this returns.  ``row0``: the tensor row of the block's first row (error messages)."""
    global _STREAM_POOL
    from .. import kernels as package  # the package's quantize, looked up now: wrappers installed there apply

    kernel = get_kernel(qtype)
    threads = default_threads() if threads is None else threads
    x = _rows2d(x)
    n = x.shape[1]
    im = _check_imatrix(kernel, imatrix, n, name)
    process_min = STREAM_PROCESS_MIN_ELEMENTS if process_min is None else process_min
    if threads > 1 and kernel.gil_bound and x.size >= process_min:
        from . import procpool

        if procpool.available():
            return procpool.submit(kernel.name, x, kernel.row_bytes(n), im, name or "tensor", threads, row0)
    if threads > 1:
        with _POOLS_LOCK:
            if _STREAM_POOL is None:
                _STREAM_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="wb-stream")
        return _InThread(_STREAM_POOL.submit(package.quantize, x, qtype, im, threads=threads, name=name, row0=row0))
    return _Done(package.quantize(x, qtype, im, threads=threads, name=name, row0=row0))


def quantize_stream(blocks: Iterable[np.ndarray], qtype, imatrix=None, *, threads: int | None = None,
                    name: str | None = None, depth: int = 2, row0: int = 0,
                    process_min: int | None = None) -> Iterator[np.ndarray]:
    """Quantize a stream of float32 row blocks (same row length), yielding each block's bytes in order.

    Up to ``depth`` blocks are quantized (:func:`submit`) while the caller consumes (writes) the previous
    one and the next is produced (read, decoded): the kernels run back to back.  The bytes are exactly
    those of :func:`quantize` on each block.  ``row0``: the tensor row of the first block's first row
    (error messages count rows of the whole stream from it)."""
    inflight: deque = deque()
    try:
        for x in blocks:
            x = _rows2d(x)
            inflight.append(submit(x, qtype, imatrix, threads=threads, name=name, row0=row0, process_min=process_min))
            row0 += x.shape[0]
            if len(inflight) >= depth:
                yield inflight.popleft().result()
        while inflight:
            yield inflight.popleft().result()
    finally:
        while inflight:
            inflight.popleft().discard()


def quantize_span(kernel: type[Kernel], x: np.ndarray, out: np.ndarray, imatrix, label: str, span,
                  row0: int = 0) -> None:
    """Quantize rows ``span`` of ``x`` into ``out`` (one chunk; also the unit of work of the process pool).
    ``row0``: the number of ``x``'s first row in the tensor (for error messages)."""
    a, b = span
    part = x[a:b]
    if not kernel.checks_finite and not np.isfinite(part).all():
        _non_finite(kernel, part, label, row0 + a)
    with np.errstate(all="ignore"):  # C semantics: tiny scales overflow to inf exactly as in ggml
        try:
            out[a:b] = kernel.quantize_rows(np.ascontiguousarray(part), imatrix)
        except NonFinite:
            _non_finite(kernel, part, label, row0 + a)


class NonFinite(Exception):
    """Raised by the ``quantize_rows`` of a kernel with ``checks_finite`` when its input holds NaN or Inf."""


def check_finite(*arrays: np.ndarray) -> None:
    """Raise NonFinite unless every value is finite: given a block's (or column's) maxima and minima, which
    NaN and Inf always reach, this checks every value of the blocks."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise NonFinite


def _non_finite(kernel: type[Kernel], part: np.ndarray, label: str, row0: int):
    bad = row0 + int(np.argwhere(~np.isfinite(part))[0][0])
    raise WorkbenchError(f"{label}: row {bad} contains NaN or Inf values; it cannot be quantized to "
                         f"{kernel.name}", hint="Check the source weights (they may be corrupt), or keep "
                         "this tensor in F32/F16.")


def dequantize(q, qtype, n: int | None = None, *, threads: int | None = None) -> np.ndarray:
    """Decode ggml ``qtype`` data [rows, row_bytes] back to float32 [rows, n]."""
    kernel = get_kernel(qtype)
    q = np.asarray(q, dtype=np.uint8)
    if q.ndim == 1:
        q = q[None, :]
    rows, nbytes = q.shape
    if nbytes % kernel.type_size:
        raise WorkbenchError(f"{nbytes} bytes per row is not a whole number of {kernel.name} blocks")
    n_row = nbytes // kernel.type_size * kernel.block_size
    if n is not None and n != n_row:
        raise WorkbenchError(f"{kernel.name} rows of {nbytes} bytes hold {n_row} values, not {n}")
    out = np.empty((rows, n_row), np.float32)

    def work(span):
        a, b = span
        kernel.dequantize_into(q[a:b], n_row, out[a:b])

    threads = default_threads() if threads is None else threads
    _run(_chunks(rows, n_row, THREADED_CHUNK_ELEMENTS if threads > 1 else CHUNK_ELEMENTS), work, threads)
    return out
