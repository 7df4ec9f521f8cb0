"""HF folder -> GGUF: names, shapes, values, metadata, tokenizer arrays, plans, shards, cancel, overwrite."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, LlamaFileType, TokenType

import convert_fixtures as cf
from fetch_models import real_model
from workbench import Cancelled, UnsupportedError, WorkbenchError, kernels, open_model
from workbench.convert import convert_hf_to_gguf, prepare_hf_to_gguf
from workbench.convert import hf_to_gguf as h2g
from workbench.convert import hf_vocab
from workbench.naming import GGUFName, name_for_model, parse_gguf_name
from workbench.plan import Plan
from workbench.progress import Progress, run

LLAMA_HEADS = {"q_proj": 4, "k_proj": 2}


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "SmolTest-v0.1"
    return folder, cf.build_llama(folder)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "qwen-tiny"
    return folder, cf.build_qwen2(folder)


@pytest.fixture(scope="module")
def llama_f32(llama, tmp_path_factory):
    folder, _ = llama
    out = tmp_path_factory.mktemp("out")
    paths = run(convert_hf_to_gguf(folder, out, "F32"))
    return paths[0]


def fields(path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items()}


def tensors(path) -> dict:
    return {t.name: t for t in GGUFReader(path).tensors}


def as_f32(t) -> np.ndarray:
    """A GGUFReader tensor as float32 in numpy (HF) shape."""
    shape = tuple(int(x) for x in reversed(t.shape))
    return np.asarray(t.data, dtype=np.float32).reshape(shape)


def llama_gguf_name(hf: str) -> str:
    m = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
    if hf in m:
        return m[hf]
    i = hf.split(".")[2]
    part = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    rest = hf.split(".", 3)[3]
    stem, suffix = rest.rsplit(".", 1)
    return f"blk.{i}.{part[stem]}.{suffix}"


def hf_values_as_gguf(name: str, x: np.ndarray) -> np.ndarray:
    """The source values in GGUF row order (llama Q/K permuted)."""
    for proj, heads in LLAMA_HEADS.items():
        if f".{proj}." in name:
            return cf.permute_qk(x, heads)
    return x


# -- llama -------------------------------------------------------------------------------------

def test_llama_f32_exact_roundtrip(llama, llama_f32):
    folder, exact = llama
    got = tensors(llama_f32)
    expected = {n for n in exact if not n.endswith("inv_freq")}
    assert set(got) == {llama_gguf_name(n) for n in expected}
    for n in expected:
        t = got[llama_gguf_name(n)]
        assert t.tensor_type.name == "F32"
        x = as_f32(t)
        assert x.shape == exact[n].shape, n
        for proj, heads in LLAMA_HEADS.items():
            if f".{proj}." in n:
                x = cf.unpermute_qk(x, heads)  # undo llama.cpp's Q/K row permutation
        assert np.array_equal(x, exact[n]), n
    # the permutation is real: q rows are not in HF order
    q = as_f32(got["blk.0.attn_q.weight"])
    assert not np.array_equal(q, exact["model.layers.0.self_attn.q_proj.weight"])


def test_llama_tensor_order_follows_the_reference(llama_f32):
    names = list(tensors(llama_f32))
    assert names[:3] == ["output.weight", "token_embd.weight", "blk.0.attn_norm.weight"]
    assert names[-1] == "output_norm.weight"


def test_llama_metadata(llama, llama_f32):
    folder, _ = llama
    f = fields(llama_f32)
    cfg = cf.LLAMA_CONFIG
    assert f["general.architecture"] == "llama"
    assert f["general.type"] == "model"
    assert f["general.name"] == "SmolTest v0.1"  # gguf-py's Metadata heuristics on the folder name
    assert f["general.basename"] == "SmolTest"
    assert f["general.version"] == "v0.1"
    assert f["general.file_type"] == LlamaFileType.ALL_F32
    assert f["general.quantization_version"] == 2
    n_params = sum(a.size for n, a in llama[1].items() if not n.endswith("inv_freq"))
    from gguf.utility import size_label
    assert f["general.size_label"] == size_label(n_params, n_params, 0, 0)
    assert f["llama.block_count"] == 2
    assert f["llama.context_length"] == cfg["max_position_embeddings"]
    assert f["llama.embedding_length"] == 64
    assert f["llama.feed_forward_length"] == 96
    assert f["llama.attention.head_count"] == 4
    assert f["llama.attention.head_count_kv"] == 2
    assert f["llama.rope.freq_base"] == pytest.approx(100000.0)
    assert f["llama.rope.dimension_count"] == 16
    assert f["llama.attention.key_length"] == f["llama.attention.value_length"] == 16
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert f["llama.vocab_size"] == 304
    assert f["general.sampling.temp"] == pytest.approx(0.2)  # generation_config.json


def test_llama_tokenizer_arrays(llama, llama_f32):
    folder, _ = llama
    f = fields(llama_f32)
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    inv = {i: t for t, i in tj["model"]["vocab"].items()}
    inv.update({a["id"]: a["content"] for a in tj["added_tokens"]})
    n = cf.LLAMA_CONFIG["vocab_size"]
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == n
    assert tokens == [inv.get(i, f"[PAD{i}]") for i in range(n)]
    specials = {a["id"] for a in tj["added_tokens"] if a["special"]}
    tool = next(a["id"] for a in tj["added_tokens"] if a["content"] == "<tool>")
    for i in range(n):
        want = (TokenType.UNUSED if i not in inv else TokenType.CONTROL if i in specials
                else TokenType.USER_DEFINED if i == tool else TokenType.NORMAL)
        assert types[i] == want, (i, tokens[i])
    merges = tj["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == "gpt-2"  # a lone ByteLevel pre-tokenizer with its GPT-2 regex
    assert f["tokenizer.ggml.bos_token_id"] == 0
    assert f["tokenizer.ggml.eos_token_id"] == 2
    assert f["tokenizer.ggml.padding_token_id"] == 0
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.ggml.add_eos_token"] is False  # ByteLevel post-processor
    assert f["tokenizer.chat_template"] == cf.CHAT_TEMPLATE


def test_llama_f16_within_fp16_rounding(llama, tmp_path):
    folder, exact = llama
    path = run(convert_hf_to_gguf(folder, tmp_path, "F16"))[0]
    assert fields(path)["general.file_type"] == LlamaFileType.MOSTLY_F16
    for n, t in tensors(path).items():
        hf = next(k for k in exact if not k.endswith("inv_freq") and llama_gguf_name(k) == n)
        src = hf_values_as_gguf(hf, exact[hf])
        if src.ndim == 1:
            assert t.tensor_type.name == "F32" and np.array_equal(as_f32(t), src)
        else:
            assert t.tensor_type.name == "F16"
            got = as_f32(t)
            assert np.array_equal(got, src.astype(np.float16).astype(np.float32)), n
            assert np.all(np.abs(got - src) <= np.abs(src) * 2.0 ** -11 + 2.0 ** -24)


@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_plan_types_and_bytes(llama, tmp_path, preset):
    folder, exact = llama
    model = open_model(folder)
    plan = Plan(model, preset)
    path = run(convert_hf_to_gguf(folder, tmp_path, plan))[0]
    got = tensors(path)
    want = {e.gguf_name: e.type for e in plan.entries if e.gguf_name in got}
    assert {n: t.tensor_type.name for n, t in got.items()} == want
    assert len(set(want.values())) > 1  # the preset really mixes types (norms F32, output Q6_K/Q8_0...)
    for e in plan.entries:
        if e.gguf_name not in got:
            assert e.name.endswith("inv_freq")
            continue
        src = hf_values_as_gguf(e.name, exact[e.name])
        q = kernels.quantize(src.reshape(-1, src.shape[-1]), e.type)
        assert got[e.gguf_name].data.tobytes() == q.tobytes(), e.gguf_name
    assert fields(path)["general.file_type"] == getattr(LlamaFileType, f"MOSTLY_{preset}")


def test_plan_rules_and_overrides_are_written(llama, tmp_path):
    folder, _ = llama
    plan = Plan(open_model(folder), "Q4_K_M", rules=[(r"ffn_up", "Q5_0")],
                overrides={"model.layers.1.self_attn.v_proj.weight": "IQ4_NL"})
    got = tensors(run(convert_hf_to_gguf(folder, tmp_path, plan))[0])
    assert got["blk.0.ffn_up.weight"].tensor_type.name == "Q5_0"
    assert got["blk.1.attn_v.weight"].tensor_type.name == "IQ4_NL"


def test_row_chunks_give_the_same_bytes(llama, tmp_path, monkeypatch):
    folder, _ = llama
    whole = run(convert_hf_to_gguf(folder, tmp_path / "a", "Q4_K_M"))[0]
    monkeypatch.setattr(h2g, "CHUNK_ELEMENTS", 200)  # a few rows per chunk: permuted rows cross chunks
    progress: list[Progress] = []
    chunked = run(convert_hf_to_gguf(folder, tmp_path / "b", "Q4_K_M"), progress.append)[0]
    assert whole.read_bytes() == chunked.read_bytes()
    n_tensors = len(tensors(whole))
    assert len(progress) > 2 * n_tensors  # per row chunk, not per tensor
    dones = [p.done for p in progress[1:]]
    assert dones == sorted(dones) and progress[-1].done == progress[-1].total


def test_open_model_reads_the_output(llama, llama_f32):
    folder, exact = llama
    m = open_model(llama_f32)
    assert m.format == "gguf" and m.architecture == "llama"
    x = m.tensor("blk.1.attn_k.weight").to_float32()
    assert np.array_equal(cf.unpermute_qk(x, 2), exact["model.layers.1.self_attn.k_proj.weight"])
    assert np.array_equal(m.tensor("output.weight").to_float32(), exact["lm_head.weight"])
    assert m.meta("tokenizer.ggml.model") == "gpt2"


def test_sharded_source_and_source_untouched(tmp_path):
    folder = tmp_path / "sharded"
    exact = cf.build_llama(folder, shards=3, seed=5)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    path = run(convert_hf_to_gguf(folder, tmp_path / "out", "F32"))[0]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert before == after
    got = tensors(path)
    assert np.array_equal(as_f32(got["token_embd.weight"]), exact["model.embed_tokens.weight"])


def test_llama3_rope_freqs(tmp_path):
    folder = tmp_path / "l3"
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    cf.build_llama(folder, config={"rope_scaling": rope}, dtype_mix=False)
    path = run(convert_hf_to_gguf(folder, tmp_path, "F16"))[0]
    t = tensors(path)["rope_freqs.weight"]
    assert t.tensor_type.name == "F32" and list(tensors(path))[0] == "rope_freqs.weight"
    got = as_f32(t)
    dim, base = 16, 100000.0
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    wavelen = 2 * np.pi / freqs
    assert got.shape == (dim // 2,)
    assert np.all(got[wavelen < 64 / 4.0] == 1.0) and np.all(got[wavelen > 64 / 1.0] == 8.0)
    # the one frequency in the smoothing band (wavelength 26.5 between 16 and 64), by hand:
    # smooth = (64 / 26.496 - 1) / 3 = 0.47183, factor = 1 / ((1 - smooth) / 8 + smooth) = 1.85928
    assert np.count_nonzero((wavelen >= 16) & (wavelen <= 64)) == 1
    assert got[1] == pytest.approx(1.8592789, rel=1e-6)


# -- qwen2 -------------------------------------------------------------------------------------

def test_qwen2(qwen2, tmp_path):
    folder, exact = qwen2
    path = run(convert_hf_to_gguf(folder, tmp_path, "F32"))[0]
    got = tensors(path)
    assert "output.weight" not in got  # tied embeddings stay tied
    assert len(got) == len(exact)
    for hf, x in exact.items():
        g = llama_gguf_name(hf)
        assert np.array_equal(as_f32(got[g]), x), g  # qwen2 Q/K are not permuted
    assert got["blk.0.attn_q.bias"].tensor_type.name == "F32"
    f = fields(path)
    assert f["general.architecture"] == "qwen2"
    assert f["qwen2.rope.freq_base"] == pytest.approx(1e6)
    assert f["qwen2.context_length"] == 512
    assert f["qwen2.attention.head_count_kv"] == 2
    assert "qwen2.rope.dimension_count" not in f and "qwen2.vocab_size" not in f
    assert f["tokenizer.ggml.pre"] == "qwen2"  # named by its split regex
    assert f["tokenizer.ggml.tokens"][-1] == "[PAD299]"


# -- t5 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gated", [False, True], ids=["t5", "flan-t5"])
def test_t5(tmp_path, gated):
    folder = tmp_path / ("flan-t5-tiny" if gated else "t5-tiny")
    exact = cf.build_t5(folder, gated=gated)
    path = run(convert_hf_to_gguf(folder, tmp_path / "out", "F32"))[0]
    got = tensors(path)
    assert np.array_equal(as_f32(got["token_embd.weight"]), exact["shared.weight"])
    assert ("output.weight" in got) == gated
    if gated:
        assert np.array_equal(as_f32(got["output.weight"]), exact["lm_head.weight"])
        assert np.array_equal(as_f32(got["enc.blk.1.ffn_gate.weight"]),
                              exact["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"])
    assert np.array_equal(as_f32(got["enc.blk.0.attn_rel_b.weight"]),
                          exact["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])
    assert np.array_equal(as_f32(got["dec.blk.1.cross_attn_k.weight"]),
                          exact["decoder.block.1.layer.1.EncDecAttention.k.weight"])
    assert np.array_equal(as_f32(got["dec.blk.0.ffn_down.weight"]),
                          exact["decoder.block.0.layer.2.DenseReluDense.wo.weight"])
    n_written = len(exact) - (0 if gated else 2)  # the encoder/decoder copies of the shared embedding
    assert len(got) == n_written
    f = fields(path)
    assert f["general.architecture"] == "t5"
    assert f["general.license"] == "apache-2.0" and f["general.languages"] == ["en", "de"]
    assert (f["t5.context_length"], f["t5.embedding_length"], f["t5.feed_forward_length"]) == (512, 32, 64)
    assert (f["t5.block_count"], f["t5.decoder_block_count"], f["t5.attention.head_count"]) == (2, 2, 4)
    assert f["t5.attention.key_length"] == f["t5.attention.value_length"] == 8
    assert f["t5.attention.relative_buckets_count"] == 32
    assert f["t5.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f["t5.decoder_start_token_id"] == 0
    # the Unigram vocabulary, read from tokenizer.json
    pieces = cf.UNIGRAM_PIECES
    toks, scores, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"]
    assert f["tokenizer.ggml.model"] == "t5" and f["tokenizer.ggml.pre"] == "default"
    assert len(toks) == len(scores) == len(types) == 40
    assert toks[:len(pieces)] == [p for p, _ in pieces]
    assert np.allclose(scores[:len(pieces)], [s for _, s in pieces])
    assert types[:4] == [TokenType.CONTROL, TokenType.CONTROL, TokenType.UNKNOWN, TokenType.NORMAL]
    n = len(pieces)
    assert toks[n:n + 4] == [f"<extra_id_{i}>" for i in (3, 2, 1, 0)] and set(types[n:n + 4]) == {TokenType.CONTROL}
    assert toks[n + 4:] == [f"[PAD{i}]" for i in range(n + 4, 40)] and set(types[n + 4:]) == {TokenType.UNUSED}
    assert scores[-1] == -10000.0
    assert f["tokenizer.ggml.add_space_prefix"] is True
    assert f["tokenizer.ggml.remove_extra_whitespaces"] is True
    assert (f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.unknown_token_id"],
            f["tokenizer.ggml.padding_token_id"]) == (1, 2, 0)
    assert f["tokenizer.ggml.add_eos_token"] is True
    # a K-quant plan: the shared embedding gets the plan's token_embd type whichever copy is written
    plan = Plan(open_model(folder), "Q4_K_M")
    q = tensors(run(convert_hf_to_gguf(folder, tmp_path / "q", plan))[0])
    want = {e.gguf_name: e.type for e in plan.entries if e.gguf_name in q}
    assert {n: t.tensor_type.name for n, t in q.items()} == want
    assert q["token_embd.weight"].data.tobytes() == kernels.quantize(exact["shared.weight"], want["token_embd.weight"]).tobytes()


def test_t5_with_the_real_t5_tokenizer(tmp_path):
    adapter = real_model("t5-lora")
    tj = adapter / "tokenizer.json"
    if not tj.is_file():
        pytest.skip(f"no tokenizer.json in {adapter}")
    folder = tmp_path / "t5-real-tok"
    cf.build_t5(folder, vocab_size=32128)
    shutil.copy(tj, folder / "tokenizer.json")
    shutil.copy(adapter / "tokenizer_config.json", folder / "tokenizer_config.json")
    f = fields(run(convert_hf_to_gguf(folder, tmp_path, "Q8_0"))[0])
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    vocab = json.loads(tj.read_text(encoding="utf-8"))["model"]["vocab"]
    assert len(toks) == 32128 and toks[:32100] == [p for p, _ in vocab]
    assert toks[:3] == ["<pad>", "</s>", "<unk>"] and types[:3] == [TokenType.CONTROL, TokenType.CONTROL, TokenType.UNKNOWN]
    assert toks[32000] == "<extra_id_99>" and types[32000] == TokenType.CONTROL
    assert toks[32100] == "[PAD32100]" and types[32100] == TokenType.UNUSED
    assert f["tokenizer.ggml.eos_token_id"] == 1


def test_sentencepiece_model_files(tmp_path):
    """spiece.model / tokenizer.model are read like the reference reads them with sentencepiece."""
    pieces = [("<pad>", 0.0, 3), ("</s>", 0.0, 3), ("<unk>", 0.0, 2), ("\u2581", -1.5, 1), ("a", -2.25, 1),
              ("<sep>", 0.0, 4), ("<0x41>", 0.0, 6), ("gone", 0.0, 5)]
    spm = hf_vocab.read_sentencepiece_model
    (tmp_path / "x.model").write_bytes(cf.sentencepiece_model_bytes(pieces, add_dummy_prefix=False, charsmap=b"\x01\x02"))
    m = spm(tmp_path / "x.model")
    assert m.pieces == pieces and m.model_type == 1
    assert m.add_dummy_prefix is False and m.remove_extra_whitespaces is True and m.precompiled_charsmap == b"\x01\x02"
    # a T5 folder with spiece.model
    folder = tmp_path / "t5spm"
    cf.build_t5(folder, vocab_size=10)
    (folder / "spiece.model").write_bytes(cf.sentencepiece_model_bytes(pieces, add_dummy_prefix=False, charsmap=b"\x07"))
    f = fields(run(convert_hf_to_gguf(folder, tmp_path, "F16"))[0])
    assert f["tokenizer.ggml.tokens"] == [p for p, _, _ in pieces] + ["[PAD8]", "[PAD9]"]
    assert f["tokenizer.ggml.scores"] == [s for _, s, _ in pieces] + [-10000.0, -10000.0]
    # user-defined pieces are NORMAL in the reference (it only asks IsUnknown/IsControl/IsUnused/IsByte)
    assert f["tokenizer.ggml.token_type"] == [3, 3, 2, 1, 1, 1, 6, 5, 5, 5]
    assert f["tokenizer.ggml.add_space_prefix"] is False
    assert f["tokenizer.ggml.precompiled_charsmap"] == [7]
    # a llama folder with tokenizer.model (SentencePiece BPE) and added tokens in tokenizer_config.json
    folder = tmp_path / "llamaspm"
    cf.build_llama(folder, config={"vocab_size": 10}, tokenizer=False, dtype_mix=False)
    (folder / "tokenizer.model").write_bytes(cf.sentencepiece_model_bytes(pieces[:8], model_type=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "bos_token": "<s>", "add_prefix_space": False,
        "added_tokens_decoder": {"8": {"content": "<|im_start|>", "special": True},
                                 "9": {"content": "\u2581tool", "special": False}}}))
    f = fields(run(convert_hf_to_gguf(folder, tmp_path, "F16"))[0])
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.pre"] == "default"
    assert f["tokenizer.ggml.tokens"][-2:] == ["<|im_start|>", " tool"]
    assert f["tokenizer.ggml.token_type"][-2:] == [TokenType.CONTROL, TokenType.USER_DEFINED]
    assert f["tokenizer.ggml.scores"][-2:] == [-1000.0, -1000.0]
    assert f["tokenizer.ggml.add_space_prefix"] is False
    assert f["tokenizer.ggml.add_bos_token"] is True


def test_llama_tokenizer_json_with_byte_fallback(tmp_path):
    """A Llama-2 style tokenizer.json without tokenizer.model: gguf-py's LlamaHfVocab, as the reference."""
    folder = tmp_path / "llama2tok"
    cf.build_llama(folder, config={"vocab_size": 269}, tokenizer=False, dtype_mix=False)
    tj = cf.spm_bpe_tokenizer(folder)
    f = fields(run(convert_hf_to_gguf(folder, tmp_path, "F16"))[0])
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.pre"] == "default"
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    inv = {i: t for t, i in tj["model"]["vocab"].items()}
    assert toks == [inv[i] for i in range(len(inv))] + ["<|im_start|>", "<|im_end|>"]
    assert f["tokenizer.ggml.scores"] == [-1000.0] * len(toks)
    assert types[:3] == [TokenType.CONTROL] * 3 and set(types[3:259]) == {TokenType.BYTE}
    assert set(types[259:267]) == {TokenType.NORMAL}
    # only the tokens the configs name are special to transformers (all_special_ids)
    assert types[267:] == [TokenType.USER_DEFINED, TokenType.CONTROL]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert f["tokenizer.ggml.add_bos_token"] is True


