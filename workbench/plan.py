"""Per-tensor quantization plans: presets that reproduce llama-quantize, rules and overrides.

The preset logic follows llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp, the release vendored
by llama-cpp-python 0.3.36): which tensors may be quantized, the output/token-embedding rules, the
attn_v / ffn_down "use more bits" layers, and the fallbacks for rows that do not fit a block.  Like
llama-quantize, the layer counters advance in its loader's tensor order (layer number, then name), so
the same layers are raised.

Precedence: a per-tensor override, else the first matching regex rule (like ``--tensor-type``), else
the preset.  Rules and overrides still pass through the block-size fallback.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import LlamaFileType as FT

from .archs import gguf_arch, to_gguf_name
from .dtypes import block_info, is_quantized
from .errors import UnsupportedError, WorkbenchError, quote
from .model import Model

# preset -> (llama file type, default ggml type)
PRESETS: dict[str, tuple[FT, str]] = {
    "F32": (FT.ALL_F32, "F32"), "F16": (FT.MOSTLY_F16, "F16"), "BF16": (FT.MOSTLY_BF16, "BF16"),
    "Q8_0": (FT.MOSTLY_Q8_0, "Q8_0"), "Q4_0": (FT.MOSTLY_Q4_0, "Q4_0"), "Q4_1": (FT.MOSTLY_Q4_1, "Q4_1"),
    "Q5_0": (FT.MOSTLY_Q5_0, "Q5_0"), "Q5_1": (FT.MOSTLY_Q5_1, "Q5_1"),
    "Q2_K": (FT.MOSTLY_Q2_K, "Q2_K"), "Q2_K_S": (FT.MOSTLY_Q2_K_S, "Q2_K"),
    "Q3_K_S": (FT.MOSTLY_Q3_K_S, "Q3_K"), "Q3_K_M": (FT.MOSTLY_Q3_K_M, "Q3_K"), "Q3_K_L": (FT.MOSTLY_Q3_K_L, "Q3_K"),
    "Q4_K_S": (FT.MOSTLY_Q4_K_S, "Q4_K"), "Q4_K_M": (FT.MOSTLY_Q4_K_M, "Q4_K"),
    "Q5_K_S": (FT.MOSTLY_Q5_K_S, "Q5_K"), "Q5_K_M": (FT.MOSTLY_Q5_K_M, "Q5_K"),
    "Q6_K": (FT.MOSTLY_Q6_K, "Q6_K"), "IQ4_NL": (FT.MOSTLY_IQ4_NL, "IQ4_NL"), "IQ4_XS": (FT.MOSTLY_IQ4_XS, "IQ4_XS"),
}
# every type a plan may assign
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS",
         "Q3_K", "Q2_K"]

_FALLBACK = {"IQ4_XS": "IQ4_NL", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# substrings that llama-quantize never quantizes (tensor_allows_quantization)
_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
          "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight", "attn_rel_b.weight",
          ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
          "a.rvq.codebook", "mm.a.code_embd", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
          "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
          "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
          "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight")


def row_fits(qtype: str, shape: tuple[int, ...]) -> bool:
    block, _ = block_info(qtype)
    return (shape[-1] if shape else 1) % block == 0


def tensor_nbytes(qtype: str, shape: tuple[int, ...]) -> int:
    block, size = block_info(qtype)
    n = math.prod(shape)
    return n // block * size


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    ne = list(reversed(shape)) or [1]
    dims = 1
    for i, d in enumerate(ne):
        if d > 1:
            dims = i + 1
    return dims


def category(gname: str) -> str:
    """llama-quantize's tensor_get_category."""
    if gname == "output.weight":
        return "output"
    if gname in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in gname:
            return cat
    return "other"


def allows_quantization(gname: str, shape: tuple[int, ...]) -> bool:
    """llama-quantize's tensor_allows_quantization (quantize_output_tensor on)."""
    if ggml_n_dims(shape) < 2 or not gname.endswith("weight"):
        return False
    if gname in ("position_embd.weight", "token_types.weight"):
        return False
    return not any(s in gname for s in _NEVER)


