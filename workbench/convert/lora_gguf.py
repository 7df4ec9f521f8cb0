"""PEFT LoRA adapter -> GGUF LoRA adapter, as llama.cpp's ``convert_lora_to_gguf.py`` writes and
``src/llama-adapter.cpp`` loads it.

The file holds ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, the base's
``general.architecture`` and the naming keys (gguf-py's ``Metadata`` from the adapter folder's model
card), and for every LoRA module two tensors named after the base's GGUF tensor: ``<name>.lora_a``
(PEFT's ``lora_A``, [r, in]) and ``<name>.lora_b`` (``lora_B``, [out, r]).  For llama, ``lora_b`` rows of
q_proj / k_proj get the same rotary permutation the base's Q/K rows get (A is unaffected, as in the
reference).  Embedding LoRA (``lora_embedding_A/B``) is written as the reference does: ``lora_a``
transposed.

llama.cpp scales every pair by ``alpha / rank`` (its rank from ``lora_b``) with ONE alpha per file.  PEFT's
scale is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA, per-module ``rank_pattern`` /
``alpha_pattern``), so the written alpha is the one most modules need, and for the other modules the
ratio of their scale to ``alpha / r`` is folded into ``lora_b`` (reported in the last progress message).
rsLoRA with one rank needs no folding: alpha becomes ``lora_alpha * sqrt(r)``.

The base is a Hugging Face folder (only ``config.json`` is read) or a GGUF of the base (its metadata
gives the architecture; names and shapes are checked against its tensors).  The same mapping serves
merging an adapter into a GGUF base (:func:`workbench.convert.lora.merge_lora`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterator

import gguf
import numpy as np

from .. import kernels
from ..archs import _name_map
from ..errors import FormatError, MissingFileError, UnsupportedError, WorkbenchError
from ..model import Model, TensorInfo
from ..naming import name_for_model
from ..plan import PRESETS, Plan, row_fits
from ..progress import Progress
from .hf_to_gguf import _T5_SHARED, _bert_name, _block_count, _qk_permutation, read_config
from .requantize import (StreamTensor, check_writable_type, conventional_name, copied_metadata, encoding_of,
                         file_type_values, float_rows, new_writer, plan_file_type, quantized_chunks, raw_chunks,
                         target_path, write_gguf_stream)

PREFIX = "base_model.model."
SUPPORTED_BASE_ARCHS = ("llama", "qwen2", "bert", "t5", "gemma3", "gemma2", "qwen3", "phi3")
OUTTYPES = ("F32", "F16", "BF16", "Q8_0")
_PAIR_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<emb>embedding_)?(?P<which>A|B)(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
_FLOATS = ("F32", "F16", "BF16", "F64")


# -- the base model --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseInfo:
    """What the mapping needs to know about the base model."""

    arch: str  # GGUF architecture
    n_blocks: int
    n_head: int
    n_head_kv: int
    path: Path
    model: Model | None = None  # a GGUF base: tensor names and shapes are checked against it
    tied: bool = False  # an HF base with tied embeddings (no output.weight in its GGUF)


def read_base(base) -> BaseInfo:
    """The architecture facts of ``base``: a GGUF file (or Model), or a Hugging Face folder's config.json."""
    if isinstance(base, Model) and base.format == "gguf":
        return _gguf_base(base)
    path = Path(base.path if isinstance(base, Model) else base).expanduser()
    if not path.exists():
        raise MissingFileError("no such file or folder", path=path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        from .. import open_model

        return _gguf_base(open_model(path))
    folder = path if path.is_dir() else path.parent
    _config, arch, hp = read_config(folder, missing_hint="Give the base model's Hugging Face folder (its config.json "
                                   "is enough) or a GGUF of the base model.", what="is not supported for GGUF LoRA adapters")
    n_blocks = _block_count(hp)
    if arch == "t5" and isinstance(hp.get("num_decoder_layers"), int):
        n_blocks = max(n_blocks, hp["num_decoder_layers"])
    n_head = int(hp.get("num_attention_heads") or hp.get("num_heads") or 0)
    n_head_kv = int(hp.get("num_key_value_heads") or n_head)
    tied = arch in ("llama", "qwen2") and bool(hp.get("tie_word_embeddings", False))
    return BaseInfo(arch, n_blocks, n_head, n_head_kv, folder, None, tied)


def _gguf_base(model: Model) -> BaseInfo:
    arch = model.meta("general.architecture")
    if str(model.meta("general.type", "model")) == "adapter":
        raise WorkbenchError("the base is a GGUF LoRA adapter, not a model", path=model.path,
                             hint="Give the base model's GGUF or Hugging Face folder.")
    if arch not in SUPPORTED_BASE_ARCHS:
        raise UnsupportedError(f"GGUF architecture {arch!r} is not supported for LoRA adapters", path=model.path,
                               hint="Supported: " + ", ".join(SUPPORTED_BASE_ARCHS) + ".")
    n_blocks = max(int(model.meta(f"{arch}.block_count", 0) or 0), int(model.meta(f"{arch}.decoder_block_count", 0) or 0))
    for t in model.tensors:  # trust the tensors over the header
        m = re.match(r"^(?:enc\.|dec\.)?blk\.(\d+)\.", t.name)
        if m:
            n_blocks = max(n_blocks, int(m.group(1)) + 1)
    n_head = int(model.meta(f"{arch}.attention.head_count", 0) or 0)
    n_head_kv = int(model.meta(f"{arch}.attention.head_count_kv", n_head) or n_head)
    return BaseInfo(arch, max(n_blocks, 1), n_head, n_head_kv, model.path, model, "output.weight" not in model)


def gguf_tensor_name(hf_name: str, base: BaseInfo) -> str | None:
    """The base's GGUF tensor name for a Hugging Face tensor name (None: llama.cpp has no such tensor)."""
    name = hf_name
    if base.arch == "bert":
        name = _bert_name(name)
        if name is None:
            return None
    name = name.replace("language_model.", "")
    if base.arch == "llama":
        name = name.replace("text_model.", "")
    if base.arch == "t5" and name in _T5_SHARED:
        name = "shared.weight"
    layers = [int(x) + 1 for x in re.findall(r"\.(\d+)\.", name)]
    tmap = _name_map(base.arch, max([base.n_blocks, *layers]))  # cached per (arch, blocks)
    gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
    if gname is None and name.startswith("model.") and base.arch in ("t5", "bert"):
        gname = tmap.get_name(name[len("model."):], try_suffixes=(".weight", ".bias"))
    return gname


def qk_heads(hf_name: str, base: BaseInfo) -> int:
    """Rows of a llama q_proj / k_proj are permuted in groups of this many heads (0: not permuted)."""
    if base.arch != "llama":
        return 0
    if re.search(r"(^|\.)q_proj\.(weight|bias)$", hf_name):
        heads = base.n_head
    elif re.search(r"(^|\.)k_proj\.(weight|bias)$", hf_name):
        heads = base.n_head_kv
    else:
        return 0
    if not heads:
        raise WorkbenchError(f"the base model does not say how many attention heads it has; {hf_name} cannot be "
                             "permuted as llama.cpp expects", path=base.path)
    return heads


# -- the adapter ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraPair:
    """One LoRA module of a PEFT adapter: delta = scale * (B @ A) (embeddings: (B @ A).T)."""

    module: str  # module path without base_model.model.
    a: TensorInfo  # [r, in] (embedding: [r, vocab])
    b: TensorInfo  # [out, r] (embedding: [hidden, r])
    scale: float  # PEFT's scale for this module
    embedding: bool = False

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def lora_pairs(adapter: Model, cfg: dict) -> tuple[list[LoraPair], list[TensorInfo]]:
    """The adapter's LoRA pairs (in file order) and its other tensors (modules_to_save, norms)."""
    from .lora import _module_scale

    parts: dict[str, dict[str, TensorInfo]] = {}
    embedding: set[str] = set()
    others: list[TensorInfo] = []
    for t in adapter.tensors:
        name = t.name[len(PREFIX):] if t.name.startswith(PREFIX) else t.name
        m = _PAIR_RE.match(name)
        if m is None:
            if ".lora_" in name or "lora_magnitude_vector" in name:
                raise UnsupportedError(f"adapter tensor {t.name} is not a LoRA A/B weight", path=adapter.path,
                                       hint="Only plain LoRA adapters (lora_A / lora_B pairs) are supported.")
            others.append(t)
            continue
        if m["emb"]:
            embedding.add(m["module"])
        parts.setdefault(m["module"], {})[m["which"]] = t
    pairs = []
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise WorkbenchError(f"adapter module {module} has no {missing} weight", path=adapter.path)
        a, b = ab["A"], ab["B"]
        if len(a.shape) != 2 or len(b.shape) != 2 or b.shape[1] != a.shape[0]:
            raise UnsupportedError(f"adapter module {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                                   "are not a pair of 2-D LoRA factors", path=adapter.path)
        if a.dtype not in _FLOATS or b.dtype not in _FLOATS:
            raise UnsupportedError(f"adapter module {module}: LoRA factors of type {a.dtype} / {b.dtype} are not "
                                   "supported", path=adapter.path)
        pairs.append(LoraPair(module, a, b, _module_scale(cfg, module), module in embedding))
    return pairs, others


@dataclass(frozen=True)
class Target:
    """A LoRA pair and the base GGUF tensor it changes."""

    pair: LoraPair
    gguf_name: str  # e.g. blk.0.attn_q.weight
    heads: int  # llama Q/K: lora_b rows permuted in groups of this many heads (0: none)

    @property
    def shape(self) -> tuple[int, int]:
        """The base tensor's shape (numpy order) this pair's delta has."""
        p = self.pair
        return (p.a.shape[1], p.b.shape[0]) if p.embedding else (p.b.shape[0], p.a.shape[1])


def gguf_targets(pairs: list[LoraPair], base: BaseInfo, adapter_path=None) -> list[Target]:
    out = []
    seen: dict[str, str] = {}
    for p in pairs:
        hf_name = p.module + ".weight"
        gname = gguf_tensor_name(hf_name, base)
        if gname is None:
            raise UnsupportedError(f"adapter module {p.module} has no tensor in a {base.arch} GGUF: llama.cpp "
                                   "cannot apply a LoRA to it", path=adapter_path,
                                   hint="Check that this adapter belongs to this base model.")
        layer = re.match(r"^(?:enc\.|dec\.)?blk\.(\d+)\.", gname)
        if layer and int(layer.group(1)) >= base.n_blocks:
            raise WorkbenchError(f"adapter module {p.module} maps to {gname}, but the base model has "
                                 f"{base.n_blocks} layers", path=adapter_path,
                                 hint="Check that this adapter belongs to this base model.")
        if gname == "output.weight" and base.tied:
            raise UnsupportedError(f"adapter module {p.module} targets lm_head, but the base ties it to the token "
                                   "embeddings, so its GGUF has no output tensor", path=adapter_path)
        if gname in seen:
            raise WorkbenchError(f"adapter modules {seen[gname]} and {p.module} both map to {gname}", path=adapter_path)
        seen[gname] = p.module
        heads = 0 if p.embedding else qk_heads(hf_name, base)
        t = Target(p, gname, heads)
        if heads and t.shape[0] % (2 * heads):
            raise WorkbenchError(f"adapter module {p.module}: lora_B has {t.shape[0]} rows, not a multiple of "
                                 f"2 x {heads} heads", path=adapter_path,
                                 hint="Check that this adapter belongs to this base model.")
        if base.model is not None:
            if gname not in base.model:
                raise WorkbenchError(f"adapter module {p.module} maps to {gname}, which the base GGUF does not have",
                                     path=base.path, hint="Check that this adapter belongs to this base model.")
            have = tuple(base.model.info(gname).shape)
            if have != t.shape:
                raise WorkbenchError(f"shape mismatch for {gname}: the base tensor is {have} but lora_B "
                                     f"{tuple(p.b.shape)} and lora_A {tuple(p.a.shape)} give {t.shape}",
                                     path=base.path, hint="Check that this adapter belongs to this base model.")
        out.append(t)
    return out


def single_alpha(pairs: list[LoraPair]) -> tuple[float, dict[str, float]]:
    """llama.cpp scales each pair by alpha / rank with one alpha per file: the alpha to write (the one most
    modules need) and, for the modules whose PEFT scale differs from alpha / rank, the factor for lora_b."""
    needed = [(p.module, p.scale * p.rank) for p in pairs]
    groups: list[tuple[float, int]] = []
    for _, v in needed:
        for i, (g, n) in enumerate(groups):
            if np.isclose(v, g, rtol=1e-6, atol=0.0):
                groups[i] = (g, n + 1)
                break
        else:
            groups.append((v, 1))
    if not groups:
        return 0.0, {}
    alpha = max(groups, key=lambda gn: gn[1])[0]
    factors = {}
    for p in pairs:
        got = alpha / p.rank if alpha else 1.0  # llama.cpp: alpha == 0 means "scale 1"
        if not np.isclose(p.scale, got, rtol=1e-6, atol=0.0):
            factors[p.module] = p.scale / got
    return float(alpha), factors


def lora_b_rows(adapter: Model, target: Target, factor: float = 1.0) -> np.ndarray:
    """lora_b as float32 in the base GGUF's row order (llama Q/K permuted), times ``factor``."""
    b = adapter.tensor(target.pair.b.name).to_float32()
    if target.heads:
        b = b[_qk_permutation(b.shape[0], target.heads)]
    if factor != 1.0:
        b = b * np.float32(factor)
    return np.ascontiguousarray(b, dtype=np.float32)


# -- the job ----------------------------------------------------------------------------------------------

def _open(path_or_model) -> Model:
    if isinstance(path_or_model, Model):
        return path_or_model
    from .. import open_model

    return open_model(path_or_model)


def normalize_outtype(outtype: str) -> str:
    t = str(outtype).upper()
    if t not in OUTTYPES:
        raise WorkbenchError(f"unknown output type {outtype!r}", hint="Choose one of: " + ", ".join(o.lower() for o in OUTTYPES))
    return t


def read_adapter_config(adapter: Model) -> dict:
    from ..formats import hf

    if adapter.format != "peft":
        raise WorkbenchError("this is not a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)",
                             path=adapter.path)
    cfg = hf.load_json(adapter.path / "adapter_config.json")
    if not isinstance(cfg, dict):
        raise FormatError("adapter_config.json is not a JSON object", path=adapter.path / "adapter_config.json")
    return cfg


def _tensor_type(outtype: str, shape: tuple[int, ...]) -> str:
    # as the reference: a row that does not fit a Q8_0 block is written as F16
    return outtype if row_fits(outtype, shape) else "F16"


def lora_to_gguf(adapter, out_dir_or_file, *, base, outtype: str = "F16", overwrite: bool = False,
                 cancel: Callable[[], bool] | None = None) -> Generator[Progress, None, Path]:
    """Convert a PEFT LoRA adapter (folder or Model) to a GGUF LoRA adapter llama.cpp loads with ``--lora``.

    ``base``: the base model's Hugging Face folder (only config.json is read) or its GGUF.  ``outtype``:
    F32, F16, BF16 or Q8_0 (rows that do not fit a Q8_0 block are written as F16).  ``out_dir_or_file``:
    a ``.gguf`` path or a folder (the file is then named ``<Name>-<OUTTYPE>-LoRA.gguf``).  Returns the path;
    the last Progress message lists warnings (ignored config keys, folded scales).
    """
    from .lora import _config_warnings

    adapter_m = _open(adapter)
    cfg = read_adapter_config(adapter_m)
    warnings = _config_warnings(cfg, "a GGUF LoRA adapter (llama.cpp)", handled={"alora_invocation_tokens"})
    if cfg.get("fan_in_fan_out"):
        raise UnsupportedError("the adapter was trained with fan_in_fan_out (Conv1D weights), which none of the "
                               "supported architectures use", path=adapter_m.path)
    outtype = normalize_outtype(outtype)
    base_info = read_base(base)
    pairs, others = lora_pairs(adapter_m, cfg)
    skipped_norms = [t.name for t in others if "norm" in t.name]
    full = [t.name for t in others if "norm" not in t.name]
    if full:
        raise UnsupportedError(f"the adapter holds whole tensors ({', '.join(full[:3])}{', …' if len(full) > 3 else ''}"
                               "; modules_to_save), which a GGUF LoRA adapter cannot carry", path=adapter_m.path,
                               hint="Merge the adapter into the base instead (workbench merge-lora --to gguf).")
    if not pairs:
        raise WorkbenchError("the adapter has no LoRA weights", path=adapter_m.path)
    targets = gguf_targets(pairs, base_info, adapter_m.path)
    alpha, factors = single_alpha(pairs)

    tensors: list[StreamTensor] = []
    for t in targets:
        p = t.pair

        def a_chunks(p=p):
            a = adapter_m.tensor(p.a.name).to_float32()
            x = np.ascontiguousarray(a.T if p.embedding else a)  # the reference transposes token_embd's lora_a
            yield kernels.quantize(x, _tensor_type(outtype, x.shape), name=p.a.name), x.size

        def b_chunks(t=t):
            x = lora_b_rows(adapter_m, t, factors.get(t.pair.module, 1.0))
            yield kernels.quantize(x, _tensor_type(outtype, x.shape), name=t.pair.b.name), x.size

        a_shape = (p.a.shape[1], p.a.shape[0]) if p.embedding else tuple(p.a.shape)
        tensors.append(StreamTensor(t.gguf_name + ".lora_a", a_shape, _tensor_type(outtype, a_shape), a_chunks))
        tensors.append(StreamTensor(t.gguf_name + ".lora_b", tuple(p.b.shape), _tensor_type(outtype, p.b.shape),
                                    b_chunks))

    n_params = sum(t.n_params for t in tensors)
    md = gguf.Metadata.load(None, adapter_m.path, None, -n_params)  # negative: LoRA, no size label
    if md.name is None:
        md.name = adapter_m.path.name
    w = new_writer(base_info.arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    md.set_gguf_meta_model(w)
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    tokens = cfg.get("alora_invocation_tokens")
    if isinstance(tokens, list) and tokens:
        w.add_key_value(gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS, [int(x) for x in tokens],
                        gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32)
    elif cfg.get("invocation_string"):
        warnings.append("invocation_string is not tokenized (give alora_invocation_tokens in adapter_config.json)")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def default_name():
        meta = {"general.name": md.name, "general.basename": md.basename, "general.finetune": md.finetune,
                "general.version": md.version}
        return name_for_model({k: v for k, v in meta.items() if v}, outtype, None, "LoRA")

    target = target_path(out_dir_or_file, None, default_name)
    paths = yield from write_gguf_stream(w, target, tensors, sources=adapter_m.files, overwrite=overwrite,
                                         cancel=cancel)
    message = f"Wrote {len(targets)} LoRA modules for {base_info.arch} (alpha {alpha:g})"
    notes = []
    if factors:
        notes.append(f"per-module scales differ: llama.cpp applies one alpha per file, so the scale ratio of "
                     f"{len(factors)} modules was folded into their lora_b")
    if skipped_norms:
        notes.append(f"skipped {len(skipped_norms)} norm tensors (llama.cpp ignores them in LoRA adapters)")
    message += "".join("; " + n for n in notes)
    if warnings:
        message += "; warnings: " + "; ".join(warnings)
    yield Progress(1, 1, message, warnings=(*notes, *warnings))
    return paths[0]


# -- merging into a GGUF output -------------------------------------------------------------------------------

def _merged_chunks(model: Model, info: TensorInfo, a: np.ndarray, b: np.ndarray, scale: float, qtype: str,
                   perm: np.ndarray | None, imatrix) -> Iterator[tuple[np.ndarray, int]]:
    """W + scale * (B @ A) a row block at a time (rows in the output's order: ``b`` already permuted like W)."""
    s = np.float32(scale)
    for start, stop, x in float_rows(model, info, perm):
        x = x + s * (b[start:stop] @ a)  # [n, cols] float32, as the Hugging Face merge computes it
        yield kernels.submit(x, qtype, imatrix, name=info.name, row0=start), x.size


def _stacked_merged_chunks(base: Model, adapter: Model, ot, deltas: dict, replaced: dict, imatrix):
    """A stacked 3-D expert tensor (qwen3moe ``ffn_*_exps``) whose experts are merged with their LoRA (or
    replaced by modules_to_save) where the adapter has them, the others copied: each expert's rows in turn."""
    from ..optimize.imatrix import submit_rows, tensor_weights
    from .hf_to_gguf import _source_chunks

    im = tensor_weights(imatrix, ot.name, ot.shape, ot.type)
    per = ot.n_params // max(ot.shape[-1], 1) // ot.shape[0]
    for e, source in enumerate(ot.sources):
        if source in deltas or source in replaced:
            d = deltas.get(source)
            info = replaced[source] if d is None else base.info(source)
            a = adapter.tensor(d.a.name).to_float32() if d is not None else None
            b = adapter.tensor(d.b.name).to_float32() if d is not None else None
            for start, stop, x in float_rows(base if d is not None else adapter, info):
                if d is not None:
                    x = x + np.float32(d.scale) * (b[start:stop] @ a)
                yield from submit_rows(x, ot.type, im, name=ot.name, row0=e * per + start, rows_per_expert=per)
        else:
            yield from _source_chunks(base, ot, source, im, e * per, per)
        base.release(source)


def _replacement_chunks(model: Model, info: TensorInfo, qtype: str, heads: int,
                        imatrix) -> Iterator[tuple[np.ndarray, int]]:
    """An adapter's whole tensor (modules_to_save) in the output's row order."""
    if heads and len(info.shape) == 1:  # a Q/K bias: permute the elements
        x = model.tensor(info.name).to_float32()[_qk_permutation(info.shape[0], heads)]
        yield kernels.quantize(x[None, :], qtype, name=info.name), x.size
        return
    perm = _qk_permutation(info.shape[0], heads) if heads else None
    for start, _e, x in float_rows(model, info, perm):
        yield kernels.submit(x, qtype, imatrix, name=info.name, row0=start), x.size


def _importance(imatrix, name: str, qtype: str):
    if imatrix is not None and name in imatrix and kernels.get_kernel(qtype).uses_imatrix:
        return imatrix[name]
    return None


def _resolve_plan(model: Model, plan_or_preset, imatrix) -> Plan:
    if isinstance(plan_or_preset, Plan):
        plan = plan_or_preset
        if plan.model is not model and {Path(f).resolve() for f in plan.model.files} != \
                {Path(f).resolve() for f in model.files}:
            raise WorkbenchError("the plan was made for another model", path=model.path,
                                 hint=f"Make the plan on the base model {model.path}.")
        return plan
    preset = str(plan_or_preset).upper()
    if preset not in PRESETS:
        raise WorkbenchError(f"unknown preset {plan_or_preset!r}", hint="Choose one of: " + ", ".join(PRESETS))
    return Plan(model, preset, has_imatrix=imatrix is not None)


def _finish_message(n_merged: int, n_replaced: int, target: Path, warnings: list[str]) -> str:
    message = f"Merge finished: {n_merged} LoRA modules merged into {target.name}"
    if n_replaced:
        message += f", {n_replaced} tensors replaced (modules_to_save)"
    if warnings:
        message += "; warnings: " + "; ".join(warnings)
    return message


def merge_lora_to_gguf(base: Model, adapter: Model, out, *, plan_or_preset=None, dtype: str | None = None,
                       name=None, split_max_size: int = 0, split_max_tensors: int = 0, overwrite: bool = False,
                       cancel: Callable[[], bool] | None = None,
                       imatrix: dict | None = None) -> Generator[Progress, None, list[Path]]:
    """:func:`workbench.convert.lora.merge_lora` with a GGUF output (see there)."""
    from .export import normalize_dtype
    from .lora import _config_warnings

    cfg = read_adapter_config(adapter)
    warnings = _config_warnings(cfg)
    if cfg.get("fan_in_fan_out"):
        raise UnsupportedError("the adapter was trained with fan_in_fan_out (Conv1D weights), which none of the "
                               "GGUF architectures supported here use", path=adapter.path)
    if plan_or_preset is None and dtype is not None and base.format != "gguf":
        plan_or_preset = normalize_dtype(dtype)
    elif dtype is not None:
        raise WorkbenchError("dtype applies to Hugging Face outputs; give a preset or plan for a GGUF output",
                             hint="For example plan_or_preset='F16' (CLI: --type F16).")
    if base.format == "gguf":
        return (yield from _merge_into_gguf(base, adapter, cfg, warnings, out, plan_or_preset, name, split_max_size,
                                            split_max_tensors, overwrite, cancel, imatrix))
    if base.format not in ("safetensors", "pytorch"):
        raise UnsupportedError(f"cannot merge into a {base.format} model", path=base.path)
    return (yield from _merge_hf_to_gguf(base, adapter, cfg, warnings, out, plan_or_preset or "F16", name,
                                         split_max_size, split_max_tensors, overwrite, cancel, imatrix))


def _merge_into_gguf(base: Model, adapter: Model, cfg: dict, warnings: list[str], out, plan_or_preset, name,
                     split_max_size, split_max_tensors, overwrite, cancel, imatrix):
    info = read_base(base)
    pairs, others = lora_pairs(adapter, cfg)
    emb = [p.module for p in pairs if p.embedding]
    if emb:
        raise UnsupportedError(f"merging embedding LoRA ({emb[0]}: lora_embedding_A/B) is not supported",
                               path=adapter.path, hint="Convert the adapter with lora-to-gguf and apply it at run time.")
    targets = {t.gguf_name: t for t in gguf_targets(pairs, info, adapter.path)}
    replaced: dict[str, tuple[TensorInfo, int]] = {}
    for t in others:
        hf_name = t.name[len(PREFIX):] if t.name.startswith(PREFIX) else t.name
        hf_name = hf_name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
        gname = gguf_tensor_name(hf_name, info)
        if gname is None or gname not in base:
            raise WorkbenchError(f"adapter tensor {t.name} (modules_to_save) has no tensor in the base GGUF",
                                 path=base.path, hint="Check that this adapter belongs to this base model.")
        if tuple(base.info(gname).shape) != tuple(t.shape):
            raise WorkbenchError(f"adapter tensor {t.name} has shape {tuple(t.shape)} but base tensor {gname} has "
                                 f"shape {tuple(base.info(gname).shape)}", path=adapter.path)
        if gname in targets:
            raise WorkbenchError(f"base tensor {gname} is both a LoRA target and in modules_to_save", path=adapter.path)
        replaced[gname] = (t, qk_heads(hf_name, info))
    plan = _resolve_plan(base, plan_or_preset, imatrix) if plan_or_preset is not None else None
    if plan is not None:
        ftype = plan_file_type(plan)
        kv, alignment = copied_metadata(base, file_type_values(ftype))
        encoding = encoding_of(ftype)
    else:
        kv, alignment = copied_metadata(base)
        try:
            encoding = encoding_of(gguf.LlamaFileType(int(base.meta("general.file_type"))))
        except (TypeError, ValueError):
            encoding = None
    w = new_writer(base.meta("general.architecture"), kv, alignment=alignment, split_max_size=split_max_size,
                   split_max_tensors=split_max_tensors)
    tensors: list[StreamTensor] = []
    for t in base.tensors:
        qtype = plan.entry(t.name).type if plan is not None else t.dtype
        release = (lambda n=t.name: base.release(n))
        if t.name in targets:
            check_writable_type(qtype, t.name, base.path)
            tg = targets[t.name]

            def chunks(t=t, tg=tg, qtype=qtype):
                a = adapter.tensor(tg.pair.a.name).to_float32()
                b = lora_b_rows(adapter, tg)
                return _merged_chunks(base, t, a, b, tg.pair.scale, qtype, None, _importance(imatrix, t.name, qtype))

            tensors.append(StreamTensor(t.name, t.shape, qtype, chunks, f"Merging {t.name} → {qtype}", release))
        elif t.name in replaced:
            check_writable_type(qtype, t.name, base.path)
            src, heads = replaced[t.name]
            tensors.append(StreamTensor(t.name, t.shape, qtype, lambda s=src, q=qtype, h=heads, n=t.name:
                                        _replacement_chunks(adapter, s, q, h, _importance(imatrix, n, q)),
                                        f"Replacing {t.name} → {qtype}"))
        elif qtype == t.dtype:
            tensors.append(StreamTensor(t.name, t.shape, qtype, lambda i=t: raw_chunks(base, i),
                                        f"{t.name} (copied, {qtype})", release))
        else:
            check_writable_type(qtype, t.name, base.path)
            tensors.append(StreamTensor(t.name, t.shape, qtype, lambda i=t, q=qtype: quantized_chunks(
                base, i, q, imatrix=_importance(imatrix, i.name, q)), done=release))
    target = target_path(out, name, lambda: conventional_name(base, encoding))
    paths = yield from write_gguf_stream(w, target, tensors, sources=[*base.files, *adapter.files],
                                         overwrite=overwrite, cancel=cancel)
    yield Progress(1, 1, _finish_message(len(targets), len(replaced), target, warnings), warnings=tuple(warnings))
    return paths


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.txt"))


def _merge_hf_to_gguf(base: Model, adapter: Model, cfg: dict, warnings: list[str], out, plan_or_preset, name,
                      split_max_size, split_max_tensors, overwrite, cancel, imatrix):
    from .hf_to_gguf import _model_folder, _target_path, _tensor_chunks, _write_metadata, prepare_hf_to_gguf
    from .hf_vocab import read_vocab
    from .lora import _plan

    plan = _resolve_plan(base, plan_or_preset, imatrix)
    conv = prepare_hf_to_gguf(_model_folder(base.path), plan)
    items = _plan(base, adapter, cfg, None)  # names, shapes and scales checked against the HF base
    deltas = {it.name: it.delta for it in items if it.delta is not None}
    replaced = {it.name: it.replace for it in items if it.replace is not None}
    folder = conv.folder
    if not _has_tokenizer(folder) and _has_tokenizer(adapter.path):
        folder = adapter.path  # adapters often ship the tokenizer the base folder lacks
    vocab = read_vocab(folder, conv.arch, conv.hparams)
    w = new_writer(conv.arch, split_max_tensors=split_max_tensors, split_max_size=split_max_size)
    _write_metadata(w, conv, vocab)
    tensors: list[StreamTensor] = []
    for ot in conv.tensors:
        release = (lambda n=ot.source: base.release(n)) if ot.source is not None else None
        if any(src in deltas or src in replaced for src in ot.sources):  # stacked experts, some merged
            tensors.append(StreamTensor(ot.name, ot.shape, ot.type, lambda o=ot: _stacked_merged_chunks(
                base, adapter, o, deltas, replaced, imatrix), f"Merging {ot.name} → {ot.type}"))
        elif ot.source in deltas:
            d = deltas[ot.source]
            info = base.info(ot.source)

            def chunks(ot=ot, d=d, info=info):
                a = adapter.tensor(d.a.name).to_float32()
                b = adapter.tensor(d.b.name).to_float32()
                perm = _qk_permutation(info.shape[0], ot.permute_heads) if ot.permute_heads else None
                if perm is not None:
                    b = np.ascontiguousarray(b[perm])
                return _merged_chunks(base, info, a, b, d.scale, ot.type, perm, _importance(imatrix, ot.name, ot.type))

            tensors.append(StreamTensor(ot.name, ot.shape, ot.type, chunks, f"Merging {ot.name} → {ot.type}", release))
        elif ot.source in replaced:
            tensors.append(StreamTensor(ot.name, ot.shape, ot.type, lambda s=replaced[ot.source], o=ot:
                                        _replacement_chunks(adapter, s, o.type, o.permute_heads,
                                                            _importance(imatrix, o.name, o.type)),
                                        f"Replacing {ot.name} → {ot.type}"))
        else:
            tensors.append(StreamTensor(ot.name, ot.shape, ot.type, lambda o=ot: _tensor_chunks(base, o, imatrix),
                                        done=release))
    target = _target_path(conv, out, name)
    paths = yield from write_gguf_stream(w, target, tensors, sources=[*base.files, *adapter.files],
                                         overwrite=overwrite, cancel=cancel)
    yield Progress(1, 1, _finish_message(len(deltas), len(replaced), target, warnings), warnings=tuple(warnings))
    return paths
