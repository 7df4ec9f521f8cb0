"""PyTorch checkpoints (``pytorch_model.bin``, ``.pt``, ``.pth``) without torch and without running pickle code.

Two layouts are read:

* the zip archive ``torch.save`` writes since torch 1.6: ``<prefix>/data.pkl`` is a pickle of the
  state dict whose tensors point, through persistent ids, at raw storages ``<prefix>/data/<key>``
  stored uncompressed in the zip;
* the legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) stream: five pickles in a row
  (magic number, protocol version, system info, the object, the storage keys) followed by each
  storage as an int64 element count and its raw bytes.

Every pickle is first walked opcode by opcode without building anything (:func:`_scan`): a global
that is not on the allow-list is refused with :class:`UnsafeFileError` before any object exists;
every length, memo index and count is checked against the bytes that are really there; nesting of
tuples (whose hashing recurses in C) is bounded; the number of opcodes is capped.  Only then does an
allow-list :class:`pickle.Unpickler` build the objects, with inert stand-ins for the globals (nothing
from the file is ever called).  The result is walked once per object (a memo by identity), so a
pickle whose objects share references cannot make the walk exponential, and nesting is capped.
Sparse, quantized, meta and nested tensors are recognised and refused as unsupported.

:func:`write_bin` emits the zip layout (hand-written protocol-2 pickle, 64-byte aligned stored
members), so ``torch.load(path, weights_only=True)`` reads it back.
"""
from __future__ import annotations

import io
import math
import mmap
import pickle
import re
import reprlib
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from ..dtypes import PLAIN_DTYPES
from ..errors import FormatError, MissingFileError, UnsafeFileError, UnsupportedError, WorkbenchError
from ..fsutil import atomic_write_path
from ..model import TensorInfo

__all__ = ["read_bin", "write_bin", "read_bin_index", "STORAGE_TYPES", "TORCH_DTYPES"]

# torch typed-storage class name -> our type name (torch.serialization._save's ``storage_type``)
STORAGE_TYPES: dict[str, str] = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
    "UntypedStorage": "U8",  # bytes; tensors on it (_rebuild_tensor_v3) carry their own dtype
}
# torch dtype global name -> our type name (the explicit dtype of _rebuild_tensor_v3, or a plain value)
TORCH_DTYPES: dict[str, str] = {
    "float32": "F32", "float": "F32", "float16": "F16", "half": "F16", "bfloat16": "BF16",
    "float64": "F64", "double": "F64", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32",
    "int16": "I16", "short": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16",
    "uint32": "U32", "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
# dtypes torch may name that we recognise but cannot hold (a tensor of one -> UnsupportedError)
_OTHER_TORCH_DTYPES = frozenset({
    "complex32", "chalf", "complex64", "cfloat", "complex128", "cdouble", "qint8", "quint8", "qint32",
    "quint4x2", "quint2x4", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
    "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16",
    *(f"int{i}" for i in range(1, 8)), *(f"uint{i}" for i in range(1, 8)),
})
# other plain torch values a checkpoint may hold: layouts (sparse tensors) and quantization schemes
_TORCH_CONSTANTS = frozenset({
    "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged",
    "per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams", "per_tensor_symmetric",
    "per_channel_symmetric", "contiguous_format", "channels_last", "channels_last_3d", "preserve_format",
})
_STORAGE_NAME_RE = re.compile(r"[A-Za-z0-9_]+Storage")
_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION
_MAX_DEPTH = 64  # containers nested deeper than this are refused
_MAX_TUPLE_DEPTH = 100  # hashing a tuple recurses in C: deeper tuples are refused before unpickling
_MAX_OPS = 1_000_000  # opcodes per file: a state dict of 30,000 tensors needs about 800,000 (0.5 s to scan)
_MAX_DIMS = 32
_MAX_INT = (1 << 63) - 1  # sizes, strides, offsets and element counts are int64 in torch
_MAX_CENTRAL_DIR = 8 << 20  # bytes of zip directory (about 120,000 members; zipfile needs ~1 s for them)
_ALIGN = 64  # torch's default storage alignment (torch.utils.serialization.config.save.storage_alignment)
_RESAVE = "if you trust the file, load it with PyTorch and save it again, or convert it to safetensors"

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 2, 30, 24, 30
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def _short(value: Any, width: int = 48) -> str:
    """A value from the file, quoted for a message: never long, never raising."""
    try:
        text = _REPR.repr(value)
    except Exception:  # e.g. an int too long to print, a recursive structure
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[:width - 3] + "..."


def _cut(text: str, width: int = 60) -> str:
    """A name from the file (member, key), for a message: printable and short."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= width else text[:width - 3] + "..."


# -- inert stand-ins for the few globals a state dict needs ------------------------------------------
# All are NamedTuples: immutable and without __dict__, so a pickle BUILD opcode cannot alter them.

class _Marker(NamedTuple):
    """A torch global we only need to recognise: a storage class, a dtype, ``torch.Tensor``..."""
    qualname: str
    dtype: str | None = None  # our type name for storage classes and dtypes, when supported


class _Call(NamedTuple):
    """A callable global, mapped to one of our own functions that only builds records."""
    qualname: str
    fn: Callable[..., Any]

    def __call__(self, *args):
        return self.fn(*args)


class _StorageRec(NamedTuple):
    type_name: str  # e.g. torch.FloatStorage
    dtype: str | None  # our element type of the storage (None: a storage type we cannot hold)
    key: str
    location: str
    numel: int


class _TensorRec(NamedTuple):
    storage: _StorageRec
    dtype: str
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Unsupported(NamedTuple):
    """A tensor torch can save but we cannot show (sparse, quantized, meta, nested, complex...)."""
    what: str


class _BadPickle(Exception):
    """The pickle is well-formed but not a valid state dict (converted to FormatError)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_tuple(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or len(v) > _MAX_DIMS or not all(_is_int(x) and 0 <= x <= _MAX_INT for x in v):
        raise _BadPickle(f"tensor {what} {_short(v)} is not a tuple of at most {_MAX_DIMS} int64 values >= 0")
    return tuple(v)


def _tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: str | None = None):
    if not isinstance(storage, _StorageRec):
        raise _BadPickle(f"tensor storage is {type(storage).__name__}, not a storage reference")
    if not _is_int(storage_offset) or not 0 <= storage_offset <= _MAX_INT:
        raise _BadPickle(f"tensor storage offset {_short(storage_offset)} is not an int64 >= 0")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _BadPickle(f"tensor size {_short(shape)} and stride {_short(strides)} differ in length")
    if storage.dtype is None:
        return _Unsupported(f"a tensor stored as {storage.type_name}")
    return _TensorRec(storage, dtype or storage.dtype, storage_offset, shape, strides)


def _rebuild_tensor_v2(storage=None, storage_offset=None, size=None, stride=None, *_rest):
    # mirrors torch._utils._rebuild_tensor_v2: the tensor's dtype is its typed storage's
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage=None, storage_offset=None, size=None, stride=None, requires_grad=None,
                       backward_hooks=None, dtype=None, *_rest):
    # mirrors torch._utils._rebuild_tensor_v3: untyped (byte) storage + explicit dtype
    if not isinstance(dtype, _Marker) or not dtype.qualname.startswith("torch."):
        raise _BadPickle(f"tensor dtype {_short(dtype)} is not a torch dtype")
    tensor = _tensor(storage, storage_offset, size, stride, dtype.dtype)
    if dtype.dtype is None and isinstance(tensor, _TensorRec):
        return _Unsupported(f"a tensor of type {dtype.qualname}")
    return tensor


