"""Edit a GGUF file's metadata: add, change or remove keys, copying every tensor's bytes unchanged.

The new file is written with gguf-py's ``GGUFWriter`` (header, key/values, tensor infos, then the
tensors one at a time, raw: no requantization, same alignment) beside the target and renamed into
place.  A changed key keeps its GGUF type unless a type is given; a new key's type is inferred from
the Python value (str, int, float, bool, list) or given explicitly (``TypedValue`` / ``"uint32:3"``).
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Mapping

import numpy as np
from gguf import GGMLQuantizationType, GGUFEndian, GGUFValueType, GGUFWriter

from ..errors import Cancelled, UnsupportedError, WorkbenchError
from ..formats import gguf as gguf_fmt
from ..fsutil import atomic_write_path
from ..progress import Progress


@dataclass(frozen=True)
class TypedValue:
    """A metadata value with an explicit GGUF type (``sub_type``: the element type of an array)."""

    vtype: GGUFValueType
    value: Any
    sub_type: GGUFValueType | None = None


_INT_RANGES = {
    GGUFValueType.UINT8: (0, 2**8 - 1), GGUFValueType.INT8: (-2**7, 2**7 - 1),
    GGUFValueType.UINT16: (0, 2**16 - 1), GGUFValueType.INT16: (-2**15, 2**15 - 1),
    GGUFValueType.UINT32: (0, 2**32 - 1), GGUFValueType.INT32: (-2**31, 2**31 - 1),
    GGUFValueType.UINT64: (0, 2**64 - 1), GGUFValueType.INT64: (-2**63, 2**63 - 1),
}
_FLOATS = (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64)
TYPE_NAMES: dict[str, GGUFValueType] = {
    **{t.name.lower(): t for t in (*_INT_RANGES, *_FLOATS, GGUFValueType.BOOL, GGUFValueType.STRING)},
    "int": GGUFValueType.INT32, "uint": GGUFValueType.UINT32, "float": GGUFValueType.FLOAT32,
    "double": GGUFValueType.FLOAT64, "str": GGUFValueType.STRING,
}
_PROTECTED = ("general.architecture",)  # llama.cpp cannot load a GGUF without it
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


# -- parsing CLI assignments -------------------------------------------------------------------

def parse_type(name: str) -> tuple[GGUFValueType, GGUFValueType | None]:
    """``"uint32"`` -> (UINT32, None); ``"array[string]"`` -> (ARRAY, STRING)."""
    text = name.strip().lower()
    m = re.fullmatch(r"(?:array|list)\[(\w+)\]", text)
    if m:
        if m.group(1) not in TYPE_NAMES:
            raise WorkbenchError(f"unknown array element type {m.group(1)!r}",
                                 hint="Types: " + ", ".join(TYPE_NAMES))
        return GGUFValueType.ARRAY, TYPE_NAMES[m.group(1)]
    if text not in TYPE_NAMES:
        raise WorkbenchError(f"unknown metadata type {name!r}", hint="Types: " + ", ".join(TYPE_NAMES)
                             + ", array[TYPE]")
    return TYPE_NAMES[text], None


_TYPE_PREFIX = re.compile(r"^(?P<type>(?:array|list)\[\w+\]|" + "|".join(sorted(TYPE_NAMES, key=len, reverse=True))
                          + r"):(?P<rest>.*)$", re.S | re.I)


def parse_assignment(text: str, base_dir: str | os.PathLike | None = None) -> tuple[str, Any]:
    """Parse a CLI ``KEY=VALUE`` into (key, value).

    ``VALUE`` is text (a changed key is converted to the key's own type), ``@path`` reads the text of a
    file (``@@`` for a literal leading ``@``), and ``TYPE:VALUE`` gives the type explicitly
    (``int:3``, ``uint32:8192``, ``float32:1e-5``, ``bool:true``, ``str:@not-a-file``,
    ``array[string]:["a","b"]`` with a JSON list) and returns a :class:`TypedValue`.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise WorkbenchError(f"{text!r} is not KEY=VALUE", hint='Example: general.name="My Model"')
    m = _TYPE_PREFIX.match(value)
    if m:
        vtype, sub_type = parse_type(m.group("type"))
        rest = m.group("rest")
        if vtype == GGUFValueType.ARRAY:
            try:
                items = json.loads(rest)
            except json.JSONDecodeError as exc:
                raise WorkbenchError(f"{key}: {rest!r} is not a JSON list ({exc.msg})",
                                     hint='Example: general.tags=array[string]:["chat","en"]') from None
            return key, TypedValue(vtype, _coerce(key, items, vtype, sub_type), sub_type)
        return key, TypedValue(vtype, _coerce(key, rest, vtype, None))
    if value.startswith("@@"):
        return key, value[1:]
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        try:
            return key, path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise WorkbenchError(f"{key}: the file to read the value from does not exist", path=path,
                                 hint="Use @@ for a value that starts with @.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkbenchError(f"{key}: the value file cannot be read as UTF-8 text: {exc}", path=path) from None
    return key, value


# -- values and types ---------------------------------------------------------------------------

def _type_label(vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> str:
    if vtype == GGUFValueType.ARRAY:
        return f"array[{sub_type.name.lower()}]" if sub_type is not None else "array"
    return vtype.name.lower()


def _coerce(key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None) -> Any:
    """``value`` as a Python value of GGUF type ``vtype``; raises naming the key if it does not fit."""
    label = _type_label(vtype, sub_type)

    def bad(why: str = "") -> WorkbenchError:
        return WorkbenchError(f"{key}: {value!r} is not a valid {label}{why}",
                              hint=f"Give a {label} value, or an explicit type such as int:3 or str:text.")

    if vtype == GGUFValueType.STRING:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if not isinstance(value, str):
            raise bad()
        return value
    if vtype == GGUFValueType.BOOL:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if vtype in _INT_RANGES:
        if isinstance(value, (bool, np.bool_)):
            raise bad()
        if isinstance(value, str):
            try:
                value_i = int(value.strip(), 0) if not re.fullmatch(r"[+-]?0\d+", value.strip()) else int(value)
            except ValueError:
                raise bad() from None
        elif isinstance(value, (int, np.integer)):
            value_i = int(value)
        elif isinstance(value, (float, np.floating)) and float(value).is_integer():
            value_i = int(value)
        else:
            raise bad()
        lo, hi = _INT_RANGES[vtype]
        if not lo <= value_i <= hi:
            raise bad(f" (range {lo}..{hi})")
        return value_i
    if vtype in _FLOATS:
        if isinstance(value, (bool, np.bool_)):
            raise bad()
        try:
            f = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise bad() from None
        if vtype == GGUFValueType.FLOAT32 and math.isfinite(f) and abs(f) > float(np.finfo(np.float32).max):
            raise bad(" (too large for float32)")
        return f
    if vtype == GGUFValueType.ARRAY:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad(" (give a JSON list)") from None
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise bad()
        if sub_type is None:
            sub_type = _infer_type(key, list(value))[0] if value else GGUFValueType.STRING
        if sub_type == GGUFValueType.ARRAY:
            return [list(v) if isinstance(v, (list, tuple, np.ndarray)) else v for v in value]
        return [_coerce(f"{key}[{i}]", v, sub_type, None) for i, v in enumerate(value)]
    raise UnsupportedError(f"{key}: metadata type {vtype!r} is not supported")


def _infer_type(key: str, value: Any) -> tuple[GGUFValueType, GGUFValueType | None]:
    """The GGUF type of a new key's Python value (as gguf-py's ``GGUFValueType.get_type``, widened for big ints)."""
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL, None
    if isinstance(value, (int, np.integer)):
        v = int(value)
        for t in (GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.UINT64):
            lo, hi = _INT_RANGES[t]
            if lo <= v <= hi:
                return t, None
        raise WorkbenchError(f"{key}: {v} does not fit in a 64-bit integer")
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32, None
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING, None
    if isinstance(value, np.ndarray):
        by_kind = {"b": GGUFValueType.BOOL,
                   "f": GGUFValueType.FLOAT32 if value.dtype.itemsize <= 4 else GGUFValueType.FLOAT64}
        if value.dtype.kind in "iu":
            name = f"{'u' if value.dtype.kind == 'u' else ''}int{value.dtype.itemsize * 8}"
            return GGUFValueType.ARRAY, TYPE_NAMES[name]
        if value.dtype.kind in by_kind:
            return GGUFValueType.ARRAY, by_kind[value.dtype.kind]
        return GGUFValueType.ARRAY, GGUFValueType.STRING
    if isinstance(value, (list, tuple)):
        if not value:
            raise WorkbenchError(f"{key}: the type of an empty list cannot be inferred",
                                 hint="Give the type explicitly, e.g. array[string]:[]")
        types = {_infer_type(key, v) for v in value}
        if all(t[0] in (GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.UINT64) for t in types):
            widest = max((t[0] for t in types), key=[GGUFValueType.INT32, GGUFValueType.INT64,
                                                     GGUFValueType.UINT64].index)
            return GGUFValueType.ARRAY, widest
        if all(t[0] in (GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.FLOAT32) for t in types):
            return GGUFValueType.ARRAY, GGUFValueType.FLOAT32 if len(types) > 1 else next(iter(types))[0]
        if len(types) == 1:
            t = next(iter(types))
            return GGUFValueType.ARRAY, t[0]
        raise WorkbenchError(f"{key}: a GGUF array holds one type, but the list mixes "
                             + ", ".join(sorted(_type_label(*t) for t in types)))
    raise WorkbenchError(f"{key}: values of Python type {type(value).__name__} cannot be stored in GGUF metadata")


def _resolve(key: str, value: Any, existing: gguf_fmt.GGUFField | None) -> TypedValue:
    if isinstance(value, TypedValue):
        if value.vtype == GGUFValueType.ARRAY and value.sub_type is None:
            raise WorkbenchError(f"{key}: an explicit array type needs its element type, e.g. array[string]")
        return TypedValue(value.vtype, _coerce(key, value.value, value.vtype, value.sub_type), value.sub_type)
    if existing is not None:
        return TypedValue(existing.vtype, _coerce(key, value, existing.vtype, existing.item_type), existing.item_type)
    vtype, sub_type = _infer_type(key, value)
    return TypedValue(vtype, _coerce(key, value, vtype, sub_type), sub_type)


def _field_value(field: gguf_fmt.GGUFField) -> TypedValue:
    value = field.value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, list) and field.item_type == GGUFValueType.ARRAY:
        value = [v.tolist() if isinstance(v, np.ndarray) else v for v in value]
    return TypedValue(field.vtype, value, field.item_type)


def _raw_strings(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    """Exact bytes of string values our reader decoded lossily (invalid UTF-8), via gguf-py's reader."""
    from gguf import GGUFReader

    reader = GGUFReader(path, "r")
    out: dict[str, Any] = {}
    for key in keys:
        f = reader.get_field(key)
        if f is None:
            continue
        parts = [bytes(f.parts[i]) for i in f.data]
        out[key] = parts[0] if f.types == [GGUFValueType.STRING] else parts
    return out


def _lossy(value: Any) -> bool:
    if isinstance(value, str):
        return "\ufffd" in value
    if isinstance(value, list):
        return any(isinstance(v, str) and "\ufffd" in v for v in value)
    return False


_ITEM_DTYPES = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
                GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
                GGUFValueType.FLOAT32: "<f4", GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
                GGUFValueType.FLOAT64: "<f8"}
_LEN = struct.Struct("<Q")
_FAST_MIN = 64  # items from which an array is packed in one go


def _pack_items(val, sub_type: GGUFValueType | None):
    """(item type, the items' bytes) of a long array of one plain type (str, int or float, subclasses such as
    IntEnum included), exactly as gguf-py's per-item loop packs them (little-endian); None when this shortcut
    does not apply (gguf-py then does it, and raises its own errors)."""
    kinds = tuple(set(map(type, val)))
    samples = {type(val[0]): val[0]} if len(kinds) == 1 else {k: next(v for v in val if type(v) is k) for k in kinds}
    if any(issubclass(k, bool) for k in kinds):
        return None
    if sub_type is None:
        try:
            types = {GGUFValueType.get_type(v) for v in samples.values()}
        except ValueError:
            return None
        if len(types) != 1:
            return None
        sub_type = types.pop()
    if sub_type == GGUFValueType.STRING:
        if not all(issubclass(k, (str, bytes, bytearray)) for k in kinds):
            return None
        return sub_type, b"".join([_LEN.pack(len(e)) + e for e in
                                   (v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val)])
    dtype = _ITEM_DTYPES.get(sub_type)
    floating = sub_type in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64)
    if dtype is None or not all(issubclass(k, (int, float) if floating else int) for k in kinds):
        return None
    try:
        with np.errstate(over="ignore"):  # a float beyond float32 becomes inf, refused just below
            arr = np.asarray(val, dtype=dtype)
    except (OverflowError, ValueError, TypeError):
        return None
    if floating and not np.isfinite(arr).all():
        return None  # struct refuses what float32 cannot hold; inf and nan it packs as numpy does
    return sub_type, arr.tobytes()


class _Writer(GGUFWriter):
    """GGUFWriter that can also write empty arrays (valid GGUF; gguf-py refuses them), and packs long
    arrays (a vocabulary's tokens, scores, types, merges) in one go instead of item by item."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool,
                  sub_type: GGUFValueType | None = None) -> bytes:
        if vtype == GGUFValueType.ARRAY and len(val) == 0:
            head = self._pack("I", vtype) if add_vtype else b""
            item = sub_type if sub_type is not None else GGUFValueType.STRING
            return head + self._pack("I", item) + self._pack("Q", 0)
        if (vtype == GGUFValueType.ARRAY and isinstance(val, (list, tuple)) and len(val) >= _FAST_MIN
                and self.endianess == GGUFEndian.LITTLE):
            packed = _pack_items(val, sub_type)
            if packed is not None:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", packed[0]) + self._pack("Q", len(val)) + packed[1]
        return super()._pack_val(val, vtype, add_vtype, sub_type)


# -- the job ------------------------------------------------------------------------------------

def plan_metadata(fields: "OrderedDict[str, gguf_fmt.GGUFField]", set: Mapping[str, Any] | None = None,
                  remove: Iterable[str] = ()) -> "OrderedDict[str, TypedValue]":
    """The new key/values in order: kept and changed keys where they were, new keys at the end."""
    set = dict(set or {})
    remove = list(remove)
    for key in remove:
        if key not in fields:
            raise WorkbenchError(f"cannot remove {key!r}: the file has no such key")
        if key in _PROTECTED:
            raise WorkbenchError(f"{key} cannot be removed: GGUF readers need it")
    for key in set:
        if not isinstance(key, str) or not key or "=" in key:
            raise WorkbenchError(f"{key!r} is not a valid metadata key")
        if key in remove:
            raise WorkbenchError(f"{key} is both set and removed")
    for key in (*set, *remove):
        if key.startswith("split."):
            raise WorkbenchError(f"{key} describes how the file is split and cannot be edited")
    out: OrderedDict[str, TypedValue] = OrderedDict()
    for key, field in fields.items():
        if key in remove:
            continue
        out[key] = _resolve(key, set[key], field) if key in set else _field_value(field)
    for key, value in set.items():
        if key not in fields:
            out[key] = _resolve(key, value, None)
    alignment = out.get("general.alignment")
    if alignment is not None:
        a = alignment.value
        if alignment.vtype not in _INT_RANGES or not isinstance(a, int) or a <= 0 or a & (a - 1):
            raise WorkbenchError(f"general.alignment must be a power of two, not {a!r}")
    return out


def set_metadata(src_gguf, out_path, set: Mapping[str, Any] | None = None, remove: Iterable[str] = (), *,
                 overwrite: bool = False,
                 cancel: Callable[[], bool] | None = None) -> Generator[Progress, None, list[Path]]:
    """Write a copy of ``src_gguf`` to ``out_path`` with keys set (added or changed) and removed.

    Tensor data is copied byte for byte with the same alignment.  The source is never modified:
    ``out_path`` must be another file.  Returns ``[out_path]``.
    """
    src = Path(src_gguf).expanduser()
    out = Path(out_path).expanduser()
    if not src.is_file():
        raise WorkbenchError("no such GGUF file", path=src)
    if out.exists() and os.path.samefile(src, out) or out.resolve() == src.resolve():
        raise WorkbenchError("the output is the source file itself", path=out,
                             hint="Write the edited model to a new file; the source is never modified.")
    header = gguf_fmt.read_header(src)
    fields = header.fields
    if "split.count" in fields and int(fields["split.count"].value) > 1:
        raise UnsupportedError("editing the metadata of a split GGUF is not supported", path=src,
                               hint="Merge the parts first (llama-gguf-split --merge).")
    kv = plan_metadata(fields, set, remove)
    lossy = [k for k, v in kv.items() if k not in (set or {}) and v.vtype in (GGUFValueType.STRING, GGUFValueType.ARRAY)
             and _lossy(v.value)]
    if lossy:
        for key, raw in _raw_strings(src, lossy).items():
            kv[key] = TypedValue(kv[key].vtype, raw, kv[key].sub_type)
    arch = kv["general.architecture"].value if "general.architecture" in kv else None
    if not isinstance(arch, str):
        raise WorkbenchError("general.architecture must be a string", path=src)
    alignment = int(kv["general.alignment"].value) if "general.alignment" in kv else header.alignment

    tensors = header.tensors
    total = sum(t.nbytes for t in tensors) or 1
    done = 0
    yield Progress(0, total, f"Writing {out.name}")
    with atomic_write_path(out, overwrite=overwrite) as tmp:
        writer = _Writer(tmp, arch)
        try:
            writer.kv_data[0].clear()  # the constructor's general.architecture: re-added in the source's order
            for key, tv in kv.items():
                writer.add_key_value(key, tv.value, tv.vtype, tv.sub_type)
            writer.data_alignment = alignment
            for t in tensors:
                qtype = GGMLQuantizationType[t.dtype]
                rows_bytes = _byte_shape(t.shape, t.nbytes)
                writer.add_tensor_info(t.name, rows_bytes, np.dtype(np.uint8), t.nbytes, raw_dtype=qtype)
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            data = np.memmap(src, dtype=np.uint8, mode="r") if tensors else None
            for t in tensors:
                if cancel is not None and cancel():
                    raise Cancelled()
                writer.write_tensor_data(data[t.offset:t.offset + t.nbytes])
                done += t.nbytes
                yield Progress(done, total, f"Copied {t.name}")
            for f in writer.fout or ():
                f.flush()
        finally:
            writer.close()
    return [out]


def _byte_shape(shape: tuple[int, ...], nbytes: int) -> tuple[int, ...]:
    """The tensor as uint8 rows (what GGUFWriter expects for raw data of any ggml type)."""
    if not shape:
        return (nbytes,)
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return (*shape[:-1], nbytes // rows if rows else 0)