# tensors convert_hf_to_gguf writes in F32 whatever the output type (ModelBase.prepare_tensors)
_CONVERTER_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "ssm_conv1d", "shortconv.conv.weight",
                  "time_mix_first.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_decay_w1.weight",
                  "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "_norm.weight")


def converter_keeps_f32(gname: str) -> bool:
    return gname in ("position_embd.weight", "token_types.weight") or any(s in gname for s in _CONVERTER_F32)


_BLK = re.compile(r"^blk\.(\d+)\.")
# one expert's matrix in a Hugging Face MoE checkpoint (qwen3moe ``mlp.experts.5.down_proj.weight``, mixtral
# ``block_sparse_moe.experts.5.w2.weight``): the converter stacks them into one 3-D GGUF tensor
_HF_EXPERT = re.compile(r"^(.*\.experts)\.\d+\.(\w+)\.weight$")


def plan_gguf_name(name: str, arch: str | None, n_blocks: int) -> str:
    """The GGUF name a tensor is planned under: gguf-py's name, and for one expert of a Hugging Face MoE layer the
    stacked ``blk.N.ffn_{gate,up,down}_exps.weight`` it becomes (each expert gets that tensor's type)."""
    gname = to_gguf_name(name, arch, n_blocks)
    m = _HF_EXPERT.match(name) if gname == name else None
    if m is not None:
        stacked = f"{m.group(1)}.{m.group(2)}"
        merged = to_gguf_name(stacked, arch, n_blocks)
        if merged != stacked:
            return merged + ".weight"
    return gname


def loader_order(gname: str) -> tuple[int, bytes]:
    """llama.cpp's weight_name_comparer: tensors outside blk.N first, then by layer number, then by name."""
    m = _BLK.match(gname)
    return (int(m.group(1)) if m else -1, gname.encode())


# layer counts llama.cpp's loaders call LLM_TYPE_70B (src/models/<arch>.cpp load_arch_hparams)
_70B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


MAX_LAYERS = 1024  # more than any real model has (a damaged block_count must not build a million-layer name map)


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class ModelFacts:
    """What the preset rules need to know about the model."""

    arch: str | None
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head and self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B (its attn_v rule depends on it), as each architecture's loader sets it."""
        if _70B_LAYERS.get(self.arch or "") != self.n_layer:
            return False
        if self.arch == "llama":  # 80 layers: 65B when every head is a KV head; 8 experts are never "70B"
            return self.n_head != self.n_head_kv and self.n_expert != 8
        return True

    @classmethod
    def from_model(cls, model: Model) -> "ModelFacts":
        arch = gguf_arch(model.architecture)

        def first(*keys, default=0):
            for k in keys:  # a value of the wrong type or out of range (a damaged file) counts as absent
                v = model.meta(k)
                if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v <= 1 << 20:
                    return int(v)
            return default

        a = arch or ""
        n_layer = first(f"{a}.block_count", "num_hidden_layers", "n_layer", "num_layers")
        if not n_layer or n_layer > MAX_LAYERS:
            layers = [k for k in model.layers() if k is not None]
            n_layer = min(len(layers), MAX_LAYERS)
        n_head = first(f"{a}.attention.head_count", "num_attention_heads", "num_heads", "n_head")
        n_head_kv = first(f"{a}.attention.head_count_kv", "num_key_value_heads", default=n_head)
        n_expert = first(f"{a}.expert_count", "num_local_experts", "num_experts")
        return cls(arch, n_layer, n_head, n_head_kv, n_expert)


@dataclass(frozen=True)
class PlanEntry:
    name: str  # the source model's tensor name
    gguf_name: str
    shape: tuple[int, ...]
    source: str  # source dtype
    type: str  # planned type
    reason: str  # "preset Q4_K_M", "rule blk\..*", "override", "not quantized", "... (fallback from Q4_K)"
    nbytes: int

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)


class _Counters:
    def __init__(self, n_attn_v: int, n_layer: int):
        self.n_attention_wv, self.i_attention_wv = n_attn_v, 0
        self.n_ffn = n_layer
        self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0


