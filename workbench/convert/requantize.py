"""GGUF -> GGUF requantization (what llama-quantize does), with tensor types from a :class:`~workbench.plan.Plan`.

The metadata is copied from the source (every key, the tokenizer included) except ``general.file_type``
(the preset's file type, or the closest one for a plan with rules/overrides),
``general.quantization_version`` and the ``split.*`` keys (rewritten for the output's own split).  A
tensor whose planned type is its source type is copied byte for byte, as llama-quantize does; the others
are decoded (our kernels for the ggml types they implement) and quantized by :mod:`workbench.kernels`
a row block at a time, so only one block of one tensor is in memory.

The GGUF is written by :func:`~workbench.convert.gguf_stream.write_gguf_stream` (re-exported here with
:class:`StreamTensor` for the LoRA jobs).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generator, Iterator

import gguf
import numpy as np
from gguf import GGUFValueType, LlamaFileType

from .. import dtypes, kernels
from ..errors import UnsupportedError, WorkbenchError
from ..model import Model, TensorInfo
from ..naming import GGUFName, name_for_model
from ..plan import PRESETS, Plan, allows_quantization, ggml_n_dims, loader_order
from ..progress import Progress
from .gguf_stream import RawValue, StreamTensor, new_writer, target_path, write_gguf_stream
from .metadata_edit import TypedValue
from ..optimize.imatrix import check_required, tensor_weights


# the file type that names a plan whose weights are mostly of one ggml type
_TYPE_FILE_TYPES = {
    "F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q4_1": LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": LlamaFileType.MOSTLY_Q5_0, "Q5_1": LlamaFileType.MOSTLY_Q5_1, "Q2_K": LlamaFileType.MOSTLY_Q2_K,
    "Q3_K": LlamaFileType.MOSTLY_Q3_K_M, "Q4_K": LlamaFileType.MOSTLY_Q4_K_M, "Q5_K": LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": LlamaFileType.MOSTLY_Q6_K, "IQ4_NL": LlamaFileType.MOSTLY_IQ4_NL, "IQ4_XS": LlamaFileType.MOSTLY_IQ4_XS,
}


# -- tensor data in row blocks ---------------------------------------------------------------------

CHUNK_ELEMENTS = 1 << 22  # source values decoded per step, as hf_to_gguf's (own copy: no import of the HF pipeline)


def _rows_cols(info: TensorInfo) -> tuple[int, int]:
    cols = info.shape[-1] if info.shape else 1
    return info.n_params // max(cols, 1), cols


def decode_rows(raw_rows: np.ndarray, dtype: str, rows: int, cols: int) -> np.ndarray:
    """Rows of stored data as float32 [rows, cols]: our kernels for the ggml types they implement."""
    if dtypes.is_quantized(dtype) and dtype in kernels.Kernel.registry:
        return kernels.dequantize(np.ascontiguousarray(raw_rows).reshape(rows, -1), dtype, cols)
    return dtypes.decode(np.asarray(raw_rows), dtype, (rows, cols))


def float_rows(model: Model, info: TensorInfo, perm: np.ndarray | None = None,
               chunk_elements: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, float32 rows) of a tensor in blocks of ~``chunk_elements`` values.

    ``perm``: the source row of each output row (the llama Q/K permutation), or None."""
    rows, cols = _rows_cols(info)
    raw = model.tensor(info.name).raw()
    raw2 = raw.reshape(rows, -1) if raw.ndim != 2 else raw
    step = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(cols, 1))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        part = raw2[perm[a:b]] if perm is not None else raw2[a:b]
        yield a, b, decode_rows(part, info.dtype, b - a, cols)


def raw_chunks(model: Model, info: TensorInfo) -> Iterator[tuple[np.ndarray, int]]:
    """The stored bytes of a tensor in row blocks (a byte-for-byte copy)."""
    rows, cols = _rows_cols(info)
    raw = model.tensor(info.name).raw()
    raw2 = raw.reshape(rows, -1) if raw.ndim != 2 else raw
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        yield np.ascontiguousarray(raw2[a:b]), (b - a) * cols


def quantized_chunks(model: Model, info: TensorInfo, qtype: str, *, name: str | None = None,
                     imatrix: np.ndarray | None = None) -> Iterator[tuple[object, int]]:
    """A tensor decoded and quantized to ``qtype`` in row blocks: (a handle giving the bytes, values) per
    block (see :func:`~.gguf_stream.write_gguf_stream`); each block is decoded while earlier ones are quantized."""
    from ..optimize.imatrix import submit_rows

    label = name or info.name
    w = None if imatrix is None else np.asarray(imatrix, dtype=np.float32).reshape(-1, info.shape[-1])
    rows_per_expert = _rows_cols(info)[0] // (w.shape[0] if w is not None else 1)
    for a, _b, x in float_rows(model, info):  # per expert's weights for a 3-D MoE tensor
        yield from submit_rows(x, qtype, w, name=label, row0=a, rows_per_expert=rows_per_expert)


