"""Small random Hugging Face model folders for the HF -> GGUF tests (llama, qwen2, t5), built with the
``tokenizers`` library for real tokenizer.json files.  Deterministic, no network."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from workbench.formats.safetensors import write_safetensors

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Model Workbench converts Hugging Face folders to GGUF files, 123 456 7890.",
    "Quantization keeps the rows; the scales and the mins go in each block.",
    "def main():\n    return 42  # answer\n",
    "Émile a mangé des crêpes à Paris; 東京 is a city.",
] * 8

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _encode(arrays: dict[str, np.ndarray], dtypes: dict[str, str]) -> tuple[dict, dict[str, np.ndarray]]:
    """(for write_safetensors, the exact float32 values stored)."""
    enc, exact = {}, {}
    for name, a in arrays.items():
        dt = dtypes.get(name, "F32")
        if dt == "BF16":
            u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
            bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
            enc[name] = ("BF16", bits)
            exact[name] = (bits.astype(np.uint32) << 16).view(np.float32)
        elif dt == "F16":
            enc[name] = ("F16", a.astype(np.float16))
            exact[name] = a.astype(np.float16).astype(np.float32)
        else:
            enc[name] = ("F32", a.astype(np.float32))
            exact[name] = a.astype(np.float32)
    return enc, exact


def _write_weights(folder: Path, arrays, dtypes, shards: int = 1) -> dict[str, np.ndarray]:
    enc, exact = _encode(arrays, dtypes)
    names = list(enc)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", enc, {"format": "pt"})
        return exact
    per = -(-len(names) // shards)
    weight_map = {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = names[k * per:(k + 1) * per]
        write_safetensors(folder / fname, {n: enc[n] for n in part}, {"format": "pt"})
        weight_map.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return exact


# -- tokenizers ---------------------------------------------------------------------------------

def bpe_tokenizer(folder: Path, *, vocab_size: int = 300, qwen2_split: bool = False) -> dict:
    """A byte-level BPE tokenizer.json (GPT-2 style, or Qwen2's split regex + byte level) trained on CORPUS."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    if qwen2_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "add_bos_token": False, "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE}))
    return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))


def spm_bpe_tokenizer(folder: Path) -> dict:
    """A Llama-2 style tokenizer.json: SentencePiece BPE with byte fallback (what HF writes for tokenizer.model)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ("\u2581", "a", "b", "c", "\u2581a", "\u2581b", "ab", "\u2581ab"):
        vocab[piece] = len(vocab)
    merges = [("\u2581", "a"), ("\u2581", "b"), ("a", "b"), ("\u2581a", "b")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True, normalized=False),
                            AddedToken("<|im_end|>", special=True, normalized=False)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "additional_special_tokens": ["<|im_end|>"]}))
    return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))


UNIGRAM_PIECES = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0), ("\u2581the", -3.0),
                  ("\u2581a", -3.5), ("s", -4.0), ("e", -4.1), ("t", -4.2), ("\u2581to", -4.5), ("ing", -5.0),
                  ("er", -5.1), ("\u2581of", -5.2), ("n", -5.3), ("o", -5.4), ("r", -5.5), ("i", -5.6),
                  ("h", -5.7), ("a", -5.8), ("l", -6.0), ("d", -6.1), ("c", -6.2), ("m", -6.3), ("u", -6.4),
                  ("\u2581translate", -7.0), ("\u2581English", -7.5), ("\u2581German", -7.6), (":", -8.0)]


def unigram_tokenizer(folder: Path, *, n_extra_ids: int = 4) -> dict:
    """A T5-style SentencePiece Unigram tokenizer.json with <extra_id_N> sentinels at the end."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = list(UNIGRAM_PIECES) + [(f"<extra_id_{i}>", 0.0) for i in reversed(range(n_extra_ids))]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _ in pieces[:3]]
                           + [AddedToken(p, special=True, normalized=False) for p, _ in pieces[len(UNIGRAM_PIECES):]])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": n_extra_ids, "model_max_length": 512}))
    return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))


