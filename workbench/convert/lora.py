"""Merge a PEFT LoRA adapter into its base model: a Hugging Face folder (written as a new HF folder, or
with ``to="gguf"`` straight to GGUF) or a GGUF of any type (written as a GGUF, see :mod:`.lora_gguf`).

Every target module's weight becomes ``W' = W + scale * (B @ A)`` (transposed when ``fan_in_fan_out``),
computed in float32 a block of rows at a time, with ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)``
for rsLoRA; per-module ``r`` / ``lora_alpha`` from ``rank_pattern`` / ``alpha_pattern``).  Adapter
tensors that are not LoRA factors (``modules_to_save``) replace the base tensor of the same name.
Tensors are streamed one at a time into safetensors shards named and indexed as ``save_pretrained``
does; the output is built in a temporary folder beside ``out_dir`` and moved into place at the end, so a
failure or cancel leaves nothing and neither source folder is modified.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterator

import numpy as np

from .. import dtypes, fsutil
from ..errors import UnsupportedError, WorkbenchError
from ..formats.peft import KNOWN_LORA_KEYS
from ..model import Model, TensorInfo
from ..progress import Progress
from . import export
from .export import (CHUNK_ELEMENTS, DEFAULT_MAX_SHARD_SIZE, SIDE_FILES, _check_cancel, _Item, _json,
                     _safetensors_header, _shard_names, _write_text, iter_converted, normalize_dtype, shard_plan)

PREFIX = "base_model.model."
_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_FLOATS = ("F32", "F16", "BF16", "F64")
# files that come from the base (the adapter's own are never used)
_BASE_ONLY = ("config.json", "generation_config.json", "preprocessor_config.json")
# newer adapter_config.json keys this module checks itself (merging refuses them when set)
_CHECKED_KEYS = {"lora_bias", "use_qalora", "layer_replication"}
TOKENIZER_FILES = tuple(n for n in SIDE_FILES if n not in _BASE_ONLY and n != "adapter_config.json")


@dataclass(frozen=True)
class _Delta:
    module: str  # module path in the base (without base_model.model.)
    a: TensorInfo
    b: TensorInfo
    scale: float


@dataclass(frozen=True)
class _MergeItem(_Item):
    """An output tensor; ``delta`` set for merged LoRA targets, ``replace`` for modules_to_save."""
    delta: _Delta | None = None
    replace: TensorInfo | None = None


def _open(path_or_model) -> Model:
    if isinstance(path_or_model, Model):
        return path_or_model
    from .. import open_model

    return open_model(path_or_model)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rule: a key matches a module whose name is the key or ends with ``.key`` (regex allowed)."""
    for key, value in (patterns or {}).items():
        try:
            if re.fullmatch(rf"(.*\.)?{key}", module):
                return value
        except re.error:
            if module == key or module.endswith("." + key):
                return value
    return default


def _module_scale(cfg: dict, module: str) -> float:
    r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8))
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
    if not isinstance(r, (int, float)) or not isinstance(alpha, (int, float)) or r <= 0:
        raise WorkbenchError(f"adapter_config.json gives module {module} r={r!r}, lora_alpha={alpha!r}",
                             hint="r must be a positive number and lora_alpha a number.")
    return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else float(r))


def _base_name(base: Model, module_name: str) -> str | None:
    """The base tensor an adapter name refers to (also tolerating a missing/extra leading ``model.``)."""
    cands = [module_name]
    if module_name.startswith("model."):
        cands.append(module_name[len("model."):])
    else:
        cands.append("model." + module_name)
    for c in cands:
        if c in base:
            return c
    return None


def _config_warnings(cfg: dict, what: str = "merging", handled=()) -> list[str]:
    """Refuse adapters ``what`` (merging, a GGUF adapter) cannot express; list the config keys it ignores."""
    for key, kind in (("use_dora", "DoRA"), ("lora_bias", "LoRA bias terms"), ("use_qalora", "QA-LoRA")):
        if cfg.get(key):
            raise UnsupportedError(f"the adapter uses {kind} ({key}: true), which {what} does not support yet")
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedError(f"the adapter is {peft_type}, not LoRA", hint="Only LoRA adapters are supported.")
    if cfg.get("layer_replication"):
        raise UnsupportedError(f"the adapter uses layer_replication, which {what} does not support yet")
    extra = sorted(k for k in cfg if k not in KNOWN_LORA_KEYS and k not in _CHECKED_KEYS and k not in handled)
    return [f"adapter_config.json keys ignored: {', '.join(extra)}"] if extra else []


