"""PyTorch checkpoints (``pytorch_model.bin``, ``.pt``, ``.pth``) without torch and without running pickle code.

A ``torch.save`` file (torch >= 1.6) is a zip archive: ``<prefix>/data.pkl`` is a pickle of the state
dict whose tensors point, through persistent ids, at raw storages ``<prefix>/data/<key>`` stored
uncompressed in the zip.  We unpickle ``data.pkl`` with an allow-list :class:`pickle.Unpickler`
whose globals are inert stand-ins (no torch import, nothing from the file is ever called), then
turn every tensor into a :class:`~workbench.model.TensorInfo` pointing straight at its bytes.

Before the unpickler runs, the pickle is scanned with :func:`pickletools.genops`: every forbidden
``GLOBAL`` is rejected up front and every length or memo claim is checked against the real data, so
the C unpickler never allocates on a claim larger than the file.

:func:`write_bin` emits the same layout (hand-written protocol-2 pickle, 64-byte aligned stored
members), so ``torch.load(path, weights_only=True)`` reads it back.
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
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
_STORAGE_NAME_RE = re.compile(r"[A-Za-z0-9]+Storage")
_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch.serialization MAGIC_NUMBER, pickled
_MAX_DEPTH = 64
_ALIGN = 64  # torch's default storage alignment (torch.utils.serialization.config.save.storage_alignment)
_LEGACY_HINT = ("If you trust the file, load it with PyTorch and save it again (zip is the default since "
                "PyTorch 1.6), or convert it to safetensors.")


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
    dtype: str  # our element type of the storage
    key: str
    location: str
    numel: int


class _TensorRec(NamedTuple):
    storage: _StorageRec
    dtype: str
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _BadPickle(Exception):
    """data.pkl is well-formed pickle but not a valid state dict (converted to FormatError)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_tuple(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not all(_is_int(x) and x >= 0 for x in v):
        raise _BadPickle(f"tensor {what} {v!r} is not a tuple of non-negative integers")
    return tuple(v)


def _tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: str | None = None) -> _TensorRec:
    if not isinstance(storage, _StorageRec):
        raise _BadPickle(f"tensor storage is {type(storage).__name__}, not a storage reference")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise _BadPickle(f"tensor storage offset {storage_offset!r} is not a non-negative integer")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _BadPickle(f"tensor size {shape} and stride {strides} differ in length")
    return _TensorRec(storage, dtype or storage.dtype, storage_offset, shape, strides)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    # mirrors torch._utils._rebuild_tensor_v2: the tensor's dtype is its typed storage's
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    # mirrors torch._utils._rebuild_tensor_v3: untyped (byte) storage + explicit dtype
    if not isinstance(dtype, _Marker) or not dtype.qualname.startswith("torch."):
        raise _BadPickle(f"tensor dtype {dtype!r} is not a torch dtype")
    if dtype.dtype is None:
        raise UnsupportedError(f"tensors of type {dtype.qualname} are not supported")
    return _tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    # torch._utils._rebuild_parameter(_with_state): a Parameter is its data for us
    if not isinstance(data, _TensorRec):
        raise _BadPickle("a Parameter whose data is not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch._tensor._rebuild_from_type_v2, only for plain Tensor / Parameter types
    if not isinstance(func, _Call) or func.fn not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter):
        raise _BadPickle(f"_rebuild_from_type_v2 with rebuild function {func!r}")
    if not isinstance(new_type, _Marker) or new_type.qualname not in ("torch.Tensor", "torch.nn.parameter.Parameter"):
        raise _BadPickle(f"_rebuild_from_type_v2 with type {new_type!r}")
    if not isinstance(args, tuple):
        raise _BadPickle("_rebuild_from_type_v2 with non-tuple arguments")
    return func(*args)


def _ordered_dict(*args):
    if len(args) > 1 or (args and not isinstance(args[0], (dict, list, tuple))):
        raise _BadPickle("OrderedDict called with unexpected arguments")
    return OrderedDict(*args)


def _torch_size(dims=()):
    return _int_tuple(dims, "torch.Size")


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or _is_int(index)):
        raise _BadPickle("torch.device called with unexpected arguments")
    return kind if index is None else f"{kind}:{index}"


def _codecs_encode(text, encoding="utf-8"):
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
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): _plain_set,
    ("builtins", "frozenset"): _plain_frozenset,
}