def sentencepiece_model_bytes(pieces: list[tuple[str, float, int]], *, model_type: int = 1, add_dummy_prefix=True,
                              remove_extra_whitespaces=True, charsmap: bytes = b"") -> bytes:
    """A minimal SentencePiece ModelProto: pieces (piece, score, type), trainer_spec.model_type, normalizer_spec."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(num: int, wt: int, payload: bytes) -> bytes:
        return varint(num << 3 | wt) + payload

    def ld(num: int, data: bytes) -> bytes:
        return field(num, 2, varint(len(data)) + data)

    out = b""
    for piece, score, ptype in pieces:
        msg = ld(1, piece.encode()) + field(2, 5, struct.pack("<f", score))
        if ptype != 1:
            msg += field(3, 0, varint(ptype))
        out += ld(1, msg)
    out += ld(2, ld(1, b"/tmp/corpus.txt") + field(3, 0, varint(model_type)))
    norm = (ld(1, b"nmt_nfkc") + (ld(2, charsmap) if charsmap else b"") + field(3, 0, varint(int(add_dummy_prefix)))
            + field(4, 0, varint(int(remove_extra_whitespaces))))
    out += ld(3, norm)
    return out


# -- models -------------------------------------------------------------------------------------

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 304,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 256, "torch_dtype": "bfloat16",
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 2,
}


def build_llama(folder: Path, *, seed: int = 0, shards: int = 1, config: dict | None = None,
                dtype_mix: bool = True, tokenizer: bool = True) -> dict[str, np.ndarray]:
    """A tiny SmolLM2-like llama folder (byte-level BPE tokenizer); returns the exact float32 source values."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**LLAMA_CONFIG, **(config or {})}
    rng = np.random.default_rng(seed)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    arrays = {"model.embed_tokens.weight": rng.standard_normal((v, h), dtype=np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        arrays[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h, dtype=np.float32)
        arrays[p + "self_attn.q_proj.weight"] = rng.standard_normal((h, h), dtype=np.float32)
        arrays[p + "self_attn.k_proj.weight"] = rng.standard_normal((kv, h), dtype=np.float32)
        arrays[p + "self_attn.v_proj.weight"] = rng.standard_normal((kv, h), dtype=np.float32)
        arrays[p + "self_attn.o_proj.weight"] = rng.standard_normal((h, h), dtype=np.float32)
        arrays[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
        arrays[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h, dtype=np.float32)
        arrays[p + "mlp.gate_proj.weight"] = rng.standard_normal((f, h), dtype=np.float32)
        arrays[p + "mlp.up_proj.weight"] = rng.standard_normal((f, h), dtype=np.float32)
        arrays[p + "mlp.down_proj.weight"] = rng.standard_normal((h, f), dtype=np.float32)
    arrays["model.norm.weight"] = 1 + 0.1 * rng.standard_normal(h, dtype=np.float32)
    if not cfg.get("tie_word_embeddings"):
        arrays["lm_head.weight"] = rng.standard_normal((v, h), dtype=np.float32)
    mix = {}
    if dtype_mix:
        mix = {n: ("BF16" if "self_attn" in n else "F16" if "mlp" in n else "F32") for n in arrays}
    exact = _write_weights(folder, arrays, mix, shards)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 2,
                                                               "temperature": 0.2, "top_p": 0.9}))
    if tokenizer:
        bpe_tokenizer(folder, vocab_size=v - 4)
    return exact


QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 300,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 512, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 2, "sliding_window": 512,
    "use_sliding_window": False,
}