def _plan(base: Model, adapter: Model, cfg: dict, dtype: str | None) -> list[_MergeItem]:
    pairs: dict[str, dict[str, TensorInfo]] = {}
    replaced: dict[str, TensorInfo] = {}
    for t in adapter.tensors:
        name = t.name[len(PREFIX):] if t.name.startswith(PREFIX) else t.name
        m = _LORA_RE.match(name)
        if m:
            pairs.setdefault(m["module"], {})[m["which"]] = t
            continue
        if ".lora_" in name or "lora_magnitude_vector" in name:
            raise UnsupportedError(f"adapter tensor {t.name} is not a LoRA A/B weight; merging it is not supported",
                                   path=adapter.path)
        name = name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
        target = _base_name(base, name)
        if target is None:
            raise WorkbenchError(f"adapter tensor {t.name} (modules_to_save) has no tensor {name} in the base model",
                                 path=base.path, hint="Check that this adapter was trained on this base model.")
        bt = base.info(target)
        if tuple(t.shape) != tuple(bt.shape):
            raise WorkbenchError(f"adapter tensor {t.name} has shape {tuple(t.shape)} but base tensor {target} has "
                                 f"shape {tuple(bt.shape)}", path=adapter.path,
                                 hint="Check that this adapter was trained on this base model.")
        replaced[target] = t
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    deltas: dict[str, _Delta] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise WorkbenchError(f"adapter module {module} has no {missing} weight", path=adapter.path)
        a, b = ab["A"], ab["B"]
        target = _base_name(base, module + ".weight")
        if target is None:
            raise WorkbenchError(f"adapter module {module} has no matching base tensor {module}.weight",
                                 path=base.path, hint="Check that this adapter was trained on this base model.")
        w = base.info(target)
        if len(a.shape) != 2 or len(b.shape) != 2 or len(w.shape) != 2:
            raise UnsupportedError(f"adapter module {module}: only 2-D (linear) LoRA weights can be merged; "
                                   f"lora_A is {tuple(a.shape)}, lora_B {tuple(b.shape)}, {target} {tuple(w.shape)}",
                                   path=adapter.path)
        delta_shape = (b.shape[0], a.shape[1])
        expect = delta_shape[::-1] if fan_in_fan_out else delta_shape
        if b.shape[1] != a.shape[0] or tuple(w.shape) != expect:
            raise WorkbenchError(
                f"shape mismatch for {target}: base tensor is {tuple(w.shape)} but lora_B {tuple(b.shape)} @ "
                f"lora_A {tuple(a.shape)} gives {delta_shape}" + (" (transposed: fan_in_fan_out)" if fan_in_fan_out
                                                                   else ""),
                path=adapter.path, hint="Check that this adapter was trained on this base model.")
        if w.dtype not in _FLOATS or a.dtype not in _FLOATS or b.dtype not in _FLOATS:
            raise UnsupportedError(f"cannot merge into {target}: types {w.dtype} / {a.dtype} / {b.dtype}",
                                   path=base.path)
        if target in replaced:
            raise WorkbenchError(f"base tensor {target} is both a LoRA target and in modules_to_save",
                                 path=adapter.path)
        deltas[target] = _Delta(module, a, b, _module_scale(cfg, module))
    items = []
    for t in base.tensors:
        out = export._out_dtype(t.dtype, dtype)
        if t.name in deltas:
            items.append(_MergeItem(t.name, t, out, None, delta=deltas[t.name]))
        elif t.name in replaced:
            items.append(_MergeItem(t.name, t, out, None, replace=replaced[t.name]))
        else:
            items.append(_MergeItem(t.name, t, out, None))
    return items