def _rebuild_parameter(data=None, *_rest):
    # torch._utils._rebuild_parameter(_with_state): a Parameter is its data for us
    if not isinstance(data, (_TensorRec, _Unsupported)):
        raise _BadPickle("a Parameter whose data is not a tensor")
    return data


def _unsupported(what: str) -> Callable[..., _Unsupported]:
    def rebuild(*args):  # looks at none of its arguments
        if what == "sparse" and args and isinstance(args[0], _Marker):
            return _Unsupported(f"a sparse tensor ({_cut(args[0].qualname.rsplit('.', 1)[-1], 20)})")
        if what == "quantized" and args and isinstance(args[0], _StorageRec):
            return _Unsupported(f"a quantized tensor ({args[0].type_name.rsplit('.', 1)[-1]})")
        return _Unsupported(f"a {what} tensor")
    return rebuild


def _get_layout(name=None):
    # torch.serialization._get_layout("torch.sparse_coo"): a layout named by a string
    if not isinstance(name, str) or len(name) > 40:
        raise _BadPickle(f"_get_layout called with {_short(name)}")
    return _Marker(name)


_TENSOR_FNS: set[Callable[..., Any]] = set()


def _rebuild_from_type_v2(func=None, new_type=None, args=None, state=None, *_rest):
    # torch._tensor._rebuild_from_type_v2, only for plain Tensor / Parameter types
    if not isinstance(func, _Call) or func.fn not in _TENSOR_FNS:
        raise _BadPickle(f"_rebuild_from_type_v2 with rebuild function {_short(func)}")
    if not isinstance(new_type, _Marker) or new_type.qualname not in ("torch.Tensor", "torch.nn.parameter.Parameter"):
        raise _BadPickle(f"_rebuild_from_type_v2 with type {_short(new_type)}")
    if not isinstance(args, tuple):
        raise _BadPickle("_rebuild_from_type_v2 with non-tuple arguments")
    return func(*args)


def _ordered_dict(*args):
    if len(args) > 1 or (args and not isinstance(args[0], (dict, list, tuple))):
        raise _BadPickle("OrderedDict called with unexpected arguments")
    return OrderedDict(*args)


def _torch_size(dims=()):
    return _int_tuple(dims, "torch.Size")


def _torch_device(kind=None, index=None):
    if not isinstance(kind, str) or not (index is None or _is_int(index)):
        raise _BadPickle("torch.device called with unexpected arguments")
    return kind if index is None else f"{kind}:{index}"


def _codecs_encode(text=None, encoding="utf-8"):
    # how protocol-2 pickles spell bytes objects; only the latin-1 form is accepted
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _BadPickle("_codecs.encode called with unexpected arguments")
    return text.encode("latin-1")


def _plain_set(items=()):
    if not isinstance(items, (list, tuple)):
        raise _BadPickle("set called with unexpected arguments")
    return set(items)


def _plain_frozenset(items=()):
    return frozenset(_plain_set(items))


_CALLABLES: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    # tensors torch saves that we recognise but cannot show: refused as unsupported, by tensor name
    ("torch._utils", "_rebuild_sparse_tensor"): _unsupported("sparse"),
    ("torch._utils", "_rebuild_sparse_csr_tensor"): _unsupported("sparse"),
    ("torch._utils", "_rebuild_qtensor"): _unsupported("quantized"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _unsupported("meta (data-less)"),
    ("torch._utils", "_rebuild_nested_tensor"): _unsupported("nested"),
    ("torch.serialization", "_get_layout"): _get_layout,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): _plain_set,
    ("builtins", "frozenset"): _plain_frozenset,
    ("__builtin__", "set"): _plain_set,
    ("__builtin__", "frozenset"): _plain_frozenset,
}
_TENSOR_FNS.update(fn for (mod, name), fn in _CALLABLES.items() if name.startswith("_rebuild_") and mod == "torch._utils")


def _allowed_global(module: str, name: str) -> Any | None:
    """The stand-in for an allowed global, or None.  Called for every global the pickle names."""
    fn = _CALLABLES.get((module, name))
    if fn is not None:
        return _Call(f"{module}.{name}", fn)
    if module in ("torch", "torch.storage") and _STORAGE_NAME_RE.fullmatch(name):
        return _Marker(f"torch.{name}", STORAGE_TYPES.get(name))
    if module == "torch" and (name in TORCH_DTYPES or name in _OTHER_TORCH_DTYPES or name in _TORCH_CONSTANTS):
        return _Marker(f"torch.{name}", TORCH_DTYPES.get(name))
    if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        return _Marker(f"{module}.{name}")
    return None


class _Where(NamedTuple):
    """Which pickle of which file: for messages."""
    path: Path
    member: str  # "archive/data.pkl", "the state-dict pickle"...

    def error(self, pos: int, what: str, cls: type[WorkbenchError] = FormatError) -> WorkbenchError:
        return cls(f"{self.member}, byte {pos}: {what}", path=self.path)

    def unsafe(self, qualname: str, pos: int | None = None) -> UnsafeFileError:
        if qualname.startswith("__builtin__."):  # protocol-2 pickles spell builtins the Python 2 way
            qualname = "builtins." + qualname.split(".", 1)[1]
        at = "" if pos is None else f", byte {pos}"
        return UnsafeFileError(
            f"{self.member}{at} calls the Python global {_cut(qualname, 80)}, which no plain state dict "
            "needs: refused (nothing in the file was run; only open checkpoints you trust)", path=self.path)