def _allowed_global(module: str, name: str) -> Any | None:
    """The stand-in for an allowed global, or None.  Called for every global the pickle names."""
    fn = _CALLABLES.get((module, name))
    if fn is not None:
        return _Call(f"{module}.{name}", fn)
    if module in ("torch", "torch.storage") and _STORAGE_NAME_RE.fullmatch(name):
        return _Marker(f"torch.{name}", STORAGE_TYPES.get(name))
    if module == "torch" and (name in TORCH_DTYPES or name in _OTHER_TORCH_DTYPES):
        return _Marker(f"torch.{name}", TORCH_DTYPES.get(name))
    if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        return _Marker(f"{module}.{name}")
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Allow-list unpickler: every global is an inert stand-in; anything else is refused."""

    def __init__(self, data: bytes, path: Path, member: str):
        super().__init__(io.BytesIO(data))
        self._path = path
        self._member = member

    def find_class(self, module, name):
        obj = _allowed_global(module, name) if isinstance(module, str) and isinstance(name, str) else None
        if obj is None:
            raise _unsafe(self._path, self._member, f"{module}.{name}")
        return obj

    def persistent_load(self, pid):
        # the ids torch.serialization._save's persistent_id writes: ('storage', type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _BadPickle(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _Marker) or not stype.qualname.endswith("Storage"):
            raise _BadPickle(f"persistent id names {stype!r:.80} instead of a storage type")
        if stype.dtype is None:
            raise UnsupportedError(f"unknown storage type {stype.qualname}", path=self._path,
                                   hint="Supported: " + ", ".join(f"torch.{n}" for n in STORAGE_TYPES))
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise _BadPickle(f"storage key {key!r:.80} is not a plain name")
        if not _is_int(numel) or numel < 0:
            raise _BadPickle(f"storage {key} has element count {numel!r:.80}")
        return _StorageRec(stype.qualname, stype.dtype, key, str(location), numel)


def _unsafe(path: Path, member: str, qualname: str) -> UnsafeFileError:
    if qualname.startswith("__builtin__."):  # protocol-2 pickles spell builtins the Python 2 way
        qualname += f" (builtins.{qualname.split('.', 1)[1]})"
    return UnsafeFileError(
        f"{member} references the Python global {qualname}, which is not part of a plain state dict; "
        "refusing to load it (nothing from the file was run)", path=path,
        hint="The file may try to run code. Only open checkpoints from sources you trust; "
             "prefer .safetensors files.")


def _prescan(data: bytes, path: Path, member: str) -> int | None:
    """Walk the opcodes without building anything: refuse forbidden globals and check every length
    and memo claim against the real data.  Returns the pickle protocol."""
    protocol = None
    try:
        for i, (op, arg, pos) in enumerate(pickletools.genops(data)):
            name = op.name
            if name == "PROTO":
                protocol = arg
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                if _allowed_global(module, attr) is None:
                    raise _unsafe(path, member, f"{module}.{attr}")
            elif name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= int(arg) <= i:
                raise _BadPickle(f"memo index {arg} at byte {pos} is out of range")
            elif name == "FRAME" and arg > len(data) - pos:
                raise _BadPickle(f"frame of {arg} bytes at byte {pos} runs past the end")
            elif name in ("EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"):
                raise _BadPickle(f"opcode {name} is not used by torch.save")
    except WorkbenchError:
        raise
    except _BadPickle as exc:
        raise FormatError(f"{member} is damaged: {exc}", path=path) from None
    except (ValueError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise FormatError(f"{member} is not a valid pickle ({exc}); the file is truncated or damaged",
                          path=path) from None
    return protocol


# -- reading ---------------------------------------------------------------------------------------

def _sniff(path: Path, head: bytes) -> None:
    """Raise a clear error for anything that is not a zip archive."""
    if head[:4] == b"PK\x03\x04":
        return
    if not head:
        raise FormatError("the file is empty: not a PyTorch checkpoint", path=path)
    if head.startswith(_LEGACY_MAGIC) or (len(head) > 1 and head[0] == 0x80 and 1 <= head[1] <= 5):  # PROTO 1..5
        raise UnsupportedError(
            "legacy (pre-1.6) PyTorch format is not supported; re-save it with "
            "torch.save(..., _use_new_zipfile_serialization=True)", path=path, hint=_LEGACY_HINT)
    if head[257:262] == b"ustar":
        raise UnsupportedError("legacy tar-based PyTorch format is not supported", path=path, hint=_LEGACY_HINT)
    if head[:4] in (b"PK\x05\x06", b"PK\x07\x08"):
        raise FormatError("the zip archive is empty or damaged: not a PyTorch checkpoint", path=path)
    raise FormatError("not a PyTorch checkpoint (no zip signature)", path=path,
                      hint="Expected a file written by torch.save (pytorch_model.bin, .pt, .pth).")


def _member(zf: zipfile.ZipFile, name: str, path: Path, limit: int) -> zipfile.ZipInfo:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise FormatError(f"the archive has no member {name}", path=path,
                          hint="The checkpoint is incomplete or damaged; download or save it again.") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsupportedError(f"member {name} is compressed; PyTorch writes its members uncompressed",
                               path=path, hint="Re-save the checkpoint with torch.save.")
    if info.flag_bits & 0x1:
        raise UnsupportedError(f"member {name} is encrypted", path=path)
    if info.file_size > limit or info.compress_size != info.file_size:
        raise FormatError(f"member {name} claims {info.file_size} bytes (at most {limit} expected)", path=path,
                          hint="The file is truncated or damaged.")
    return info


def _read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error) as exc:
        raise FormatError(f"member {info.filename} could not be read ({exc}): the file is truncated or damaged",
                          path=path) from None


def _data_offset(f, info: zipfile.ZipInfo, path: Path, file_size: int) -> int:
    """Absolute offset of a stored member's bytes, from its local header (torch pads the header's
    extra field so the data is 64-byte aligned; caffe2 PyTorchStreamReader::getRecordOffset)."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise FormatError(f"local header of member {info.filename} is missing or damaged", path=path)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > file_size:
        raise FormatError(f"member {info.filename} runs past the end of the file", path=path,
                          hint="The file is truncated; download or save it again.")
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


