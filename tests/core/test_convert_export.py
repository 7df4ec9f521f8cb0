"""GGUF/any model -> Hugging Face folder (safetensors or .bin), and GGUF metadata editing.

GGUF fixtures are made here from the HF fixture the way convert_hf_to_gguf.py does (gguf-py's
writer, GGUF names, the llama Q/K permutation), so exporting them back must give the HF weights.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import convert_fixtures as cf
from builders import LLAMA_CONFIG, bf16_bits, bf16_value, llama_tensors
from fetch_models import real_model
from gguf import quants

import workbench
from workbench.archs import to_gguf_name
from workbench.convert.export import export_hf, f32_to_bf16_bits, shard_plan
from workbench.convert.gguf_to_hf import hf_config, hf_names, permute, tokenizer_files, unpermute
from workbench.convert.metadata_edit import TypedValue, parse_assignment, set_metadata
from workbench.errors import Cancelled, WorkbenchError
from workbench.formats.gguf import read_header
from workbench.formats.torchbin import write_bin
from workbench.model import MetaEntry, Model, TensorInfo
from workbench.progress import run

N_HEAD, N_KV = LLAMA_CONFIG["num_attention_heads"], LLAMA_CONFIG["num_key_value_heads"]


# -- fixtures ------------------------------------------------------------------------------------

def write_llama_gguf_from_hf(path: Path, tensors: dict[str, np.ndarray], *, tokenizer: bool = False,
                             alignment: int | None = None) -> None:
    """An F32 GGUF of the HF llama fixture, as convert_hf_to_gguf.py would write it (Q/K rows permuted by the
    tests' own reference, ``convert_fixtures.permute_qk``, not by the code under test)."""
    w = gguf.GGUFWriter(path, "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_name("Tiny Llama")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(96)
    if tokenizer:
        w.add_tokenizer_model("llama")
        w.add_token_list([f"t{i}" for i in range(96)])
        w.add_token_scores([0.0] * 96)
        w.add_token_types([1] * 96)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, arr in tensors.items():
        if name.endswith("q_proj.weight"):
            arr = cf.permute_qk(arr, N_HEAD)
        elif name.endswith("k_proj.weight"):
            arr = cf.permute_qk(arr, N_KV)
        w.add_tensor(to_gguf_name(name, "llama", 2), np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-gguf") / "tiny-llama-F32.gguf"
    tensors = llama_tensors(seed=3)
    write_llama_gguf_from_hf(path, tensors, tokenizer=True)
    return path, tensors


def export(src, out, **kw):
    return run(export_hf(src, out, **kw))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".scratch"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def smollm2() -> Path:
    return real_model("smollm2")


# -- GGUF -> HF: names, permutation, values ------------------------------------------------------

# llama.cpp's LlamaModel.permute on 8 rows, worked out by hand: each head's rows are split in two halves
# (the rotary pairs' first and second members) and interleaved: a head of rows r0..r3 becomes r0 r2 r1 r3.
HAND_PERMUTED_ROWS = {1: [0, 4, 1, 5, 2, 6, 3, 7], 2: [0, 2, 1, 3, 4, 6, 5, 7], 4: [0, 1, 2, 3, 4, 5, 6, 7]}


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_permute_matches_hand_computed_rows(heads):
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    want = w[HAND_PERMUTED_ROWS[heads]]
    assert np.array_equal(cf.permute_qk(w, heads), want)  # the tests' reference...
    assert np.array_equal(permute(w, heads), want)  # ...and the code under test
    assert np.array_equal(unpermute(want, heads), w)
    assert np.array_equal(permute(w[:, 0], heads), want[:, 0])  # a bias: the same row order


def test_permute_roundtrip():
    w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    for heads in (1, 2, 3):  # (6 heads of one rotary pair each would be the identity)
        assert np.array_equal(unpermute(permute(w, heads), heads), w)
        assert not np.array_equal(permute(w, heads), w)
    b = np.arange(12, dtype=np.float32)  # biases are permuted the same way
    assert np.array_equal(unpermute(permute(b, 3), 3), b)


def test_f32_round_trip_is_exact_and_unpermutes_qk(llama_gguf, tmp_path):
    src, original = llama_gguf
    before = sha(src)
    paths = export(src, tmp_path / "out", dtype="F32")
    out = tmp_path / "out"
    assert {p.name for p in paths} == {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                                       "tokenizer_config.json", "special_tokens_map.json"}
    m = workbench.open_model(out)
    assert m.format == "safetensors" and m.architecture == "LlamaForCausalLM"
    assert sorted(t.name for t in m.tensors) == sorted(original)
    for name, arr in original.items():
        got = m.tensor(name).raw()
        assert m.info(name).dtype == "F32"
        assert np.array_equal(got, arr), name  # q_proj/k_proj included: the permutation is undone
    # the GGUF really holds permuted Q/K (so the check above is not vacuous)
    g = workbench.open_model(src)
    assert not np.array_equal(g.tensor("blk.0.attn_q.weight").raw(), original["model.layers.0.self_attn.q_proj.weight"])
    cfg = json.loads((out / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "vocab_size", "max_position_embeddings"):
        assert cfg[key] == LLAMA_CONFIG[key], key
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "float32"
    assert cfg["rms_norm_eps"] == pytest.approx(1e-5) and cfg["rope_theta"] == 10000.0
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2
    assert sha(src) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_f16_bf16_export_rounds_like_torch(llama_gguf, tmp_path, dtype):
    src, original = llama_gguf
    export(src, tmp_path / "out", dtype=dtype)
    m = workbench.open_model(tmp_path / "out")
    assert m.dtype_counts() == {dtype: len(original)}
    for name, arr in original.items():
        raw = m.tensor(name).raw()
        if dtype == "F16":
            assert np.array_equal(raw, arr.astype(np.float16)), name
        else:
            assert np.array_equal(raw, bf16_bits(arr)), name
        # and within the type's rounding of the original values
        rel = 2.0**-11 if dtype == "F16" else 2.0**-8
        np.testing.assert_allclose(m.tensor(name).to_float32(), arr, rtol=rel, atol=1e-7)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == {"F16": "float16", "BF16": "bfloat16"}[dtype]


def test_bf16_rounding_matches_reference():
    x = np.array([1.0, 1.00390625, 1.01171875, -3.3e38, 1e-40, np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    bits = f32_to_bf16_bits(x)
    finite = np.isfinite(x)
    assert np.array_equal(bits[finite], bf16_bits(x[finite]))
    assert np.isnan(bf16_value(bits[7:8]))[0] and np.isinf(bf16_value(bits[5:7])).all()


def test_sharding_and_index(llama_gguf, tmp_path):
    src, original = llama_gguf
    limit = 40_000  # bytes: several shards of F32 tensors
    paths = export(src, tmp_path / "out", dtype="F32", max_shard_size=limit)
    out = tmp_path / "out"
    shards = sorted(out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2
    assert [p.name for p in shards] == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in original.values())
    assert set(index["weight_map"]) == set(original)
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert out / "model.safetensors.index.json" in paths
    m = workbench.open_model(out)
    for p in shards:  # each shard holds at most the limit, unless one tensor alone is larger
        part = [t for t in m.tensors if t.file == p]
        assert sum(t.nbytes for t in part) <= limit or len(part) == 1
    for name, arr in original.items():
        assert np.array_equal(m.tensor(name).raw(), arr)
        assert index["weight_map"][name] == m.info(name).file.name


def test_shard_plan_follows_huggingface_rule():
    def item(nbytes):
        return type("I", (), {"nbytes": nbytes})()

    sizes = [4, 4, 3, 10, 1, 6]
    plan = shard_plan([item(s) for s in sizes], 8)
    assert [[i.nbytes for i in shard] for shard in plan] == [[4, 4], [3], [10], [1, 6]]


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_bin_export_read_back(llama_gguf, tmp_path, dtype):
    src, original = llama_gguf
    paths = export(src, tmp_path / "out", dtype=dtype, format="bin")
    out = tmp_path / "out"
    assert out / "pytorch_model.bin" in paths
    assert not list(out.glob("*.safetensors"))
    probe = tmp_path / "probe"
    probe.touch()  # output files get the same permissions as any new file (not a temp file's 0600)
    assert (out / "pytorch_model.bin").stat().st_mode & 0o777 == probe.stat().st_mode & 0o777
    probe.unlink()
    probe.mkdir()
    assert out.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777  # not mkdtemp's 0700
    probe.rmdir()
    m = workbench.open_model(out)  # the restricted (no code execution) reader
    assert m.format == "pytorch" and m.architecture == "LlamaForCausalLM"
    for name, arr in original.items():
        assert m.info(name).dtype == dtype
        expected = {"F32": arr, "F16": arr.astype(np.float16).astype(np.float32), "BF16": bf16_value(bf16_bits(arr))}
        assert np.array_equal(m.tensor(name).to_float32(), expected[dtype]), name
    assert leftovers(tmp_path) == [] and leftovers(out) == []


def test_sharded_bin_export(llama_gguf, tmp_path):
    src, original = llama_gguf
    export(src, tmp_path / "out", dtype="F32", format="bin", max_shard_size=60_000)
    out = tmp_path / "out"
    shards = sorted(out.glob("pytorch_model-*.bin"))
    assert len(shards) > 1 and shards[0].name.endswith(f"-of-{len(shards):05d}.bin")
    index = json.loads((out / "pytorch_model.bin.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    m = workbench.open_model(out)
    for name, arr in original.items():
        assert np.array_equal(m.tensor(name).to_float32(), arr)


# -- the real SmolLM2 Q4_1 GGUF -------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory):
    src = smollm2()
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    paths = export(src, out, dtype="F16")
    return src, out, paths


@pytest.mark.realmodel
def test_quantized_gguf_to_f16_equals_ggml_dequantization(smollm2_export):
    from ggml_oracle import ggml

    oracle = ggml()  # ggml's own dequantize_row_* (the values llama.cpp computes with)
    src, out, paths = smollm2_export
    g = workbench.open_model(src)
    m = workbench.open_model(out)
    assert m.dtype_counts() == {"F16": len(g.tensors)}
    names = hf_names(g)
    assert "lm_head.weight" not in m  # tied embeddings: no output.weight in the GGUF
    checked = set()
    for gname in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.7.attn_v.weight",
                  "blk.29.ffn_down.weight", "blk.3.ffn_gate.weight", "blk.0.attn_norm.weight", "output_norm.weight"):
        info = g.info(gname)
        raw = g.tensor(gname).raw()
        ref = oracle.dequantize(raw, info.dtype, info.shape[-1]).reshape(info.shape) if info.dtype != "F32" \
            else raw.copy()
        if gname.endswith("attn_q.weight"):  # undo llama.cpp's permutation: invert the reference's row order
            ref = ref[np.argsort(cf.permute_qk(np.arange(ref.shape[0]), 9))]
        elif gname.endswith("attn_k.weight"):
            ref = ref[np.argsort(cf.permute_qk(np.arange(ref.shape[0]), 3))]
        got = m.tensor(names[gname]).raw()
        assert np.array_equal(got, ref.astype(np.float16)), gname
        checked.add(info.dtype)
    assert checked == {"Q8_0", "Q4_1", "F32"}
    assert names["blk.5.ffn_down.weight"] == "model.layers.5.mlp.down_proj.weight"
    assert names["token_embd.weight"] == "model.embed_tokens.weight"
    assert names["output_norm.weight"] == "model.norm.weight"


@pytest.mark.realmodel
def test_smollm2_config(smollm2_export):
    _src, out, _paths = smollm2_export
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (576, 1536, 30)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == 49152
    assert cfg["rope_theta"] == 100000.0 and cfg["max_position_embeddings"] == 8192
    assert cfg["rms_norm_eps"] == pytest.approx(1e-5) and cfg["torch_dtype"] == "float16"
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2


@pytest.mark.realmodel
def test_smollm2_tokenizer_rebuilt(smollm2_export):
    from tokenizers import Tokenizer

    src, out, _paths = smollm2_export
    g = workbench.open_model(src)
    vocab = {t: i for i, t in enumerate(g.meta("tokenizer.ggml.tokens"))}
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    expected = [vocab[t] for t in ("The", "Ġcapital", "Ġof", "ĠFrance", "Ġis")]
    assert tok.encode("The capital of France is").ids == expected
    # special tokens split out whole, digits one by one (the smollm pre-tokenizer), newline as its byte token
    chat = "<|im_start|>user\nWhat is 2024?<|im_end|>"
    ids = tok.encode(chat).ids
    assert ids[0] == vocab["<|im_start|>"] and ids[-1] == vocab["<|im_end|>"]
    assert [vocab[t] for t in ("2", "0", "2", "4")] == ids[ids.index(vocab["Ġis"]) + 2:ids.index(vocab["Ġis"]) + 6]
    assert vocab["Ċ"] in ids
    assert tok.decode(tok.encode("Hello world, 123!").ids) == "Hello world, 123!"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == g.meta("tokenizer.chat_template")
    assert (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"]) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert cfg["add_bos_token"] is False
    assert cfg["added_tokens_decoder"]["2"]["content"] == "<|im_end|>" and cfg["added_tokens_decoder"]["2"]["special"]


# -- BERT and T5 names; the BERT WordPiece vocabulary ---------------------------------------------

def shape_model(arch: str, names: list[str], meta: dict) -> Model:
    tensors = [TensorInfo(n, (4, 4), "F32", 64, Path("x.gguf"), 0) for n in names]
    entries = [MetaEntry("general.architecture", "string", arch)] + [MetaEntry(k, "x", v) for k, v in meta.items()]
    return Model("gguf", Path("x.gguf"), [], tensors, {"GGUF": entries}, arch)


def test_t5_names_gated_and_relu():
    common = ["token_embd.weight", "enc.blk.0.attn_q.weight", "enc.blk.0.attn_rel_b.weight", "enc.blk.0.ffn_up.weight",
              "enc.blk.0.ffn_down.weight", "dec.blk.0.cross_attn_k.weight", "enc.output_norm.weight",
              "dec.output_norm.weight", "output.weight"]
    relu = hf_names(shape_model("t5", common, {"t5.block_count": 1}))
    assert relu["token_embd.weight"] == "shared.weight"
    assert relu["enc.blk.0.ffn_up.weight"] == "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    assert relu["enc.blk.0.attn_rel_b.weight"] == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert relu["dec.blk.0.cross_attn_k.weight"] == "decoder.block.0.layer.1.EncDecAttention.k.weight"
    assert relu["enc.output_norm.weight"] == "encoder.final_layer_norm.weight"
    assert relu["output.weight"] == "lm_head.weight"
    gated = hf_names(shape_model("t5", common + ["enc.blk.0.ffn_gate.weight"], {"t5.block_count": 1}))
    assert gated["enc.blk.0.ffn_up.weight"] == "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"
    assert gated["enc.blk.0.ffn_gate.weight"] == "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    cfg = hf_config(shape_model("t5", common + ["enc.blk.0.ffn_gate.weight"], {
        "t5.block_count": 1, "t5.embedding_length": 4, "t5.attention.head_count": 1, "t5.attention.key_length": 4}))
    assert cfg["feed_forward_proj"] == "gated-gelu" and cfg["tie_word_embeddings"] is False


@pytest.mark.realmodel
def test_bert_gguf_round_trip_with_wordpiece_vocab(tmp_path):
    """MiniLM (BERT) written as a GGUF the way convert_hf_to_gguf does, exported back: names, values, vocab."""
    from tokenizers import Tokenizer

    folder = real_model("minilm")
    hf = workbench.open_model(folder)
    vocab_lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    types = [3 if t in special else 1 for t in vocab_lines]
    phantom = [t if ty == 3 else (t[2:] if t.startswith("##") else "\u2581" + t) for t, ty in zip(vocab_lines, types)]
    path = tmp_path / "minilm.gguf"
    w = gguf.GGUFWriter(path, "bert")
    w.add_block_count(6)
    w.add_context_length(512)
    w.add_embedding_length(384)
    w.add_feed_forward_length(1536)
    w.add_head_count(12)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_tokenizer_model("bert")
    w.add_token_list(phantom)
    w.add_token_types(types)
    w.add_bos_token_id(vocab_lines.index("[CLS]"))
    w.add_sep_token_id(vocab_lines.index("[SEP]"))
    w.add_unk_token_id(vocab_lines.index("[UNK]"))
    w.add_pad_token_id(vocab_lines.index("[PAD]"))
    w.add_mask_token_id(vocab_lines.index("[MASK]"))
    for t in hf.tensors:
        if t.name == "embeddings.position_ids":
            continue
        w.add_tensor(to_gguf_name(t.name, "bert", 6), np.ascontiguousarray(hf.tensor(t.name).raw()))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    out = tmp_path / "hf"
    export(path, out, dtype="F32")
    m = workbench.open_model(out)
    kept = sorted(t.name for t in hf.tensors if t.name != "embeddings.position_ids")  # convert drops the buffer
    assert sorted(t.name for t in m.tensors) == kept
    for t in m.tensors:
        assert np.array_equal(m.tensor(t.name).raw(), hf.tensor(t.name).raw()), t.name
    cfg = json.loads((out / "config.json").read_text())
    original = json.loads((folder / "config.json").read_text())
    for key in ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "max_position_embeddings", "type_vocab_size", "vocab_size", "pad_token_id"):
        assert cfg[key] == original[key], key
    assert cfg["layer_norm_eps"] == pytest.approx(1e-12)
    assert (out / "vocab.txt").read_text(encoding="utf-8") == (folder / "vocab.txt").read_text(encoding="utf-8")
    mine = Tokenizer.from_file(str(out / "tokenizer.json"))
    theirs = Tokenizer.from_file(str(folder / "tokenizer.json"))
    theirs.no_padding()  # the original pads to 128
    theirs.no_truncation()
    for text in ("The capital of France is Paris.", "Naïve CAFÉ owners' unaffordable rents!!", "x [MASK] y"):
        assert mine.encode(text).ids == theirs.encode(text).ids, text
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (tcfg["cls_token"], tcfg["sep_token"], tcfg["tokenizer_class"]) == ("[CLS]", "[SEP]", "BertTokenizer")


# -- non-GGUF sources ------------------------------------------------------------------------------

def build_bin_folder(folder: Path, seed: int = 5) -> dict[str, np.ndarray]:
    """An 'old checkpoint': pytorch_model.bin (F32, F16 and BF16 tensors) with config and tokenizer files."""
    folder.mkdir(parents=True)
    arrays = llama_tensors(seed)
    stored: dict[str, np.ndarray] = {}
    bf16 = set()
    for i, (name, arr) in enumerate(arrays.items()):
        if i % 3 == 1:
            stored[name] = arr.astype(np.float16)
        elif i % 3 == 2:
            stored[name] = bf16_bits(arr)
            bf16.add(name)
        else:
            stored[name] = arr
    stored["model.rotary.inv_freq_ids"] = np.arange(8, dtype=np.int64)
    write_bin(folder / "pytorch_model.bin", stored, bf16_names=bf16)
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>"}')
    (folder / "vocab.json").write_text('{"a": 0}')
    return {n: (bf16_value(a) if n in bf16 else a.astype(np.float32) if a.dtype == np.float16 else a)
            for n, a in stored.items()}


def test_safetensors_from_bin_keeps_tensors(tmp_path):
    src = tmp_path / "old"
    expected = build_bin_folder(src)
    before = {p.name: sha(p) for p in src.iterdir()}
    out = tmp_path / "new"
    paths = export(src, out, dtype=None)
    assert {p.name for p in paths} == {"model.safetensors", "config.json", "tokenizer_config.json", "vocab.json"}
    m = workbench.open_model(out)
    src_model = workbench.open_model(src)
    for t in src_model.tensors:
        assert m.info(t.name).dtype == t.dtype
        assert np.array_equal(m.tensor(t.name).raw(), src_model.tensor(t.name).raw()), t.name
    assert np.array_equal(m.tensor("model.rotary.inv_freq_ids").raw(), np.arange(8))
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (out / "vocab.json").read_text() == '{"a": 0}'
    assert {p.name: sha(p) for p in src.iterdir()} == before
    # with a dtype every float tensor is converted and config.json says so; integers are kept
    out16 = tmp_path / "new16"
    export(src, out16, dtype="F16")
    m16 = workbench.open_model(out16)
    assert m16.dtype_counts() == {"F16": len(expected) - 1, "I64": 1}
    for name, arr in expected.items():
        if arr.dtype == np.float32:
            assert np.array_equal(m16.tensor(name).raw(), arr.astype(np.float16)), name
    assert json.loads((out16 / "config.json").read_text())["torch_dtype"] == "float16"


def test_safetensors_from_bin_in_place(tmp_path):
    src = tmp_path / "old"
    build_bin_folder(src)
    bin_hash = sha(src / "pytorch_model.bin")
    paths = export(src, src, dtype=None)
    assert [p.name for p in paths] == ["model.safetensors"]  # config files are already there
    assert sha(src / "pytorch_model.bin") == bin_hash
    m = workbench.open_model(src / "model.safetensors")
    assert len(m.tensors) == len(workbench.open_model(src / "pytorch_model.bin").tensors)
    with pytest.raises(WorkbenchError, match="source model"):
        export(src / "pytorch_model.bin", src, dtype=None, format="bin", overwrite=True)  # would replace it
    assert sha(src / "pytorch_model.bin") == bin_hash


def test_safetensors_folder_to_bin(hf_folder, tmp_path):
    folder, expected = hf_folder
    export(folder, tmp_path / "bin", dtype=None, format="bin")
    m = workbench.open_model(tmp_path / "bin")
    assert m.format == "pytorch"
    assert (tmp_path / "bin" / "tokenizer.json").is_file() and (tmp_path / "bin" / "config.json").is_file()
    src = workbench.open_model(folder)
    for t in src.tensors:
        assert m.info(t.name).dtype == t.dtype
        assert np.array_equal(m.tensor(t.name).to_float32(), expected[t.name])


def test_unsupported_gguf_arch_keeps_gguf_names(gguf_file, tmp_path):
    """write_gguf_model's fixture: mixed quant types; names are kept when there is no mapping."""
    path, values = gguf_file
    g = workbench.open_model(path)
    export(path, tmp_path / "out", dtype="F32")
    m = workbench.open_model(tmp_path / "out")
    for gname, (tname, _x) in values.items():
        info = g.info(gname)
        hf = hf_names(g)[gname]
        raw = np.array(g.tensor(gname).raw())  # gguf-py's decoders give the reference values
        if tname == "BF16":
            ref = bf16_value(raw)
        elif tname == "F16":
            ref = raw.astype(np.float32)
        else:
            ref = quants.dequantize(raw, gguf.GGMLQuantizationType[tname]).reshape(info.shape)
        assert np.array_equal(m.tensor(hf).raw(), ref), gname


# -- safety: overwrite, cancel, failure -------------------------------------------------------------

def test_no_overwrite_without_flag_and_stale_shards_removed(llama_gguf, tmp_path):
    src, original = llama_gguf
    out = tmp_path / "out"
    export(src, out, dtype="F32", max_shard_size=40_000)
    assert len(list(out.glob("model-*.safetensors"))) > 1
    (out / "README.md").write_text("mine")
    with pytest.raises(WorkbenchError, match="already holds"):
        export(src, out, dtype="F32")
    assert len(list(out.glob("model-*.safetensors"))) > 1  # untouched
    export(src, out, dtype="F16", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                     "model.safetensors", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer_config.json"]
    m = workbench.open_model(out)
    assert m.dtype_counts() == {"F16": len(original)}
    assert leftovers(tmp_path) == []


def test_cancel_leaves_nothing(llama_gguf, tmp_path):
    src, _ = llama_gguf
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 5

    for fmt in ("safetensors", "bin"):
        with pytest.raises(Cancelled):
            export(src, tmp_path / "out", dtype="F16", format=fmt, cancel=cancel, max_shard_size=30_000)
        calls["n"] = 0
        assert not (tmp_path / "out").exists()
        assert leftovers(tmp_path) == []


def test_closing_the_job_midway_leaves_nothing(llama_gguf, tmp_path):
    src, _ = llama_gguf
    job = export_hf(src, tmp_path / "out", dtype="F32")
    for _ in range(4):
        next(job)
    job.close()  # what a GUI worker does when the user cancels
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_failure_leaves_nothing_and_keeps_existing_output(llama_gguf, tmp_path, monkeypatch):
    from workbench.convert import export as export_mod

    src, _ = llama_gguf
    out = tmp_path / "out"
    export(src, out, dtype="F32")
    before = {p.name: sha(p) for p in out.iterdir()}
    real = export_mod.iter_converted
    seen = {"n": 0}

    def failing(model, item, *a, **kw):
        seen["n"] += 1
        if seen["n"] == 7:
            raise OSError("disk full")
        return real(model, item, *a, **kw)

    monkeypatch.setattr(export_mod, "iter_converted", failing)
    with pytest.raises(workbench.WorkbenchError, match="disk full"):
        export(src, out, dtype="F16", overwrite=True)
    assert {p.name: sha(p) for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_bad_arguments(llama_gguf, tmp_path):
    src, _ = llama_gguf
    with pytest.raises(WorkbenchError, match="Q4_K"):
        export(src, tmp_path / "a", dtype="Q4_K")
    with pytest.raises(WorkbenchError, match="format"):
        export(src, tmp_path / "a", format="onnx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkbenchError, match="not a folder"):
        export(src, tmp_path / "file")
    assert not (tmp_path / "a").exists()


# -- set_metadata ----------------------------------------------------------------------------------

def tensor_bytes(path: Path) -> dict[str, bytes]:
    h = read_header(path)
    data = path.read_bytes()
    return {t.name: data[t.offset:t.offset + t.nbytes] for t in h.tensors}


def test_set_metadata_changes_adds_removes(gguf_file, tmp_path):
    src, _ = gguf_file
    before = sha(src)
    out = tmp_path / "edited.gguf"
    sets = dict([parse_assignment("general.name=My Model"), parse_assignment("llama.context_length=4096"),
                 parse_assignment("my.count=uint16:7")])
    sets["my.ratio"] = 0.25
    sets["my.tags"] = ["a", "b"]
    sets["my.flag"] = True
    paths = run(set_metadata(src, out, sets, ["tokenizer.ggml.scores"]))
    assert paths == [out]
    a, b = read_header(src), read_header(out)
    f = b.fields
    assert f["general.name"].value == "My Model"
    assert f["llama.context_length"].value == 4096 and f["llama.context_length"].type_name == "uint32"  # type kept
    assert f["my.count"].value == 7 and f["my.count"].type_name == "uint16"
    assert f["my.ratio"].value == 0.25 and f["my.ratio"].type_name == "float32"
    assert f["my.tags"].value == ["a", "b"] and f["my.tags"].type_name == "array[string]"
    assert f["my.flag"].value is True and f["my.flag"].type_name == "bool"
    assert "tokenizer.ggml.scores" not in f
    # every other key unchanged (value, type, order); new keys at the end
    kept = [k for k in a.fields if k not in ("tokenizer.ggml.scores",)]
    assert list(f)[:len(kept)] == kept
    for k in kept:
        if k in sets:
            continue
        assert a.fields[k].type_name == f[k].type_name, k
        va, vb = a.fields[k].value, f[k].value
        assert (np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb), k
    # tensors: same names, types, shapes, bytes and alignment
    assert [(t.name, t.dtype, t.shape) for t in a.tensors] == [(t.name, t.dtype, t.shape) for t in b.tensors]
    assert tensor_bytes(src) == tensor_bytes(out)
    assert b.alignment == a.alignment and all((t.offset - b.data_offset) % b.alignment == 0 for t in b.tensors)
    m = workbench.open_model(out)
    assert m.name == "My Model"
    assert sha(src) == before


def test_set_metadata_keeps_custom_alignment(tmp_path):
    src = tmp_path / "aligned.gguf"
    write_llama_gguf_from_hf(src, llama_tensors(seed=9), alignment=64)
    out = tmp_path / "out.gguf"
    run(set_metadata(src, out, {"general.name": "x"}))
    h = read_header(out)
    assert h.alignment == 64 and h.fields["general.alignment"].value == 64
    assert all((t.offset - h.data_offset) % 64 == 0 for t in h.tensors)
    assert tensor_bytes(src) == tensor_bytes(out)


def test_set_metadata_round_trip_is_byte_identical(tmp_path):
    src = tmp_path / "m.gguf"
    write_llama_gguf_from_hf(src, llama_tensors(seed=2))
    out = tmp_path / "same.gguf"
    run(set_metadata(src, out, {}))
    assert out.read_bytes() == src.read_bytes()


def test_set_metadata_keeps_odd_values_byte_for_byte(tmp_path):
    """Invalid UTF-8 in strings and empty arrays (valid GGUF that gguf-py's writer alone would refuse)."""
    import struct

    from builders import gguf_string, kv_str, raw_gguf

    def raw_string(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    kv = (kv_str("general.architecture", "llama")
          + gguf_string("x.bad_text") + struct.pack("<I", 8) + raw_string(b"caf\xe9 \xff")
          + gguf_string("x.bad_list") + struct.pack("<IIQ", 9, 8, 2) + raw_string(b"ok") + raw_string(b"\xc3(")
          + gguf_string("x.empty") + struct.pack("<IIQ", 9, 4, 0)
          + gguf_string("x.f64") + struct.pack("<Id", 12, 0.1))
    data = np.arange(16, dtype=np.float32).tobytes() + bytes(range(64)) + b"\0" * 32
    src = tmp_path / "odd.gguf"
    src.write_bytes(raw_gguf(kv=kv, n_kv=5, tensors=[("a", (16,), 0, 0), ("b", (32, 2), 8, 64)], data=data))
    out = tmp_path / "copy.gguf"
    run(set_metadata(src, out, {}))
    assert out.read_bytes() == src.read_bytes()
    run(set_metadata(src, out, {"x.new": "v"}, overwrite=True))
    h = read_header(out)
    assert h.fields["x.empty"].value.size == 0 and h.fields["x.f64"].value == 0.1
    assert tensor_bytes(out) == tensor_bytes(src)


@pytest.mark.realmodel
def test_set_metadata_on_real_model(tmp_path):
    src = smollm2()
    out = tmp_path / "smol.gguf"
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}", encoding="utf-8")
    sets = dict([parse_assignment(f"tokenizer.chat_template=@{template}")])
    run(set_metadata(src, out, sets, ["general.license"]))
    m = workbench.open_model(out)
    assert m.meta("tokenizer.chat_template") == "{{ messages }}" and m.meta("general.license") is None
    assert len(m.meta("tokenizer.ggml.tokens")) == 49152
    assert tensor_bytes(src) == tensor_bytes(out)


def test_set_metadata_refusals(gguf_file, tmp_path):
    src, _ = gguf_file
    out = tmp_path / "o.gguf"
    with pytest.raises(WorkbenchError, match="no such key"):
        run(set_metadata(src, out, remove=["nope.key"]))
    with pytest.raises(WorkbenchError, match="uint32"):
        run(set_metadata(src, out, {"llama.context_length": "lots"}))
    with pytest.raises(WorkbenchError, match="range"):
        run(set_metadata(src, out, {"llama.context_length": -1}))
    with pytest.raises(WorkbenchError, match="general.architecture"):
        run(set_metadata(src, out, remove=["general.architecture"]))
    with pytest.raises(WorkbenchError, match="source"):
        run(set_metadata(src, src, {"general.name": "x"}, overwrite=True))
    assert not out.exists()
    out.write_bytes(b"keep")
    with pytest.raises(WorkbenchError, match="already exists"):
        run(set_metadata(src, out, {"general.name": "x"}))
    assert out.read_bytes() == b"keep"
    run(set_metadata(src, out, {"general.name": "x"}, overwrite=True))
    assert read_header(out).fields["general.name"].value == "x"


def test_set_metadata_cancel_leaves_nothing(gguf_file, tmp_path):
    src, _ = gguf_file
    out = tmp_path / "o.gguf"
    n = {"calls": 0}

    def cancel():
        n["calls"] += 1
        return n["calls"] > 3

    with pytest.raises(Cancelled):
        run(set_metadata(src, out, {"general.name": "x"}, cancel=cancel))
    assert list(tmp_path.iterdir()) == []


def test_parse_assignment(tmp_path):
    assert parse_assignment("general.name=My Model") == ("general.name", "My Model")
    assert parse_assignment("a.b=x=y") == ("a.b", "x=y")
    assert parse_assignment("k=int:3") == ("k", TypedValue(gguf.GGUFValueType.INT32, 3))
    assert parse_assignment("k=uint64:8192") == ("k", TypedValue(gguf.GGUFValueType.UINT64, 8192))
    assert parse_assignment("k=float32:1e-5") == ("k", TypedValue(gguf.GGUFValueType.FLOAT32, 1e-5))
    assert parse_assignment("k=bool:TRUE") == ("k", TypedValue(gguf.GGUFValueType.BOOL, True))
    assert parse_assignment("k=str:@notafile") == ("k", TypedValue(gguf.GGUFValueType.STRING, "@notafile"))
    assert parse_assignment('k=array[string]:["a", "b"]') == (
        "k", TypedValue(gguf.GGUFValueType.ARRAY, ["a", "b"], gguf.GGUFValueType.STRING))
    assert parse_assignment("k=@@home") == ("k", "@home")
    assert parse_assignment("k=http://x") == ("k", "http://x")  # not a type prefix
    (tmp_path / "t.jinja").write_text("{{ bos_token }}\n", encoding="utf-8")
    assert parse_assignment("tokenizer.chat_template=@t.jinja", base_dir=tmp_path) == (
        "tokenizer.chat_template", "{{ bos_token }}\n")
    for bad in ("novalue", "=x", "k=int:abc", "k=uint8:300", "k=array[int32]:[1,", "k=@missing.jinja"):
        with pytest.raises(WorkbenchError):
            parse_assignment(bad, base_dir=tmp_path)


def test_tokenizer_files_without_vocab_is_empty():
    files, notes = tokenizer_files(shape_model("llama", ["token_embd.weight"], {"llama.block_count": 1}))
    assert files == {}  # nothing to rebuild: no tokenizer.ggml.* keys


def test_sentencepiece_vocab_is_rebuilt_as_tokenizer_json(llama_gguf):
    from tokenizers import Tokenizer

    from workbench.infer.tokenizer import load_tokenizer

    model = workbench.open_model(llama_gguf[0])
    files, _ = tokenizer_files(model)
    rebuilt = Tokenizer.from_str(files["tokenizer.json"])
    ours = load_tokenizer(model)
    text = "t3 t5t7 t12"
    assert rebuilt.encode(text).ids == ours.encode(text)
    assert json.loads(files["tokenizer_config.json"])["bos_token"] == ours.token_text(ours.bos_id)


def test_qwen2_names_biases_and_no_permutation():
    from workbench.convert.gguf_to_hf import qk_heads

    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_q.bias", "blk.0.attn_k.bias",
             "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "output_norm.weight", "output.weight",
             "rope_freqs.weight"]
    meta = {"qwen2.block_count": 1, "qwen2.embedding_length": 4, "qwen2.attention.head_count": 2,
            "qwen2.attention.head_count_kv": 1, "qwen2.context_length": 32768, "qwen2.rope.freq_base": 1e6}
    m = shape_model("qwen2", names, meta)
    mapped = hf_names(m)
    assert mapped["blk.0.attn_q.bias"] == "model.layers.0.self_attn.q_proj.bias"
    assert mapped["blk.0.attn_k.bias"] == "model.layers.0.self_attn.k_proj.bias"
    assert mapped["blk.0.attn_output.weight"] == "model.layers.0.self_attn.o_proj.weight"
    assert mapped["output.weight"] == "lm_head.weight"
    assert mapped["rope_freqs.weight"] is None  # computed by llama.cpp, not an HF weight
    assert qk_heads(m, "blk.0.attn_q.weight") is None  # qwen2 uses NEOX rope: never permuted
    cfg = hf_config(m)
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["rope_theta"] == 1e6
    assert cfg["num_key_value_heads"] == 1 and cfg["tie_word_embeddings"] is False
    llama = shape_model("llama", ["blk.0.attn_k.weight"], {"llama.attention.head_count": 8,
                                                          "llama.attention.head_count_kv": 2})
    assert qk_heads(llama, "blk.0.attn_k.weight") == 2 and qk_heads(llama, "blk.0.attn_q.weight") == 8


def test_long_metadata_arrays_pack_like_gguf_py():
    """The writer packs a vocabulary's arrays in one go: the bytes must be gguf-py's, errors too."""
    import random

    from gguf import GGUFValueType as V
    from gguf import GGUFWriter, TokenType

    from workbench.convert.metadata_edit import _Writer

    ours, theirs = _Writer(None, "llama"), GGUFWriter(None, "llama")
    rng = random.Random(3)
    tokens = [f"▁tok{i}é" for i in range(5000)] + ["<0x0A>", "", "\u4e2d"] * 30
    cases = [(tokens, None), (tokens, V.STRING), ([t.encode() for t in tokens], None),
             ([rng.uniform(-1e3, 1e3) for _ in range(700)], None), ([rng.random() for _ in range(700)], V.FLOAT32),
             ([rng.randint(1, 6) for _ in range(700)], None), ([rng.randint(0, 2**31) for _ in range(700)], V.UINT32),
             (list(range(-300, 300)), V.INT64), ([0.1] * 100 + [3], V.FLOAT64), ([True, False] * 50, None),
             (["a b", "c d"] * 40, V.STRING), ([TokenType.NORMAL, TokenType.CONTROL] * 100, None),
             ([np.float64(0.5), 1.0, 2] * 30, V.FLOAT32)]
    for val, sub in cases:
        got = ours._pack_val(val, V.ARRAY, True, sub)
        assert got == theirs._pack_val(val, V.ARRAY, True, sub), (val[:2], sub)
        assert len(got) >= 16 + len(val)
    for bad, sub in (([2**40] * 100, None), ([1] * 99 + [1.5], V.INT32), ([1] * 99 + ["x"], None),
                     ([1e39] * 100, V.FLOAT32), ([np.float32(0.25)] * 70, None)):
        errors = []
        for w in (ours, theirs):
            with pytest.raises(Exception) as info:
                w._pack_val(bad, V.ARRAY, True, sub)
            errors.append(type(info.value))
        assert errors[0] is errors[1]


def test_export_then_convert_round_trip_has_no_duplicate_keys(tmp_path, caplog):
    """A SmolLM-size vocabulary (49152): llama.cpp's converter sets add_bos_token False itself; the exported
    tokenizer_config.json also says add_bos_token, and the round trip must not log gguf-py's
    "Duplicated key name" notice (the reference's value replaces the file's in place)."""
    import logging

    from workbench.convert import convert_hf_to_gguf

    cf.build_llama(tmp_path / "hf", config={"vocab_size": 49152})
    first = run(convert_hf_to_gguf(tmp_path / "hf", tmp_path / "a.gguf", "F32"))[0]
    export(first, tmp_path / "exported", dtype="F32")
    assert "add_bos_token" in json.loads((tmp_path / "exported" / "tokenizer_config.json").read_text())
    with caplog.at_level(logging.WARNING):
        again = run(convert_hf_to_gguf(tmp_path / "exported", tmp_path / "b.gguf", "F32"))[0]
    assert not [r for r in caplog.records if "Duplicated key" in r.getMessage()], caplog.text
    b = workbench.open_model(again)
    assert b.meta("tokenizer.ggml.add_bos_token") is False  # llama.cpp's rule for this vocabulary size
    assert [e.key for e in b.metadata["GGUF"]].count("tokenizer.ggml.add_bos_token") == 1
