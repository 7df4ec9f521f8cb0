"""GGUF reader: single files and split sets (``name-00001-of-00003.gguf``).

We parse the header ourselves, with gguf-py's constants and types, because gguf-py's
``GGUFReader`` walks every array element in Python (2.4 s for SmolLM2's 49k-token vocabulary) and,
past the end of a file, reads empty arrays without complaint, so a corrupt array count can keep it
looping for a very long time.  This parser reads scalar arrays in one ``numpy.frombuffer`` call and
checks every length against the bytes that remain before it allocates or loops.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from ..errors import FormatError, MissingFileError, UnsupportedError, quote, short
from ..model import TensorInfo

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1
MAX_TENSORS = 1 << 17  # per file; real files hold a few thousand
MAX_KEYS = 1 << 16  # metadata keys per file; real files hold a few dozen
MAX_STRINGS = 3_000_000  # strings in metadata arrays (a 262k-token vocabulary with its merges: 0.78M)
MAX_NESTED = 1 << 16  # arrays inside arrays (llama.cpp reads none)
MAX_ARRAY_DEPTH = 4  # arrays of arrays (llama.cpp reads none; gguf-py can write them)

_SCALARS: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
    GGUFValueType.BOOL: np.dtype("<u1"),
}

_TYPE_NAMES = {int(t): t.name for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}  # ggml types with a layout
_BLOCKS = {t.name: GGML_QUANT_SIZES[t] for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}
_NE = [f"<{n}Q" for n in range(MAX_DIMS + 1)]

SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass
class GGUFField:
    key: str
    vtype: GGUFValueType
    item_type: GGUFValueType | None  # element type for arrays
    value: Any  # str, int, float, bool, list[str] or numpy array for scalar arrays
    span: tuple[int, int] | None = None  # the bytes of the value's type word and payload in the file

    @property
    def type_name(self) -> str:
        if self.vtype == GGUFValueType.ARRAY:
            return f"array[{self.item_type.name.lower()}]" if self.item_type is not None else "array"
        return self.vtype.name.lower()


@dataclass
class GGUFHeader:
    path: Path
    version: int
    fields: "OrderedDict[str, GGUFField]"
    tensors: list[TensorInfo]
    data_offset: int
    alignment: int


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path
        self.budget = {"strings": MAX_STRINGS, "nested arrays": MAX_NESTED}  # each becomes a Python object

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(f"{what} at byte {self.pos} runs past the end of the file (needs {n} bytes, "
                              f"{self.size - self.pos} left): the file is truncated or damaged", path=self.path)

    def spend(self, kind: str, n: int, what: str) -> None:
        self.budget[kind] -= n
        if self.budget[kind] < 0:
            limit = MAX_STRINGS if kind == "strings" else MAX_NESTED
            raise UnsupportedError(f"{what}: the metadata holds more than {limit} {kind}, more than Model Workbench "
                                   "reads", path=self.path)

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return vals

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)[0]

    def string(self, what: str) -> str:
        n = self.u64(what + " length")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return str(raw, "utf-8", "replace")

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        self.need(count * dtype.itemsize, what)
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return arr


def _value_type(raw: int, cur: _Cursor, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise FormatError(f"metadata key {short(key)} at byte {cur.pos - 4} has unknown value type {raw} "
                          "(expected 0-12)", path=cur.path) from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str, depth: int = 0) -> tuple[Any, GGUFValueType | None]:
    k = short(key)
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of {k}"), None
    if vtype in _SCALARS:
        v = cur.array(_SCALARS[vtype], 1, f"value of {k}")[0]
        if vtype == GGUFValueType.BOOL:
            return bool(v), None
        if vtype == GGUFValueType.FLOAT32:
            return float(str(v)), None  # shortest repr of the float32 (1e-05, not 9.9999997e-06)
        return v.item(), None
    if vtype == GGUFValueType.ARRAY:
        item_type = _value_type(cur.u32(f"array type of {k}"), cur, key)
        count = cur.u64(f"array length of {k}")
        if item_type in _SCALARS:
            arr = cur.array(_SCALARS[item_type], count, f"array {k} ({count} items)")
            return (arr.astype(bool) if item_type == GGUFValueType.BOOL else arr), item_type
        if item_type == GGUFValueType.STRING:
            cur.need(count * 8, f"array {k} ({count} strings)")  # each string needs >= 8 bytes
            cur.spend("strings", count, f"array {k} ({count} strings)")
            return _read_strings(cur, count, key), item_type
        if item_type == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise UnsupportedError(f"metadata key {k} nests arrays more than {MAX_ARRAY_DEPTH} levels deep "
                                       f"(at byte {cur.pos})", path=cur.path)
            cur.need(count * 12, f"array {k} ({count} arrays)")  # each array needs >= 12 bytes
            cur.spend("nested arrays", count, f"array {k} ({count} arrays)")
            return [_read_value(cur, GGUFValueType.ARRAY, key, depth + 1)[0] for _ in range(count)], item_type
    raise FormatError(f"metadata key {k} has value type {vtype.name}, which has no defined layout", path=cur.path)


def _read_strings(cur: _Cursor, count: int, key: str) -> list[str]:
    buf, pos, size = cur.buf, cur.pos, cur.size
    unpack = struct.Struct("<Q").unpack_from
    out: list[str] = []
    append = out.append
    for _ in range(count):
        if pos + 8 > size:
            cur.pos = pos
            cur.need(8, f"string in array {short(key)}")
        (n,) = unpack(buf, pos)
        pos += 8
        if pos + n > size:
            cur.pos = pos
            cur.need(n, f"string in array {short(key)}")
        append(str(buf[pos:pos + n], "utf-8", "replace"))
        pos += n
    cur.pos = pos
    return out


def read_header(path: Path) -> GGUFHeader:
    """Parse and validate one GGUF file's header (metadata and tensor table)."""
    size = os.path.getsize(path)
    if size < 24:
        raise FormatError(f"file is truncated ({size} bytes): not a GGUF file", path=path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(buf, path)
    finally:
        buf.close()


def _parse(buf, path: Path) -> GGUFHeader:
    cur = _Cursor(buf, path)
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise FormatError(f"bad magic {magic!r} (expected b'GGUF'): not a GGUF file", path=path)
    cur.pos = 4
    version = cur.u32("version")
    if version & 0xFFFF == 0 and version:
        raise UnsupportedError("this is a big-endian GGUF file; only little-endian files are supported", path=path)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedError(f"GGUF version {version} is not supported (supported: 2, 3)", path=path,
                               hint="Version 1 files predate the current format; convert them again with a recent llama.cpp.")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # every key/value needs >= 13 bytes and every tensor info >= 24: reject impossible counts up front
    if n_kv * 13 > cur.size or n_tensors * 24 > cur.size:
        raise FormatError(f"header claims {n_kv} metadata keys and {n_tensors} tensors, more than fit in "
                          f"{cur.size} bytes; the file is damaged", path=path)
    if n_tensors > MAX_TENSORS or n_kv > MAX_KEYS:
        raise UnsupportedError(f"header claims {n_kv} metadata keys and {n_tensors} tensors, more than Model "
                               f"Workbench reads from one file ({MAX_KEYS} keys, {MAX_TENSORS} tensors)", path=path)
    fields: OrderedDict[str, GGUFField] = OrderedDict()
    for _ in range(n_kv):
        key = cur.string("metadata key")
        start = cur.pos
        vtype = _value_type(cur.u32(f"type of {short(key)}"), cur, key)
        value, item_type = _read_value(cur, vtype, key)
        if key in fields:
            raise FormatError(f"metadata key {short(key)} appears twice", path=path)
        fields[key] = GGUFField(key, vtype, item_type, value, (start, cur.pos))

    raw_tensors: list[tuple[str, tuple[int, ...], str, int]] = []
    names: set[str] = set()
    u32, u64 = struct.Struct("<I").unpack_from, struct.Struct("<Q").unpack_from
    for i in range(n_tensors):
        name = cur.string(f"name of tensor {i}")
        pos = cur.pos
        if pos + 4 + 8 * MAX_DIMS + 12 <= cur.size and u32(buf, pos)[0] <= MAX_DIMS:  # no bounds check needed
            n_dims = u32(buf, pos)[0]
            ne = struct.unpack_from(_NE[n_dims], buf, pos + 4)
            pos += 4 + 8 * n_dims
            raw_type, rel = u32(buf, pos)[0], u64(buf, pos + 4)[0]
            cur.pos = pos + 12
        else:
            n_dims = cur.u32(f"dimension count of tensor {short(name)}")
            if n_dims > MAX_DIMS:
                raise FormatError(f"tensor {short(name)} has {n_dims} dimensions (at most {MAX_DIMS})", path=path)
            ne = cur.unpack(_NE[n_dims], f"dimensions of tensor {short(name)}")
            raw_type = cur.u32(f"type of tensor {short(name)}")
            rel = cur.u64(f"data offset of tensor {short(name)}")
        tname = _TYPE_NAMES.get(raw_type)
        if tname is None:
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise FormatError(f"tensor {short(name)} has unknown ggml type {raw_type}", path=path,
                                  hint="The file may need a newer Model Workbench, or it is damaged.") from None
            raise UnsupportedError(f"tensor {short(name)} uses ggml type {qtype.name}, which has no defined block "
                                   "size", path=path)
        if name in names:
            raise FormatError(f"tensor {short(name)} appears twice", path=path)
        names.add(name)
        raw_tensors.append((name, ne[::-1], tname, rel))

    alignment = GGUF_DEFAULT_ALIGNMENT
    if "general.alignment" in fields:
        a = fields["general.alignment"].value
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0 or a & (a - 1) or a > 1 << 30:
            raise FormatError(f"general.alignment {quote(a)} is not a power of two up to 2^30", path=path)
        alignment = a
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = _tensor_infos(path, raw_tensors, data_offset, alignment, cur.size)
    return GGUFHeader(path, version, fields, tensors, data_offset, alignment)


def _tensor_infos(path: Path, raw, data_offset: int, alignment: int, file_size: int) -> list[TensorInfo]:
    tensors: list[TensorInfo] = []
    for name, shape, tname, rel in raw:
        block, bsize = _BLOCKS[tname]
        n = 1
        for d in shape:
            n *= d
        if n > INT64_MAX or any(d > INT64_MAX for d in shape):
            raise FormatError(f"tensor {short(name)}: shape {quote(shape, 80)} has more elements than int64 holds",
                              path=path)
        row = shape[-1] if shape else 1
        if row % block:
            raise FormatError(f"tensor {short(name)}: row length {row} is not a multiple of the {tname} block size "
                              f"{block}", path=path)
        nbytes = n // block * bsize
        if rel % alignment:
            raise FormatError(f"tensor {short(name)}: data offset {rel} is not aligned to {alignment}", path=path)
        start = data_offset + rel
        if start + nbytes > file_size:
            raise FormatError(f"tensor {short(name)}: data [{start}, {start + nbytes}) lies past the end of the file "
                              f"({file_size} bytes)", path=path,
                              hint="The file is truncated; download or convert it again.")
        tensors.append(TensorInfo(name, shape, tname, nbytes, path, start))
    ordered = sorted(tensors, key=lambda t: (t.offset, t.nbytes))
    for a, b in zip(ordered, ordered[1:]):
        if a.nbytes and b.nbytes and a.offset + a.nbytes > b.offset:
            raise FormatError(f"tensors {short(a.name)} and {short(b.name)} overlap in the data section", path=path)
    return tensors


def split_files(path: Path) -> list[Path]:
    """All files of a split set, given any one of them (a lone file gives ``[path]``)."""
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m["count"])
    if count < 1:
        raise FormatError("split file name says the set has 0 parts", path=path)
    files = [path.with_name(f"{m['stem']}-{k:05d}-of-{count:05d}.gguf") for k in range(1, count + 1)]
    for f in files:
        if not f.is_file():
            raise MissingFileError(f"part {f.name} of this {count}-part split model is missing", path=path,
                                   hint="Put every part of the split set in the same folder.")
    return files


def _count_field(fields, key: str, path: Path) -> int | None:
    f = fields.get(key)
    if f is None:
        return None
    v = f.value
    if not isinstance(v, int) or isinstance(v, bool):
        raise FormatError(f"{key} should be an integer but is {f.type_name} {quote(v)}", path=path)
    return v


def read_split(path: Path) -> tuple[list[GGUFHeader], list[TensorInfo]]:
    headers = [read_header(f) for f in split_files(path)]
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for h in headers:
        for t in h.tensors:
            if t.name in seen:
                raise FormatError(f"tensor {short(t.name)} appears in more than one part of the split set", path=h.path)
            seen.add(t.name)
            tensors.append(t)
    first = headers[0].fields
    count = _count_field(first, "split.count", headers[0].path)
    if count is not None and count != len(headers):
        raise FormatError(f"split.count says {count} parts but the file names say {len(headers)}",
                          path=headers[0].path)
    n_tensors = _count_field(first, "split.tensors.count", headers[0].path)
    if n_tensors is not None and n_tensors != len(tensors):
        raise FormatError(f"split.tensors.count says {n_tensors} tensors but the parts hold {len(tensors)}",
                          path=headers[0].path)
    return headers, tensors