def _has_tensor(obj: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        raise _BadPickle(f"the checkpoint is nested more than {_MAX_DEPTH} levels deep (or is cyclic)")
    if isinstance(obj, _TensorRec):
        return True
    if isinstance(obj, dict):
        return any(_has_tensor(v, depth + 1) for v in obj.values())
    if type(obj) in (list, tuple):
        return any(_has_tensor(v, depth + 1) for v in obj)
    return False


def _plain(obj: Any, depth: int = 0) -> Any:
    """A non-tensor value as plain Python (stand-ins become readable strings)."""
    if depth > _MAX_DEPTH:
        raise _BadPickle(f"a value is nested more than {_MAX_DEPTH} levels deep (or is cyclic)")
    if isinstance(obj, _Marker):
        return obj.qualname
    if isinstance(obj, _Call):
        return obj.qualname
    if isinstance(obj, _StorageRec):
        return f"<{obj.type_name} {obj.key}>"
    if isinstance(obj, dict):
        return {k if isinstance(k, (str, int, float, bool)) else str(k): _plain(v, depth + 1) for k, v in obj.items()}
    if type(obj) in (list, tuple, set, frozenset):
        return type(obj)(_plain(v, depth + 1) for v in obj)
    if obj is None or isinstance(obj, (str, int, float, complex, bytes, bytearray)):
        return obj
    return repr(obj)


def _flatten(obj: Any, prefix: str, tensors: list[tuple[str, _TensorRec]], values: dict[str, Any],
             depth: int = 0) -> None:
    """Tensors of a (possibly nested) state dict with dotted names; other leaves into ``values``."""
    if isinstance(obj, _TensorRec):
        tensors.append((prefix or "tensor", obj))
        return
    if (isinstance(obj, dict) or type(obj) in (list, tuple)) and _has_tensor(obj, depth):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors, values, depth + 1)
        return
    values[prefix or "value"] = _plain(obj, depth)


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


