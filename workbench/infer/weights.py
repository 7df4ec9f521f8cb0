"""Float32 weights for the inference engines, from any opened model, optionally through a quantization plan.

``load_weights(model, plan)`` reads every tensor of a Hugging Face folder or a GGUF file (any ggml type),
names it as Hugging Face does (GGUF names mapped back, llama Q/K rows un-permuted), and, when a plan is
given, quantizes each tensor to its planned type and dequantizes it again with our kernels: an engine
then computes with exactly the values a file of that level holds, without writing the file.
"""
from __future__ import annotations

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

ARCHS = ("llama", "qwen2", "bert", "t5")
# values quantized per kernel call: large enough for the kernels' worker processes to kick in, small
# enough to bound the temporaries (the output array is allocated once per tensor)
_SPAN = 1 << 24
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2")


@dataclass
class Weights:
    """Float32 tensors under Hugging Face names, with the model's config.json."""

    config: dict[str, Any]
    arch: str  # "llama" | "qwen2" | "bert" | "t5"
    tensors: dict[str, np.ndarray]
    types: dict[str, str] = field(default_factory=dict)  # HF name -> the type its values went through
    source: Path | None = None
    plan: str | None = None  # a description of the plan applied ("Q4_K_M", "Q4_K_M + 2 rules"...), None: as stored
    # HF name -> the type a file of this level stores it in (the plan's type; as stored without a plan): the
    # type llama.cpp multiplies with, which decides how it rounds the activations (llama-cpu numerics)
    file_types: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise WorkbenchError(f"the model has no tensor {name!r}, which the {self.arch} engine needs",
                                 path=self.source) from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors


def model_arch(model: Model) -> str:
    """The engine architecture of a model ("llama", "qwen2", "bert", "t5"), or an UnsupportedError.

    Decided from the metadata alone, before any weight or tokenizer is read."""
    if model.format == "peft":
        raise UnsupportedError("this is a PEFT LoRA adapter, not a model the engine can run", path=model.path,
                               hint="Merge it into its base model with `workbench merge-lora`, or write a GGUF LoRA "
                               "for llama.cpp with `workbench lora-to-gguf`.")
    if model.format == "gguf":
        arch = gguf_to_hf.gguf_arch(model)
    else:
        arch = gguf_arch(model.architecture)
    if arch not in ARCHS:
        raise UnsupportedError(f"architecture {model.architecture or arch!r} cannot be run by the inference engine",
                               path=model.path, hint="Supported: llama family (llama, mistral, SmolLM2...), qwen2, "
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


def _load_tensor(model: Model, info: TensorInfo, qtype: str | None, cancel) -> np.ndarray:
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
            x = kernels.dequantize(kernels.quantize(x, qtype, name=info.name), qtype, cols)
        out[a:b] = x
    return out.reshape(info.shape)


def load_weights(model: Model | str | Path, plan: Plan | str | None = None, *,
                 cancel: Callable[[], bool] | None = None) -> Generator[Progress, None, Weights]:
    """Every tensor of ``model`` as float32 under HF names (a job generator).

    ``plan``: None keeps the stored values (dequantized); a preset name or a :class:`Plan` rounds each
    tensor through its planned type with our kernels (a tensor already stored in its planned type is
    kept as stored).
    """
    if not isinstance(model, Model):
        from ..formats import open_model

        model = open_model(model)
    arch = model_arch(model)
    config = model_config(model)
    plan_obj = _resolve_plan(model, plan)
    names = _hf_names(model, arch)
    todo = [t for t in model.tensors if names.get(t.name) is not None]
    total = sum(t.n_params for t in todo) or 1
    done = 0
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    file_types: dict[str, str] = {}
    yield Progress(0, total, "Loading weights")
    for info in todo:
        _check_cancel(cancel)
        hf_name = names[info.name]
        qtype = plan_obj.type_of(info.name) if plan_obj is not None else None
        file_types[hf_name] = qtype or info.dtype
        if qtype is not None and (qtype == info.dtype or (qtype == "F32" and not dtypes.is_quantized(info.dtype))):
            qtype = None  # already at its planned level (F32 holds any float source exactly)
        x = _load_tensor(model, info, qtype, cancel)
        heads = gguf_to_hf.qk_heads(model, info.name) if model.format == "gguf" else None
        if heads:
            x = gguf_to_hf.unpermute(x, heads)
        if hf_name in tensors:
            raise WorkbenchError(f"two tensors map to {hf_name!r}", path=model.path)
        tensors[hf_name] = x
        types[hf_name] = qtype or info.dtype
        done += info.n_params
        yield Progress(done, total, f"{info.name} → {qtype}" if qtype else info.name)
    return Weights(config, arch, tensors, types, model.path, plan_label(plan_obj) if plan_obj else None,
                   file_types)