class _RestrictedUnpickler(pickle.Unpickler):
    """Allow-list unpickler: every global is an inert stand-in; anything else is refused."""

    def __init__(self, data: bytes, where: _Where, legacy: bool = False):
        super().__init__(io.BytesIO(data))
        self._where = where
        self._legacy = legacy
        self.storages: dict[str, _StorageRec] = {}  # every storage the pickle names, by key

    def find_class(self, module, name):
        obj = _allowed_global(module, name) if isinstance(module, str) and isinstance(name, str) else None
        if obj is None:
            raise self._where.unsafe(f"{_cut(str(module), 40)}.{_cut(str(name), 40)}")
        return obj

    def persistent_load(self, pid):
        # torch.serialization._save writes ('storage', type, key, location, numel); the legacy
        # _legacy_save adds view_metadata, which torch >= 1.0 always leaves None
        size = 6 if self._legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage"):
            raise _BadPickle(f"unexpected persistent id {_short(pid)}")
        stype, key, location, numel = pid[1:5]
        if self._legacy and pid[5] is not None:
            raise UnsupportedError("storage views of the legacy format (torch < 1.0) are not supported; "
                                   + _RESAVE, path=self._where.path)
        if not isinstance(stype, _Marker) or not stype.qualname.endswith("Storage"):
            raise _BadPickle(f"persistent id names {_short(stype)} instead of a storage type")
        if not isinstance(key, str) or len(key) > 64 or not _KEY_RE.fullmatch(key):
            raise _BadPickle(f"storage key {_short(key)} is not a plain name")
        if not _is_int(numel) or not 0 <= numel <= _MAX_INT:
            raise _BadPickle(f"storage {key} has element count {_short(numel)}")
        rec = _StorageRec(stype.qualname, stype.dtype, key, _short(location, 20), numel)
        first = self.storages.setdefault(key, rec)
        if (first.dtype, first.numel) != (rec.dtype, rec.numel):
            raise _BadPickle(f"storage {key} is named as {first.type_name}[{first.numel}] and as "
                             f"{rec.type_name}[{numel}]")
        return rec


# -- the opcode scan --------------------------------------------------------------------------------

# per opcode: how its argument is spelled, and what it does to the stack (as the C unpickler applies it)
_A_NONE, _A_FIXED, _A_COUNTED, _A_LINE, _A_LINE2 = range(5)
_ARG: dict[int, tuple[int, int, bool]] = {}  # opcode -> (argument kind, byte width, signed)
for _c in b"(.012NQRabdelostu)]}\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x97\x98":
    _ARG[_c] = (_A_NONE, 0, False)
for _c, _w in {0x4A: 4, 0x4B: 1, 0x4D: 2, 0x68: 1, 0x6A: 4, 0x71: 1, 0x72: 4, 0x47: 8, 0x80: 1, 0x82: 1, 0x83: 2,
               0x84: 4, 0x95: 8}.items():
    _ARG[_c] = (_A_FIXED, _w, False)
for _c, (_w, _s) in {0x55: (1, False), 0x43: (1, False), 0x8A: (1, False), 0x8C: (1, False), 0x54: (4, True),
                     0x58: (4, False), 0x42: (4, False), 0x8B: (4, True), 0x8D: (8, False), 0x8E: (8, False),
                     0x96: (8, False)}.items():
    _ARG[_c] = (_A_COUNTED, _w, _s)
for _c in b"FILPSVgp":
    _ARG[_c] = (_A_LINE, 0, False)
for _c in b"ci":  # GLOBAL, INST: module and name lines
    _ARG[_c] = (_A_LINE2, 0, False)
_OPNAMES = {0x58: "BINUNICODE", 0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8", 0x54: "BINSTRING",
            0x55: "SHORT_BINSTRING", 0x42: "BINBYTES", 0x43: "SHORT_BINBYTES", 0x8E: "BINBYTES8",
            0x96: "BYTEARRAY8", 0x8A: "LONG1", 0x8B: "LONG4"}
(_E_PUSH, _E_PUT, _E_GET, _E_MARK, _E_TUPLE_N, _E_TUPLE, _E_TO_MARK, _E_POPS, _E_STOP, _E_POP, _E_DUP,
 _E_PROTO, _E_FRAME, _E_BAD) = range(14)
_EFFECT: dict[int, tuple[int, int, int]] = {}  # opcode -> (effect, items needed above the mark, items popped)
for _c in b"FIJKLMNGSTUVXBC\x88\x89\x8a\x8b\x8c\x8d\x8e\x96]}\x8f":
    _EFFECT[_c] = (_E_PUSH, 0, 0)  # pushes one non-tuple (a short str is kept for STACK_GLOBAL)
for _c in b"pqr\x94":
    _EFFECT[_c] = (_E_PUT, 1, 0)
for _c in b"ghj":
    _EFFECT[_c] = (_E_GET, 0, 0)
_EFFECT[0x28] = (_E_MARK, 0, 0)
for _c, _k in ((0x85, 1), (0x86, 2), (0x87, 3)):
    _EFFECT[_c] = (_E_TUPLE_N, _k, _k)
_EFFECT[0x74] = (_E_TUPLE, 0, 0)
_EFFECT[0x29] = (_E_PUSH, 0, 0)  # EMPTY_TUPLE (depth 1, set below)
for _c in b"eu\x90ld\x911oi":  # APPENDS SETITEMS ADDITEMS LIST DICT FROZENSET POP_MARK OBJ INST
    _EFFECT[_c] = (_E_TO_MARK, 0, 0)
_EFFECT[0x2E] = (_E_STOP, 1, 0)
_EFFECT[0x30] = (_E_POP, 1, 1)
_EFFECT[0x32] = (_E_DUP, 1, 0)
for _c, _need, _pop in ((0x61, 2, 1), (0x62, 2, 1), (0x51, 1, 1), (0x52, 2, 2), (0x81, 2, 2), (0x92, 3, 3),
                        (0x93, 2, 2), (0x73, 3, 2), (0x50, 0, 0), (0x63, 0, 0)):
    _EFFECT[_c] = (_E_POPS, _need, _pop)
_EFFECT[0x80] = (_E_PROTO, 0, 0)
_EFFECT[0x95] = (_E_FRAME, 0, 0)
for _c in (0x82, 0x83, 0x84, 0x97, 0x98):  # EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER
    _EFFECT[_c] = (_E_BAD, 0, 0)
_OPAQUE = 3  # tuple depth assumed for anything an allowed global builds (at most 2 for ours)
_PUSHED = {0x51: 1, 0x50: 1, 0x52: _OPAQUE, 0x81: _OPAQUE, 0x92: _OPAQUE, 0x93: _OPAQUE, 0x63: _OPAQUE,
           0x6F: _OPAQUE, 0x69: _OPAQUE, 0x6C: 0, 0x64: 0, 0x91: 0}  # what an opcode leaves on the stack
_TABLE = [(_ARG.get(c, (-1, 0, False)), _EFFECT.get(c, (_E_BAD, 0, 0))) for c in range(256)]
del _c, _w, _s, _k, _need, _pop


