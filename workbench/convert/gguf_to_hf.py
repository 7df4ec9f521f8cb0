"""GGUF -> Hugging Face: tensor names, the llama Q/K un-permutation, config.json and tokenizer files.

The reverse of llama.cpp's ``convert_hf_to_gguf.py`` for the architectures we support (llama family incl.
mistral with a sliding window, qwen2, qwen3, qwen3moe, gemma2, gemma3 text, phi3, bert, t5): tensor names
come from gguf-py's ``TensorNameMap`` read backwards (llama, qwen2, bert, t5: for each GGUF name the HF
candidate written in the architecture's own naming style) or from an explicit table (the newer decoders,
whose GGUF names have several HF candidates), ``config.json`` and ``generation_config.json`` from the GGUF
hyperparameters, and ``tokenizer.json`` from the GGUF vocabulary.

Per-tensor value changes a reader must apply on top of the names: :func:`qk_heads` / :func:`unpermute`
(llama Q/K rows), :func:`value_offset` (Gemma norms: HF = GGUF - 1) and :func:`expert_names` (qwen3moe's
3-D ``ffn_*_exps`` tensors hold one HF matrix per expert along their first axis).  Only phi3's small
``rope_factors_*`` tensors are read here (into config.json's ``rope_scaling``).
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, TensorNameMap, TokenType

from ..errors import UnsupportedError
from ..model import Model

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "bert", "t5")

# the HF naming style of each architecture: the one TensorNameMap candidate we write back
_LLAMA_STYLE = re.compile(r"^(lm_head|model\.(embed_tokens|norm|layers\.\d+\.(input_layernorm|post_attention_layernorm"
                          r"|self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)))$")
_HF_STYLE = {
    "llama": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "bert": re.compile(r"^(embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)"
                       r"|encoder\.layer\.\d+\.(attention\.(self\.(query|key|value)|output\.(dense|LayerNorm))"
                       r"|intermediate\.dense|output\.(dense|LayerNorm)))$"),
    "t5": re.compile(r"^(shared|lm_head|(encoder|decoder)\.(final_layer_norm|block\.\d+\.layer\.\d\.(layer_norm"
                     r"|(SelfAttention|EncDecAttention)\.(q|k|v|o|relative_attention_bias)"
                     r"|DenseReluDense\.(wi|wi_0|wi_1|wo))))$"),
}
# GGUF tensors llama.cpp computes from the config (not weights of the HF model): not exported
_DERIVED = re.compile(r"^(rope_freqs|rope_factors_long|rope_factors_short|blk\.\d+\.attn_rot_embd)\.weight$")

# the newer decoders: GGUF name stem (``blk.N.`` removed) -> HF module, as the hub checkpoints name them
_DECODER_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_DECODER_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                  "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                  "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm",
                  "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GEMMA_LAYER = {**_DECODER_LAYER, "ffn_norm": "pre_feedforward_layernorm",
                "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
_TABLES = {
    "qwen3": _DECODER_LAYER,
    "qwen3moe": {**_DECODER_LAYER, "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.gate_proj",
                 "ffn_up_exps": "mlp.experts.up_proj", "ffn_down_exps": "mlp.experts.down_proj"},
    "gemma2": _GEMMA_LAYER,
    "gemma3": _GEMMA_LAYER,
    "phi3": {**_DECODER_LAYER, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
_EXPERTS = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")
_GEMMA_NORM = re.compile(r"^(output_norm|blk\.\d+\.\w*norm)\.weight$")

_HF_ARCH = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "bert": ("BertModel", "bert"),
    "t5": ("T5ForConditionalGeneration", "t5"),
}
TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _arch_enum(arch: str) -> MODEL_ARCH:
    for key, name in MODEL_ARCH_NAMES.items():
        if name == arch:
            return key
    raise UnsupportedError(f"unknown GGUF architecture {arch!r}")


@lru_cache(maxsize=16)
def _reverse_map(arch: str, n_blocks: int) -> dict[str, tuple[str, ...]]:
    """GGUF name stem -> the HF candidates gguf-py maps to it, in TensorNameMap's order."""
    tmap = TensorNameMap(_arch_enum(arch), n_blocks)
    rev: dict[str, list[str]] = {}
    for hf, (_kind, gguf_name) in tmap.mapping.items():
        if hf != gguf_name:
            rev.setdefault(gguf_name, []).append(hf)
    return {k: tuple(v) for k, v in rev.items()}