def check_writable_type(qtype: str, tensor: str, path=None) -> None:
    if qtype not in kernels.Kernel.registry:
        raise UnsupportedError(f"tensor {tensor} would have to be written as {qtype}, which cannot be quantized here",
                               path=path, hint="Choose a plan that gives this tensor a type our kernels write "
                                               "(F32, F16, BF16, Q8_0, Q4_K, ...).")


# -- metadata ------------------------------------------------------------------------------------------

_DECODED_KEYS = ("general.architecture", "general.alignment")  # the values copied_metadata looks at


def raw_metadata(path: Path, decoded: dict | None = None, model: Model | None = None
                 ) -> "OrderedDict[str, RawValue]":
    """Every key of a GGUF header with its value's bytes (type + payload), in file order.  ``decoded``
    receives the parsed values of the keys of ``_DECODED_KEYS`` the file has.

    With ``model`` (opened from ``path``, which has not changed since), the bytes are cut where its reading
    found them; else one pass over the header, in which string arrays (a tokenizer's vocabulary and merges,
    ~100k strings) are stepped over by their lengths, not decoded."""
    import mmap

    from ..formats.gguf import _Cursor, _read_value, _value_type

    with open(path, "rb") as f:
        stamp = os.fstat(f.fileno())
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        cur = _Cursor(buf, Path(path))
        out: OrderedDict[str, RawValue] = OrderedDict()
        if (model is not None and model.kv_spans is not None and model.files and Path(path) == model.files[0]
                and model.kv_stamp == (stamp.st_size, stamp.st_mtime_ns)):
            for key, (start, stop) in model.kv_spans.items():
                out[key] = RawValue(buf[start:stop])
                if decoded is not None and key in _DECODED_KEYS:
                    cur.pos = start
                    decoded[key] = _read_value(cur, _value_type(cur.u32(key), cur, key), key)[0]
            return out
        cur.pos = 8  # magic, version (read_header has validated both)
        cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        for _ in range(n_kv):
            key = cur.string("metadata key")
            start = cur.pos
            vtype = _value_type(cur.u32(f"type of {key!r}"), cur, key)
            if vtype == GGUFValueType.ARRAY and key not in _DECODED_KEYS:
                _skip_array(cur, key)
            else:
                value, _ = _read_value(cur, vtype, key)
                if decoded is not None and key in _DECODED_KEYS:
                    decoded[key] = value
            out[key] = RawValue(buf[start:cur.pos])
        return out
    finally:
        buf.close()


def _skip_array(cur, key: str) -> None:
    """Step over an array value (its type word read): string arrays by their lengths, the rest parsed."""
    import struct

    from ..formats.gguf import _read_value

    start = cur.pos
    item_type = cur.u32(f"array type of {key!r}")
    if item_type != GGUFValueType.STRING:
        cur.pos = start
        _read_value(cur, GGUFValueType.ARRAY, key)
        return
    count = cur.u64(f"array length of {key!r}")
    cur.need(count * 8, f"array {key!r} ({count} strings)")
    buf, pos, size = cur.buf, cur.pos, cur.size
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(count):
        if pos + 8 > size:
            break
        pos += 8 + unpack(buf, pos)[0]
    else:
        if pos <= size:
            cur.pos = pos
            return
    cur.need(size - cur.pos + 1, f"string in array {key!r}")  # raises: the strings run past the end of the file


def copied_metadata(model: Model, set_values: dict[str, TypedValue] | None = None, *, move_to_end: bool = False
                    ) -> tuple["OrderedDict[str, RawValue | TypedValue]", int]:
    """The GGUF source's key/values, byte for byte, without ``split.*``; ``set_values`` replace keys in place
    or are added at the end (with ``move_to_end``, a key that exists is removed and added at the end, in
    ``set_values``' order, as gguf.cpp's ``gguf_set_val_*`` does).  Also returns the source's data alignment."""
    decoded: dict = {}
    kv: OrderedDict[str, RawValue | TypedValue] = OrderedDict(
        (k, v) for k, v in raw_metadata(model.files[0], decoded, model).items() if not k.startswith("split."))
    if not isinstance(decoded.get("general.architecture"), str):
        raise WorkbenchError("the GGUF has no general.architecture string", path=model.files[0])
    alignment = decoded.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise WorkbenchError(f"general.alignment {alignment!r} is not a power of two", path=model.files[0])
    for key, value in (set_values or {}).items():
        if move_to_end:
            kv.pop(key, None)
        kv[key] = value
    return kv, alignment