def build_qwen2(folder: Path, *, seed: int = 1) -> dict[str, np.ndarray]:
    """A tiny Qwen2.5-like folder: attention biases, tied embeddings (no lm_head), Qwen2 split regex."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = QWEN2_CONFIG
    rng = np.random.default_rng(seed)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    arrays = {"model.embed_tokens.weight": rng.standard_normal((v, h), dtype=np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        arrays[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h, dtype=np.float32)
        for proj, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            arrays[p + f"self_attn.{proj}.weight"] = rng.standard_normal((rows, h), dtype=np.float32)
            arrays[p + f"self_attn.{proj}.bias"] = rng.standard_normal(rows, dtype=np.float32)
        arrays[p + "self_attn.o_proj.weight"] = rng.standard_normal((h, h), dtype=np.float32)
        arrays[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h, dtype=np.float32)
        arrays[p + "mlp.gate_proj.weight"] = rng.standard_normal((f, h), dtype=np.float32)
        arrays[p + "mlp.up_proj.weight"] = rng.standard_normal((f, h), dtype=np.float32)
        arrays[p + "mlp.down_proj.weight"] = rng.standard_normal((h, f), dtype=np.float32)
    arrays["model.norm.weight"] = 1 + 0.1 * rng.standard_normal(h, dtype=np.float32)
    exact = _write_weights(folder, arrays, {n: "BF16" for n in arrays})
    (folder / "config.json").write_text(json.dumps(cfg))
    bpe_tokenizer(folder, vocab_size=v - 4, qwen2_split=True)
    return exact


def t5_config(*, gated: bool, vocab_size: int) -> dict:
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8,
            "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": vocab_size,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
            "feed_forward_proj": "gated-gelu" if gated else "relu", "is_encoder_decoder": True,
            "tie_word_embeddings": not gated, "n_positions": 512}


def build_t5(folder: Path, *, gated: bool = False, seed: int = 2, vocab_size: int = 40) -> dict[str, np.ndarray]:
    """A tiny t5 (relu, tied: shared + encoder/decoder embed copies) or flan-t5 (gated-gelu, lm_head) folder."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = t5_config(gated=gated, vocab_size=vocab_size)
    rng = np.random.default_rng(seed)
    d, ff, inner, heads = cfg["d_model"], cfg["d_ff"], cfg["num_heads"] * cfg["d_kv"], cfg["num_heads"]
    emb = rng.standard_normal((vocab_size, d), dtype=np.float32)
    arrays: dict[str, np.ndarray] = {"shared.weight": emb}
    if not gated:  # like t5-small checkpoints: the tied copies are stored too
        arrays["encoder.embed_tokens.weight"] = emb.copy()
        arrays["decoder.embed_tokens.weight"] = emb.copy()
    else:
        arrays["lm_head.weight"] = rng.standard_normal((vocab_size, d), dtype=np.float32)

    def ffn(prefix: str):
        if gated:
            arrays[prefix + "DenseReluDense.wi_0.weight"] = rng.standard_normal((ff, d), dtype=np.float32)
            arrays[prefix + "DenseReluDense.wi_1.weight"] = rng.standard_normal((ff, d), dtype=np.float32)
        else:
            arrays[prefix + "DenseReluDense.wi.weight"] = rng.standard_normal((ff, d), dtype=np.float32)
        arrays[prefix + "DenseReluDense.wo.weight"] = rng.standard_normal((d, ff), dtype=np.float32)
        arrays[prefix + "layer_norm.weight"] = 1 + 0.1 * rng.standard_normal(d, dtype=np.float32)

    def attn(prefix: str, kind: str, rel: bool):
        for m in "qkvo":
            shape = (d, inner) if m == "o" else (inner, d)
            arrays[prefix + f"{kind}.{m}.weight"] = rng.standard_normal(shape, dtype=np.float32)
        if rel:
            arrays[prefix + f"{kind}.relative_attention_bias.weight"] = rng.standard_normal(
                (cfg["relative_attention_num_buckets"], heads), dtype=np.float32)
        arrays[prefix + "layer_norm.weight"] = 1 + 0.1 * rng.standard_normal(d, dtype=np.float32)

    for i in range(cfg["num_layers"]):
        attn(f"encoder.block.{i}.layer.0.", "SelfAttention", i == 0)
        ffn(f"encoder.block.{i}.layer.1.")
    arrays["encoder.final_layer_norm.weight"] = 1 + 0.1 * rng.standard_normal(d, dtype=np.float32)
    for i in range(cfg["num_decoder_layers"]):
        attn(f"decoder.block.{i}.layer.0.", "SelfAttention", i == 0)
        attn(f"decoder.block.{i}.layer.1.", "EncDecAttention", False)
        ffn(f"decoder.block.{i}.layer.2.")
    arrays["decoder.final_layer_norm.weight"] = 1 + 0.1 * rng.standard_normal(d, dtype=np.float32)
    exact = _write_weights(folder, arrays, {})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n- de\n---\n# tiny t5\n")
    unigram_tokenizer(folder)
    return exact


def unpermute_qk(x: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's LlamaModel.permute on rows (GGUF row order -> HF row order)."""
    rows = x.shape[0]
    return x.reshape(heads, rows // heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def permute_qk(x: np.ndarray, heads: int) -> np.ndarray:
    rows = x.shape[0]
    return x.reshape(heads, 2, rows // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