def _meta(model: Model, key: str, default: Any = None) -> Any:
    return model.meta(key, default)


def gguf_arch(model: Model) -> str | None:
    return _meta(model, "general.architecture", model.architecture)


def is_supported(model: Model) -> bool:
    return model.format == "gguf" and gguf_arch(model) in SUPPORTED_ARCHS


def _n_blocks(model: Model, arch: str) -> int:
    n = int(_meta(model, f"{arch}.block_count", 0) or 0)
    n = max(n, int(_meta(model, f"{arch}.decoder_block_count", 0) or 0))
    for t in model.tensors:  # trust the tensors over the header
        m = re.match(r"^(?:enc\.|dec\.)?blk\.(\d+)\.", t.name)
        if m:
            n = max(n, int(m.group(1)) + 1)
    return max(n, 1)


def hf_names(model: Model) -> dict[str, str | None]:
    """GGUF tensor name -> HF tensor name (None: a tensor llama.cpp derives, not exported).

    Tensors with no HF counterpart in the architecture's naming style keep their GGUF name.
    """
    arch = gguf_arch(model)
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedError(f"GGUF architecture {arch!r} has no Hugging Face export mapping",
                               path=model.path, hint="Supported: " + ", ".join(SUPPORTED_ARCHS))
    if arch in _TABLES:
        return _table_names(model, _TABLES[arch])
    rev = _reverse_map(arch, _n_blocks(model, arch))
    style = _HF_STYLE[arch]
    names = {t.name for t in model.tensors}
    out: dict[str, str | None] = {}
    for name in (t.name for t in model.tensors):
        if _DERIVED.match(name):
            out[name] = None
            continue
        stem, dot, suffix = name.rpartition(".")
        if not dot or suffix not in ("weight", "bias"):
            stem, suffix = name, ""
        candidates = [c for c in rev.get(stem, ()) if style.match(c)]
        if arch == "t5" and len(candidates) > 1:  # wi (relu) or wi_1 (gated: wi_0 is the gate)
            gated = stem.replace("ffn_up", "ffn_gate") + ".weight" in names
            candidates = [c for c in candidates if c.endswith("wi_1" if gated else "wi")] or candidates
        if not candidates:
            out[name] = name
            continue
        out[name] = candidates[0] + ("." + suffix if suffix else "")
    return out