def plan_file_type(plan: Plan) -> LlamaFileType:
    """``general.file_type`` for a plan: the preset's, or for a plan with rules or overrides the file type
    of the type that holds most of its quantizable weights."""
    ftype, default = PRESETS[plan.preset]
    if not plan.rules and not plan.overrides:
        return ftype
    weight: dict[str, int] = {}
    for e in plan.entries:
        if allows_quantization(e.gguf_name, e.shape):
            weight[e.type] = weight.get(e.type, 0) + e.n_params
    if not weight:
        return ftype
    dominant = max(weight, key=lambda t: (weight[t], t == default))
    return ftype if dominant == default else _TYPE_FILE_TYPES.get(dominant, ftype)


def file_type_values(ftype: LlamaFileType) -> dict[str, TypedValue]:
    return {"general.file_type": TypedValue(GGUFValueType.UINT32, int(ftype)),
            "general.quantization_version": TypedValue(GGUFValueType.UINT32, gguf.GGML_QUANT_VERSION)}


def llama_quantize_keys(ftype: LlamaFileType, imatrix_meta: dict | None = None) -> "OrderedDict[str, TypedValue]":
    """The keys llama-quantize sets on the copied metadata, in its order (``llama_model_quantize_impl``:
    ``general.quantization_version`` then ``general.file_type``, then the ``quantize.imatrix.*`` keys
    llama-quantize's ``--imatrix`` adds as overrides); each moves to the end of the header."""
    out: OrderedDict[str, TypedValue] = OrderedDict()
    out["general.quantization_version"] = TypedValue(GGUFValueType.UINT32, gguf.GGML_QUANT_VERSION)
    out["general.file_type"] = TypedValue(GGUFValueType.UINT32, int(ftype))
    if imatrix_meta is not None:
        def cut(text) -> str:  # strncpy into a 128-byte buffer
            return str(text).encode("utf-8")[:127].decode("utf-8", errors="ignore")

        out["quantize.imatrix.file"] = TypedValue(GGUFValueType.STRING, cut(imatrix_meta.get("file", "")))
        datasets = imatrix_meta.get("datasets") or []
        if datasets:
            out["quantize.imatrix.dataset"] = TypedValue(GGUFValueType.STRING, cut(datasets[0]))
        out["quantize.imatrix.entries_count"] = TypedValue(GGUFValueType.UINT32, abs(int(imatrix_meta["entries"])))
        if int(imatrix_meta.get("chunks") or 0) > 0:
            out["quantize.imatrix.chunks_count"] = TypedValue(GGUFValueType.UINT32, int(imatrix_meta["chunks"]))
    return out


