"""Streaming GGUF writing shared by every job that writes a GGUF (conversion, requantization, LoRA).

A list of :class:`StreamTensor` (name, shape, type and a function producing its bytes in row blocks) is
written through gguf-py's ``GGUFWriter`` into temporary files beside the target (split as the writer was
told), fsynced and renamed when complete: a failure or cancel leaves nothing under the final names.
"""
from __future__ import annotations

import contextlib
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterable, Sequence

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from .. import dtypes, fsutil
from ..errors import Cancelled, WorkbenchError
from ..fsutil import atomic_write_path
from ..naming import GGUFName
from ..progress import Progress
from .metadata_edit import TypedValue
from .metadata_edit import _Writer as _EmptyArrayWriter


class Sized:
    """Values and file bytes of a tensor from its ``shape`` (numpy order) and ggml ``type``."""

    shape: tuple[int, ...]
    type: str

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes_for(self.type, self.shape)


@dataclass(frozen=True)
class StreamTensor(Sized):
    """One tensor of a GGUF being written: ``chunks()`` yields (bytes of whole rows, values covered); the
    bytes may come as a handle of :func:`workbench.kernels.submit`, resolved when they are written."""

    name: str
    shape: tuple[int, ...]  # numpy order
    type: str  # ggml type written
    chunks: Callable[[], Iterable[tuple[np.ndarray, int]]] = field(compare=False, repr=False)
    message: str = ""  # progress text (default: "name → type")
    done: Callable[[], None] | None = field(default=None, compare=False, repr=False)  # after the tensor


class RawValue(bytes):
    """A metadata value (type and payload) exactly as the source header stores it: copied byte for byte."""


class _Writer(_EmptyArrayWriter):
    def _pack_val(self, val, vtype, add_vtype, sub_type=None) -> bytes:
        if isinstance(val, RawValue):
            return bytes(val)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def new_writer(arch: str, kv: "OrderedDict[str, RawValue | TypedValue] | None" = None, *, alignment: int | None = None,
               split_max_size: int = 0, split_max_tensors: int = 0) -> gguf.GGUFWriter:
    """A GGUFWriter (no file yet); with ``kv`` its key/values are exactly those, in that order."""
    w = _Writer(None, arch, split_max_tensors=split_max_tensors, split_max_size=split_max_size)
    if kv is not None:
        w.kv_data[0].clear()  # the constructor's general.architecture: re-added in the source's order
        for key, v in kv.items():
            if isinstance(v, RawValue):
                w.kv_data[0][key] = gguf.gguf_writer.GGUFValue(v, GGUFValueType.STRING)  # type unused: raw
            else:
                w.add_key_value(key, v.value, v.vtype, v.sub_type)
    if alignment is not None:
        w.data_alignment = alignment
    return w


