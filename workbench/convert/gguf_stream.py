"""Streaming GGUF writing shared by every job that writes a GGUF (conversion, requantization, LoRA).

A list of :class:`StreamTensor` (name, shape, type and a function producing its bytes in row blocks) is
written through gguf-py's ``GGUFWriter`` into temporary files beside the target (split as the writer was
told), fsynced and renamed when complete: a failure or cancel leaves nothing under the final names.
"""
from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator, Iterable, Sequence

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from .. import dtypes
from ..errors import Cancelled, WorkbenchError
from ..fsutil import atomic_write_path
from ..naming import GGUFName
from ..progress import Progress
from .metadata_edit import TypedValue
from .metadata_edit import _Writer as _EmptyArrayWriter


@dataclass(frozen=True)
class StreamTensor:
    """One tensor of a GGUF being written: ``chunks()`` yields (bytes of whole rows, values covered)."""

    name: str
    shape: tuple[int, ...]  # numpy order
    type: str  # ggml type written
    chunks: Callable[[], Iterable[tuple[np.ndarray, int]]] = field(compare=False, repr=False)
    message: str = ""  # progress text (default: "name → type")
    done: Callable[[], None] | None = field(default=None, compare=False, repr=False)  # after the tensor

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes_for(self.type, self.shape)


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
            for t in tensors:
                check_cancel(cancel)
                fout, nbytes = begin_tensor(w)
                written = 0
                label = t.message or f"{t.name} → {t.type}"
                for q, n_values in t.chunks():
                    check_cancel(cancel)
                    view = memoryview(np.ascontiguousarray(q)).cast("B")
                    fout.write(view)
                    written += view.nbytes
                    done += n_values
                    yield Progress(done, total, label)
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