def ggml_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape gguf.cpp writes (``ggml_n_dims``): outer dimensions of size 1 dropped."""
    return tuple(shape)[len(shape) - ggml_n_dims(shape):] if shape else tuple(shape)


def encoding_of(ftype: LlamaFileType) -> str:
    return ftype.name.partition("_")[2]  # MOSTLY_Q4_K_M -> Q4_K_M, as llama.cpp names files


def conventional_name(model: Model, encoding: str | None, kind: str | None = None) -> GGUFName:
    meta = {k: model.meta(k) for k in ("general.name", "general.basename", "general.size_label",
                                        "general.finetune", "general.version")}
    meta = {k: v for k, v in meta.items() if isinstance(v, str) and v}
    if "general.name" not in meta and "general.basename" not in meta:
        stem = model.files[0].name.removesuffix(".gguf")
        meta["general.name"] = stem.split("-0000")[0]
    return name_for_model(meta, encoding, model.n_params, kind)


# -- the job ---------------------------------------------------------------------------------------------

def _source_and_plan(src, plan_or_preset, imatrix) -> tuple[Model, Plan]:
    from .. import open_model

    if isinstance(plan_or_preset, Plan):
        plan = plan_or_preset
        model = plan.model
        if src is not None and not isinstance(src, Model):
            if Path(src).expanduser().resolve() not in {Path(f).resolve() for f in model.files}:
                raise WorkbenchError("the plan was made for another model", path=src,
                                     hint=f"Make the plan on {model.path} or requantize the model the plan was made for.")
    else:
        model = src if isinstance(src, Model) else open_model(src)
        preset = str(plan_or_preset).upper()
        if preset not in PRESETS:
            raise WorkbenchError(f"unknown preset {plan_or_preset!r}", hint="Choose one of: " + ", ".join(PRESETS))
        plan = Plan(model, preset, has_imatrix=imatrix is not None)
    if model.format != "gguf":
        raise UnsupportedError(f"a {model.format} model is not a GGUF file", path=model.path,
                               hint="Requantize a .gguf model; convert a Hugging Face folder with convert_hf_to_gguf.")
    if str(model.meta("general.type", "model")) == "adapter":
        raise UnsupportedError("this GGUF is a LoRA adapter, not a model", path=model.path,
                               hint="Convert the PEFT adapter again with `workbench lora-to-gguf --type ...`.")
    return model, plan


def requantize_gguf(src, out_dir_or_file, plan_or_preset: Plan | str = "Q8_0", *,
                    name: str | GGUFName | None = None, split_max_size: int = 0, split_max_tensors: int = 0,
                    overwrite: bool = False, cancel: Callable[[], bool] | None = None,
                    imatrix: dict[str, np.ndarray] | None = None,
                    imatrix_meta: dict | None = None) -> Generator[Progress, None, list[Path]]:
    """Requantize a GGUF (a file or any part of a split set) into a new GGUF; returns the written paths.

    ``plan_or_preset``: a preset name (``"Q8_0"``, ``"Q4_K_M"``...) or a :class:`Plan` made on the source.
    ``out_dir_or_file``: a ``.gguf`` path, or a folder in which the file gets ``name`` or the GGUF naming
    convention's name.  ``split_max_size`` (bytes) / ``split_max_tensors`` split the output.  ``imatrix``:
    an :class:`~workbench.optimize.imatrix.Imatrix` or importance per tensor name (used as given); ``imatrix_meta`` (``file``, ``datasets``,
    ``entries``, ``chunks``) adds the ``quantize.imatrix.*`` keys llama-quantize writes.  The last Progress
    message says how many tensors were requantized and copied, and warns when the source was already quantized.

    The file is the one llama-quantize writes (for a source without ``general.alignment``): the source's keys in
    order with ``general.quantization_version`` and ``general.file_type`` moved to the end, and the tensors
    in llama-quantize's order (:func:`~workbench.plan.loader_order`), written with ggml's number of dimensions.
    """
    model, plan = _source_and_plan(src, plan_or_preset, imatrix)
    check_required(plan, imatrix)
    ftype = plan_file_type(plan)
    kv, alignment = copied_metadata(model, llama_quantize_keys(ftype, imatrix_meta), move_to_end=True)
    w = new_writer(model.meta("general.architecture"), kv, alignment=alignment, split_max_size=split_max_size, split_max_tensors=split_max_tensors)
    tensors: list[StreamTensor] = []
    requantized_from: set[str] = set()
    requantized_to: set[str] = set()
    n_copied = 0
    for info in sorted(model.tensors, key=lambda t: loader_order(t.name)):  # llama-quantize's order
        qtype = plan.entry(info.name).type
        release = (lambda n=info.name: model.release(n))
        shape = ggml_shape(info.shape)
        if qtype == info.dtype:
            n_copied += 1
            tensors.append(StreamTensor(info.name, shape, qtype, lambda i=info: raw_chunks(model, i),
                                        f"{info.name} (copied, {qtype})", release))
            continue
        check_writable_type(qtype, info.name, model.path)
        if dtypes.is_quantized(info.dtype) and dtypes.is_quantized(qtype):  # dequantizing adds no second error
            requantized_from.add(info.dtype)
        requantized_to.add(qtype)
        im = tensor_weights(imatrix, info.name, info.shape, qtype)  # as llama-quantize looks it up
        tensors.append(StreamTensor(
            info.name, shape, qtype,
            lambda i=info, q=qtype, m=im: quantized_chunks(model, i, q, imatrix=m), done=release))
    encoding = encoding_of(ftype)
    target = target_path(out_dir_or_file, name, lambda: conventional_name(model, encoding))
    kernels.start_workers(requantized_to)  # K/IQ types: the worker processes start while the header is written
    paths = yield from write_gguf_stream(w, target, tensors, sources=model.files, overwrite=overwrite, cancel=cancel)
    total = sum(t.n_params for t in tensors) or 1
    message = (f"Requantized to {encoding}: {len(tensors) - n_copied} tensors converted, {n_copied} copied "
               f"unchanged")
    warnings = []
    if requantized_from:
        warnings.append(f"the source is already quantized ({', '.join(sorted(requantized_from))}), so the "
                        f"result carries both quantization errors; requantize from an F32/F16/BF16 model when you can")
        message += "; warning: " + warnings[0]
    yield Progress(total, total, message, warnings=tuple(warnings))
    return paths