def write_gguf_stream(w: gguf.GGUFWriter, target: Path, tensors: Sequence[StreamTensor], *,
                      sources: Iterable[Path] = (), overwrite: bool = False,
                      cancel: Callable[[], bool] | None = None) -> Generator[Progress, None, list[Path]]:
    """Write ``tensors`` with the writer's metadata to ``target`` (split as the writer was told); return the paths.

    Refuses to replace a file of ``sources`` and, unless ``overwrite``, any existing file.  Every part is
    written to a temporary file beside it and renamed at the end; a failure or cancel leaves nothing.
    """
    for t in tensors:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=GGMLQuantizationType[t.type])
    paths = w.format_shard_names(target)
    source_set = {Path(f).resolve() for f in sources}
    for p in paths:
        if p.resolve() in source_set:
            raise WorkbenchError("the output would replace a file of the source model", path=p,
                                 hint="Choose another output name or folder.")
        if p.exists() and not overwrite:
            raise WorkbenchError("the output already exists", path=p, hint="Choose another name or allow overwriting.")
    total = sum(t.n_params for t in tensors) or 1
    done = 0
    with fsutil.os_errors(target):  # a read-only or full disk: one line with the reason
        created_dirs = make_dir(target.parent)
    try:
        with contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_write_path(p, overwrite=overwrite)) for p in paths]
            w.fout = [stack.enter_context(open(t, "wb")) for t in tmps]
            w.path, w.state = target, gguf.gguf_writer.WriterState.EMPTY
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            yield Progress(0, total, f"Writing {target.name}")
            ahead = _Ahead(tensors)
            with contextlib.closing(iter(ahead)) as chunks:
                current = None
                for i, q, n_values in chunks:
                    t = tensors[i]
                    if current != i:
                        check_cancel(cancel)
                        fout, nbytes = begin_tensor(w)
                        written, current = 0, i
                        label = t.message or f"{t.name} → {t.type}"
                    if q is not None:
                        check_cancel(cancel)
                        view = memoryview(np.ascontiguousarray(q)).cast("B")
                        fout.write(view)
                        written += view.nbytes
                        done += n_values
                        yield Progress(done, total, label)
                        continue
                    if written != nbytes:  # pragma: no cover - a bug, not a user error
                        raise WorkbenchError(f"{t.name}: wrote {written} bytes, expected {nbytes}")
                    if t.done is not None:
                        t.done()
                    w.write_padding(fout, nbytes)
                    w.state = gguf.gguf_writer.WriterState.WEIGHTS
            check_cancel(cancel)
            w.flush()
    except BaseException:
        w.fout = None
        for d in created_dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    w.fout = None
    if overwrite:
        _remove_stale_parts(target, paths, source_set)
    return paths


AHEAD = 6  # chunks read and being quantized ahead of the one being written, across tensor boundaries
EARLY = 4  # chunks of worker-process tensors (K and IQ types) started out of file order...
EARLY_BUFFER = 128 << 20  # ...whose finished bytes wait, at most this many, for their turn to be written


def _result(q):
    return q.result() if hasattr(q, "result") else q


class _Ahead:
    """Every tensor's chunks in file order as (tensor index, bytes, values), and (index, None, 0) at the end
    of each tensor, computed ahead of the writer.

    A chunk may come as a handle (:func:`workbench.kernels.submit`) whose ``result()`` gives the bytes.  Two
    lanes keep both kinds of workers busy: up to ``depth`` chunks are pulled in file order ahead of the one
    being written (also from the next tensors), and tensors whose kernels run in the worker processes are
    started early, out of order, ``early`` chunks at a time, with their finished bytes kept (up to
    ``buffer`` bytes) until the writer reaches them.  So a Q4_0 conversion quantizes the Q6_K output
    matrix in the worker processes while this process quantizes the Q4_0 tensors before it.  Closing
    waits for and drops the chunks still in flight."""

    def __init__(self, tensors: Sequence[StreamTensor], depth: int | None = None, early: int | None = None,
                 buffer: int | None = None):
        from .. import kernels

        self.tensors = tensors
        self.depth = max(1, AHEAD if depth is None else depth)
        self.early = EARLY if early is None else early
        self.buffer = EARLY_BUFFER if buffer is None else buffer
        n = len(tensors)
        self.gens: list = [None] * n
        self.queues: list[deque] = [deque() for _ in range(n)]  # entries [bytes or handle, values, early]
        self.finished = [False] * n
        self.lane = [i for i, t in enumerate(tensors) if kernels.in_processes(t.type)]
        self.lane_pos = 0
        self.running: deque = deque()  # early entries still being quantized
        self.buffered = 0  # bytes of finished early entries not written yet

    def _pull(self, i: int):
        """Tensor ``i``'s next chunk appended to its queue (the entry), or None when it has no more."""
        if self.finished[i]:
            return None
        if self.gens[i] is None:
            self.gens[i] = iter(self.tensors[i].chunks())
        try:
            q, n_values = next(self.gens[i])
        except StopIteration:
            self.finished[i] = True
            return None
        entry = [q, n_values, False]
        self.queues[i].append(entry)
        return entry

    def _fill(self, i: int) -> None:
        still = deque()
        for e in self.running:  # finished early chunks: keep the bytes, free the workers' shared memory
            if e[0] is None:  # written meanwhile
                continue
            if e[0].ready():
                e[0] = e[0].result()
                e[2] = True
                self.buffered += e[0].nbytes
            else:
                still.append(e)
        self.running = still
        while len(self.running) < self.early and self.buffered < self.buffer and self.lane_pos < len(self.lane):
            j = self.lane[self.lane_pos]
            e = self._pull(j) if j >= i else None
            if e is None:
                self.lane_pos += 1
            elif hasattr(e[0], "ready"):
                self.running.append(e)
        pending, j = 0, i  # in file order
        while j < len(self.tensors) and pending < self.depth:
            pending += len(self.queues[j])
            while pending < self.depth and self._pull(j) is not None:
                pending += 1
            j += 1

    def __iter__(self):
        try:
            for i in range(len(self.tensors)):
                while True:
                    self._fill(i)
                    if not self.queues[i]:
                        break
                    e = self.queues[i].popleft()
                    q, e[0] = e[0], None
                    if e[2]:
                        self.buffered -= q.nbytes
                    yield i, _result(q), e[1]
                yield i, None, 0
        finally:
            self.close()

    def close(self) -> None:
        for g in self.gens:
            if g is not None and hasattr(g, "close"):
                g.close()
        for queue in self.queues:
            while queue:
                q = queue.popleft()[0]
                if hasattr(q, "discard"):
                    q.discard()
        self.running.clear()


