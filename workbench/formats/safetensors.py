"""Safetensors reader: single files and sharded sets (``model.safetensors.index.json``).

Only the JSON header is read; every claim in it is checked against the real file size before
anything is mapped.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import PLAIN_DTYPES
from ..errors import FormatError, UnsupportedError, quote, short
from ..model import TensorInfo

MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
MAX_TENSORS = 1 << 17  # per file; real shards hold a few thousand
MAX_DIMS = 32
INT64_MAX = (1 << 63) - 1


def read_header(path: Path) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse and validate one safetensors file's header.  Returns tensors (in data order) and ``__metadata__``."""
    from .hf import parse_json

    size = os.path.getsize(path)
    if size < 8:
        raise FormatError(f"file is truncated ({size} bytes): not a safetensors file", path=path)
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > size - 8:
            raise FormatError(
                f"header length {hlen} runs past the end of the file ({size} bytes): the file is truncated or not safetensors",
                path=path)
        if hlen > MAX_HEADER:
            raise FormatError(f"header length {hlen} exceeds the 100 MB safetensors limit", path=path)
        raw = f.read(hlen)
    if raw[:1] != b"{":
        raise FormatError(f"header does not start with '{{' (starts with {quote(raw[:8])}): not a safetensors file",
                          path=path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"header is not valid UTF-8 (at byte {8 + exc.start}): not a safetensors file",
                          path=path) from None
    header = parse_json(raw, path, "header")
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object: not a safetensors file", path=path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise FormatError(f"__metadata__ should be an object of strings but is {quote(meta)}", path=path)
    if len(header) > MAX_TENSORS:
        raise UnsupportedError(f"header lists {len(header)} tensors, more than the {MAX_TENSORS} Model Workbench "
                               "reads from one file", path=path)
    data_start = 8 + hlen
    data_size = size - data_start
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        tensors.append(_tensor_info(path, name, entry, data_start, data_size))
    tensors.sort(key=lambda t: (t.offset, t.nbytes))
    _check_overlaps(path, tensors)
    return tensors, {str(k): _meta_text(v) for k, v in meta.items()}


def _meta_text(value: Any) -> str:
    """A ``__metadata__`` value as text (the format says strings; other JSON values are shown as JSON)."""
    if isinstance(value, str):
        return value
    text = json.dumps(value)
    return text if len(text) <= 1000 else text[:997] + "..."


def _tensor_info(path: Path, name: str, entry: Any, data_start: int, data_size: int) -> TensorInfo:
    try:  # the common case in few steps (a header may list 10^5 tensors); any doubt goes to the checks below
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if type(shape) is not list or len(shape) > MAX_DIMS:
            raise TypeError
        n = 1
        for d in shape:
            if type(d) is not int or d < 0:
                raise TypeError
            n *= d
        if (type(begin) is int and type(end) is int and 0 <= begin <= end <= data_size and n <= INT64_MAX
                and end - begin == n * PLAIN_DTYPES[dtype].itemsize):
            return TensorInfo(name, tuple(shape), dtype, end - begin, path, data_start + begin)
    except (TypeError, KeyError, ValueError):
        pass
    return _bad_tensor(path, name, entry, data_size)


def _bad_tensor(path: Path, name: str, entry: Any, data_size: int) -> None:
    """Raise the error that says what is wrong with this tensor's header entry."""
    t = short(name)
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise FormatError(f"tensor {t}: header entry needs dtype, shape and data_offsets", path=path)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise FormatError(f"tensor {t}: dtype should be a string such as \"F16\" but is {quote(dtype)}", path=path)
    if dtype not in PLAIN_DTYPES:
        raise UnsupportedError(f"tensor {t}: unknown dtype {quote(dtype)}", path=path,
                               hint="Supported: " + ", ".join(PLAIN_DTYPES))
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= INT64_MAX for d in shape):
        raise FormatError(f"tensor {t}: shape {quote(shape)} is not a list of non-negative int64 integers", path=path)
    if len(shape) > MAX_DIMS:
        raise FormatError(f"tensor {t}: shape has {len(shape)} dimensions (at most {MAX_DIMS})", path=path)
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
        raise FormatError(f"tensor {t}: data_offsets {quote(offsets)} is not a pair of integers", path=path)
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise FormatError(
            f"tensor {t}: data_offsets [{quote(begin)}, {quote(end)}] lie outside the data section ({data_size} bytes)",
            path=path, hint="The file is truncated or damaged; download or export it again.")
    n = 1
    for d in shape:
        n *= d
    if n > INT64_MAX:
        raise FormatError(f"tensor {t}: shape {quote(shape)} has more elements than int64 holds", path=path)
    expected = n * PLAIN_DTYPES[dtype].itemsize
    raise FormatError(f"tensor {t}: {end - begin} bytes stored but {dtype} {quote(tuple(shape), 60)} needs {expected}",
                      path=path)


def _check_overlaps(path: Path, tensors: list[TensorInfo]) -> None:
    for a, b in zip(tensors, tensors[1:]):
        if a.nbytes and b.nbytes and a.offset + a.nbytes > b.offset:
            raise FormatError(f"tensors {short(a.name)} and {short(b.name)} overlap in the data section", path=path)


def read_index(index_path: Path) -> tuple[list[Path], dict[str, str], dict[str, Any]]:
    """Parse ``model.safetensors.index.json``: (shard files in order, weight_map, index metadata)."""
    from .hf import read_shard_index

    return read_shard_index(index_path)


def open_sharded(index_path: Path) -> tuple[list[Path], list[TensorInfo], dict[str, str], dict[str, Any]]:
    files, wmap, index_meta = read_index(index_path)
    tensors: list[TensorInfo] = []
    meta: dict[str, str] = {}
    for f in files:
        part, m = read_header(f)
        meta.update(m)
        for t in part:
            owner = wmap.get(t.name)
            if owner is not None and owner != f.name:
                raise FormatError(f"tensor {short(t.name)} is in {f.name} but the index says {short(owner)}",
                                  path=index_path)
        tensors.extend(part)
    found = {t.name for t in tensors}
    missing = [n for n in wmap if n not in found]
    if missing:
        raise FormatError(f"{len(missing)} tensors named by the index are in no shard, e.g. {short(missing[0])} "
                          f"(expected in {short(wmap[missing[0]])})", path=index_path)
    return files, tensors, meta, index_meta




def write_safetensors(path: Path, tensors, metadata: dict[str, str] | None = None) -> None:
    """Write ``{name: (dtype_name, array)}`` as safetensors (BF16 given as uint16 bits), atomically.

    Tensors are written in the order given; the header is padded to 8 bytes like the reference writer.
    """
    from ..fsutil import atomic_write_path

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name, (dtype, arr) in tensors.items():
        if dtype not in PLAIN_DTYPES:
            raise UnsupportedError(f"tensor {name}: safetensors cannot store {dtype}")
        a = np.ascontiguousarray(arr, dtype=PLAIN_DTYPES[dtype])
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(len(raw)) % 8)
    with atomic_write_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for a in arrays:
                f.write(memoryview(a.reshape(-1).view(np.uint8)))