def _iter_merged(base: Model, adapter: Model, item: _MergeItem, fan_in_fan_out: bool,
                 chunk_elements: int | None = None) -> Iterator[np.ndarray]:
    chunk_elements = chunk_elements or CHUNK_ELEMENTS  # looked up per call (tests shrink it)
    d = item.delta
    w = item.src
    a = adapter.tensor(d.a.name).to_float32()  # [r, in]
    b = adapter.tensor(d.b.name).to_float32()  # [out, r]
    rows, cols = w.shape
    raw = base.tensor(w.name).raw().reshape(rows, cols)
    step = max(1, chunk_elements // max(cols, 1))
    scale = np.float32(d.scale)
    for start in range(0, rows, step):
        part = raw[start:start + step]
        x = dtypes.decode(part, w.dtype, part.shape).astype(np.float32, copy=True)  # [n, cols]
        if fan_in_fan_out:  # W is [in, out]: rows of W are columns of B @ A
            x += scale * (b @ a[:, start:start + step]).T
        else:
            x += scale * (b[start:start + step] @ a)
        yield export._encode(x, item.dtype)


def _iter_item(base: Model, adapter: Model, item: _MergeItem, fan_in_fan_out: bool) -> Iterator[np.ndarray]:
    if item.delta is not None:
        yield from _iter_merged(base, adapter, item, fan_in_fan_out)
    elif item.replace is not None:
        yield from iter_converted(adapter, _Item(item.name, item.replace, item.dtype, None))
    else:
        yield from iter_converted(base, item)


def _side_files(base: Model, adapter: Model, dtype: str | None, out_dir: Path) -> dict[str, Path | str]:
    files = export._copied_side_files(base, dtype, out_dir)
    files.pop("adapter_config.json", None)
    if not any(n in files for n in TOKENIZER_FILES):
        for name, content in export._copied_side_files(adapter, None, out_dir).items():
            if name in TOKENIZER_FILES:
                files[name] = content
    return files


def merge_lora(base, adapter, out, *, to: str = "hf", plan_or_preset=None, dtype: str | None = None,
               overwrite: bool = False, cancel: Callable[[], bool] | None = None,
               max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, name=None, split_max_size: int = 0,
               split_max_tensors: int = 0, imatrix: dict | None = None) -> Generator[Progress, None, list[Path]]:
    """Merge the PEFT LoRA ``adapter`` (folder or Model) into ``base`` and write the merged model at ``out``.

    ``to="hf"`` (a Hugging Face base): a safetensors folder at ``out``; ``dtype`` F32/F16/BF16 for every
    float tensor, or None to keep each base tensor's type.  ``to="gguf"`` (implied for a GGUF base): a
    GGUF at ``out`` (a ``.gguf`` path, or a folder where the file gets ``name`` or the naming convention's
    name), streamed without an intermediate folder, with tensor types from ``plan_or_preset`` (a Plan on
    the base or a preset name; for a GGUF base None keeps every tensor's type, for an HF base None means
    ``dtype`` or F16), split by ``split_max_size`` / ``split_max_tensors``.  Returns the paths written;
    the last Progress message lists warnings (e.g. adapter_config.json keys the merge ignores)."""
    to = str(to).lower()
    if to not in ("hf", "safetensors", "gguf"):
        raise WorkbenchError(f"unknown output format {to!r}", hint="Choose hf (a safetensors folder) or gguf.")
    base_m = _open(base)
    adapter_m = _open(adapter)
    if adapter_m.format != "peft":
        raise WorkbenchError("this is not a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)",
                             path=adapter_m.path)
    if base_m.format == "peft":
        raise UnsupportedError("the base model is a PEFT adapter, not a model", path=base_m.path,
                               hint="Give the base model the adapter was trained on.")
    if base_m.format == "gguf" or to == "gguf":
        from .lora_gguf import merge_lora_to_gguf

        return (yield from merge_lora_to_gguf(base_m, adapter_m, out, plan_or_preset=plan_or_preset, dtype=dtype,
                                              name=name, split_max_size=split_max_size,
                                              split_max_tensors=split_max_tensors, overwrite=overwrite,
                                              cancel=cancel, imatrix=imatrix))
    if plan_or_preset is not None:
        raise WorkbenchError("a plan or preset sets GGUF tensor types; a Hugging Face output takes dtype",
                             hint="Merge with to='gguf' (CLI: --to gguf) to use a plan or preset.")
    dtype = normalize_dtype(dtype)
    out_dir = Path(out).expanduser()
    from ..formats import hf

    cfg = hf.load_json(adapter_m.path / "adapter_config.json")
    warnings = _config_warnings(cfg)
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    items = _plan(base_m, adapter_m, cfg, dtype)
    side = _side_files(base_m, adapter_m, dtype, out_dir)
    shards = shard_plan(items, max_shard_size)
    shard_files = _shard_names("model", "safetensors", len(shards))
    index_name = "model.safetensors.index.json" if len(shards) > 1 else None
    names = [*shard_files, *([index_name] if index_name else []), *side]
    stale = export._check_output(out_dir, names, "model", "safetensors", base_m, overwrite)
    export._check_output(out_dir, names, "model", "safetensors", adapter_m, overwrite)

    n_merged = sum(1 for it in items if it.delta is not None)
    n_replaced = sum(1 for it in items if it.replace is not None)
    total = sum(it.nbytes for it in items) or 1
    done = 0
    with fsutil.partial_dir(out_dir) as tmp:  # locked, probed; removed on failure or cancel
        yield Progress(0, total, f"Merging {n_merged} LoRA modules into {len(items)} tensors")
        for fname, shard in zip(shard_files, shards):
            with open(tmp / fname, "wb") as f:
                f.write(_safetensors_header(shard))
                for it in shard:
                    _check_cancel(cancel)
                    written = 0
                    for block in _iter_item(base_m, adapter_m, it, fan_in_fan_out):
                        _check_cancel(cancel)
                        view = memoryview(np.ascontiguousarray(block)).cast("B")
                        f.write(view)
                        written += view.nbytes
                    if written != it.nbytes:
                        raise WorkbenchError(f"internal error: tensor {it.name} produced {written} bytes, "
                                             f"expected {it.nbytes}")
                    base_m.release(it.src.name)
                    done += it.nbytes
                    yield Progress(done, total, ("Merged " if it.delta else "Wrote ") + it.name)
                f.flush()
                os.fsync(f.fileno())
        if index_name:
            _write_text(tmp / index_name, _json(export._index(list(zip(shard_files, shards)))))
        export.write_side_files(tmp, side)  # sentence-transformers module folders too (1_Pooling/...)
        _check_cancel(cancel)
        export._commit(tmp, out_dir, names, stale)
    message = f"Merge finished: {n_merged} LoRA modules merged"
    if n_replaced:
        message += f", {n_replaced} tensors replaced (modules_to_save)"
    if warnings:
        message += "; warnings: " + "; ".join(warnings)
    yield Progress(total, total, message, warnings=tuple(warnings))
    return [out_dir / n for n in names]


def check_merge(base, adapter) -> str:
    """From the headers alone: can ``adapter`` be merged into the Hugging Face model ``base``?

    Checks the adapter's config, that every LoRA module and modules_to_save tensor has its base tensor, and
    every shape.  Returns a one-line summary ("12 LoRA modules match the base"); raises the
    :class:`WorkbenchError` :func:`merge_lora` would raise, before any weight is read."""
    from ..formats import hf

    base_m, adapter_m = _open(base), _open(adapter)
    if adapter_m.format != "peft":
        raise WorkbenchError("this is not a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)",
                             path=adapter_m.path)
    cfg = hf.load_json(adapter_m.path / "adapter_config.json")
    _config_warnings(cfg)
    items = _plan(base_m, adapter_m, cfg, None)
    n_merged = sum(1 for it in items if it.delta is not None)
    n_replaced = sum(1 for it in items if it.replace is not None)
    if not n_merged and not n_replaced:
        raise WorkbenchError("the adapter has no LoRA weights", path=adapter_m.path)
    text = f"{n_merged} LoRA module{'s' if n_merged != 1 else ''} match the base"
    return text + (f"; {n_replaced} tensors replaced (modules_to_save)" if n_replaced else "")