def _table_names(model: Model, table: dict[str, str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in (t.name for t in model.tensors):
        stem, dot, suffix = name.rpartition(".")
        if _DERIVED.match(name):
            out[name] = None
        elif not dot or suffix not in ("weight", "bias"):
            out[name] = name
        elif stem in _DECODER_TOP:
            out[name] = f"{_DECODER_TOP[stem]}.{suffix}"
        elif (m := re.match(r"^blk\.(\d+)\.(\w+)$", stem)) and m.group(2) in table:
            out[name] = f"model.layers.{m.group(1)}.{table[m.group(2)]}.{suffix}"
        else:
            out[name] = name
    return out


def expert_names(model: Model, gguf_name: str) -> list[str] | None:
    """The per-expert HF names of a 3-D qwen3moe expert tensor (``blk.N.ffn_{gate,up,down}_exps.weight``,
    [n_expert, rows, cols]: slice ``e`` is ``model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight``), or None.

    :func:`hf_names` gives such a tensor one stacked name (``model.layers.N.mlp.experts.gate_proj.weight``) that
    no hub checkpoint uses: a reader keeping the experts stacked uses it, an exporter writes these names.
    """
    if gguf_arch(model) != "qwen3moe" or gguf_name not in model:
        return None
    m = _EXPERTS.match(gguf_name)
    shape = model.info(gguf_name).shape
    if not m or len(shape) != 3:
        return None
    return [f"model.layers.{m.group(1)}.mlp.experts.{e}.{m.group(2)}_proj.weight" for e in range(shape[0])]


def value_offset(model: Model, gguf_name: str) -> float:
    """What to add to the GGUF values of ``gguf_name`` to get the HF values: -1.0 for Gemma 2/3 RMSNorm weights
    (llama.cpp's converter stores 1 + w, the HF checkpoint w, used as ``x * (1 + w)``), else 0.0."""
    if gguf_arch(model) in ("gemma2", "gemma3") and _GEMMA_NORM.match(gguf_name):
        return -1.0
    return 0.0


# -- the llama Q/K rotary permutation ------------------------------------------------------------

def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's ``LlamaModel.permute`` for rows of ``n_head`` heads (the K heads for k_proj).

    GGUF keeps each head's rotary pairs interleaved; HF keeps the two halves apart.  Works on whole
    tensors or on row blocks that hold whole heads.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise UnsupportedError(f"{rows} rows cannot be split into {n_head} heads of rotary pairs")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's ``LlamaModel.permute`` (HF -> GGUF), for tests and round trips."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qk_heads(model: Model, gguf_name: str) -> int | None:
    """How many heads to un-permute ``gguf_name`` over, or None if it is not a permuted Q/K tensor."""
    if gguf_arch(model) != "llama":
        return None
    m = re.match(r"^blk\.\d+\.attn_([qk])\.(weight|bias)$", gguf_name)
    if not m:
        return None
    n_head = int(_meta(model, "llama.attention.head_count", 0) or 0)
    if not n_head:
        raise UnsupportedError("llama.attention.head_count is missing: Q/K cannot be un-permuted", path=model.path)
    if m.group(1) == "k":
        return int(_meta(model, "llama.attention.head_count_kv", n_head) or n_head)
    return n_head


# -- config.json ---------------------------------------------------------------------------------

def _shape(model: Model, name: str) -> tuple[int, ...] | None:
    return model.info(name).shape if name in model else None


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _token_ids(model: Model) -> dict[str, int]:
    out = {}
    for hf_key, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        v = _meta(model, f"tokenizer.ggml.{key}_token_id")
        if v is not None:
            out[hf_key] = int(v)
    return out


def _vocab_size(model: Model, arch: str) -> int | None:
    emb = _shape(model, "token_embd.weight")
    if emb is not None:
        return int(emb[0])
    v = _meta(model, f"{arch}.vocab_size")
    if v is not None:
        return int(v)
    tokens = _meta(model, "tokenizer.ggml.tokens")
    return len(tokens) if tokens is not None else None


def _rope_scaling(model: Model, arch: str) -> dict | None:
    kind = _meta(model, f"{arch}.rope.scaling.type")
    factor = _meta(model, f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor is None:
        return None
    out: dict[str, Any] = {"rope_type": str(kind), "factor": float(factor)}
    if kind == "linear":
        out["type"] = "linear"
    orig = _meta(model, f"{arch}.rope.scaling.original_context_length")
    if orig is not None:
        out["original_max_position_embeddings"] = int(orig)
    return out


def hf_config(model: Model, torch_dtype: str = "F16") -> dict[str, Any]:
    """config.json for a supported GGUF model, rebuilt from its hyperparameters and tensor shapes."""
    arch = gguf_arch(model)
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedError(f"GGUF architecture {arch!r} has no Hugging Face config mapping", path=model.path)
    k = lambda key, default=None: _meta(model, f"{arch}.{key}", default)  # noqa: E731
    # llama.cpp converts Mistral to the llama architecture; a sliding window (which llama has not) tells it apart
    mistral = arch == "llama" and (_int(k("attention.sliding_window")) or 0) > 0
    cls, model_type = _HF_ARCH["mistral" if mistral else arch]
    cfg: dict[str, Any] = {"architectures": [cls], "model_type": model_type}
    n_embd = _int(k("embedding_length"))
    n_head = _int(k("attention.head_count"))
    if arch in _TABLES:
        cfg.update(_decoder_config(model, arch))
    elif mistral:
        n_kv = _int(k("attention.head_count_kv")) or n_head
        cfg.update(
            hidden_size=n_embd, intermediate_size=_int(k("feed_forward_length")),
            num_hidden_layers=_int(k("block_count")), num_attention_heads=n_head, num_key_value_heads=n_kv,
            head_dim=_int(k("attention.key_length")) or (n_embd // n_head if n_embd and n_head else None),
            hidden_act="silu", rms_norm_eps=_float(k("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=_float(k("rope.freq_base", 10000.0)), max_position_embeddings=_int(k("context_length")),
            sliding_window=_int(k("attention.sliding_window")), vocab_size=_vocab_size(model, arch),
            tie_word_embeddings="output.weight" not in model, rope_scaling=_rope_scaling(model, arch),
            attention_dropout=0.0, initializer_range=0.02, use_cache=True,
        )
    elif arch in ("llama", "qwen2"):
        n_kv = _int(k("attention.head_count_kv")) or n_head
        cfg.update(
            hidden_size=n_embd, intermediate_size=_int(k("feed_forward_length")),
            num_hidden_layers=_int(k("block_count")), num_attention_heads=n_head, num_key_value_heads=n_kv,
            hidden_act="silu", rms_norm_eps=_float(k("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=_float(k("rope.freq_base", 10000.0)), max_position_embeddings=_int(k("context_length")),
            vocab_size=_vocab_size(model, arch), tie_word_embeddings="output.weight" not in model,
            rope_scaling=_rope_scaling(model, arch), initializer_range=0.02, use_cache=True,
        )
        head_dim = _int(k("attention.key_length"))
        if head_dim and n_embd and n_head and head_dim != n_embd // n_head:
            cfg["head_dim"] = head_dim
        if arch == "llama":
            cfg["attention_bias"] = "blk.0.attn_q.bias" in model
            cfg["mlp_bias"] = "blk.0.ffn_up.bias" in model
            cfg["pretraining_tp"] = 1
        else:
            cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg["num_hidden_layers"],
                       attention_dropout=0.0)
    elif arch == "bert":
        pos = _shape(model, "position_embd.weight")
        types = _shape(model, "token_types.weight")
        cfg.update(
            hidden_size=n_embd, intermediate_size=_int(k("feed_forward_length")),
            num_hidden_layers=_int(k("block_count")), num_attention_heads=n_head, hidden_act="gelu",
            layer_norm_eps=_float(k("attention.layer_norm_epsilon", 1e-12)),
            max_position_embeddings=int(pos[0]) if pos else _int(k("context_length")),
            type_vocab_size=int(types[0]) if types else _int(_meta(model, "tokenizer.ggml.token_type_count", 2)),
            vocab_size=_vocab_size(model, arch), hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            initializer_range=0.02, position_embedding_type="absolute", use_cache=True,
        )
    else:  # t5
        gated = "enc.blk.0.ffn_gate.weight" in model or "dec.blk.0.ffn_gate.weight" in model
        n_layer = _int(k("block_count"))
        cfg.update(
            d_model=n_embd, d_ff=_int(k("feed_forward_length")), d_kv=_int(k("attention.key_length")),
            num_heads=n_head, num_layers=n_layer, num_decoder_layers=_int(k("decoder_block_count")) or n_layer,
            relative_attention_num_buckets=_int(k("attention.relative_buckets_count", 32)),
            relative_attention_max_distance=128,
            layer_norm_epsilon=_float(k("attention.layer_norm_rms_epsilon", k("attention.layer_norm_epsilon", 1e-6))),
            feed_forward_proj="gated-gelu" if gated else "relu", dense_act_fn="gelu_new" if gated else "relu",
            is_gated_act=gated, is_encoder_decoder=True, n_positions=_int(k("context_length")),
            vocab_size=_vocab_size(model, arch), tie_word_embeddings="output.weight" not in model,
            dropout_rate=0.1, initializer_factor=1.0, use_cache=True,
        )
        start = k("decoder_start_token_id")
        cfg["decoder_start_token_id"] = int(start) if start is not None else 0
    cfg.update(_token_ids(model))
    cfg["torch_dtype"] = TORCH_DTYPES.get(torch_dtype, "float32")
    keep_none = ("rope_scaling", "sliding_window", "final_logit_softcapping", "attn_logit_softcapping")
    return {key: v for key, v in cfg.items() if v is not None or key in keep_none}


def _f32(x: float) -> float:
    """A float32 value as the shortest decimal that reads back to it (1.325, not 1.3250000476837158)."""
    return float(str(np.float32(x)))


def _swa_layers(model: Model, arch: str, n_layer: int, default_pattern: int) -> list[bool]:
    """Which layers use the sliding window, as llama.cpp's ``load_swa_pattern`` reads it: a per-layer bool
    array, or a period n (layer il slides when ``il % n < n - 1``; 0: every layer)."""
    pattern = _meta(model, f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, (list, tuple, np.ndarray)) and np.ndim(pattern) == 1:
        if len(pattern) < n_layer:
            raise UnsupportedError(f"{arch}.attention.sliding_window_pattern has {len(pattern)} entries for "
                                   f"{n_layer} layers", path=model.path)
        return [bool(x) for x in list(pattern)[:n_layer]]
    n = _swa_period(pattern, default_pattern)
    return [n == 0 or il % n < n - 1 for il in range(n_layer)]


def _swa_period(pattern: Any, default: int) -> int:
    if isinstance(pattern, (int, np.integer)) and not isinstance(pattern, bool) and 0 <= int(pattern) < 1 << 16:
        return int(pattern)
    return default


def _rope_factors(model: Model, name: str) -> list[float] | None:
    if name not in model:
        return None
    if model.info(name).n_params > 4096:  # one factor per rotary pair: a few dozen
        raise UnsupportedError(f"{name} has {model.info(name).n_params} values, not one per rotary pair",
                               path=model.path)
    values = np.asarray(model.tensor(name).to_float32(), np.float32).reshape(-1)
    return [_f32(x) for x in values.tolist()]


def _decoder_config(model: Model, arch: str) -> dict[str, Any]:
    """config.json fields of qwen3, qwen3moe, gemma2, gemma3 (text) and phi3, as their hub checkpoints spell them."""
    k = lambda key, default=None: _meta(model, f"{arch}.{key}", default)  # noqa: E731
    n_embd = _int(k("embedding_length"))
    n_head = _int(k("attention.head_count")) or 1
    n_layer = _int(k("block_count")) or _n_blocks(model, arch)
    head_dim = _int(k("attention.key_length")) or (n_embd // n_head if n_embd else None)
    cfg: dict[str, Any] = dict(
        hidden_size=n_embd, intermediate_size=_int(k("feed_forward_length")), num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=_int(k("attention.head_count_kv")) or n_head,
        head_dim=head_dim, max_position_embeddings=_int(k("context_length")),
        rms_norm_eps=_float(k("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=_float(k("rope.freq_base", 10000.0)), rope_scaling=_rope_scaling(model, arch),
        vocab_size=_vocab_size(model, arch), tie_word_embeddings="output.weight" not in model,
        attention_dropout=0.0, initializer_range=0.02, use_cache=True,
    )
    if arch in ("qwen3", "qwen3moe"):
        cfg.update(hidden_act="silu", attention_bias="blk.0.attn_q.bias" in model, use_sliding_window=False,
                   sliding_window=None, max_window_layers=n_layer)
    if arch == "qwen3moe":
        exps = _shape(model, "blk.0.ffn_gate_exps.weight")
        cfg.update(moe_intermediate_size=_int(k("expert_feed_forward_length")) or (int(exps[1]) if exps else None),
                   num_experts=_int(k("expert_count")) or (int(exps[0]) if exps else None),
                   num_experts_per_tok=_int(k("expert_used_count")),
                   # llama.cpp's qwen3moe graph always renormalizes the top-k weights
                   norm_topk_prob=bool(k("expert_weights_norm", True)), decoder_sparse_step=1, mlp_only_layers=[],
                   router_aux_loss_coef=0.001, output_router_logits=False)
        if cfg["intermediate_size"] is None:
            cfg["intermediate_size"] = cfg["moe_intermediate_size"]
    if arch in ("gemma2", "gemma3"):
        window = _int(k("attention.sliding_window"))
        if arch == "gemma2":
            window = window or 4096  # llama.cpp's default for Gemma 2
        swa = _swa_layers(model, arch, n_layer, 2 if arch == "gemma2" else 6) if window else [False] * n_layer
        scale = _float(k("attention.scale"))
        big = n_layer == (46 if arch == "gemma2" else 62)  # 27B: llama.cpp scales queries by 1/sqrt(n_embd/n_head)
        scalar = 1.0 / (scale * scale) if scale else (n_embd // n_head if big and n_embd else head_dim)
        if scalar is not None and abs(scalar - round(scalar)) < 1e-3:
            scalar = int(round(scalar))
        cfg.update(hidden_activation="gelu_pytorch_tanh", attention_bias=False, query_pre_attn_scalar=scalar,
                   sliding_window=window,
                   layer_types=["sliding_attention" if s else "full_attention" for s in swa],
                   final_logit_softcapping=_float(k("final_logit_softcapping")),
                   attn_logit_softcapping=_float(k("attn_logit_softcapping")))
        if arch == "gemma3":
            cfg["rope_local_base_freq"] = _float(k("rope.freq_base_swa", 10000.0))
            cfg["attn_logit_softcapping"] = None
            cfg["sliding_window_pattern"] = _swa_period(_meta(model, f"{arch}.attention.sliding_window_pattern"), 6)
        elif k("rope.freq_base_swa") is not None and _float(k("rope.freq_base_swa")) != cfg["rope_theta"]:
            raise UnsupportedError("gemma2.rope.freq_base_swa differs from the global rope base: Gemma 2 in "
                                   "transformers has one rope base", path=model.path)
    if arch == "phi3":
        rope_dims = _int(k("rope.dimension_count")) or head_dim
        window = _int(k("attention.sliding_window"))
        cfg.update(hidden_act="silu", sliding_window=window or None, resid_pdrop=0.0, embd_pdrop=0.0,
                   original_max_position_embeddings=_int(k("rope.scaling.original_context_length"))
                   or cfg["max_position_embeddings"])
        del cfg["head_dim"]  # phi3 derives it from hidden_size / num_attention_heads
        if rope_dims and head_dim and rope_dims != head_dim:
            cfg["partial_rotary_factor"] = rope_dims / head_dim
        long, short = _rope_factors(model, "rope_factors_long.weight"), _rope_factors(model, "rope_factors_short.weight")
        if long is not None or short is not None:
            if long is None or short is None or len(long) != len(short):
                raise UnsupportedError("rope_factors_long and rope_factors_short must both be present, of one "
                                       "length", path=model.path)
            # the hub's Phi-3/3.5/4-mini 128k configs: {"type": "longrope", "short_factor": [...], "long_factor": [...]}
            cfg["rope_scaling"] = {"type": "longrope", "short_factor": short, "long_factor": long}
    return cfg


def generation_config(model: Model) -> dict[str, Any] | None:
    """generation_config.json when the GGUF names its special tokens (eos and eot both end generation)."""
    ids = _token_ids(model)
    if not ids:
        return None
    eot = _meta(model, "tokenizer.ggml.eot_token_id")
    if eot is not None and "eos_token_id" in ids and int(eot) != ids["eos_token_id"]:
        ids["eos_token_id"] = [ids["eos_token_id"], int(eot)]
    if gguf_arch(model) == "t5":
        start = _meta(model, "t5.decoder_start_token_id")
        ids["decoder_start_token_id"] = int(start) if start is not None else 0
    return {**ids, "_from_model_config": True}


def derived_notes(model: Model) -> list[str]:
    """What the export cannot carry over, for the user."""
    notes = []
    if gguf_arch(model) == "phi3" and "rope_factors_long.weight" in model:
        orig = _meta(model, "phi3.rope.scaling.original_context_length")
        ctx = _meta(model, "phi3.context_length")
        att = _meta(model, "phi3.rope.scaling.attn_factor")
        if orig and ctx and att is not None:
            scale = float(ctx) / float(orig)
            default = math.sqrt(1 + math.log(scale) / math.log(float(orig))) if scale > 1 else 1.0
            if abs(float(att) - default) > 1e-4:
                notes.append(f"phi3.rope.scaling.attn_factor {float(att):.6f} differs from transformers' default "
                             f"{default:.6f}: add attention_factor to rope_scaling by hand")
    if "rope_freqs.weight" in model:
        notes.append("rope_freqs.weight (llama 3 rope scaling factors) is not exported: add the rope_scaling "
                     "entry of the original config.json by hand")
    return notes


# -- tokenizers ----------------------------------------------------------------------------------

def tokenizer_files(model: Model) -> tuple[dict[str, str], list[str]]:
    """Tokenizer files (name -> text) rebuilt from the GGUF vocabulary, and notes on what could not be.

    ``tokenizer.json`` is the document :mod:`workbench.infer.tokenizer` builds for its own tokenizer (gpt2 BPE,
    llama SentencePiece, t5 Unigram, bert WordPiece, gemma4), so the exported file encodes exactly like the
    app's tokenizer of the GGUF.  A GGUF that embeds the original ``tokenizer.huggingface.json`` gives it back
    unchanged.  ``tokenizer_config.json`` carries the special tokens, add_bos/add_eos and the chat template.
    """
    from ..infer.tokenizer import gguf_tokenizer_json, read_gguf_vocab, wordpiece_words

    files: dict[str, str] = {}
    notes: list[str] = []
    kind = _meta(model, "tokenizer.ggml.model")
    if _meta(model, "tokenizer.ggml.tokens") is None or kind is None:
        return files, notes
    try:
        v = read_gguf_vocab(model)
    except UnsupportedError:
        notes.append(f"tokenizer model {kind!r} is not rebuilt as tokenizer.json (gpt2, llama, t5, bert and "
                     "gemma4 vocabularies are); copy the original tokenizer files")
        return files, notes
    embedded = _meta(model, "tokenizer.huggingface.json")
    if embedded:
        files["tokenizer.json"] = str(embedded)
    else:
        doc, more = gguf_tokenizer_json(v)
        files["tokenizer.json"] = json.dumps(doc, ensure_ascii=False, indent=2)
        notes += more
    words = v.tokens
    if v.kind == "bert":
        words = wordpiece_words(v)
        files["vocab.txt"] = "\n".join(words) + "\n"

    def name(key: str) -> str | None:
        tid = v.special.get(key)
        return words[tid] if tid is not None else None

    special: dict[str, str] = {}
    if v.kind == "bert":  # gguf-py's SpecialVocab stores BERT's [CLS] as the BOS token; BERT has no BOS/EOS
        keys = (("cls_token", "cls"), ("cls_token", "bos"), ("sep_token", "sep"), ("unk_token", "unk"),
                ("pad_token", "pad"), ("mask_token", "mask"))
    else:
        keys = (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unk"), ("pad_token", "pad"),
                ("sep_token", "sep"), ("mask_token", "mask"), ("cls_token", "cls"))
    for hf_key, key in keys:
        text = name(key)
        if text is not None:
            special.setdefault(hf_key, text)
    decoder = {}
    for tid in np.flatnonzero(np.isin(v.types, [int(TokenType.CONTROL), int(TokenType.USER_DEFINED),
                                                int(TokenType.UNKNOWN)])).tolist():
        decoder[str(tid)] = {"content": words[tid], "single_word": False, "lstrip": tid in v.lstrip,
                             "rstrip": tid in v.rstrip, "normalized": False,
                             "special": int(v.types[tid]) != TokenType.USER_DEFINED}
    cfg: dict[str, Any] = {}
    if v.kind == "bert":
        cfg["do_lower_case"] = v.lowercase
    else:
        cfg["add_bos_token"] = v.add_bos
        cfg["add_eos_token"] = v.add_eos
        if v.kind == "gpt2":
            cfg["add_prefix_space"] = False
    cfg["added_tokens_decoder"] = decoder
    cfg.update(special)
    cfg["clean_up_tokenization_spaces"] = v.kind == "bert"
    if v.context_length is not None:
        cfg["model_max_length"] = v.context_length
    if v.chat_template:
        cfg["chat_template"] = v.chat_template
    cfg["tokenizer_class"] = "BertTokenizer" if v.kind == "bert" else "PreTrainedTokenizerFast"
    files["tokenizer_config.json"] = json.dumps(cfg, ensure_ascii=False, indent=2)
    if special:
        files["special_tokens_map.json"] = json.dumps(special, ensure_ascii=False, indent=2)
    return files, notes


# -- sentence-transformers -------------------------------------------------------------------------

_POOLING_MODES = {1: "mean", 2: "cls", 3: "lasttoken"}  # gguf.PoolingType MEAN, CLS, LAST


def sentence_transformers_files(model: Model) -> dict[str, str]:
    """modules.json, sentence_bert_config.json and 1_Pooling/config.json for a GGUF whose ``{arch}.pooling_type``
    says it is an embedding model (what llama.cpp's converter keeps of a sentence-transformers folder), else {}.

    The GGUF does not record a Normalize module: llama.cpp normalizes embeddings by default, sentence-transformers
    only when modules.json lists one, so it is not added here.
    """
    arch = gguf_arch(model)
    mode = _POOLING_MODES.get(_int(_meta(model, f"{arch}.pooling_type")) or 0)
    if mode is None:
        return {}
    dim = _int(_meta(model, f"{arch}.embedding_length"))
    pooling = {"word_embedding_dimension": dim, "pooling_mode_cls_token": mode == "cls",
               "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
               "pooling_mode_lasttoken": mode == "lasttoken", "include_prompt": True}
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    # do_lower_case stays False as in the hub folders: the tokenizer itself lowercases
    st_config = {"max_seq_length": _int(_meta(model, f"{arch}.context_length")) or 512, "do_lower_case": False}
    dump = lambda obj: json.dumps(obj, indent=2) + "\n"  # noqa: E731
    return {"modules.json": dump(modules), "sentence_bert_config.json": dump(st_config),
            "config_sentence_transformers.json": dump({"__version__": {}, "prompts": {},
                                                       "default_prompt_name": None, "similarity_fn_name": "cosine"}),
            "1_Pooling/config.json": dump(pooling)}
