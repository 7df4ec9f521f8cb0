"""Decoder architectures as data: one :class:`ArchSpec` per architecture, read by
:class:`~workbench.infer.decoder.DecoderEngine` (one engine for every entry).

A spec says how the decoder differs from plain llama: norm kind and placement, per-head q/k norms, activation,
rope per layer, embedding / attention scaling, soft-caps, which layers attend through a sliding window, biases,
fused matrices, tied head, MoE routing.  Values that differ between models of one architecture come from the
config.json (read by the small functions below); the spec says which config keys mean what.  Pure data: this
module imports no engine and no loader.  Reference for each entry: transformers' ``modeling_<arch>.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

Config = dict[str, Any]
FULL, SLIDING = "full_attention", "sliding_attention"


def _window_size(cfg: Config) -> int | None:
    w = cfg.get("sliding_window")
    return int(w) if w else None


def layer_types(cfg: Config, n_layer: int, rule: str) -> list[str]:
    """FULL / SLIDING per layer.  ``rule``: "none" (no window), "all" (every layer when ``sliding_window`` is
    set: mistral, phi3, qwen3moe), "qwen" (layer_types, else sliding from ``max_window_layers`` on when
    ``use_sliding_window``), "alternate" (layer_types, else even layers sliding: gemma2), "pattern" (layer_types,
    else every ``sliding_window_pattern``-th layer full: gemma3)."""
    if rule == "none" or _window_size(cfg) is None:
        return [FULL] * n_layer
    if rule == "all":
        if cfg.get("use_sliding_window") is False:  # qwen3moe's switch
            return [FULL] * n_layer
        return [SLIDING] * n_layer
    given = cfg.get("layer_types")
    if isinstance(given, list) and len(given) == n_layer:
        return [SLIDING if t == SLIDING else FULL for t in given]
    if rule == "qwen":
        if not cfg.get("use_sliding_window"):
            return [FULL] * n_layer
        first = int(cfg.get("max_window_layers") or 0)
        return [SLIDING if i >= first else FULL for i in range(n_layer)]
    if rule == "alternate":
        return [SLIDING if (i + 1) % 2 else FULL for i in range(n_layer)]
    if rule == "pattern":
        p = int(cfg.get("sliding_window_pattern") or 6)
        return [SLIDING if (i + 1) % p else FULL for i in range(n_layer)]
    raise ValueError(f"unknown window rule {rule!r}")


def rope_config(cfg: Config, layer_type: str = FULL) -> dict[str, Any]:
    """The rope parameters of one layer kind as a flat dict: ``rope_theta`` plus the scaling entries
    (``rope_type``, ``factor``, ``short_factor``...), from transformers 5's ``rope_parameters`` (flat, or keyed
    by layer type as gemma3 writes it) or the older ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq``."""
    params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    if isinstance(params.get(layer_type), dict):  # per layer kind (gemma3)
        params = params[layer_type]
    elif FULL in params or SLIDING in params:
        params = params.get(FULL) or {}
    out = dict(params)
    scaling = cfg.get("rope_scaling")
    if layer_type == SLIDING and "rope_local_base_freq" in cfg and "rope_theta" not in out:
        out["rope_theta"] = cfg["rope_local_base_freq"]  # old gemma3 configs: the local layers are not scaled
    elif isinstance(scaling, dict) and not params:
        out.update(scaling)
    theta = out.get("rope_theta") or cfg.get("rope_theta") or 10000.0
    out["rope_theta"] = float(theta)
    if "type" in out and "rope_type" not in out:
        out["rope_type"] = out.pop("type")
    if "partial_rotary_factor" not in out and "partial_rotary_factor" in cfg:
        out["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    if out.get("rope_type") in ("longrope", "su"):
        out.setdefault("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        out.setdefault("max_position_embeddings", cfg.get("max_position_embeddings"))
    return out


def longrope_attention_factor(rc: dict[str, Any]) -> float:
    """Phi3's cos/sin multiplier: ``attention_factor``, else sqrt(1 + ln(factor) / ln(original max)) with factor
    = max_position_embeddings / original_max_position_embeddings (transformers' rule)."""
    if rc.get("attention_factor") is not None:
        return float(rc["attention_factor"])
    orig = float(rc["original_max_position_embeddings"])
    factor = rc.get("factor") or float(rc.get("max_position_embeddings") or orig) / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def _gemma_attn_scale(cfg: Config, head_dim: int) -> float:
    return float(cfg.get("query_pre_attn_scalar") or head_dim) ** -0.5


def _head_dim_scale(cfg: Config, head_dim: int) -> float:
    return head_dim ** -0.5


@dataclass(frozen=True)
class ArchSpec:
    """How one decoder architecture computes (read by :class:`~workbench.infer.decoder.DecoderEngine`)."""

    name: str
    model_types: tuple[str, ...]  # HF config ``model_type`` values
    architectures: tuple[str, ...]  # HF ``architectures[0]`` values
    norm_offset: float = 0.0  # RMSNorm scale is (offset + w): Gemma stores w of (1 + w)
    sandwich_norms: bool = False  # gemma2/3: post_attention_layernorm on the attention output, and
    #                               pre_/post_feedforward_layernorm around the MLP
    qk_norm: bool = False  # RMSNorm per head on q and k before rope (qwen3, gemma3)
    activation: str = "silu"  # "silu" (SwiGLU) | "gelu_tanh" (GeGLU)
    activation_keys: tuple[str, ...] = ("hidden_act",)  # config keys naming the activation
    embed_scale: bool = False  # embeddings times float32(sqrt(hidden)) (Gemma)
    attn_scale: Callable[[Config, int], float] = _head_dim_scale  # scores multiplier
    attn_softcap_key: str | None = None  # config key: scores = cap * tanh(scores / cap) (gemma2)
    final_softcap_key: str | None = None  # config key: logits = cap * tanh(logits / cap) (gemma2)
    window_rule: str = "none"  # see :func:`layer_types`
    fused_qkv: bool = False  # one self_attn.qkv_proj [(nh + 2 nkv) hd, H] (phi3)
    fused_gate_up: bool = False  # one mlp.gate_up_proj [2F, H], gate rows first (phi3)
    # the head is tied to the embeddings when the model has no lm_head.weight (gemma always; llama, qwen by size)
    moe: bool = False  # qwen3moe: routed experts (see the moe_* keys of the config)


SPECS: dict[str, ArchSpec] = {s.name: s for s in (
    ArchSpec("llama", ("llama",), ("LlamaForCausalLM",)),
    ArchSpec("mistral", ("mistral",), ("MistralForCausalLM",), window_rule="all"),
    ArchSpec("qwen2", ("qwen2",), ("Qwen2ForCausalLM",), window_rule="qwen"),
    ArchSpec("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), qk_norm=True, window_rule="qwen"),
    ArchSpec("qwen3moe", ("qwen3_moe",), ("Qwen3MoeForCausalLM",), qk_norm=True, window_rule="all", moe=True),
    ArchSpec("gemma2", ("gemma2",), ("Gemma2ForCausalLM",), norm_offset=1.0, sandwich_norms=True,
             activation="gelu_tanh", activation_keys=("hidden_activation", "hidden_act"), embed_scale=True,
             attn_scale=_gemma_attn_scale, attn_softcap_key="attn_logit_softcapping",
             final_softcap_key="final_logit_softcapping", window_rule="alternate"),
    ArchSpec("gemma3", ("gemma3_text",), ("Gemma3ForCausalLM",), norm_offset=1.0, sandwich_norms=True,
             qk_norm=True, activation="gelu_tanh", activation_keys=("hidden_activation", "hidden_act"),
             embed_scale=True, attn_scale=_gemma_attn_scale, attn_softcap_key="attn_logit_softcapping",
             final_softcap_key="final_logit_softcapping", window_rule="pattern"),
    ArchSpec("phi3", ("phi3",), ("Phi3ForCausalLM",), fused_qkv=True, fused_gate_up=True, window_rule="all"),
)}

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh"}


def arch_name(config: Config | None = None, architecture: str | None = None) -> str | None:
    """The spec name for a config (its ``model_type``, then ``architectures[0]``) or an HF class name."""
    names: list[str] = []
    if config:
        names.append(str(config.get("model_type") or ""))
        archs = config.get("architectures")
        if isinstance(archs, list) and archs:
            names.append(str(archs[0]))
    if architecture:
        names.append(architecture)
    for n in names:
        for spec in SPECS.values():
            if n == spec.name or n in spec.model_types or n in spec.architectures:
                return spec.name
    return None


def spec_for(config: Config, arch: str | None = None) -> ArchSpec | None:
    """The spec of a model: by its config first (a mistral folder loads as GGUF arch "llama" but keeps its
    window), then by the loader's ``arch``."""
    name = arch_name(config) or arch_name(architecture=arch)
    return SPECS.get(name) if name else None
