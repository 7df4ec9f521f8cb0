"""HF folder -> GGUF for gemma3, gemma2, qwen3, qwen3moe, phi3 and mistral (issue 14 §1).

References outside the converter: the hyperparameter keys, tensor names and shapes below are hand-listed from
llama.cpp's converter classes (conversion/gemma.py Gemma2Model/Gemma3Model, qwen.py Qwen3Model/Qwen2MoeModel,
phi.py Phi3MiniModel, llama.py LlamaModel; base.py TextModel.set_gguf_parameters) applied to the fixtures'
config.json; tensor values are compared with the safetensors read by the ``safetensors`` library; the llama.cpp
greedy tokens were recorded by tests/core/data/infer/make_llamacpp_greedy.py with llama.cpp itself.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFReader
from safetensors.numpy import load_file, save_file

import convert_fixtures as cf
from workbench import FormatError, UnsupportedError
from workbench.archs import HF_TO_GGUF, gguf_arch
from workbench.convert import convert_hf_to_gguf, prepare_hf_to_gguf
from workbench.convert import hf_to_gguf as h2g
from workbench.model import Model
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer"
ARCHS = ["gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral"]

# the architecture keys llama.cpp's converter writes for each fixture, in its order (general.* and tokenizer.*
# are checked elsewhere); floats are float32 in the file
PHI3_LONG_ATTN = math.sqrt(1 + math.log(128 / 32) / math.log(32))
EXPECTED_KEYS = {
    "gemma3": [  # TextModel.set_gguf_parameters, then Gemma3Model's (same keys keep their place)
        ("block_count", 3), ("context_length", 256), ("embedding_length", 96), ("feed_forward_length", 64),
        ("attention.head_count", 2), ("attention.head_count_kv", 1), ("rope.freq_base", 10000.0),
        ("rope.freq_base_swa", 100.0), ("attention.layer_norm_rms_epsilon", 1e-6), ("attention.key_length", 32),
        ("attention.value_length", 32), ("attention.sliding_window", 4),
        # ours: layer_types (sliding, sliding, full) are not llama.cpp's default every-6th-layer pattern
        ("attention.sliding_window_pattern", [True, True, False])],
    "gemma2": [  # Gemma2Model.set_gguf_parameters only: no rope base, no vocab size
        ("context_length", 256), ("embedding_length", 96), ("block_count", 2), ("feed_forward_length", 64),
        ("attention.head_count", 2), ("attention.head_count_kv", 1), ("attention.layer_norm_rms_epsilon", 1e-6),
        ("attention.key_length", 32), ("attention.value_length", 32), ("attn_logit_softcapping", 8.0),
        ("final_logit_softcapping", 4.0), ("attention.sliding_window", 4)],
    "qwen3": [
        ("block_count", 2), ("context_length", 256), ("embedding_length", 64), ("feed_forward_length", 96),
        ("attention.head_count", 4), ("attention.head_count_kv", 2), ("rope.freq_base", 1e6),
        ("attention.layer_norm_rms_epsilon", 1e-6), ("attention.key_length", 32), ("attention.value_length", 32)],
    "qwen3moe": [  # TextModel's expert counts, then Qwen2MoeModel's expert FFN length; norm_topk_prob not written
        ("block_count", 2), ("context_length", 256), ("embedding_length", 64), ("feed_forward_length", 96),
        ("attention.head_count", 4), ("attention.head_count_kv", 2), ("rope.freq_base", 1e6),
        ("attention.layer_norm_rms_epsilon", 1e-6), ("expert_count", 4), ("expert_used_count", 2),
        ("attention.key_length", 32), ("attention.value_length", 32), ("expert_feed_forward_length", 32)],
    "phi3": [  # Phi3MiniModel.set_gguf_parameters: rope dims = hidden / heads, sliding window 0 when null
        ("context_length", 256), ("rope.scaling.original_context_length", 256), ("embedding_length", 64),
        ("feed_forward_length", 96), ("block_count", 2), ("attention.head_count", 2),
        ("attention.head_count_kv", 1), ("attention.layer_norm_rms_epsilon", 1e-5), ("rope.dimension_count", 32),
        ("rope.freq_base", 10000.0), ("attention.sliding_window", 0)],
    "phi3_longrope": [  # the attention factor is written first (while the reference prepares the tensors)
        ("rope.scaling.attn_factor", PHI3_LONG_ATTN),
        ("context_length", 128), ("rope.scaling.original_context_length", 32), ("embedding_length", 64),
        ("feed_forward_length", 96), ("block_count", 2), ("attention.head_count", 2),
        ("attention.head_count_kv", 1), ("attention.layer_norm_rms_epsilon", 1e-5), ("rope.dimension_count", 32),
        ("rope.freq_base", 10000.0), ("attention.sliding_window", 0)],
    "mistral": [  # LlamaModel (architecture llama)
        ("block_count", 2), ("context_length", 256), ("embedding_length", 64), ("feed_forward_length", 96),
        ("attention.head_count", 2), ("attention.head_count_kv", 1), ("rope.freq_base", 10000.0),
        ("attention.layer_norm_rms_epsilon", 1e-5), ("attention.key_length", 32), ("attention.value_length", 32),
        ("vocab_size", 128), ("rope.dimension_count", 32),
        ("attention.sliding_window", 4)],  # ours: llama.cpp ignores it, our engine honours it
}
GGUF_ARCH = {"gemma3": "gemma3", "gemma2": "gemma2", "qwen3": "qwen3", "qwen3moe": "qwen3moe", "phi3": "phi3",
             "phi3_longrope": "phi3", "mistral": "llama"}


def _block_tensors(arch: str) -> dict[str, tuple[int, ...]]:
    """GGUF block tensor (without ``blk.N.``) -> numpy shape, per fixture (hand-listed from the configs)."""
    if arch in ("gemma3", "gemma2"):  # hidden 96, ffn 64, 2 heads x 32, 1 KV head
        t = {"attn_norm": (96,), "attn_q": (64, 96), "attn_k": (32, 96), "attn_v": (32, 96),
             "attn_output": (96, 64), "post_attention_norm": (96,), "ffn_norm": (96,), "ffn_gate": (64, 96),
             "ffn_up": (64, 96), "ffn_down": (96, 64), "post_ffw_norm": (96,)}
        if arch == "gemma3":
            t.update({"attn_q_norm": (32,), "attn_k_norm": (32,)})
        return t
    if arch in ("qwen3", "qwen3moe"):  # hidden 64, 4 heads x 32, 2 KV heads
        t = {"attn_norm": (64,), "attn_q": (128, 64), "attn_k": (64, 64), "attn_v": (64, 64),
             "attn_output": (64, 128), "attn_q_norm": (32,), "attn_k_norm": (32,), "ffn_norm": (64,)}
        if arch == "qwen3":
            t.update({"ffn_gate": (96, 64), "ffn_up": (96, 64), "ffn_down": (64, 96)})
        else:  # 4 experts of 32
            t.update({"ffn_gate_inp": (4, 64), "ffn_gate_exps": (4, 32, 64), "ffn_up_exps": (4, 32, 64),
                      "ffn_down_exps": (4, 64, 32)})
        return t
    if arch in ("phi3", "phi3_longrope"):  # fused q|k|v (64 + 32 + 32) and gate|up (2 x 96) kept as they are
        return {"attn_norm": (64,), "attn_qkv": (128, 64), "attn_output": (64, 64), "ffn_norm": (64,),
                "ffn_up": (192, 64), "ffn_down": (64, 96)}
    if arch == "mistral":  # hidden 64, 2 heads x 32, 1 KV head
        return {"attn_norm": (64,), "attn_q": (64, 64), "attn_k": (32, 64), "attn_v": (32, 64),
                "attn_output": (64, 64), "ffn_norm": (64,), "ffn_gate": (96, 64), "ffn_up": (96, 64),
                "ffn_down": (64, 96)}
    raise AssertionError(arch)


def expected_tensors(arch: str) -> dict[str, tuple[int, ...]]:
    n_layer = {"gemma3": 3}.get(arch, 2)
    hidden = 96 if arch.startswith("gemma") else 64
    out = {"token_embd.weight": (128, hidden), "output_norm.weight": (hidden,)}
    if not arch.startswith("gemma"):  # gemma ties the head: no output.weight
        out["output.weight"] = (128, hidden)
    if arch == "phi3_longrope":
        out.update({"rope_factors_long.weight": (16,), "rope_factors_short.weight": (16,)})
    for i in range(n_layer):
        out.update({f"blk.{i}.{k}.weight": v for k, v in _block_tensors(arch).items()})
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("archs")
    return {arch: run(convert_hf_to_gguf(DATA / arch, out / f"{arch}.gguf", "F32"))[0] for arch in ARCHS}


def _kv(reader: GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_keys(arch, converted):
    fields = _kv(GGUFReader(converted[arch]))
    ga = GGUF_ARCH[arch]
    assert fields["general.architecture"] == ga
    got = [(k[len(ga) + 1:], v) for k, v in fields.items() if k.startswith(ga + ".")]
    want = EXPECTED_KEYS[arch]
    assert [k for k, _ in got] == [k for k, _ in want]
    for (key, value), (_, expected) in zip(got, want):
        if isinstance(expected, float):
            assert value == pytest.approx(expected, rel=1e-6), key
        else:
            assert value == expected, key
    assert fields["general.file_type"] == 0  # ALL_F32


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_names_shapes_types(arch, converted):
    tensors = GGUFReader(converted[arch]).tensors
    got = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in tensors}
    assert got == expected_tensors(arch)
    assert {t.tensor_type.name for t in tensors} == {"F32"}


def _hf(arch: str) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in load_file(str(DATA / arch / "model.safetensors")).items()}


def _gguf_arrays(path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
            for t in GGUFReader(path).tensors}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute, written out: per head, rows (2, d/2) -> (d/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
            "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "ffn_gate_inp": "mlp.gate", "attn_qkv": "self_attn.qkv_proj"}


def _hf_source(arch: str, gname: str) -> str:
    if gname == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gname == "output.weight":
        return "lm_head.weight"
    if gname == "output_norm.weight":
        return "model.norm.weight"
    _, i, kind, _ = gname.split(".")
    if arch.startswith("gemma"):
        extra = {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                 "post_ffw_norm": "post_feedforward_layernorm"}
    else:
        extra = {"ffn_norm": "post_attention_layernorm"}
    if arch.startswith("phi3") and kind == "ffn_up":
        return f"model.layers.{i}.mlp.gate_up_proj.weight"
    return f"model.layers.{i}.{extra.get(kind, HF_BLOCK.get(kind))}.weight"


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_values_follow_the_documented_transforms(arch, converted):
    hf, got = _hf(arch), _gguf_arrays(converted[arch])
    used = set()
    for name, value in got.items():
        if name.startswith("rope_factors_"):
            continue
        if "_exps." in name:  # experts stacked in expert order
            i, kind = name.split(".")[1], name.split(".")[2].removeprefix("ffn_").removesuffix("_exps")
            srcs = [f"model.layers.{i}.mlp.experts.{e}.{kind}_proj.weight" for e in range(4)]
            want = np.stack([hf[s] for s in srcs])
            used.update(srcs)
        else:
            src = _hf_source(arch, name)
            want = hf[src]
            used.add(src)
            if arch.startswith("gemma") and src.endswith("norm.weight"):
                want = want + np.float32(1.0)  # Gemma's RMSNorm multiplies by (1 + w): the GGUF stores 1 + w
            if arch == "mistral" and name.endswith(("attn_q.weight", "attn_k.weight")):
                want = _permute(want, 2 if "attn_q" in name else 1)
        np.testing.assert_array_equal(value, want, err_msg=name)
    assert used == set(hf), sorted(set(hf) - used)  # every source tensor is written (gemma: none is lm_head)


def test_gemma_norms_are_shifted_and_nothing_else(converted):
    hf, got = _hf("gemma3"), _gguf_arrays(converted["gemma3"])
    np.testing.assert_array_equal(got["blk.1.attn_q_norm.weight"], hf["model.layers.1.self_attn.q_norm.weight"] + 1)
    np.testing.assert_array_equal(got["blk.1.attn_q.weight"], hf["model.layers.1.self_attn.q_proj.weight"])


def test_phi3_longrope_factors(converted):
    rope = json.loads((DATA / "phi3_longrope" / "config.json").read_text())["rope_parameters"]
    got = _gguf_arrays(converted["phi3_longrope"])
    np.testing.assert_array_equal(got["rope_factors_long.weight"], np.float32(rope["long_factor"]))
    np.testing.assert_array_equal(got["rope_factors_short.weight"], np.float32(rope["short_factor"]))
    assert not any(n.startswith("rope_factors") for n in _gguf_arrays(converted["phi3"]))


def test_qwen3moe_tensor_order_stacks_at_the_last_expert(converted):
    # the reference emits a layer's down/gate/up stacks when the layer's last expert tensor is read (tensors in
    # name order), i.e. after input_layernorm and before the router mlp.gate
    names = [t.name for t in GGUFReader(converted["qwen3moe"]).tensors]
    block0 = [n for n in names if n.startswith("blk.0.")]
    assert block0 == ["blk.0.attn_norm.weight", "blk.0.ffn_down_exps.weight", "blk.0.ffn_gate_exps.weight",
                      "blk.0.ffn_up_exps.weight", "blk.0.ffn_gate_inp.weight", "blk.0.ffn_norm.weight",
                      "blk.0.attn_k_norm.weight", "blk.0.attn_k.weight", "blk.0.attn_output.weight",
                      "blk.0.attn_q_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight"]
    assert names[:2] == ["output.weight", "token_embd.weight"]


def test_qwen3moe_q8_0_stacks_quantize_like_gguf_py(tmp_path):
    path = run(convert_hf_to_gguf(DATA / "qwen3moe", tmp_path / "q8.gguf", "Q8_0"))[0]
    hf = _hf("qwen3moe")
    t = {x.name: x for x in GGUFReader(path).tensors}["blk.1.ffn_down_exps.weight"]
    assert t.tensor_type.name == "Q8_0"
    stacked = np.stack([hf[f"model.layers.1.mlp.experts.{e}.down_proj.weight"] for e in range(4)])
    want = gguf.quants.quantize(stacked, gguf.GGMLQuantizationType.Q8_0)
    assert np.asarray(t.data).tobytes() == want.tobytes()


def test_stacked_experts_are_read_one_at_a_time(monkeypatch):
    conv = prepare_hf_to_gguf(DATA / "qwen3moe", "F32")
    t = next(x for x in conv.tensors if x.name == "blk.0.ffn_gate_exps.weight")
    opened: list[str] = []
    orig = Model.tensor

    def spy(self, name):
        opened.append(name)
        return orig(self, name)

    monkeypatch.setattr(Model, "tensor", spy)
    gen = h2g._tensor_chunks(conv.model, t, None)
    first = next(gen)
    assert first[1] == 32 * 64  # one expert's values
    assert opened == ["model.layers.0.mlp.experts.0.gate_proj.weight"]
    rest = list(gen)
    assert len(rest) == 3 and opened == [f"model.layers.0.mlp.experts.{e}.gate_proj.weight" for e in range(4)]


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer(arch, converted):
    fields = _kv(GGUFReader(converted[arch]))
    tj = json.loads((DATA / arch / "tokenizer.json").read_text())
    vocab = sorted(tj["model"]["vocab"], key=tj["model"]["vocab"].get)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.tokens"] == vocab
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 4
    if arch.startswith("gemma"):  # Gemma2Model / Gemma3Model.set_vocab
        assert fields["tokenizer.ggml.add_space_prefix"] is False
    else:
        assert "tokenizer.ggml.add_space_prefix" not in fields


SPM_PIECES = ([("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2), ("<mask>", 0.0, 4)]
              + [("\u2581" + chr(97 + i), -i / 4, 1) for i in range(26)])


def _spm_folder(arch: str, dest: Path) -> Path:
    """The fixture with a SentencePiece tokenizer.model (31 pieces, vocab_size 128) and added tokens, as real
    Gemma / Phi-3 folders carry them (tokenizer.json kept: gguf-py's SpecialVocab reads the special ids there)."""
    folder = _copy(arch, dest)
    (folder / "tokenizer.model").write_bytes(cf.sentencepiece_model_bytes(SPM_PIECES, model_type=2,
                                                                          add_dummy_prefix=False))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"] = {"40": {"content": "<start_of_turn>", "special": True},
                                  "41": {"content": "\u2581tool", "special": False},
                                  "42": {"content": "<unused7>", "special": False}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "added_tokens.json").write_text(json.dumps({"<|user|>": 43, "<|far|>": 500}))
    return folder