def _scan(buf, start: int, where: _Where, budget: int) -> tuple[int | None, int, int]:
    """Walk one pickle from ``buf[start]`` to its STOP without building anything.

    Simulates the unpickler's stack (as tuple nesting depths) and memo, and refuses forbidden
    globals, claims past the end of ``buf``, memo indices the C unpickler would size its table by,
    stack misuse, over-deep tuples and more than ``budget`` opcodes.  Returns (protocol, end, ops)."""
    n = len(buf)
    pos = start
    stack: list[Any] = []  # per item: its tuple nesting depth (int), or its value when a short str
    push = stack.append
    marks: list[int] = []
    memo: dict[int, Any] = {}
    protocol = None
    ops = 0
    fence = 0
    err = where.error
    table = _TABLE
    while True:
        at = pos
        if pos >= n:
            raise err(at, "the pickle ends without its STOP opcode: the file is truncated")
        op = buf[pos]
        pos += 1
        ops += 1
        if ops > budget:
            raise err(at, f"more than {_MAX_OPS:,} pickle opcodes: too large for a checkpoint", UnsupportedError)
        (kind, width, signed), (effect, need, pops) = table[op]
        arg: Any = None
        if kind == _A_FIXED:
            if pos + width > n:
                raise err(at, "the pickle is truncated inside an opcode")
            arg = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif kind == _A_COUNTED:
            if pos + width > n:
                raise err(at, "the pickle is truncated inside an opcode")
            size = int.from_bytes(buf[pos:pos + width], "little", signed=signed)
            pos += width
            if not 0 <= size <= n - pos:
                raise err(at, f"{_OPNAMES[op]} claims {size} bytes but {n - pos} remain")
            if op == 0x8B and size > 4096:  # LONG4: no checkpoint needs an int this long; it only costs time
                raise err(at, f"an integer of {size} bytes")
            if (op == 0x58 or op == 0x8C) and size <= 64:  # names for STACK_GLOBAL (allowed ones are short)
                try:
                    arg = buf[pos:pos + size].decode("utf-8")
                except UnicodeDecodeError:
                    raise err(at, "a string is not valid UTF-8") from None
            pos += size
        elif kind == _A_LINE or kind == _A_LINE2:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                raise err(at, "the pickle is truncated inside an opcode")
            arg = bytes(buf[pos:nl])
            pos = nl + 1
            if kind == _A_LINE2:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    raise err(at, "the pickle is truncated inside an opcode")
                module, name = arg.decode("utf-8", "replace"), bytes(buf[pos:nl]).decode("utf-8", "replace")
                pos = nl + 1
                if _allowed_global(module, name) is None:
                    raise where.unsafe(f"{_cut(module, 40)}.{_cut(name, 40)}", at)
        elif kind < 0:
            raise err(at, f"unknown pickle opcode 0x{op:02x}")

        if effect == _E_PUSH:
            push(arg if arg.__class__ is str else 1 if op == 0x29 else 0)
        elif effect == _E_GET:
            if op == 0x67:
                try:
                    arg = int(arg)
                except ValueError:
                    raise err(at, f"GET index {_short(arg)} is not a number") from None
            try:
                push(memo[arg])
            except KeyError:
                raise err(at, f"memo index {arg} is read before it is written") from None
        elif effect == _E_PUT:
            if len(stack) <= fence:
                raise err(at, "memo store with an empty stack")
            if op == 0x70:
                try:
                    arg = int(arg)
                except ValueError:
                    raise err(at, f"PUT index {_short(arg)} is not a number") from None
            elif op == 0x94:
                arg = len(memo)
            if not 0 <= arg <= ops:  # the C unpickler sizes its memo table by the index
                raise err(at, f"memo index {arg} is out of range")
            memo[arg] = stack[-1]
        elif effect == _E_MARK:
            fence = len(stack)
            marks.append(fence)
        elif effect == _E_POPS:
            if len(stack) - need < fence:
                raise err(at, "stack underflow")
            if op == 0x93:  # STACK_GLOBAL: the names are on the stack
                module, name = stack[-2], stack[-1]
                if not (isinstance(module, str) and isinstance(name, str)):
                    raise err(at, "STACK_GLOBAL with names that are not short strings")
                if _allowed_global(module, name) is None:
                    raise where.unsafe(f"{_cut(module, 40)}.{_cut(name, 40)}", at)
            if pops:
                del stack[-pops:]
            if op in _PUSHED:
                push(_PUSHED[op])
        elif effect == _E_TUPLE_N or effect == _E_TUPLE:
            if effect == _E_TUPLE:
                if not marks:
                    raise err(at, "TUPLE without a MARK")
                mark = marks.pop()
                fence = marks[-1] if marks else 0
            else:
                mark = len(stack) - need
                if mark < fence:
                    raise err(at, "stack underflow")
            depth = 1
            for d in stack[mark:]:
                if d.__class__ is int and d >= depth:
                    depth = d + 1
            if depth > _MAX_TUPLE_DEPTH:
                raise err(at, f"tuples are nested more than {_MAX_TUPLE_DEPTH} levels deep")
            del stack[mark:]
            push(depth)
        elif effect == _E_TO_MARK:
            if not marks:
                raise err(at, "an opcode that needs a MARK has none")
            mark = marks.pop()
            fence = marks[-1] if marks else 0
            count = len(stack) - mark
            if (op == 0x75 or op == 0x64) and count % 2:
                raise err(at, "odd number of items for a dict")
            if (op == 0x65 or op == 0x75 or op == 0x90) and mark <= fence:  # the container sits below the mark
                raise err(at, "stack underflow")
            if op == 0x6F and count < 1:
                raise err(at, "OBJ without a class")
            del stack[mark:]
            if op in _PUSHED:
                push(_PUSHED[op])
        elif effect == _E_STOP:
            if len(stack) <= fence:
                raise err(at, "STOP with an empty stack")
            return protocol, pos, ops
        elif effect == _E_POP:
            if marks and marks[-1] == len(stack):  # POP of a bare MARK pops the mark
                marks.pop()
                fence = marks[-1] if marks else 0
            elif len(stack) <= fence:
                raise err(at, "stack underflow")
            else:
                stack.pop()
        elif effect == _E_DUP:
            if len(stack) <= fence:
                raise err(at, "stack underflow")
            push(stack[-1])
        elif effect == _E_PROTO:
            if arg > pickle.HIGHEST_PROTOCOL:
                raise err(at, f"unknown pickle protocol {arg}")
            protocol = arg
        elif effect == _E_FRAME:
            if arg > n - pos:
                raise err(at, f"FRAME of {arg} bytes runs past the end")
        else:
            raise err(at, f"opcode 0x{op:02x} is not used by torch.save")


