"""Small models in every format, built by the tests themselves (no network, deterministic)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from workbench.formats.safetensors import write_safetensors

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 96,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128, "torch_dtype": "float32",
    "rope_scaling": None, "tie_word_embeddings": False,
}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def llama_tensors(seed: int = 0, layers: int = 2) -> dict[str, np.ndarray]:
    """HF-named float32 weights of a tiny llama (LLAMA_CONFIG shapes)."""
    rng = np.random.default_rng(seed)
    h, f, v, kv = 64, 128, 96, 32
    out = {"model.embed_tokens.weight": rng.standard_normal((v, h), dtype=np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        out[p + "self_attn.q_proj.weight"] = rng.standard_normal((h, h), dtype=np.float32)
        out[p + "self_attn.k_proj.weight"] = rng.standard_normal((kv, h), dtype=np.float32)
        out[p + "self_attn.v_proj.weight"] = rng.standard_normal((kv, h), dtype=np.float32)
        out[p + "self_attn.o_proj.weight"] = rng.standard_normal((h, h), dtype=np.float32)
        out[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        out[p + "mlp.gate_proj.weight"] = rng.standard_normal((f, h), dtype=np.float32)
        out[p + "mlp.up_proj.weight"] = rng.standard_normal((f, h), dtype=np.float32)
        out[p + "mlp.down_proj.weight"] = rng.standard_normal((h, f), dtype=np.float32)
    out["model.norm.weight"] = np.ones(h, np.float32)
    out["lm_head.weight"] = rng.standard_normal((v, h), dtype=np.float32)
    return out


def _typed(arrays: dict[str, np.ndarray], dtypes: dict[str, str]) -> tuple[dict, dict[str, np.ndarray]]:
    """Encode float32 arrays with the given dtype per tensor; return (for the writer, exact float32 values)."""
    enc, expected = {}, {}
    for name, a in arrays.items():
        dt = dtypes.get(name, "F32")
        if dt == "BF16":
            bits = bf16_bits(a)
            enc[name] = ("BF16", bits)
            expected[name] = bf16_value(bits)
        elif dt == "F16":
            enc[name] = ("F16", a.astype(np.float16))
            expected[name] = a.astype(np.float16).astype(np.float32)
        else:
            enc[name] = ("F32", a)
            expected[name] = a
    return enc, expected


def mixed_dtypes(names) -> dict[str, str]:
    """A deterministic mix: norms F32, attention BF16, MLP F16, the rest F32."""
    out = {}
    for n in names:
        if "self_attn" in n:
            out[n] = "BF16"
        elif "mlp" in n:
            out[n] = "F16"
        else:
            out[n] = "F32"
    return out


def write_tokenizer_files(folder: Path) -> None:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(97 + i): 3 + i for i in range(26)}, "ab": 29}
    tok = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": 0, "content": "<unk>", "special": True, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False},
                            {"id": 1, "content": "<s>", "special": True, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False},
                            {"id": 2, "content": "</s>", "special": True, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False}],
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
           "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                     "merges": ["a b"]}}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 128,
         "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))


def build_hf_folder(folder: Path, *, shards: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny llama HF folder with F32/F16/BF16 tensors; returns the exact float32 values stored."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = llama_tensors(seed)
    enc, expected = _typed(arrays, mixed_dtypes(arrays))
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    write_tokenizer_files(folder)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", enc, {"format": "pt"})
        return expected
    names = list(enc)
    per = -(-len(names) // shards)
    weight_map = {}
    for k in range(shards):
        part = names[k * per:(k + 1) * per]
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, {n: enc[n] for n in part}, {"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(enc[n][1].nbytes for n in names)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return expected


def build_peft_adapter(folder: Path, *, seed: int = 1, r: int = 4) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny-llama", "r": r,
           "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": False,
           "bias": "none", "modules_to_save": None, "use_rslora": False,
           "loftq_config": {}, "megatron_config": None, "megatron_core": "megatron.core"}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = {}
    for i in range(2):
        for proj, out_dim in (("q_proj", 64), ("v_proj", 32)):
            base = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{base}.lora_A.weight"] = rng.standard_normal((r, 64), dtype=np.float32)
            tensors[f"{base}.lora_B.weight"] = rng.standard_normal((out_dim, r), dtype=np.float32)
    write_safetensors(folder / "adapter_model.safetensors", {k: ("F32", v) for k, v in tensors.items()})
    return tensors


GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def write_gguf_model(path: Path, *, seed: int = 0, split_max_tensors: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    """A GGUF written by gguf-py's writer with one tensor of each type in GGUF_TYPES (plus norms).

    Returns name -> (type, original float32 values).  With ``split_max_tensors`` the writer splits the
    model into ``-0000k-of-0000n`` shards the way llama-gguf-split names them.
    """
    import gguf
    from gguf import quants

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    writer.add_name("Fixture Llama")
    writer.add_block_count(len(GGUF_TYPES))
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "▁a", "▁b"])
    writer.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0])
    writer.add_token_types([2, 3, 3, 1, 1])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    out: dict[str, tuple[str, np.ndarray]] = {}
    for i, tname in enumerate(GGUF_TYPES):
        x = rng.standard_normal((8, 64), dtype=np.float32)
        name = f"blk.{i}.ffn_up.weight"
        qt = gguf.GGMLQuantizationType[tname]
        if tname == "F32":
            writer.add_tensor(name, x)
        elif tname == "F16":
            writer.add_tensor(name, x.astype(np.float16))
        else:
            writer.add_tensor(name, quants.quantize(x, qt), raw_dtype=qt)
        out[name] = (tname, x)
        norm = (1 + rng.standard_normal(64)).astype(np.float32)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        out[f"blk.{i}.attn_norm.weight"] = ("F32", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# -- raw GGUF bytes, for crafting damaged files ------------------------------------------------

def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def raw_gguf(*, version: int = 3, kv: bytes = b"", n_kv: int = 0, tensors: list[tuple[str, tuple[int, ...], int, int]] = (),
             data: bytes = b"", n_tensors: int | None = None, alignment: int = 32) -> bytes:
    """GGUF bytes from parts: ``tensors`` are (name, ne (ggml order), ggml type id, relative offset)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, n_kv) + kv
    for name, ne, t, off in tensors:
        head += gguf_string(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", t, off)
    head += b"\0" * (-len(head) % alignment)
    return head + data


def kv_u32(key: str, v: int) -> bytes:
    return gguf_string(key) + struct.pack("<II", 4, v)


def kv_str(key: str, v: str) -> bytes:
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(v)


def llama_gguf_tensors(n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int, n_vocab: int,
                       tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF tensor names and (numpy-order) shapes of a llama model, in convert_hf_to_gguf's order."""
    kv = n_embd // n_head * n_head_kv
    out = [("token_embd.weight", (n_vocab, n_embd))]
    for i in range(n_layer):
        out += [(f"blk.{i}.attn_norm.weight", (n_embd,)), (f"blk.{i}.attn_q.weight", (n_embd, n_embd)),
                (f"blk.{i}.attn_k.weight", (kv, n_embd)), (f"blk.{i}.attn_v.weight", (kv, n_embd)),
                (f"blk.{i}.attn_output.weight", (n_embd, n_embd)), (f"blk.{i}.ffn_norm.weight", (n_embd,)),
                (f"blk.{i}.ffn_gate.weight", (n_ff, n_embd)), (f"blk.{i}.ffn_up.weight", (n_ff, n_embd)),
                (f"blk.{i}.ffn_down.weight", (n_embd, n_ff))]
    out.append(("output_norm.weight", (n_embd,)))
    if not tied:
        out.append(("output.weight", (n_vocab, n_embd)))
    return out


# llama shapes the plan parity fixtures use: (name, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied)
PLAN_MODELS = [
    ("llama16-gqa4", 16, 256, 512, 8, 2, 1024, False),
    ("llama30-smol", 30, 576, 1536, 9, 3, 2048, True),  # SmolLM2-135M's shapes: rows of 576 need fallbacks
    ("llama12-mha", 12, 128, 352, 4, 4, 512, False),  # ffn rows of 352: not a multiple of 256
]


def shape_only_llama(spec) -> "Model":
    """A Model with the tensors of a llama GGUF but no data (plans only need names, shapes and metadata)."""
    from collections import OrderedDict

    from workbench.model import MetaEntry, Model, TensorInfo

    name, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied = spec
    tensors = [TensorInfo(n, s, "F32", int(np.prod(s)) * 4, Path(f"{name}.gguf"), 0)
               for n, s in llama_gguf_tensors(n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied)]
    meta = OrderedDict(GGUF=[MetaEntry("general.architecture", "string", "llama"),
                             MetaEntry("llama.block_count", "uint32", n_layer),
                             MetaEntry("llama.attention.head_count", "uint32", n_head),
                             MetaEntry("llama.attention.head_count_kv", "uint32", n_head_kv)])
    return Model("gguf", Path(f"{name}.gguf"), [], tensors, meta, "llama", name)


def add_llama_hparams(w, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int) -> None:
    """The llama hyper-parameters of a GGUFWriter (context 256), in the converter's key order."""
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)


def write_llama_gguf(path: Path, spec) -> None:
    """The same model as a real F32 GGUF (zero weights) that llama.cpp can load."""
    import gguf

    name, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied = spec
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    add_llama_hparams(w, n_layer, n_embd, n_ff, n_head, n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([1] * n_vocab)
    for tname, shape in llama_gguf_tensors(n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied):
        w.add_tensor(tname, np.zeros(shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def exact_values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic float32 values on every platform (integer hashing, exact arithmetic): uniform in [-2, 2)
    with per-row scales 2**-3 .. 2**3 and every 97th value 8x larger."""
    n = int(np.prod(shape))
    h = np.arange(n, dtype=np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 (wrapping uint64)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    x = ((h >> np.uint64(40)).astype(np.int64) - (1 << 23)).astype(np.float32) * np.float32(2.0 ** -22)
    x[::97] *= np.float32(8)
    x = x.reshape(shape)
    if x.ndim == 2:
        x *= (np.float32(2.0) ** (np.arange(shape[0]) % 7 - 3).astype(np.float32))[:, None]
    return x


def write_random_llama_gguf(path: Path, *, file_type: bool = True, row_tensor: bool = False, seed: int = 0) -> Path:
    """A small llama GGUF (rows of 256, so the K-quants apply) with deterministic non-zero F32 weights that
    llama.cpp loads, written in convert_hf_to_gguf's tensor order; ``general.file_type`` in the middle of the
    header (where the converter writes it) or absent; ``row_tensor`` adds a [1, 256] tensor stored with 2
    dimensions (``blk.0.row_scale.weight``, which llama-quantize writes with 1)."""
    import gguf

    n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab = 2, 256, 512, 4, 2, 64
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("Exact Llama")
    add_llama_hparams(w, n_layer, n_embd, n_ff, n_head, n_head_kv)
    if file_type:
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([1] * n_vocab)
    for i, (tname, shape) in enumerate(llama_gguf_tensors(n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, False)):
        w.add_tensor(tname, exact_values(shape, seed * 1000 + i))
        if row_tensor and tname == "blk.0.ffn_down.weight":
            w.add_tensor("blk.0.row_scale.weight", exact_values((1, n_embd), seed * 1000 + 999))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- plan parity cases beyond plain llama shapes: MoE experts, shared experts, 80-layer "70B", imatrix ----------
def plan_case_tensors(spec: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, numpy-order shape, dtype) of a plan parity case, in convert_hf_to_gguf's order.

    ``spec``: arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied, and optionally n_expert (expert
    tensors ``ffn_*_exps`` of shape [n_expert, rows, cols] with a router ``ffn_gate_inp``), shared_expert
    (``ffn_*_shexp``, as qwen2moe) and dtype (of the 2-D+ weights; 1-D tensors are F32)."""
    L, E, F = spec["n_layer"], spec["n_embd"], spec["n_ff"]
    kv, V, X = E // spec["n_head"] * spec["n_head_kv"], spec["n_vocab"], spec.get("n_expert", 0)
    out = [("token_embd.weight", (V, E))]
    for i in range(L):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (E,)), (b + "attn_q.weight", (E, E)), (b + "attn_k.weight", (kv, E)),
                (b + "attn_v.weight", (kv, E)), (b + "attn_output.weight", (E, E)), (b + "ffn_norm.weight", (E,))]
        if X:
            out += [(b + "ffn_gate_inp.weight", (X, E)), (b + "ffn_gate_exps.weight", (X, F, E)),
                    (b + "ffn_up_exps.weight", (X, F, E)), (b + "ffn_down_exps.weight", (X, E, F))]
            if spec.get("shared_expert"):
                out += [(b + "ffn_gate_inp_shexp.weight", (E,)), (b + "ffn_gate_shexp.weight", (F, E)),
                        (b + "ffn_up_shexp.weight", (F, E)), (b + "ffn_down_shexp.weight", (E, F))]
        else:
            out += [(b + "ffn_gate.weight", (F, E)), (b + "ffn_up.weight", (F, E)), (b + "ffn_down.weight", (E, F))]
    out.append(("output_norm.weight", (E,)))
    if not spec["tied"]:
        out.append(("output.weight", (V, E)))
    dtype = spec.get("dtype", "F32")
    return [(n, s, dtype if len(s) > 1 else "F32") for n, s in out]


def _plan_case_meta(spec: dict) -> list[tuple[str, str, object]]:
    """(key, GGUF type name, value) of a parity case's metadata, as llama.cpp's loader needs it."""
    a = spec["arch"]
    meta = [(f"{a}.block_count", "uint32", spec["n_layer"]), (f"{a}.context_length", "uint32", 256),
            (f"{a}.embedding_length", "uint32", spec["n_embd"]), (f"{a}.feed_forward_length", "uint32", spec["n_ff"]),
            (f"{a}.attention.head_count", "uint32", spec["n_head"]),
            (f"{a}.attention.head_count_kv", "uint32", spec["n_head_kv"]),
            (f"{a}.attention.layer_norm_rms_epsilon", "float32", 1e-5)]
    if spec.get("n_expert"):
        meta += [(f"{a}.expert_count", "uint32", spec["n_expert"]),
                 (f"{a}.expert_used_count", "uint32", spec["n_expert_used"]),
                 (f"{a}.expert_feed_forward_length", "uint32", spec["n_ff"])]
        if spec.get("shared_expert"):
            meta.append((f"{a}.expert_shared_feed_forward_length", "uint32", spec["n_ff"]))
    return meta


def shape_only_model(name: str, spec: dict) -> "Model":
    """A Model with a parity case's tensors and metadata but no data (plans need only names, shapes, metadata)."""
    from collections import OrderedDict

    from workbench.model import MetaEntry, Model, TensorInfo

    tensors = [TensorInfo(n, s, d, int(np.prod(s)) * (2 if d == "F16" else 4), Path(f"{name}.gguf"), 0)
               for n, s, d in plan_case_tensors(spec)]
    meta = [MetaEntry("general.architecture", "string", spec["arch"])]
    meta += [MetaEntry(k, t, v) for k, t, v in _plan_case_meta(spec)]
    return Model("gguf", Path(f"{name}.gguf"), [], tensors, OrderedDict(GGUF=meta), spec["arch"], name)


def write_plan_case_gguf(path: Path, spec: dict) -> None:
    """The parity case as a real GGUF (zero weights) that llama-quantize --dry-run loads."""
    write_case_gguf(path, spec, _plan_case_meta(spec), plan_case_tensors(spec))


def write_case_gguf(path: Path, spec: dict, meta, tensors, values=None) -> None:
    """A GGUF of a case: ``meta`` (key, value type, value) rows, a placeholder llama vocabulary of
    ``spec["n_vocab"]`` tokens, and ``tensors`` (name, numpy shape, "F32"/"F16") holding zeros or
    ``values(name, shape, index)``."""
    import gguf

    w = gguf.GGUFWriter(path, spec["arch"])
    w.add_name(path.stem)
    for key, vtype, value in meta:
        w.add_key_value(key, value, gguf.GGUFValueType[vtype.upper()])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.get("dtype") == "F16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(spec["n_vocab"])])
    w.add_token_scores([0.0] * spec["n_vocab"])
    w.add_token_types([1] * spec["n_vocab"])
    for i, (tname, shape, dtype) in enumerate(tensors):
        x = np.zeros(shape, np.float32) if values is None else values(tname, shape, i)
        w.add_tensor(tname, np.asarray(x).astype(np.float16 if dtype == "F16" else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_imatrix_gguf(path: Path, rows: dict[str, int]) -> None:
    """An importance matrix in llama-imatrix's GGUF format: ``<tensor>.in_sum2`` / ``.counts`` per tensor."""
    import gguf

    w = gguf.GGUFWriter(path, "imatrix")
    w.add_type("imatrix")
    w.add_key_value("imatrix.datasets", ["parity-fixture"], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    w.add_key_value("imatrix.chunk_count", 1, gguf.GGUFValueType.UINT32)
    w.add_key_value("imatrix.chunk_size", 512, gguf.GGUFValueType.UINT32)
    for name, n in rows.items():
        w.add_tensor(f"{name}.in_sum2", np.ones((1, n), np.float32))
        w.add_tensor(f"{name}.counts", np.ones((1, 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def greedy_steps(eng, prompt, n, use_cache=True):
    """``n`` greedy tokens after ``prompt`` from a decoder engine, and the logits each was chosen from [n, vocab]."""
    logits = eng.start(prompt, use_cache=use_cache)
    steps, toks = [], []
    for _ in range(n):
        steps.append(logits)
        toks.append(int(np.argmax(logits)))
        logits = eng.step(toks[-1])
    return toks, np.array(steps)