def test_damaged_sentencepiece_model(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(WorkbenchError, match="SentencePiece"):
        hf_vocab.read_sentencepiece_model(tmp_path / "bad.model")


# -- bert --------------------------------------------------------------------------------------

@pytest.mark.realmodel
def test_bert_minilm(tmp_path):
    src = real_model("minilm")
    m = open_model(src)
    path = run(convert_hf_to_gguf(src, tmp_path, "F32"))[0]
    got = tensors(path)
    skipped = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert len(got) == len([t for t in m.tensors if t.name not in skipped])
    for name, g in (("embeddings.word_embeddings.weight", "token_embd.weight"),
                    ("embeddings.token_type_embeddings.weight", "token_types.weight"),
                    ("encoder.layer.5.attention.self.query.weight", "blk.5.attn_q.weight"),
                    ("encoder.layer.0.output.LayerNorm.bias", "blk.0.layer_output_norm.bias")):
        assert np.array_equal(as_f32(got[g]), m.tensor(name).to_float32()), g
    f = fields(path)
    assert f["general.architecture"] == "bert"
    assert f["bert.attention.causal"] is False
    assert f["bert.pooling_type"] == 1  # mean pooling from modules.json / 1_Pooling
    assert f["bert.context_length"] == 512 and f["bert.embedding_length"] == 384
    assert f["bert.attention.layer_norm_epsilon"] == pytest.approx(1e-12)
    assert f["tokenizer.ggml.model"] == "bert"
    assert f["tokenizer.ggml.pre"] == "jina-v2-en"  # the reference's name for this check-text hash
    assert f["tokenizer.ggml.token_type_count"] == 2
    assert f["tokenizer.ggml.normalizer.lowercase"] is True
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    vocab = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(toks) == len(vocab) == 30522
    assert toks[101] == "[CLS]" and types[101] == TokenType.CONTROL
    for i in (1000, 2000, 7592):  # phantom space: word starts get ▁, ## continuations lose ##
        w = vocab[i]
        assert toks[i] == (w[2:] if w.startswith("##") else "\u2581" + w)
    assert (f["tokenizer.ggml.cls_token_id"] if "tokenizer.ggml.cls_token_id" in f else 101) == 101
    assert f["tokenizer.ggml.seperator_token_id"] == 102 and f["tokenizer.ggml.mask_token_id"] == 103
    # Q8_0 tensors are kernels.quantize of the source
    q = tensors(run(convert_hf_to_gguf(src, tmp_path / "q", "Q8_0"))[0])
    w = m.tensor("encoder.layer.2.intermediate.dense.weight").to_float32()
    assert q["blk.2.ffn_up.weight"].data.tobytes() == kernels.quantize(w, "Q8_0").tobytes()
    assert q["position_embd.weight"].tensor_type.name == "F32"


# -- files: shards, names, cancel, overwrite ----------------------------------------------------

def test_shards_by_tensor_count(llama, llama_f32, tmp_path):
    folder, _ = llama
    paths = run(convert_hf_to_gguf(folder, tmp_path, "F32", split_max_tensors=8))
    n = len(paths)
    assert n == 3  # 21 tensors, 8 per shard
    stem = llama_f32.name[:-5]
    assert [p.name for p in paths] == [f"{stem}-{k:05d}-of-{n:05d}.gguf" for k in range(1, n + 1)]
    assert [parse_gguf_name(p.name).shard for p in paths] == [(k, n) for k in range(1, n + 1)]
    counts = []
    for k, p in enumerate(paths):
        f = fields(p)
        assert (f["split.no"], f["split.count"], f["split.tensors.count"]) == (k, n, 21)
        counts.append(len(GGUFReader(p).tensors))
        assert ("general.architecture" in f) == (k == 0)
    assert counts == [8, 8, 5]
    whole, split = open_model(llama_f32), open_model(paths[0])
    assert [t.name for t in split.tensors] == [t.name for t in whole.tensors]
    for t in whole.tensors:
        assert np.array_equal(split.tensor(t.name).to_float32(), whole.tensor(t.name).to_float32())


def test_shards_by_size(llama, tmp_path):
    folder, _ = llama
    paths = run(convert_hf_to_gguf(folder, tmp_path, "F16", split_max_size=60_000))
    assert len(paths) > 1
    for p in paths:
        r = GGUFReader(p)
        assert sum(int(t.n_bytes) for t in r.tensors) <= 60_000 or len(r.tensors) == 1


def test_output_names(llama, llama_f32, tmp_path):
    folder, _ = llama
    conv = prepare_hf_to_gguf(folder, "Q4_K_M")
    md = {"general.name": "SmolTest v0.1", "general.basename": "SmolTest", "general.version": "v0.1",
          "general.size_label": conv.metadata.size_label}
    assert conv.output_name() == name_for_model(md, "Q4_K_M", conv.n_params)
    assert llama_f32.name == f"SmolTest-{conv.metadata.size_label}-v0.1-F32.gguf"  # as the reference names it
    p = run(convert_hf_to_gguf(folder, tmp_path, conv, name=GGUFName("Renamed", "1K", encoding="F16")))[0]
    assert p.name == "Renamed-1K-F16.gguf"
    p = run(convert_hf_to_gguf(folder, tmp_path, "F16", name="custom"))[0]
    assert p.name == "custom.gguf"
    p = run(convert_hf_to_gguf(folder, tmp_path / "sub" / "direct.gguf", "F16"))[0]
    assert p == tmp_path / "sub" / "direct.gguf" and p.is_file()
    with pytest.raises(WorkbenchError, match="not a file name"):
        run(convert_hf_to_gguf(folder, tmp_path, "F16", name="a/b.gguf"))


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_cancel_leaves_no_files(llama, tmp_path, monkeypatch):
    folder, _ = llama
    monkeypatch.setattr(h2g, "CHUNK_ELEMENTS", 500)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 10

    out = tmp_path / "new" / "dir"
    with pytest.raises(Cancelled):
        run(convert_hf_to_gguf(folder, out, "Q4_K_M", split_max_tensors=5, cancel=cancel))
    assert calls["n"] == 11
    assert not (tmp_path / "new").exists()  # the folders it made are gone too
    # a job dropped half-way (the GUI closes the generator)
    out = tmp_path / "dropped"
    out.mkdir()
    job = convert_hf_to_gguf(folder, out, "Q8_0")
    for _ in range(5):
        next(job)
    assert _listing(out)  # temporary files exist while it runs
    job.close()
    assert _listing(out) == []


def test_failure_leaves_no_files(llama, tmp_path, monkeypatch):
    folder, _ = llama
    real = kernels.quantize

    def failing(x, qtype, *a, name=None, **kw):
        if name == "blk.1.ffn_up.weight":
            raise WorkbenchError("disk full (simulated)")
        return real(x, qtype, *a, name=name, **kw)

    monkeypatch.setattr(h2g.kernels, "quantize", failing)
    with pytest.raises(WorkbenchError, match="simulated"):
        run(convert_hf_to_gguf(folder, tmp_path, "Q8_0", split_max_tensors=4))
    assert _listing(tmp_path) == []


def test_existing_output_is_not_overwritten(llama, tmp_path):
    folder, _ = llama
    first = run(convert_hf_to_gguf(folder, tmp_path, "Q8_0"))[0]
    first.write_bytes(b"keep me")
    with pytest.raises(WorkbenchError, match="already exists"):
        run(convert_hf_to_gguf(folder, tmp_path, "Q8_0"))
    assert first.read_bytes() == b"keep me"
    # one existing shard is enough to refuse
    shard = tmp_path / "x-00002-of-00003.gguf"
    shard.write_bytes(b"old")
    with pytest.raises(WorkbenchError, match="already exists"):
        run(convert_hf_to_gguf(folder, tmp_path / "x.gguf", "F32", split_max_tensors=8))
    assert not (tmp_path / "x-00001-of-00003.gguf").exists() and shard.read_bytes() == b"old"
    again = run(convert_hf_to_gguf(folder, tmp_path, "Q8_0", overwrite=True))[0]
    assert again == first and fields(first)["general.file_type"] == LlamaFileType.MOSTLY_Q8_0


def test_unsupported_architecture(tmp_path):
    folder = tmp_path / "gpt2"
    cf.build_llama(folder, dtype_mix=False)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError) as err:
        run(convert_hf_to_gguf(folder, tmp_path, "F16"))
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg
    for arch in ("Llama/Mistral/Qwen2/", "Gemma3/Phi3 ForCausalLM", "BertModel", "T5ForConditionalGeneration"):
        assert arch in msg
    assert _listing(tmp_path / "out") == []


