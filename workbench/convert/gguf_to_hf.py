"""GGUF -> Hugging Face: tensor names, the llama Q/K un-permutation, config.json and tokenizer files.

The reverse of llama.cpp's ``convert_hf_to_gguf.py`` for the architectures we support (llama family,
qwen2, bert, t5): tensor names come from gguf-py's ``TensorNameMap`` read backwards (for each GGUF
name the HF candidate written in the architecture's own naming style), ``config.json`` and
``generation_config.json`` from the GGUF hyperparameters, and ``tokenizer.json`` from a GGUF ``gpt2``
(byte-level BPE) or ``bert`` (WordPiece) vocabulary.  Nothing here reads tensor data.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, TensorNameMap, TokenType

from ..errors import UnsupportedError
from ..model import Model

SUPPORTED_ARCHS = ("llama", "qwen2", "bert", "t5")

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
_DERIVED = re.compile(r"^(rope_freqs|blk\.\d+\.attn_rot_embd)\.weight$")

_HF_ARCH = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
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
    cls, model_type = _HF_ARCH[arch]
    k = lambda key, default=None: _meta(model, f"{arch}.{key}", default)  # noqa: E731
    cfg: dict[str, Any] = {"architectures": [cls], "model_type": model_type}
    n_embd = _int(k("embedding_length"))
    n_head = _int(k("attention.head_count"))
    if arch in ("llama", "qwen2"):
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
    return {key: v for key, v in cfg.items() if v is not None or key in ("rope_scaling", "sliding_window")}


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
