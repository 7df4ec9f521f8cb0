"""Float32 weights for the inference engines, from any opened model, optionally through a quantization plan.

``load_weights(model, plan)`` reads every tensor of a Hugging Face folder or a GGUF file (any ggml type),
names it as Hugging Face does (GGUF names mapped back, llama Q/K rows un-permuted), and, when a plan is
given, quantizes each tensor to its planned type and dequantizes it again with our kernels: an engine
then computes with exactly the values a file of that level holds, without writing the file.

``load_weights(..., keep_quantized=True)`` keeps each matrix in the bytes of its level instead (a
:class:`StoredTensor`: a view of the mapped file when the planned type is the stored one, else quantized
once at load), so memory is bounded by the level's size, not by float32; the engine dequantizes them
layer by layer.  ``default_memory_budget()`` is the engines' cache budget when the user sets none.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np

from .. import dtypes, kernels
from ..archs import gguf_arch
from ..convert import gguf_to_hf
from ..errors import Cancelled, MissingFileError, UnsupportedError, WorkbenchError
from ..formats import hf as hf_fmt
from ..model import Model, TensorInfo
from ..plan import PRESETS, Plan
from ..progress import Progress
from .specs import SPECS, arch_name

ARCHS = tuple(dict.fromkeys(("llama", "qwen2", *SPECS, "bert", "t5")))  # decoders: every spec of infer/specs.py
# values quantized per kernel call: large enough for the kernels' worker processes to kick in, small
# enough to bound the temporaries (the output array is allocated once per tensor)
_SPAN = 1 << 24
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2")


class StoredTensor:
    """A tensor held in the bytes of its level: ``data`` is [rows, row_bytes] uint8 for ggml block types
    and planned types, or the stored elements (F32/F16/BF16...) for a source kept as stored; a view of the
    mapped file when the level stores the tensor as the source does (no copy).

    ``to_float32()`` dequantizes it with our kernels (values bit for bit those of the float32 load), then
    applies ``heads`` (llama Q/K rows un-permuted from GGUF's order); ``rows(ids)`` decodes only some rows
    (embedding lookups).  Nothing is cached: each call decodes again.
    """

    __slots__ = ("data", "qtype", "shape", "heads", "name")

    def __init__(self, data: np.ndarray, qtype: str, shape: tuple[int, ...], *, heads: int | None = None,
                 name: str = ""):
        self.data = data
        self.qtype = qtype  # ggml type name ("Q4_K", "F16"...): the type the bytes are in
        self.shape = tuple(int(d) for d in shape)
        self.heads = heads
        self.name = name

    def __repr__(self) -> str:
        return f"StoredTensor({self.name!r}, {self.qtype}, {self.shape}, {self.nbytes} bytes)"

    @property
    def nbytes(self) -> int:
        """Bytes held (mapped file pages for a view)."""
        return int(self.data.nbytes)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    def _rows2d(self) -> np.ndarray:
        return self.data.reshape(self.n_rows, -1)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        """Stored rows -> float32 [rows, cols]."""
        cols = self.shape[-1] if self.shape else 1
        if raw.dtype == np.uint8 and self.qtype in kernels.supported_types():
            return kernels.dequantize(raw, self.qtype, cols)
        if dtypes.is_quantized(self.qtype):
            out = np.empty((raw.shape[0], cols), np.float32)
            step = max(1, _SPAN // max(cols, 1))
            for a in range(0, raw.shape[0], step):
                part = raw[a:a + step]
                out[a:a + part.shape[0]] = dtypes.decode(part, self.qtype, (part.shape[0], cols))
            return out
        return dtypes.decode(raw, self.qtype, (raw.shape[0], cols))

    def to_float32(self) -> np.ndarray:
        """The whole tensor as float32 of ``shape`` (a read-only view of the mapped file for F32 kept as
        stored; copy it before changing it)."""
        if 0 in self.shape:
            return np.zeros(self.shape, np.float32)
        x = self._decode(self._rows2d()).reshape(self.shape)
        if self.heads:
            x = gguf_to_hf.unpermute(x, self.heads)
        return x

    def iter_row_blocks(self, max_elements: int = _SPAN):
        """(start, float32 [rows, cols]) blocks of whole rows in HF order, each at most ~``max_elements``
        values: a product with a matrix larger than the memory budget (the output head) without holding it."""
        rows = self.n_rows
        step = max(1, max_elements // max(self.shape[-1], 1))
        if self.heads:  # whole heads per block, so that un-permuting a block is the block of the whole
            per_head = rows // self.heads
            step = max(per_head, step // per_head * per_head)
        for a in range(0, rows, step):
            x = self._decode(self._rows2d()[a:a + step])
            yield a, (gguf_to_hf.unpermute(x, x.shape[0] // per_head) if self.heads else x)

    def rows(self, ids) -> np.ndarray:
        """float32 rows ``ids`` (HF row order) of a 2-D tensor: [len(ids), cols]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.heads:  # the GGUF row holding each HF row
            ids = gguf_to_hf.unpermute(np.arange(self.shape[0]), self.heads)[ids]
        return self._decode(self._rows2d()[ids])


def default_memory_budget(meminfo: str | Path = "/proc/meminfo") -> int:
    """The engines' weight cache budget when the user sets none: half the memory available now
    (``meminfo``'s MemAvailable; the physical memory elsewhere), at least 256 MiB; 4 GiB when unknown."""
    avail = None
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            avail = None
    if not avail:
        return 4 << 30
    return max(256 << 20, avail // 2)


@dataclass
class Weights:
    """Tensors under Hugging Face names, with the model's config.json: float32 arrays, or
    :class:`StoredTensor` (the bytes of the level) when loaded with ``keep_quantized``.  ``weights[name]``
    is always float32 (a StoredTensor is dequantized on each lookup, not cached)."""

    config: dict[str, Any]
    arch: str  # "llama" | "qwen2" | "bert" | "t5"
    tensors: dict[str, np.ndarray | StoredTensor]
    types: dict[str, str] = field(default_factory=dict)  # HF name -> the type its values went through
    source: Path | None = None
    plan: str | None = None  # a description of the plan applied ("Q4_K_M", "Q4_K_M + 2 rules"...), None: as stored
    # HF name -> the type a file of this level stores it in (the plan's type; as stored without a plan): the
    # type llama.cpp multiplies with, which decides how it rounds the activations (llama-cpu numerics)
    file_types: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes held: float32 arrays and the level's bytes of the stored tensors."""
        return sum(int(a.nbytes) for a in self.tensors.values())

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            a = self.tensors[name]
        except KeyError:
            raise WorkbenchError(f"the model has no tensor {name!r}, which the {self.arch} engine needs",
                                 path=self.source) from None
        return a.to_float32() if isinstance(a, StoredTensor) else a

    def __contains__(self, name: str) -> bool:
        return name in self.tensors


GENERATE_HINT = ("Generate with a decoder (llama family: llama, mistral, SmolLM2...; qwen2, qwen3, qwen3moe, gemma2, "
                 "gemma3 text, phi3) or a t5 model.")


def model_arch(model: Model, generate: bool = False) -> str:
    """The engine architecture of a model ("llama", "qwen2", "bert", "t5"), or an UnsupportedError.

    Decided from the metadata alone, before any weight or tokenizer is read.  ``generate``: refuse an encoder
    too, and name only what can generate text."""
    if model.format == "peft":
        raise UnsupportedError("this is a PEFT LoRA adapter, not a model the engine can run", path=model.path,
                               hint="Merge it into its base model with `workbench merge-lora`, or write a GGUF LoRA "
                               "for llama.cpp with `workbench lora-to-gguf`.")
    if model.format == "gguf":
        arch = gguf_to_hf.gguf_arch(model)
    else:
        arch = gguf_arch(model.architecture) or arch_name(architecture=model.architecture)
    if generate and arch == "bert":
        raise UnsupportedError(f"this model ({model.architecture or arch}) is an encoder: it makes sentence "
                               "embeddings, not text", path=model.path, hint=GENERATE_HINT)
    if arch not in ARCHS:
        raise UnsupportedError(f"architecture {model.architecture or arch!r} cannot be run by the inference engine",
                               path=model.path, hint=GENERATE_HINT if generate else "Supported: llama family "
                               "(llama, mistral, SmolLM2...), qwen2, qwen3, qwen3moe, gemma2, gemma3 (text), phi3, "
                               "bert and t5.")
    return arch


def model_config(model: Model) -> dict[str, Any]:
    """config.json of an HF model (the folder's file), or the one rebuilt from a GGUF's hyperparameters."""
    if model.format == "gguf":
        return gguf_to_hf.hf_config(model, torch_dtype="F32")
    folder = model.path if model.path.is_dir() else model.path.parent
    path = folder / "config.json"
    if not path.is_file():
        raise MissingFileError("config.json is missing: the engine needs the model's hyperparameters",
                               path=folder, hint="Put the model's config.json beside its weights.")
    cfg = hf_fmt.load_json(path)
    if not isinstance(cfg, dict):
        raise WorkbenchError("config.json is not a JSON object", path=path)
    return cfg


def _hf_names(model: Model, arch: str) -> dict[str, str | None]:
    """Source tensor name -> HF name (None: skip)."""
    if model.format == "gguf":
        names = gguf_to_hf.hf_names(model)
        # llama 3 rope factors: not an HF weight, but the engine applies them (kept under the GGUF name)
        return {k: (k if v is None and k == "rope_freqs.weight" else v) for k, v in names.items()}
    out: dict[str, str | None] = {}
    for t in model.tensors:
        name = t.name
        if t.dtype not in _FLOAT_DTYPES and not dtypes.is_quantized(t.dtype):
            out[name] = None  # position_ids and other integer buffers
            continue
        if arch == "bert":
            name = re.sub(r"^bert\.", "", name)
        out[t.name] = name
    return out


def _resolve_plan(model: Model, plan: Plan | str | None) -> Plan | None:
    if plan is None:
        return None
    if isinstance(plan, Plan):
        if plan.model is not model and plan.model.path != model.path:
            raise WorkbenchError("the plan was made for another model", path=model.path)
        return plan
    name = str(plan).upper()
    if name not in PRESETS:
        raise WorkbenchError(f"unknown preset {plan!r}", hint="Choose one of: " + ", ".join(PRESETS))
    return Plan(model, preset=name)


def plan_label(plan: Plan) -> str:
    extra = []
    if plan.rules:
        extra.append(f"{len(plan.rules)} rule{'s' if len(plan.rules) > 1 else ''}")
    if plan.overrides:
        extra.append(f"{len(plan.overrides)} override{'s' if len(plan.overrides) > 1 else ''}")
    return plan.preset + (" + " + ", ".join(extra) if extra else "")


def _decode_rows(raw: np.ndarray, dtype: str, rows: int, cols: int) -> np.ndarray:
    """Stored rows -> float32 [rows, cols] (our threaded kernels for ggml block types)."""
    if dtypes.is_quantized(dtype) and dtype in kernels.supported_types():
        return kernels.dequantize(np.asarray(raw).reshape(rows, -1), dtype, cols)
    return dtypes.decode(np.asarray(raw), dtype, (rows, cols))


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("loading the weights was cancelled")


def _load_tensor(model: Model, info: TensorInfo, qtype: str | None, cancel, im=None) -> np.ndarray:
    """float32 values of one tensor, after a round trip through ``qtype`` (None: as stored)."""
    shape = info.shape or (1,)
    cols = shape[-1]
    rows = info.n_params // max(cols, 1)
    if qtype is None and not dtypes.is_quantized(info.dtype):
        return model.tensor(info.name).to_float32()  # F32 comes back as a view of the mapped file
    raw = model.tensor(info.name).raw()
    raw2 = raw.reshape(rows, -1)
    out = np.empty((rows, cols), np.float32)
    step = max(1, _SPAN // max(cols, 1))
    for a in range(0, rows, step):
        _check_cancel(cancel)
        b = min(rows, a + step)
        x = _decode_rows(raw2[a:b], info.dtype, b - a, cols)
        if qtype is not None:
            x = kernels.dequantize(_quantize(x, qtype, im, info, a), qtype, cols)
        out[a:b] = x
    return out.reshape(info.shape)


def _quantize(x: np.ndarray, qtype: str, im, info: TensorInfo, row0: int) -> np.ndarray:
    """Rows ``row0``... of a tensor quantized to ``qtype`` (with its importance weights ``im`` [n_expert, cols])."""
    if im is None:
        return kernels.quantize(x, qtype, name=info.name, row0=row0)
    from ..optimize.imatrix import quantize_rows

    shape = info.shape or (1,)
    rows = info.n_params // max(shape[-1], 1)
    return quantize_rows(x, qtype, im, name=info.name, row0=row0, rows_per_expert=rows // max(im.shape[0], 1))


def _store_tensor(model: Model, info: TensorInfo, qtype: str | None, heads: int | None, cancel,
                  im=None) -> StoredTensor:
    """One tensor in the bytes of its level: a view of the stored bytes (``qtype`` None), else quantized
    to ``qtype`` once, in row chunks (the source's mapped pages are released afterwards)."""
    raw = model.tensor(info.name).raw()
    if qtype is None:
        return StoredTensor(raw, info.dtype, info.shape, heads=heads, name=info.name)
    shape = info.shape or (1,)
    cols = shape[-1]
    rows = info.n_params // max(cols, 1)
    raw2 = raw.reshape(rows, -1)
    out = np.empty((rows, kernels.get_kernel(qtype).row_bytes(cols)), np.uint8)
    step = max(1, _SPAN // max(cols, 1))
    for a in range(0, rows, step):
        _check_cancel(cancel)
        b = min(rows, a + step)
        out[a:b] = _quantize(_decode_rows(raw2[a:b], info.dtype, b - a, cols), qtype, im, info, a)
    model.release(info.name)
    return StoredTensor(out, qtype, info.shape, heads=heads, name=info.name)


def load_weights(model: Model | str | Path, plan: Plan | str | None = None, *,
                 cancel: Callable[[], bool] | None = None,
                 keep_quantized: bool = False, imatrix=None) -> Generator[Progress, None, Weights]:
    """Every tensor of ``model`` under HF names (a job generator): float32 arrays, or with
    ``keep_quantized`` each matrix as a :class:`StoredTensor` in the bytes of its level (vectors stay
    float32), whose ``to_float32()`` gives the same values bit for bit.

    ``plan``: None keeps the stored values (dequantized); a preset name or a :class:`Plan` rounds each
    tensor through its planned type with our kernels (a tensor already stored in its planned type is
    kept as stored; planned F32 holds any stored value exactly, so the stored bytes are kept).
    ``imatrix`` (an :class:`~workbench.optimize.imatrix.Imatrix`): the planned types are quantized with its
    importance weights, as ``convert --imatrix`` / llama-quantize do.
    """
    if not isinstance(model, Model):
        from ..formats import open_model

        model = open_model(model)
    arch = model_arch(model)
    config = model_config(model)
    plan_obj = _resolve_plan(model, plan)
    names = _hf_names(model, arch)
    gguf_names = {e.name: e.gguf_name for e in plan_obj.entries} if imatrix is not None and plan_obj else {}
    todo = [t for t in model.tensors if names.get(t.name) is not None]
    total = sum(t.n_params for t in todo) or 1
    done = 0
    tensors: dict[str, np.ndarray | StoredTensor] = {}
    types: dict[str, str] = {}
    file_types: dict[str, str] = {}
    yield Progress(0, total, "Loading weights")
    for info in todo:
        _check_cancel(cancel)
        hf_name = names[info.name]
        qtype = plan_obj.type_of(info.name) if plan_obj is not None else None
        file_types[hf_name] = qtype or info.dtype
        if qtype is not None and (qtype == info.dtype or (qtype == "F32" and (
                keep_quantized or not dtypes.is_quantized(info.dtype)))):
            qtype = None  # already at its planned level (F32 holds any stored value exactly)
        heads = gguf_to_hf.qk_heads(model, info.name) if model.format == "gguf" else None
        im = None
        if imatrix is not None and qtype is not None:  # the importance weights convert --imatrix uses
            from ..optimize.imatrix import source_weights

            im = source_weights(imatrix, gguf_names.get(info.name, info.name), info.name, info.shape, qtype)
        if keep_quantized and len(info.shape) >= 2 and info.n_params:
            x = _store_tensor(model, info, qtype, heads, cancel, im)
        else:
            x = _load_tensor(model, info, qtype, cancel, im)
            if heads:
                x = gguf_to_hf.unpermute(x, heads)
            offset = gguf_to_hf.value_offset(model, info.name) if model.format == "gguf" else 0.0
            if offset:  # Gemma norms: the GGUF stores 1 + w, the engines take HF's w
                x = x + np.float32(offset)
        if hf_name in tensors:
            raise WorkbenchError(f"two tensors map to {hf_name!r}", path=model.path)
        tensors[hf_name] = x
        types[hf_name] = qtype or info.dtype
        done += info.n_params
        yield Progress(done, total, f"{info.name} → {qtype}" if qtype else info.name)
    return Weights(config, arch, tensors, types, model.path, plan_label(plan_obj) if plan_obj else None,
                   file_types)