def test_sentencepiece_vocabularies(tmp_path):
    """Gemma3Model / Gemma2Model: _set_vocab_sentencepiece (added tokens: special or special-looking -> CONTROL,
    others USER_DEFINED with the space pre-normalized), then add_space_prefix False.  Phi3MiniModel: its own
    loop (tokenizer_config's and tokenizer.json's added tokens: special -> CONTROL, else USER_DEFINED, text
    as given), no add_space_prefix.  (Checked once against llama.cpp's converter with sentencepiece.)"""
    U, N, C, UD, UN = (gguf.TokenType.UNUSED, gguf.TokenType.NORMAL, gguf.TokenType.CONTROL,
                       gguf.TokenType.USER_DEFINED, gguf.TokenType.UNKNOWN)
    for arch in ("gemma3", "gemma2", "phi3"):
        path = run(convert_hf_to_gguf(_spm_folder(arch, tmp_path / arch), tmp_path / f"{arch}.gguf", "F32"))[0]
        f = _kv(GGUFReader(path))
        tokens, types, scores = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"], f["tokenizer.ggml.scores"]
        assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.pre"] == "default"
        assert len(tokens) == len(types) == len(scores) == 128
        assert tokens[5:8] == ["\u2581a", "\u2581b", "\u2581c"] and scores[5:8] == [0.0, -0.25, -0.5]
        assert (tokens[30], types[30]) == ("\u2581z", N)
        assert (tokens[31], types[31], scores[31]) == ("[PAD31]", U, -10000.0)
        if arch == "phi3":
            assert tokens[:5] == ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]  # tokenizer.json's
            assert types[:5] == [C] * 5
            assert tokens[40:44] == ["<start_of_turn>", "\u2581tool", "<unused7>", "<|user|>"]
            assert types[40:44] == [C, UD, UD, UD]
            assert "tokenizer.ggml.add_space_prefix" not in f
        else:
            assert tokens[:5] == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] and types[:5] == [C, C, C, UN, N]  # a user-defined piece is NORMAL
            assert tokens[40:44] == ["<start_of_turn>", " tool", "<unused7>", "<|user|>"]
            assert types[40:44] == [C, UD, C, UD]
            assert list(f)[-1] == "tokenizer.ggml.add_space_prefix" and f["tokenizer.ggml.add_space_prefix"] is False
        assert scores[40:44] == [-1000.0] * 4
        assert f["tokenizer.ggml.bos_token_id"] == 1 and f["tokenizer.ggml.eos_token_id"] == 4