def preset_type(preset: str, gname: str, shape: tuple[int, ...], facts: ModelFacts, cnt: _Counters,
                tied: bool, has_imatrix: bool) -> str:
    """llama_tensor_get_type_impl for the supported file types (before the fallback)."""
    ftype, new = PRESETS[preset]
    cat = category(gname)
    p = preset
    if cat == "output" or (tied and cat == "token_embd"):
        block, _ = block_info(new)
        if facts.arch == "falcon" or shape[-1] % block:
            return "Q8_0"
        return "Q6_K" if new != "Q8_0" else new
    if cat == "token_embd":
        return new
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        i, n = cnt.i_attention_wv, cnt.n_attention_wv
        if p == "Q2_K":
            new = "Q4_K" if facts.n_gqa >= 4 else "Q3_K"
        elif p == "Q2_K_S" and facts.n_gqa >= 4:
            new = "Q4_K"
        elif p == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif p == "Q3_K_L":
            new = "Q5_K"
        elif p in ("IQ4_NL", "IQ4_XS") and facts.n_gqa >= 4:
            new = "Q5_K"
        elif p in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "Q6_K"
        elif p == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if facts.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if facts.n_expert == 8:
            new = "Q8_0"
        cnt.i_attention_wv += 1
        return new
    if cat == "attn_k":
        return "Q8_0" if facts.n_expert == 8 else new
    if cat == "ffn_down":
        i, n = cnt.i_ffn_down, cnt.n_ffn
        m = _BLK.match(gname) if facts.n_expert > 1 else None
        if m is not None and int(m.group(1)) < n:  # experts (+ shared ones): not one ffn_down per layer
            i = int(m.group(1))
        falcon = facts.arch == "falcon"
        if p == "Q2_K":
            new = "Q3_K"
        elif p == "Q2_K_S":
            if i < n // 8:
                new = "Q4_K"
        elif p == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else ("Q4_K" if not falcon or use_more_bits(i, n) else "Q3_K")
        elif p == "Q3_K_L":
            new = "Q4_K" if falcon else "Q5_K"
        elif p == "Q4_K_M":
            if falcon:
                new = "Q6_K" if i < n // 16 else ("Q5_K" if use_more_bits(i, n) else "Q4_K")
            elif use_more_bits(i, n):
                new = "Q6_K"
        elif i < n // 8 and p in ("IQ4_NL", "IQ4_XS") and not has_imatrix:
            new = "Q5_K"
        elif p == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif p == "Q4_K_S" and not falcon and i < n // 8:
            new = "Q5_K"
        elif p in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            new = "Q4_1" if p == "Q4_0" else "Q5_1"
        cnt.i_ffn_down += 1
        return new
    if cat == "attn_output":
        if facts.arch != "falcon":
            if facts.n_expert == 8:
                if p in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"):
                    new = "Q5_K"
            else:
                new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(p, new)
        elif p == "Q3_K_L":
            new = "Q4_K"
        return new
    if cat == "ffn_gate":
        cnt.i_ffn_gate += 1
    elif cat == "ffn_up":
        cnt.i_ffn_up += 1
    return new


def fallback(qtype: str, shape: tuple[int, ...]) -> str:
    """llama-quantize's tensor_type_fallback for a row length that does not fit the block."""
    if row_fits(qtype, shape):
        return qtype
    block, _ = block_info(qtype)
    new = _FALLBACK.get(qtype, qtype if block <= 32 else None)
    if new is None:
        raise WorkbenchError(f"no fallback is defined for type {qtype}")
    return new if row_fits(new, shape) else "F16"