def test_gguf_input_and_plan_for_another_model_are_refused(llama, llama_f32, qwen2, tmp_path):
    with pytest.raises(UnsupportedError, match="cannot be converted"):
        run(convert_hf_to_gguf(llama_f32, tmp_path, "F16"))
    plan = Plan(open_model(qwen2[0]), "Q8_0")
    with pytest.raises(WorkbenchError, match="another model"):
        run(convert_hf_to_gguf(llama[0], tmp_path, plan))


def test_missing_tokenizer_is_named(tmp_path):
    folder = tmp_path / "notok"
    cf.build_llama(folder, tokenizer=False, dtype_mix=False)
    with pytest.raises(WorkbenchError, match="tokenizer.json"):
        run(convert_hf_to_gguf(folder, tmp_path, "F16"))
    assert _listing(tmp_path / "notok") == sorted(["config.json", "generation_config.json", "model.safetensors"])


# -- pre-tokenizer names -----------------------------------------------------------------------

def test_pre_tokenizer_names(tmp_path, monkeypatch):
    pre = hf_vocab.pre_from_structure
    assert pre({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}) == "gpt-2"
    assert pre({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                       {"type": "ByteLevel", "use_regex": True}]}) == "smollm"
    llama3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": hf_vocab._LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    assert pre(llama3) == "llama-bpe"
    assert pre({"type": "Whitespace"}) == "default"
    assert pre(None) == "default"
    # a known check-text hash wins over the structure (the reference identifies tokenizers by it)
    folder = tmp_path / "tok"
    folder.mkdir()
    cf.bpe_tokenizer(folder)
    tok = hf_vocab._load_tokenizer(folder)
    digest = hashlib.sha256(str(tok.encode(hf_vocab.CHKTXT).ids).encode()).hexdigest()
    assert hf_vocab.detect_pre_tokenizer(folder) == "gpt-2"
    monkeypatch.setitem(hf_vocab.KNOWN_PRE_HASHES, digest, "smollm")
    assert hf_vocab.detect_pre_tokenizer(folder) == "smollm"