def test_archs_mapping():
    want = {"Gemma3ForCausalLM": "gemma3", "gemma3_text": "gemma3", "Gemma2ForCausalLM": "gemma2",
            "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3moe", "Phi3ForCausalLM": "phi3",
            "MistralForCausalLM": "llama", "mistral": "llama"}
    assert {k: gguf_arch(k) for k in want} == want
    assert all(HF_TO_GGUF[k] == v for k, v in want.items())
    assert {v for k, v in h2g.SUPPORTED_ARCHITECTURES.items()} >= {"gemma3", "gemma2", "qwen3", "qwen3moe", "phi3"}


def _copy(arch: str, dest: Path, **config) -> Path:
    shutil.copytree(DATA / arch, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(config)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_unsupported_architecture_is_refused_before_any_tensor_is_read(tmp_path, monkeypatch):
    folder = _copy("gemma3", tmp_path / "mm", architectures=["Gemma3ForConditionalGeneration"])

    def no_reads(self, name):
        raise AssertionError(f"tensor {name} read")

    monkeypatch.setattr(Model, "tensor", no_reads)
    with pytest.raises(UnsupportedError) as err:
        run(convert_hf_to_gguf(folder, tmp_path / "out.gguf", "F32"))
    assert "'Gemma3ForConditionalGeneration' cannot be converted" in str(err.value)
    assert "Qwen3/Qwen3Moe/Gemma2/Gemma3/Phi3 ForCausalLM, BertModel" in str(err.value)
    assert not (tmp_path / "out.gguf").exists()


def test_gemma_lm_head_and_vocabulary_rows(tmp_path):
    # a stored lm_head: Gemma2Model never writes it, Gemma3Model writes it as output.weight
    for arch, written in (("gemma2", False), ("gemma3", True)):
        folder = _copy(arch, tmp_path / arch)
        state = load_file(str(folder / "model.safetensors"))
        head = (np.arange(128 * 96, dtype=np.float32).reshape(128, 96) / 1000).astype(np.float16)
        save_file({**state, "lm_head.weight": head}, str(folder / "model.safetensors"))
        got = _gguf_arrays(run(convert_hf_to_gguf(folder, tmp_path / f"{arch}.gguf", "F32"))[0])
        assert ("output.weight" in got) is written
        if written:
            np.testing.assert_array_equal(got["output.weight"], head.astype(np.float32))
    # Gemma3Model keeps len(tokenizer.json vocab) + len(added_tokens) embedding rows
    folder = _copy("gemma3", tmp_path / "short")
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["model"]["vocab"] = {t: i for t, i in tj["model"]["vocab"].items() if i < 118}
    tj["model"]["merges"] = [m for m in tj["model"]["merges"] if "".join(m.split()) in tj["model"]["vocab"]]
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    got = _gguf_arrays(run(convert_hf_to_gguf(folder, tmp_path / "short.gguf", "F32"))[0])
    np.testing.assert_array_equal(got["token_embd.weight"], _hf("gemma3")["model.embed_tokens.weight"][:123])


def test_gemma3_older_config_keys(tmp_path):
    """A Gemma 3 4B-style config.json (transformers 4.x): rope_theta / rope_local_base_freq / rope_scaling and
    sliding_window_pattern 6 instead of rope_parameters and layer_types.  TextModel mirrors the local base into
    rope_parameters.sliding_attention and writes the linear scaling; no pattern key (llama.cpp's default)."""
    cfg = json.loads((DATA / "gemma3" / "config.json").read_text())
    for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
        cfg.pop(key, None)
    folder = _copy("gemma3", tmp_path / "g")
    cfg.update({"rope_theta": 1_000_000.0, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"}})
    (folder / "config.json").write_text(json.dumps(cfg))
    f = _kv(GGUFReader(run(convert_hf_to_gguf(folder, tmp_path / "g.gguf", "F32"))[0]))
    assert f["gemma3.rope.freq_base"] == 1e6 and f["gemma3.rope.freq_base_swa"] == 10000.0
    assert f["gemma3.rope.scaling.type"] == "linear" and f["gemma3.rope.scaling.factor"] == 8.0
    assert f["gemma3.attention.sliding_window"] == 4 and "gemma3.attention.sliding_window_pattern" not in f


def test_config_errors_are_named(tmp_path):
    with pytest.raises(FormatError, match="experts.2.down_proj.weight is expert 2 but config.json says 2 experts"):
        prepare_hf_to_gguf(_copy("qwen3moe", tmp_path / "a", num_local_experts=2), "F32")
    with pytest.raises(FormatError, match="layer 0 has 12 expert tensors, not 15"):
        prepare_hf_to_gguf(_copy("qwen3moe", tmp_path / "c", num_local_experts=5), "F32")
    folder = _copy("phi3_longrope", tmp_path / "b")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"]["long_factor"] = cfg["rope_parameters"]["long_factor"][:8]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="long_factor/short_factor must both have 16 values"):
        prepare_hf_to_gguf(folder, "F32")


# -- llama.cpp -----------------------------------------------------------------------------------

LLAMACPP = json.loads((DATA / "llamacpp_greedy.json").read_text())


def _llamacpp_cannot_express(arch: str) -> bool:
    """The fixture's config holds what llama.cpp's model has no key for (see make_llamacpp_greedy.py):
    gemma3's query scale != head_dim, Mistral's window (llama architecture: none) shorter than the 20
    positions, phi3 longrope's short factors (llama.cpp's context, padded to 256, exceeds the original)."""
    cfg = json.loads((DATA / arch / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    return ((arch == "gemma3" and cfg["query_pre_attn_scalar"] != cfg["head_dim"])
            or (arch == "mistral" and bool(cfg.get("sliding_window")) and cfg["sliding_window"] < 20)
            or (arch.startswith("phi3") and bool(rope.get("long_factor"))
                and rope["original_max_position_embeddings"] < 256))


@pytest.mark.parametrize("arch", ARCHS)
def test_llamacpp_loads_our_gguf_and_greedy_agrees(arch):
    rec = LLAMACPP[arch]
    greedy = np.load(DATA / arch / "greedy.npy").tolist()
    assert rec["transformers"] == greedy  # recorded against the current fixture
    if not _llamacpp_cannot_express(arch):
        assert rec["greedy"] == greedy
        assert "variant" not in rec
        # and llama.cpp's five largest logits of each step are transformers' (F32 weights, F32 KV cache, no flash
        # attention; Gemma's GELU goes through ggml's F16 lookup table)
        steps = np.load(DATA / arch / "step_logits.npy")
        tol = 1e-2 if arch.startswith("gemma") else 1e-5  # ggml_vec_gelu_f32: input and output rounded to F16
        for step, top in enumerate(rec["top5"]):
            ids = [i for i, _ in top]
            assert ids[0] == greedy[step]
            np.testing.assert_allclose([v for _, v in top], steps[step, ids], atol=tol, rtol=0)
        expressed = greedy
    else:  # the same weights under the config llama.cpp implements: llama.cpp == transformers
        v = rec["variant"]
        assert v["greedy"] == v["transformers"] and v["greedy"] != greedy
        assert rec["greedy"] == v["greedy"]  # the fixture's GGUF already runs as that variant in llama.cpp
        expressed = v["greedy"]
    if arch == "gemma3":  # without our sliding_window_pattern key llama.cpp slides on the global layer too
        assert rec["greedy_without_swa_pattern"] != expressed