def read_bin(path: Path) -> tuple[list[TensorInfo], dict]:
    """Read a ``torch.save`` zip checkpoint's tensor directory without running any of its pickle code.

    Returns the tensors in state-dict order (nested dicts flattened to dotted names) and extra info:
    ``pickle_protocol``, ``archive_prefix``, ``archive_version``, ``byteorder`` and, when present,
    ``values`` (non-tensor entries as plain Python values).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("no such file", path=path)
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        _sniff(path, f.read(512))
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error, IndexError, KeyError,
                NotImplementedError, OverflowError) as exc:
            raise FormatError(f"the zip archive is truncated or damaged ({exc})", path=path,
                              hint="Download or save the checkpoint again.") from None
        with zf:
            names = zf.namelist()
            prefix = _find_prefix(names, path)
            if f"{prefix}/constants.pkl" in names:
                raise UnsupportedError("this is a TorchScript archive (torch.jit.save), not a state dict", path=path,
                                       hint="Save the model's state_dict() with torch.save instead.")
            extra: dict[str, Any] = {"archive_prefix": prefix}
            byteorder = b"little"
            if f"{prefix}/byteorder" in names:
                byteorder = _read_small(zf, _member(zf, f"{prefix}/byteorder", path, min(file_size, 16)), path)
                if byteorder == b"big":
                    raise UnsupportedError("big-endian checkpoints are not supported", path=path,
                                           hint="Re-save it on a little-endian machine.")
                if byteorder != b"little":
                    raise FormatError(f"unknown byte order {byteorder[:16]!r}", path=path)
            extra["byteorder"] = byteorder.decode()
            if f"{prefix}/version" in names:
                raw = _read_small(zf, _member(zf, f"{prefix}/version", path, min(file_size, 64)), path)
                extra["archive_version"] = int(raw) if raw.strip().isdigit() else raw.decode("latin-1").strip()

            pkl_name = f"{prefix}/data.pkl"
            data = _read_small(zf, _member(zf, pkl_name, path, file_size), path)
            extra["pickle_protocol"] = _prescan(data, path, pkl_name)
            try:
                obj = _RestrictedUnpickler(data, path, pkl_name).load()
                records: list[tuple[str, _TensorRec]] = []
                values: dict[str, Any] = {}
                _flatten(obj, "", records, values)
            except WorkbenchError as exc:
                if exc.path is None:  # raised by a stand-in, which does not know the file
                    raise type(exc)(exc.message, path=path, hint=exc.hint) from None
                raise
            except _BadPickle as exc:
                raise FormatError(f"{pkl_name} is not a valid state dict: {exc}", path=path) from None
            except RecursionError:
                raise FormatError(f"{pkl_name} is nested too deeply", path=path) from None
            except MemoryError:
                raise FormatError(f"{pkl_name} is too large to read", path=path) from None
            except Exception as exc:  # anything the unpickler raises on malformed input
                raise FormatError(f"{pkl_name} could not be unpickled ({exc.__class__.__name__}: {exc}); "
                                  "the file is truncated or damaged", path=path) from None
            if values:
                extra["values"] = values
            tensors = _tensor_infos(records, zf, f, prefix, path, file_size)
    return tensors, extra


def _tensor_infos(records: list[tuple[str, _TensorRec]], zf: zipfile.ZipFile, f, prefix: str, path: Path,
                  file_size: int) -> list[TensorInfo]:
    names = set(zf.namelist())
    storages: dict[str, tuple[_StorageRec, int, int]] = {}  # key -> (record, data offset, member size)
    out: list[TensorInfo] = []
    seen: set[str] = set()
    for name, rec in records:
        if name in seen:
            raise FormatError(f"tensor name {name} appears twice after flattening nested dicts", path=path)
        seen.add(name)
        st = rec.storage
        if st.key not in storages:
            member = f"{prefix}/data/{st.key}"
            if member not in names:
                raise FormatError(f"storage member {member} (used by tensor {name}) is missing", path=path,
                                  hint="The checkpoint is incomplete or damaged; download or save it again.")
            info = _member(zf, member, path, file_size)
            storages[st.key] = (st, _data_offset(f, info, path, file_size), info.file_size)
        first, start, member_size = storages[st.key]
        if (first.dtype, first.numel) != (st.dtype, st.numel):
            raise FormatError(f"storage {st.key} is referenced as {first.type_name}[{first.numel}] and as "
                              f"{st.type_name}[{st.numel}]", path=path)
        storage_bytes = st.numel * PLAIN_DTYPES[st.dtype].itemsize
        if storage_bytes > member_size:
            raise FormatError(f"storage {prefix}/data/{st.key} holds {member_size} bytes but {st.type_name} of "
                              f"{st.numel} elements needs {storage_bytes}", path=path,
                              hint="The file is truncated or damaged.")
        itemsize = PLAIN_DTYPES[rec.dtype].itemsize
        numel = math.prod(rec.shape)
        nbytes = numel * itemsize
        if nbytes > file_size:
            raise FormatError(f"tensor {name} {rec.shape} claims {nbytes} bytes, more than the whole file",
                              path=path)
        span = 0 if numel == 0 else 1 + sum((n - 1) * s for n, s in zip(rec.shape, rec.stride))
        begin = rec.storage_offset * itemsize
        end = begin + span * itemsize
        if end > min(storage_bytes, member_size) or begin > member_size:
            raise FormatError(f"tensor {name} (bytes {begin}..{end}) lies outside its storage "
                              f"{prefix}/data/{st.key} ({min(storage_bytes, member_size)} bytes)", path=path,
                              hint="The file is damaged.")
        strides = None if _is_contiguous(rec.shape, rec.stride) else rec.stride
        out.append(TensorInfo(name, rec.shape, rec.dtype, nbytes, path, start + begin, strides))
    return out


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