@dataclass
class Plan:
    """A type for every tensor of a model.  Edit ``preset``, ``rules`` and ``overrides``; read ``entries``."""

    model: Model
    preset: str = "Q8_0"
    rules: list[tuple[str, str]] = field(default_factory=list)  # (regex searched in the GGUF name, type)
    overrides: dict[str, str] = field(default_factory=dict)  # source tensor name -> type
    has_imatrix: bool = False

    def __post_init__(self) -> None:
        if self.model.format == "peft":  # LoRA factors are not weights to quantize
            raise UnsupportedError("a PEFT LoRA adapter has no quantization plan", path=self.model.path,
                                   hint="Merge it into its base model (`workbench merge-lora`, with --type to "
                                   "quantize), or write a GGUF LoRA (`workbench lora-to-gguf`).")
        self.facts = ModelFacts.from_model(self.model)
        self._entries: list[PlanEntry] | None = None
        self.validate()

    # -- editing (each call invalidates the cached entries) ---------------------------------------
    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise WorkbenchError(f"unknown preset {quote(self.preset)}", hint="Choose one of: " + ", ".join(PRESETS))
        for pattern, qtype in self.rules:
            _check_type(qtype)
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as exc:
                raise WorkbenchError(f"rule {quote(pattern)} is not a valid regular expression: {exc}") from None
        for name, qtype in self.overrides.items():
            _check_type(qtype)
            if name not in self.model:
                raise WorkbenchError(f"override names tensor {quote(name, 60)}, which this model does not have")
        self._entries = None

    def set_preset(self, preset: str) -> None:
        self.preset = preset
        self.validate()

    def set_rules(self, rules) -> None:
        self.rules = [(str(p), str(t).upper()) for p, t in rules]
        self.validate()

    def set_override(self, name: str, qtype: str | None) -> None:
        if qtype is None:
            self.overrides.pop(name, None)
        else:
            self.overrides[name] = qtype.upper()
        self.validate()

    def set_overrides(self, names, qtype: str | None) -> None:
        for n in names:
            if qtype is None:
                self.overrides.pop(n, None)
            else:
                self.overrides[n] = qtype.upper()
        self.validate()

    def set_state(self, preset: str, rules, overrides: dict[str, str]) -> None:
        """Replace preset, rules and overrides at once (undo/redo, loading a plan)."""
        self.preset = preset
        self.rules = [(str(p), str(t).upper()) for p, t in rules]
        self.overrides = {str(k): str(v).upper() for k, v in overrides.items()}
        self.validate()

    def copy(self) -> "Plan":
        return Plan(self.model, self.preset, list(self.rules), dict(self.overrides), self.has_imatrix)

    # -- results -----------------------------------------------------------------------------------
    @property
    def entries(self) -> list[PlanEntry]:
        if self._entries is None:
            self._entries = self._resolve()
            self._index = {e.name: i for i, e in enumerate(self._entries)}
        return self._entries

    def entry(self, name: str) -> PlanEntry:
        entries = self.entries  # resolves (and fills the name index) if needed
        try:
            return entries[self._index[name]]
        except KeyError:
            raise WorkbenchError(f"no tensor named {name!r} in the plan") from None

    def type_of(self, name: str) -> str:
        return self.entry(name).type

    def types(self) -> dict[str, str]:
        return {e.name: e.type for e in self.entries}

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @property
    def n_params(self) -> int:
        return sum(e.n_params for e in self.entries)

    @property
    def bits_per_weight(self) -> float:
        n = self.n_params
        return 8.0 * self.nbytes / n if n else 0.0

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.type] = out.get(e.type, 0) + 1
        return out

    def _resolve(self) -> list[PlanEntry]:
        facts = self.facts
        infos = self.model.tensors
        gnames = {t.name: plan_gguf_name(t.name, facts.arch, facts.n_layer) for t in infos}
        tied = "output.weight" not in gnames.values()
        n_attn_v = sum(1 for g in gnames.values() if category(g) in ("attn_v", "attn_qkv", "attn_kv_b"))
        cnt = _Counters(n_attn_v, facts.n_layer)
        compiled = [(re.compile(p), t) for p, t in self.rules]
        default = PRESETS[self.preset][1]
        by_name: dict[str, PlanEntry] = {}
        # llama-quantize walks tensors in its loader's order (layer number, then name): the layer
        # counters below depend on that order
        for info in sorted(infos, key=lambda t: loader_order(gnames[t.name])):
            g, shape = gnames[info.name], info.shape
            override = self.overrides.get(info.name)
            if not allows_quantization(g, shape):
                if override is not None:
                    qtype, reason = override, "override"
                else:
                    # kept as stored, except 1-D float tensors (norms, biases), which GGUF keeps in F32, and from
                    # a Hugging Face checkpoint the tensors llama.cpp's converter always writes in F32 (the router)
                    floaty = info.dtype in ("F16", "BF16", "F32")
                    to_f32 = ggml_n_dims(shape) < 2 or (self.model.format != "gguf" and converter_keeps_f32(g))
                    qtype = "F32" if floaty and to_f32 else info.dtype
                    reason = "not quantized"
                qtype = fallback(qtype, shape) if is_quantized(qtype) else qtype
                by_name[info.name] = PlanEntry(info.name, g, shape, info.dtype, qtype, reason, tensor_nbytes(qtype, shape))
                continue
            reason = f"preset {self.preset}"
            if override is not None:
                qtype, reason = override, "override"
            else:
                rule = next(((p.pattern, t) for p, t in compiled if p.search(g)), None)
                if rule is not None:
                    qtype, reason = rule[1], f"rule {rule[0]}"
                elif is_quantized(default):
                    qtype = preset_type(self.preset, g, shape, facts, cnt, tied, self.has_imatrix)
                else:
                    qtype = default
            if is_quantized(qtype):
                fitted = fallback(qtype, shape)
                if fitted != qtype:
                    reason += f" (fallback from {qtype}: row of {shape[-1]})"
                    qtype = fitted
            by_name[info.name] = PlanEntry(info.name, g, shape, info.dtype, qtype, reason, tensor_nbytes(qtype, shape))
        return [by_name[t.name] for t in infos]

    # -- files -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": "model-workbench-plan", "version": 1, "preset": self.preset,
                "rules": [[p, t] for p, t in self.rules], "overrides": dict(self.overrides),
                "has_imatrix": self.has_imatrix}

    @classmethod
    def from_json(cls, model: Model, data: dict[str, Any]) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != "model-workbench-plan":
            raise WorkbenchError("not a Model Workbench plan (expected \"format\": \"model-workbench-plan\")")
        version = data.get("version")
        if type(version) is not int or version != 1:
            raise WorkbenchError(f"plan version {quote(version)} is not supported (expected 1)")
        preset, rules, overrides = data.get("preset", "Q8_0"), data.get("rules", []), data.get("overrides") or {}
        has_imatrix = data.get("has_imatrix", False)
        if not isinstance(preset, str):
            raise WorkbenchError(f"\"preset\" should be a preset name such as \"Q4_K_M\" but is {quote(preset)}")
        if not isinstance(rules, list) or not all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                                                  and isinstance(r[1], str) for r in rules):
            raise WorkbenchError(f"\"rules\" should be a list of [regex, type] string pairs but is {quote(rules)}")
        if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
            raise WorkbenchError(f"\"overrides\" should map tensor names to type names but is {quote(overrides)}")
        if not isinstance(has_imatrix, bool):
            raise WorkbenchError(f"\"has_imatrix\" should be true or false but is {quote(has_imatrix)}")
        return cls(model, preset, [(p, t.upper()) for p, t in rules], {k: v.upper() for k, v in overrides.items()},
                   has_imatrix)

    def save(self, path) -> None:
        from .fsutil import atomic_write_path

        with atomic_write_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, model: Model, path) -> "Plan":
        from .formats.hf import load_json

        data = load_json(Path(path))  # a FormatError naming the file when it is unreadable or not JSON
        try:
            return cls.from_json(model, data)
        except WorkbenchError as exc:
            raise WorkbenchError(exc.message, path=path, hint=exc.hint) from None

    def tensor_type_file(self) -> str:
        """The plan as llama-quantize's ``--tensor-type-file``: one anchored ``pattern=type`` per quantized tensor.

        Use it with the preset's file type: ``llama-quantize --tensor-type-file plan.txt in.gguf out.gguf Q4_K_M``.
        """
        lines = {}  # the experts of a Hugging Face MoE layer share their stacked tensor's line
        for e in sorted(self.entries, key=lambda e: e.gguf_name):
            if allows_quantization(e.gguf_name, e.shape) and is_quantized(e.type):
                lines[f"^{re.escape(e.gguf_name)}$={e.type.lower()}"] = None
        return "\n".join(lines) + ("\n" if lines else "")


def _check_type(qtype: str) -> None:
    if qtype.upper() not in TYPES:
        raise WorkbenchError(f"unknown tensor type {quote(qtype)}", hint="Choose one of: " + ", ".join(TYPES))