def _unpickle(buf, start: int, where: _Where, budget: int,
              legacy: bool = False) -> tuple[Any, int | None, int, int, dict[str, _StorageRec]]:
    """Scan, then unpickle one pickle starting at ``buf[start]``: (object, protocol, end, opcodes,
    storages named)."""
    protocol, end, ops = _scan(buf, start, where, budget)
    whole = type(buf) is bytes and start == 0 and end == len(buf)  # BytesIO shares an exact bytes object
    unpickler = _RestrictedUnpickler(buf if whole else bytes(buf[start:end]), where, legacy)
    try:
        obj = unpickler.load()
    except WorkbenchError as exc:
        if exc.path is None:  # raised by a stand-in, which does not know the file
            raise type(exc)(exc.message, path=where.path) from None
        raise
    except _BadPickle as exc:
        raise FormatError(f"{where.member} is not a valid state dict: {exc}", path=where.path) from None
    except RecursionError:
        raise FormatError(f"{where.member} is nested too deeply", path=where.path) from None
    except MemoryError:
        raise FormatError(f"{where.member} is too large to read", path=where.path) from None
    except Exception as exc:  # anything the unpickler raises on malformed input
        raise FormatError(f"{where.member} could not be unpickled ({exc.__class__.__name__}: {_short(str(exc), 80)}); "
                          "the file is damaged", path=where.path) from None
    return obj, protocol, end, ops, unpickler.storages


# -- the object walk --------------------------------------------------------------------------------

_LEAVES = frozenset({str, float, bool, type(None), bytes})  # kept as they are, and hold no tensor


class _Walk:
    """Tensors and plain values of an unpickled object graph.  Every object is examined once (memo by
    identity); shared containers are expanded again under each name they appear at, within a budget,
    so a graph that shares references cannot blow up; nesting is capped; cycles are refused."""

    def __init__(self, where: _Where, budget: int):
        self.where = where
        self.budget = budget
        self._has: dict[int, bool | None] = {}  # id -> holds a tensor (None: being examined)
        self._plain: dict[int, Any] = {}
        self.tensors: list[tuple[str, _TensorRec]] = []
        self.values: dict[str, Any] = {}

    def _bad(self, what: str) -> FormatError:
        return FormatError(f"{self.where.member} {what}", path=self.where.path)

    def has_tensor(self, obj: Any, depth: int = 0) -> bool:
        if isinstance(obj, (_TensorRec, _Unsupported)):
            return True
        if not (isinstance(obj, dict) or type(obj) in (list, tuple)):
            return False
        key = id(obj)
        if key in self._has:
            if self._has[key] is None:
                raise self._bad("holds a container that contains itself")
            return self._has[key]
        if depth >= _MAX_DEPTH:
            raise self._bad(f"is nested more than {_MAX_DEPTH} levels deep")
        self._has[key] = None
        items = obj.values() if isinstance(obj, dict) else obj
        found = False
        for v in items:  # no short cut: every child is examined (and memoised) once
            if v.__class__ not in _LEAVES:
                found = self.has_tensor(v, depth + 1) or found
        self._has[key] = found
        return found

    def flatten(self, obj: Any, prefix: str = "", depth: int = 0) -> None:
        """Tensors of a (possibly nested) state dict with dotted names; other leaves into ``values``."""
        self.budget -= 1
        if depth > _MAX_DEPTH:
            raise self._bad(f"is nested more than {_MAX_DEPTH} levels deep")
        if self.budget < 0:
            raise self._bad("shares references so that its state dict would list more entries than it has "
                            "opcodes (refused)")
        if isinstance(obj, _Unsupported):
            advice = ("save the tensor with its data" if "meta" in obj.what else
                      "save it as a dense tensor (.to_dense(), .dequantize())")
            raise UnsupportedError(f"tensor {_cut(prefix or 'tensor', 80)} is {obj.what}: sparse/quantized tensors "
                                   f"are not supported; {advice}", path=self.where.path)
        if isinstance(obj, _TensorRec):
            self.tensors.append((prefix or "tensor", obj))
            return
        if self.has_tensor(obj, depth):
            items = obj.items() if isinstance(obj, dict) else enumerate(obj)
            for k, v in items:
                name = k if isinstance(k, str) else str(k) if _is_int(k) and abs(k) < 1 << 64 else _short(k, 40)
                self.flatten(v, f"{prefix}.{name}" if prefix else name, depth + 1)
            return
        self.values[prefix or "value"] = self.plain(obj, depth)

    def plain(self, obj: Any, depth: int = 0) -> Any:
        """A non-tensor value as plain Python (stand-ins become readable strings).  A container shared
        by several entries is converted once and shared in the result too."""
        if isinstance(obj, (_Marker, _Call)):
            return obj.qualname
        if isinstance(obj, _StorageRec):
            return f"<{obj.type_name} {obj.key}>"
        if obj is None or isinstance(obj, (str, bytes, bytearray, float, complex, bool)):
            return obj
        if _is_int(obj):
            return obj if abs(obj) < 1 << 64 else f"<int of {obj.bit_length()} bits>"
        if not (isinstance(obj, dict) or type(obj) in (list, tuple, set, frozenset)):
            return _short(obj)
        # no cycle can get here: has_tensor() refused them (and sets, dict keys hold only hashables)
        key = id(obj)
        if key in self._plain:
            return self._plain[key]
        if depth >= _MAX_DEPTH:
            raise self._bad(f"is nested more than {_MAX_DEPTH} levels deep")
        if isinstance(obj, dict):
            out: Any = {}
            for k, v in obj.items():
                pk = self.plain(k, depth + 1)
                out[pk if isinstance(pk, (str, int, float, bool)) else _short(pk)] = self.plain(v, depth + 1)
        else:
            out = type(obj)(v if v.__class__ in _LEAVES else self.plain(v, depth + 1) for v in obj)
        self._plain[key] = out
        return out


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    # torch's contiguity rule (c10 compute_contiguous): size-1 dims and empty tensors don't matter
    if any(n == 0 for n in shape):
        return True
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _tensor_infos(records: list[tuple[str, _TensorRec]], locate: Callable[[_StorageRec, str], tuple[int, int, str]],
                  path: Path, file_size: int) -> list[TensorInfo]:
    """TensorInfos of the flattened records; ``locate(storage, tensor name)`` gives a storage's
    (absolute data offset, bytes available, where for messages)."""
    storages: dict[str, tuple[_StorageRec, int, int, str]] = {}
    out: list[TensorInfo] = []
    seen: set[str] = set()
    for name, rec in records:
        qname = _cut(name, 80)
        if name in seen:
            raise FormatError(f"tensor name {qname} appears twice after flattening nested dicts", path=path)
        seen.add(name)
        st = rec.storage
        if st.key not in storages:
            storages[st.key] = (st, *locate(st, name))
        first, start, available, where = storages[st.key]
        if (first.dtype, first.numel) != (st.dtype, st.numel):
            raise FormatError(f"storage {where} is referenced as {first.type_name}[{first.numel}] and as "
                              f"{st.type_name}[{_short(st.numel)}]", path=path)
        storage_bytes = st.numel * PLAIN_DTYPES[st.dtype].itemsize
        if storage_bytes > available:
            raise FormatError(f"storage {where} holds {available} bytes but {st.type_name} of "
                              f"{_short(st.numel)} elements needs {_short(storage_bytes)}: the file is truncated "
                              "or damaged", path=path)
        itemsize = PLAIN_DTYPES[rec.dtype].itemsize
        numel = math.prod(rec.shape)
        nbytes = numel * itemsize
        if nbytes > file_size:
            raise FormatError(f"tensor {qname} {_short(rec.shape)} claims {_short(nbytes)} bytes, more than the "
                              "whole file", path=path)
        span = 0 if numel == 0 else 1 + sum((n - 1) * s for n, s in zip(rec.shape, rec.stride))
        begin = rec.storage_offset * itemsize
        end = begin + span * itemsize
        if end > storage_bytes or begin > storage_bytes:
            raise FormatError(f"tensor {qname} (bytes {_short(begin)}..{_short(end)}) lies outside its storage "
                              f"{where} ({storage_bytes} bytes): the file is damaged", path=path)
        strides = None if _is_contiguous(rec.shape, rec.stride) else rec.stride
        out.append(TensorInfo(name, rec.shape, rec.dtype, nbytes, path, start + begin, strides))
    return out


# -- reading ---------------------------------------------------------------------------------------

def _sniff(path: Path, head: bytes) -> str:
    """"zip" or "legacy", or a clear error for anything else."""
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if not head:
        raise FormatError("the file is empty: not a PyTorch checkpoint", path=path)
    if head[0] == 0x80 and len(head) > 1 and 1 <= head[1] <= 5:  # PROTO 1..5: a pickle stream
        return "legacy"
    if head[257:262] == b"ustar":
        raise UnsupportedError("the tar-based PyTorch format (torch < 0.4) is not supported; " + _RESAVE, path=path)
    if head[:4] in (b"PK\x05\x06", b"PK\x07\x08"):
        raise FormatError("the zip archive is empty or damaged: not a PyTorch checkpoint", path=path)
    raise FormatError("not a PyTorch checkpoint (neither a zip archive nor a pickle); expected a file written "
                      "by torch.save", path=path)


def read_bin(path: Path) -> tuple[list[TensorInfo], dict]:
    """Read a ``torch.save`` checkpoint's tensor directory (zip or legacy layout) without running any
    of its pickle code.

    Returns the tensors in state-dict order (nested dicts flattened to dotted names) and extra info:
    ``pickle_protocol``, ``archive_prefix``/``archive_version``/``byteorder`` (zip) or ``legacy``
    (True) and, when present, ``values`` (non-tensor entries as plain Python values).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("no such file", path=path)
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        kind = _sniff(path, f.read(512))
        f.seek(0)
        if kind == "legacy":
            return _read_legacy(path, f, file_size)
        return _read_zip(path, f, file_size)


def _check_zip_directory(path: Path, f, file_size: int) -> None:
    """Refuse a zip whose central directory is larger than any checkpoint's before zipfile parses it
    (zipfile builds an object per entry)."""
    tail_len = min(file_size, (1 << 16) + 22 + 20)
    f.seek(file_size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return  # zipfile reports it
    size_cd = struct.unpack_from("<I", tail, at + 12)[0]
    if size_cd == 0xFFFFFFFF and at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
        (offset,) = struct.unpack_from("<Q", tail, at - 12)
        if offset + 56 <= file_size:
            f.seek(offset)
            rec = f.read(56)
            if rec[:4] == b"PK\x06\x06":
                size_cd = struct.unpack_from("<Q", rec, 40)[0]
    if size_cd > min(file_size, _MAX_CENTRAL_DIR):
        raise FormatError(f"the zip directory claims {size_cd} bytes (at most {min(file_size, _MAX_CENTRAL_DIR)} "
                          "expected): the file is damaged", path=path)


def _member(zf: zipfile.ZipFile, name: str, path: Path, limit: int) -> zipfile.ZipInfo:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise FormatError(f"the archive has no member {_cut(name, 80)}: the checkpoint is incomplete or damaged",
                          path=path) from None
    qname = _cut(name, 80)
    if info.compress_type != zipfile.ZIP_STORED:  # never decompressed, so no zip bomb
        raise UnsupportedError(f"member {qname} is compressed; PyTorch writes its members uncompressed "
                               "(re-save the checkpoint with torch.save)", path=path)
    if info.flag_bits & 0x1:
        raise UnsupportedError(f"member {qname} is encrypted", path=path)
    if info.file_size > limit or info.compress_size != info.file_size:
        raise FormatError(f"member {qname} claims {info.file_size} bytes (at most {limit} expected): the file is "
                          "truncated or damaged", path=path)
    return info


def _read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, OverflowError, NotImplementedError) as exc:
        raise FormatError(f"member {_cut(info.filename, 80)} could not be read ({_short(str(exc), 60)}): the file "
                          "is truncated or damaged", path=path) from None


def _data_offset(f, info: zipfile.ZipInfo, path: Path, file_size: int) -> int:
    """Absolute offset of a stored member's bytes, from its local header (torch pads the header's
    extra field so the data is 64-byte aligned; caffe2 PyTorchStreamReader::getRecordOffset)."""
    qname = _cut(info.filename, 80)
    if not 0 <= info.header_offset <= file_size - 30:
        raise FormatError(f"local header of member {qname} lies outside the file", path=path)
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise FormatError(f"local header of member {qname} is missing or damaged", path=path)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > file_size:
        raise FormatError(f"member {qname} runs past the end of the file: the file is truncated", path=path)
    return start


def _find_prefix(names: list[str], path: Path) -> str:
    # caffe2 PyTorchStreamReader::init: the archive name is the first member's top folder
    first = names[0].split("/", 1)[0] if names and "/" in names[0] else None
    if first is not None and f"{first}/data.pkl" in names:
        return first
    candidates = [n[:-len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if candidates:
        return candidates[0]
    raise FormatError("the zip archive has no <name>/data.pkl: not a PyTorch checkpoint", path=path)


def _read_zip(path: Path, f, file_size: int) -> tuple[list[TensorInfo], dict]:
    _check_zip_directory(path, f, file_size)
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error, IndexError, KeyError,
            NotImplementedError, OverflowError, UnicodeDecodeError) as exc:
        raise FormatError(f"the zip archive is truncated or damaged ({_short(str(exc), 80)})", path=path) from None
    with zf:
        names = zf.namelist()
        prefix = _find_prefix(names, path)
        if f"{prefix}/constants.pkl" in names:
            raise UnsupportedError("this is a TorchScript archive (torch.jit.save), not a state dict; save the "
                                   "model's state_dict() with torch.save instead", path=path)
        extra: dict[str, Any] = {"archive_prefix": prefix}
        byteorder = b"little"
        if f"{prefix}/byteorder" in names:
            byteorder = _read_small(zf, _member(zf, f"{prefix}/byteorder", path, min(file_size, 16)), path)
            if byteorder == b"big":
                raise UnsupportedError("big-endian checkpoints are not supported; re-save it on a little-endian "
                                       "machine", path=path)
            if byteorder != b"little":
                raise FormatError(f"unknown byte order {_short(byteorder, 24)}", path=path)
        extra["byteorder"] = byteorder.decode()
        if f"{prefix}/version" in names:
            raw = _read_small(zf, _member(zf, f"{prefix}/version", path, min(file_size, 64)), path)
            text = raw.decode("latin-1").strip()
            extra["archive_version"] = int(text) if text.isdigit() and len(text) < 10 else _short(text, 24)

        pkl_name = f"{prefix}/data.pkl"
        data = _read_small(zf, _member(zf, pkl_name, path, file_size), path)
        where = _Where(path, _cut(pkl_name, 80))
        obj, extra["pickle_protocol"], _end, ops, _storages = _unpickle(data, 0, where, _MAX_OPS)
        walk = _Walk(where, ops + 1000)
        walk.flatten(obj)
        if walk.values:
            extra["values"] = walk.values
        member_names = set(names)

        def locate(st: _StorageRec, tensor: str) -> tuple[int, int, str]:
            member = f"{prefix}/data/{st.key}"
            if member not in member_names:
                raise FormatError(f"storage member {member} (used by tensor {_cut(tensor, 60)}) is missing: the "
                                  "checkpoint is incomplete or damaged", path=path)
            info = _member(zf, member, path, file_size)
            return _data_offset(f, info, path, file_size), info.file_size, member

        tensors = _tensor_infos(walk.tensors, locate, path, file_size)
    return tensors, extra


def _read_legacy(path: Path, f, file_size: int) -> tuple[list[TensorInfo], dict]:
    """torch.serialization._legacy_save's stream: magic number, protocol version, system info, the
    object and the sorted storage keys as five pickles, then per key an int64 element count and the
    storage's bytes."""
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        budget = _MAX_OPS
        pos = 0
        checks = (("the magic-number pickle", lambda v: v == _LEGACY_MAGIC_NUMBER, FormatError,
                   "not a PyTorch checkpoint: a pickle that does not start with torch's magic number"),
                  ("the protocol-version pickle", lambda v: v == _LEGACY_PROTOCOL, UnsupportedError,
                   f"this legacy PyTorch format version is not supported (expected {_LEGACY_PROTOCOL}); " + _RESAVE),
                  ("the system-info pickle", lambda v: isinstance(v, dict) and v.get("little_endian") is True,
                   UnsupportedError, "big-endian checkpoints are not supported; re-save it on a little-endian machine"))
        for what, ok, cls, message in checks:
            obj, _proto, pos, ops, _storages = _unpickle(mm, pos, _Where(path, what), budget)
            budget -= ops
            if not ok(obj):
                raise cls(message, path=path)
        where = _Where(path, "the state-dict pickle")
        obj, protocol, pos, ops, storages = _unpickle(mm, pos, where, budget, legacy=True)
        budget -= ops
        walk = _Walk(where, ops + 1000)
        walk.flatten(obj)
        keys, _proto, pos, ops, _storages = _unpickle(mm, pos, _Where(path, "the storage-key pickle"), budget)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise FormatError("the storage-key pickle is not a list of names", path=path)
        located: dict[str, tuple[int, int, str]] = {}
        for key in keys:
            st = storages.get(key)
            qkey = _cut(key, 40)
            if pos + 8 > file_size:
                raise FormatError(f"storage {qkey} at byte {pos} is missing: the file is truncated", path=path)
            count = int.from_bytes(mm[pos:pos + 8], "little", signed=True)
            if st is None:
                raise FormatError(f"storage {qkey} at byte {pos} is listed but the pickle never names it", path=path)
            if st.dtype is None:
                raise UnsupportedError(f"storage {qkey} is a {st.type_name}, which is not supported", path=path)
            if count != st.numel:
                raise FormatError(f"storage {qkey} at byte {pos} holds {count} elements but its tensors expect "
                                  f"{st.numel}", path=path)
            size = count * PLAIN_DTYPES[st.dtype].itemsize
            if pos + 8 + size > file_size:
                raise FormatError(f"storage {qkey} at byte {pos} ({size} bytes) runs past the end of the file: the "
                                  "file is truncated", path=path)
            if key in located:
                raise FormatError(f"storage {qkey} is listed twice", path=path)
            located[key] = (pos + 8, size, f"{qkey} at byte {pos}")
            pos += 8 + size

    def locate(st: _StorageRec, tensor: str) -> tuple[int, int, str]:
        if st.key not in located:
            raise FormatError(f"storage {_cut(st.key, 40)} (used by tensor {_cut(tensor, 60)}) is not in the "
                              "file: the checkpoint is incomplete or damaged", path=path)
        return located[st.key]

    extra: dict[str, Any] = {"legacy": True, "pickle_protocol": protocol}
    if walk.values:
        extra["values"] = walk.values
    return _tensor_infos(walk.tensors, locate, path, file_size), extra


# -- the sharded index -------------------------------------------------------------------------------

def read_bin_index(index_path: Path) -> tuple[list[Path], dict[str, str]]:
    """Parse ``pytorch_model.bin.index.json``: (shard files in order of first use, weight_map)."""
    from .hf import read_shard_index

    files, wmap, _ = read_shard_index(Path(index_path))
    return files, wmap


# -- writing ---------------------------------------------------------------------------------------

# (numpy kind, itemsize) -> torch storage class; BF16 arrives as uint16 bits named in bf16_names
_NUMPY_STORAGES: dict[tuple[str, int], str] = {
    ("f", 4): "FloatStorage", ("f", 2): "HalfStorage", ("f", 8): "DoubleStorage",
    ("i", 8): "LongStorage", ("i", 4): "IntStorage", ("i", 2): "ShortStorage", ("i", 1): "CharStorage",
    ("u", 1): "ByteStorage", ("b", 1): "BoolStorage",
}


class _PickleOut:
    """Hand-emitted protocol-2 pickle, opcode for opcode what torch.save's pickler writes for a state dict."""

    def __init__(self) -> None:
        self.buf = bytearray(b"\x80\x02")  # PROTO 2
        self._memo: dict[tuple[str, str], int] = {}

    def glob(self, module: str, name: str) -> None:
        idx = self._memo.get((module, name))
        if idx is not None:  # BINGET / LONG_BINGET
            self.buf += (b"h" + bytes([idx])) if idx < 256 else (b"j" + struct.pack("<I", idx))
            return
        self.buf += b"c" + f"{module}\n{name}\n".encode("ascii")  # GLOBAL
        idx = self._memo[(module, name)] = len(self._memo)
        self.buf += (b"q" + bytes([idx])) if idx < 256 else (b"r" + struct.pack("<I", idx))  # BINPUT

    def integer(self, n: int) -> None:
        if 0 <= n < 256:
            self.buf += b"K" + bytes([n])  # BININT1
        elif 0 <= n < 65536:
            self.buf += b"M" + struct.pack("<H", n)  # BININT2
        elif -(1 << 31) <= n < (1 << 31):
            self.buf += b"J" + struct.pack("<i", n)  # BININT
        else:
            data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.buf += b"\x8a" + bytes([len(data)]) + data  # LONG1

    def text(self, s: str) -> None:
        data = s.encode("utf-8")
        self.buf += b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE

    def int_tuple(self, items: tuple[int, ...]) -> None:
        if not items:
            self.buf += b")"  # EMPTY_TUPLE
            return
        self.buf += b"("  # MARK
        for n in items:
            self.integer(n)
        self.buf += b"t"  # TUPLE

    def ordered_dict(self) -> None:
        self.glob("collections", "OrderedDict")
        self.buf += b")R"  # EMPTY_TUPLE REDUCE

    def tensor(self, storage_type: str, key: str, shape: tuple[int, ...]) -> None:
        # torch.Tensor._reduce_ex_internal -> _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.buf += b"(("  # MARK (args) MARK (persistent id)
        self.text("storage")
        self.glob("torch", storage_type)
        self.text(key)
        self.text("cpu")
        self.integer(math.prod(shape))
        self.buf += b"tQ"  # TUPLE BINPERSID
        self.integer(0)
        self.int_tuple(shape)
        strides, acc = [], 1
        for n in reversed(shape):
            strides.append(acc)
            acc *= n
        self.int_tuple(tuple(reversed(strides)))
        self.buf += b"\x89"  # NEWFALSE (requires_grad)
        self.ordered_dict()  # backward_hooks
        self.buf += b"tR"  # TUPLE REDUCE


def _write_member(zf: zipfile.ZipFile, f, name: str, data) -> None:
    """Write one stored member whose bytes start at a multiple of 64, by padding the local header's
    extra field (as torch's miniz writer does, caffe2 PyTorchStreamWriter::writeRecord)."""
    view = memoryview(data).cast("B")
    size = view.nbytes
    pos = f.tell()  # where zipfile will put the local header
    name_len = len(name.encode("utf-8"))
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule in ZipFile._open_to_write
    fixed = 30 + name_len + 4 + (20 if zip64 else 0)
    pad = (-(pos + fixed)) % _ALIGN
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding field, like miniz
    with zf.open(info, "w", force_zip64=zip64) as out:
        if info.header_offset != pos:
            raise WorkbenchError(f"internal error: zip member {name} not written where expected")
        chunk = 64 << 20
        for i in range(0, size, chunk):
            out.write(view[i:i + chunk])


def _storage_array(name: str, value: Any, bf16: bool) -> tuple[str, np.ndarray]:
    arr = np.asarray(value)
    if bf16:
        if arr.dtype not in (np.dtype(np.uint16), np.dtype(np.int16)):
            raise UnsupportedError(f"tensor {name} is listed as BF16 but holds {arr.dtype}, not uint16 bit patterns")
        return "BFloat16Storage", arr.astype("<u2", order="C", copy=False)
    storage = _NUMPY_STORAGES.get((arr.dtype.kind, arr.dtype.itemsize))
    if storage is None:
        raise UnsupportedError(f"tensor {name}: numpy type {arr.dtype} cannot be written to a PyTorch checkpoint",
                               hint="Supported: float16/32/64, int8/16/32/64, uint8, bool, and BF16 as uint16 bits.")
    target = np.dtype(np.bool_) if arr.dtype.kind == "b" else np.dtype(f"<{arr.dtype.kind}{arr.dtype.itemsize}")
    return storage, arr.astype(target, order="C", copy=False)  # keeps 0-d shapes, unlike ascontiguousarray


def _archive_prefix(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.name.split(".", 1)[0])
    return stem or "archive"


def write_bin(path: Path, tensors: Mapping[str, np.ndarray], *, bf16_names: set[str] = frozenset()) -> None:
    """Write ``tensors`` as a ``torch.save``-style zip checkpoint that ``torch.load(path, weights_only=True)``
    reads as an OrderedDict of CPU tensors.  BF16 tensors are passed as uint16 bits named in ``bf16_names``.
    The file is written beside ``path`` and renamed into place; nothing is left behind on error."""
    path = Path(path)
    items: list[tuple[str, str, np.ndarray]] = []
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise WorkbenchError(f"tensor name {name!r} is not a non-empty string", path=path)
        storage, arr = _storage_array(name, value, name in bf16_names)
        items.append((name, storage, arr))

    # mirrors torch.serialization._save: data.pkl, then byteorder, one data/<key> per storage, version
    pickle_out = _PickleOut()
    pickle_out.ordered_dict()
    for start in range(0, len(items), 1000):  # SETITEMS in batches, like pickle.Pickler
        pickle_out.buf += b"("  # MARK
        for key, (name, storage, arr) in enumerate(items[start:start + 1000], start):
            pickle_out.text(name)
            pickle_out.tensor(storage, str(key), arr.shape)
        pickle_out.buf += b"u"  # SETITEMS
    pickle_out.buf += b"."  # STOP

    prefix = _archive_prefix(path)
    with atomic_write_path(path) as tmp:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_member(zf, f, f"{prefix}/data.pkl", bytes(pickle_out.buf))
            _write_member(zf, f, f"{prefix}/byteorder", b"little")
            for key, (_name, _storage, arr) in enumerate(items):
                _write_member(zf, f, f"{prefix}/data/{key}", arr.reshape(-1).view(np.uint8))
            # no .format_version record: it would let torch compute offsets assuming miniz's data
            # descriptors, which Python's zipfile does not write
            _write_member(zf, f, f"{prefix}/version", b"3\n")