def stale_parts(target: Path, paths: Sequence[Path]) -> list[Path]:
    """Parts of an earlier output under the same name that the new one does not replace: the single file or
    split parts (``<stem>-0000k-of-0000n.gguf``) of another part count, which would mix with the new set."""
    pattern = re.compile(re.escape(target.stem) + r"-\d{5}-of-\d{5}\.gguf")
    keep = {p.name for p in paths}
    candidates = [target] + ([p for p in target.parent.iterdir() if pattern.fullmatch(p.name)]
                             if target.parent.is_dir() else [])
    return [p for p in candidates if p.name not in keep and p.is_file()]


def _remove_stale_parts(target: Path, paths: Sequence[Path], sources: set[Path]) -> None:
    for p in stale_parts(target, paths):
        if p.resolve() not in sources:
            with contextlib.suppress(OSError):
                p.unlink()


def check_cancel(cancel) -> None:
    if cancel is not None and cancel():
        raise Cancelled("conversion cancelled")


def target_path(out, name: str | GGUFName | None, default: Callable[[], GGUFName]) -> Path:
    """``out`` if it names a ``.gguf`` file, else ``out / name`` (or the conventional ``default()`` name)."""
    out = Path(out).expanduser()
    if out.suffix.lower() == ".gguf" and not out.is_dir():
        return out
    if out.exists() and not out.is_dir():
        raise WorkbenchError("the output is neither a folder nor a .gguf file", path=out,
                             hint="Choose a folder, or a file name ending in .gguf.")
    if name is None:
        fname = default().filename()
    elif isinstance(name, GGUFName):
        fname = name.filename()
    else:
        fname = str(name).strip()
        if "/" in fname or "\\" in fname or not fname:
            raise WorkbenchError(f"{fname!r} is not a file name", hint="Give a name without folders, like Model-1B-Q8_0.gguf.")
        if not fname.lower().endswith(".gguf"):
            fname += ".gguf"
    return out / fname


def begin_tensor(w: gguf.GGUFWriter):
    """Start the next tensor of gguf-py's plan (as GGUFWriter.write_tensor_data does, but for streamed rows)."""
    assert w.fout is not None
    file_id = next(i for i, tensors in enumerate(w.tensors) if tensors)
    fout = w.fout[file_id]
    ti = w.tensors[file_id].pop(next(iter(w.tensors[file_id])))
    w.write_padding(fout, fout.tell())
    return fout, ti.nbytes


def make_dir(folder: Path) -> list[Path]:
    """Create the output folder if needed; return the folders created, deepest first (removed on failure)."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing
