"""GGUF -> Hugging Face folder for gemma3, gemma2, qwen3, qwen3moe, phi3 (plain and longrope) and mistral
(issue 14 §1), and the export's refusals and sentence-transformers files (§3).

Reference: the tiny transformers-made folders of ``tests/core/data/infer/<arch>`` (make_arch_fixtures.py).
Each is turned into a GGUF here the way llama.cpp's convert_hf_to_gguf.py writes it (gguf-py's GGUFWriter and
TensorNameMap, Gemma norms stored as 1 + w, qwen3moe experts stacked into 3-D tensors, phi3's longrope factors
as rope_factors_* tensors, mistral's Q/K rows permuted by the tests' own ``convert_fixtures.permute_qk``), then
exported; the folder must give back the fixture's tensor names and values and its config.json fields.
``tests/core/data/infer/check_export_transformers.py`` (a dev script) loads the same exports in transformers.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import convert_fixtures as cf
import gguf
import numpy as np
import pytest
from gguf import quants
from safetensors.numpy import load_file

import workbench
from workbench.cli import main as cli_main
from workbench.convert.export import export_hf
from workbench.convert.gguf_to_hf import expert_names, hf_config, value_offset
from workbench.errors import UnsupportedError
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer"
ARCHS = ("gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral")
GGUF_ARCH = {"Gemma3ForCausalLM": "gemma3", "Gemma2ForCausalLM": "gemma2", "Qwen3ForCausalLM": "qwen3",
             "Qwen3MoeForCausalLM": "qwen3moe", "Phi3ForCausalLM": "phi3", "MistralForCausalLM": "llama"}


# -- the reference GGUF: llama.cpp's conventions, written with gguf-py ----------------------------------

def _rope(cfg: dict) -> tuple[dict, dict]:
    """(global, sliding) rope parameters of a transformers 5 config.json."""
    rp = cfg.get("rope_parameters") or {}
    if "full_attention" in rp:
        return rp["full_attention"], rp.get("sliding_attention", {})
    return rp, {}


def write_reference_gguf(folder: Path, path: Path, *, expert_type: str | None = None) -> dict[str, np.ndarray]:
    """The fixture as a GGUF (2-D tensors F16 or ``expert_type`` for the 3-D experts, 1-D F32); returns the
    GGUF tensors written, by GGUF name."""
    cfg = json.loads((folder / "config.json").read_text())
    arch = GGUF_ARCH[cfg["architectures"][0]]
    n_layer = cfg["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    hf = load_file(str(folder / "model.safetensors"))
    out: dict[str, np.ndarray] = {}
    experts: dict[str, list] = {}
    for name in sorted(hf):
        x = hf[name]
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            x = x.astype(np.float32) + 1  # convert_hf_to_gguf: data_torch + 1
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg["num_attention_heads"] if "q_proj" in name else cfg["num_key_value_heads"]
            x = cf.permute_qk(x, heads)
        if ".experts." in name:  # model.layers.N.mlp.experts.E.gate_proj.weight
            parts = name.split(".")
            key = ".".join(parts[:5] + parts[6:])
            experts.setdefault(key, [None] * cfg.get("num_experts", cfg.get("num_local_experts")))[int(parts[5])] = x
            continue
        out[tmap.get_name(name, try_suffixes=(".weight", ".bias"))] = x
    for key, xs in experts.items():
        out[tmap.get_name(key, try_suffixes=(".weight",))] = np.stack(xs)
    g_rope, l_rope = _rope(cfg)
    if g_rope.get("rope_type") == "longrope":
        out["rope_factors_long.weight"] = np.array(g_rope["long_factor"], np.float32)
        out["rope_factors_short.weight"] = np.array(g_rope["short_factor"], np.float32)

    w = gguf.GGUFWriter(path, arch)
    w.add_name(folder.name)
    w.add_block_count(n_layer)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(g_rope.get("rope_theta", 10000.0))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if arch != "phi3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch in ("llama", "phi3"):
        w.add_rope_dimension_count(head_dim)
    if cfg.get("sliding_window") and arch in ("gemma2", "gemma3", "llama"):
        w.add_sliding_window(cfg["sliding_window"])
    if arch == "phi3":
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        orig = g_rope.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        w.add_rope_scaling_orig_ctx_len(orig)
        if "rope_factors_long.weight" in out:
            scale = cfg["max_position_embeddings"] / orig
            w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(scale) / np.log(orig))))
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        if cfg.get("attn_logit_softcapping"):
            w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        if cfg["query_pre_attn_scalar"] != head_dim:  # llama.cpp's key for a query scale other than 1/sqrt(head_dim)
            w.add_attention_scale(float(cfg["query_pre_attn_scalar"]) ** -0.5)
        if l_rope.get("rope_theta") is not None:
            w.add_rope_freq_base_swa(l_rope["rope_theta"])
    if arch == "qwen3moe":
        w.add_expert_count(cfg.get("num_experts", cfg.get("num_local_experts")))
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    tj = json.loads((folder / "tokenizer.json").read_text())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i < 5 else 1 for i in range(len(vocab))])
    w.add_token_merges(tj["model"]["merges"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    written = {}
    for name, x in out.items():
        if x.ndim == 1:
            x = x.astype(np.float32)
            w.add_tensor(name, x)
        elif x.ndim == 3 and expert_type:
            qt = gguf.GGMLQuantizationType[expert_type]
            q = quants.quantize(x.astype(np.float32), qt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)
            x = quants.dequantize(q, qt).reshape(x.shape)
        else:
            x = x.astype(np.float16)
            w.add_tensor(name, x)
        written[name] = x
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch -> (fixture folder, GGUF path, exported folder)."""
    root = tmp_path_factory.mktemp("export-archs")
    out = {}
    for name in ARCHS:
        src = DATA / name
        path = root / f"{name}.gguf"
        write_reference_gguf(src, path)
        dst = root / name
        run(export_hf(path, dst, dtype="F16"))
        out[name] = (src, path, dst)
    return out


# -- tensors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ARCHS)
def test_tensor_names_and_values_equal_the_fixture(exported, name):
    src, _path, dst = exported[name]
    ref = load_file(str(src / "model.safetensors"))
    got = load_file(str(dst / "model.safetensors"))
    assert sorted(got) == sorted(ref)
    for key, x in ref.items():
        assert got[key].dtype == np.float16 and got[key].shape == x.shape, key
        if name.startswith("gemma") and key.endswith("norm.weight"):
            # (w + 1) in F32, - 1, rounded to F16: equal within F16 rounding of w
            diff = np.abs(got[key].astype(np.float32) - x.astype(np.float32))
            assert (diff <= np.abs(x.astype(np.float32)) * 2.0 ** -11 + 2.0 ** -24).all(), key
            assert np.mean(got[key] == x) > 0.9, key
        else:
            assert np.array_equal(got[key].view(np.uint16), x.view(np.uint16)), key


def test_gemma_norms_are_shifted_back_not_copied(exported):
    src, path, _dst = exported["gemma3"]
    m = workbench.open_model(path)
    assert value_offset(m, "blk.0.attn_q_norm.weight") == -1.0
    assert value_offset(m, "output_norm.weight") == -1.0
    assert value_offset(m, "blk.0.attn_q.weight") == 0.0
    assert value_offset(workbench.open_model(exported["qwen3"][1]), "blk.0.attn_q_norm.weight") == 0.0


def test_qwen3moe_quantized_experts_split_per_expert(tmp_path):
    """Q8_0 3-D expert tensors: each expert's rows, dequantized by gguf-py, under its hub name."""
    path = tmp_path / "moe-q8.gguf"
    written = write_reference_gguf(DATA / "qwen3moe", path, expert_type="Q8_0")
    m = workbench.open_model(path)
    assert m.info("blk.1.ffn_down_exps.weight").dtype == "Q8_0"
    assert expert_names(m, "blk.1.ffn_down_exps.weight") == [
        f"model.layers.1.mlp.experts.{e}.down_proj.weight" for e in range(4)]
    assert expert_names(m, "blk.1.ffn_gate_inp.weight") is None
    run(export_hf(path, tmp_path / "out", dtype="F32"))
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    for n in range(2):
        for kind in ("gate", "up", "down"):
            stacked = written[f"blk.{n}.ffn_{kind}_exps.weight"]
            for e in range(4):
                assert np.array_equal(got[f"model.layers.{n}.mlp.experts.{e}.{kind}_proj.weight"], stacked[e])


# -- config.json ------------------------------------------------------------------------------------------

def canonical(cfg: dict) -> dict:
    """The config fields transformers reads for these architectures, in one spelling: transformers 5's
    ``rope_parameters`` and 4.x's ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq`` both become
    rope_theta / rope_local / rope_type / short / long / original_max."""
    g, loc = _rope(cfg)
    scaling = cfg.get("rope_scaling") or {}
    out = {k: cfg.get(k) for k in (
        "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "vocab_size", "max_position_embeddings",
        "tie_word_embeddings", "hidden_act", "hidden_activation", "sliding_window", "query_pre_attn_scalar",
        "final_logit_softcapping", "attn_logit_softcapping", "attention_bias", "moe_intermediate_size",
        "num_experts", "num_experts_per_tok", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers",
        "use_sliding_window", "bos_token_id", "eos_token_id", "pad_token_id")}
    out["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    out["num_experts"] = cfg.get("num_experts", cfg.get("num_local_experts"))  # transformers 5's attribute_map
    out["rope_theta"] = g.get("rope_theta", cfg.get("rope_theta"))
    if cfg["model_type"] == "gemma3_text":
        out["rope_local"] = loc.get("rope_theta", cfg.get("rope_local_base_freq"))
    if cfg["model_type"] in ("gemma2", "gemma3_text", "mistral"):
        out["layer_types"] = cfg.get("layer_types") or [
            "sliding_attention" if cfg["model_type"] == "mistral" or i % 2 == 0 else "full_attention"
            for i in range(cfg["num_hidden_layers"])]
    kind = g.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    out["rope_type"] = kind
    if kind == "longrope":
        src = g if "short_factor" in g else scaling
        out["short"], out["long"] = src["short_factor"], src["long_factor"]
        out["original_max"] = g.get("original_max_position_embeddings",
                                    cfg.get("original_max_position_embeddings"))
    if cfg["model_type"] == "phi3":
        out["original_max"] = g.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        out["partial_rotary_factor"] = g.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    return out


@pytest.mark.parametrize("name", ARCHS)
def test_config_fields_equal_the_fixture(exported, name):
    src, _path, dst = exported[name]
    ref = canonical(json.loads((src / "config.json").read_text()))
    got = canonical(json.loads((dst / "config.json").read_text()))
    assert got == ref
    assert json.loads((dst / "config.json").read_text())["torch_dtype"] == "float16"


def test_exported_folder_has_tokenizer_and_generation_config(exported):
    _src, path, dst = exported["gemma3"]
    names = sorted(p.name for p in dst.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                     "tokenizer.json", "tokenizer_config.json"]
    tj = json.loads((dst / "tokenizer.json").read_text())
    ref = json.loads((DATA / "gemma3" / "tokenizer.json").read_text())
    assert tj["model"]["vocab"] == ref["model"]["vocab"]
    gen = json.loads((dst / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 4


def test_phi3_longrope_factors_read_from_the_gguf_tensors(exported):
    _src, path, _dst = exported["phi3_longrope"]
    m = workbench.open_model(path)
    cfg = hf_config(m)
    assert cfg["rope_scaling"]["type"] == "longrope"
    assert cfg["rope_scaling"]["long_factor"][:3] == [1.063, 5.029, 18.976]
    assert "rope_scaling" in hf_config(workbench.open_model(exported["phi3"][1]))
    assert hf_config(workbench.open_model(exported["phi3"][1]))["rope_scaling"] is None


# -- §3: no half folder -----------------------------------------------------------------------------------

def unmapped_gguf(path: Path) -> Path:
    w = gguf.GGUFWriter(path, "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((8, 4), np.float32))
    w.add_tensor("blk.0.ssm_d", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unmapped_architecture_is_refused_before_writing(tmp_path, capsys):
    src = unmapped_gguf(tmp_path / "m.gguf")
    with pytest.raises(UnsupportedError, match="'mamba' has no Hugging Face mapping"):
        run(export_hf(src, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert cli_main(["export", str(src), "-o", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mamba" in err[0] and "--raw" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "cli").exists()


def test_raw_flag_writes_gguf_names(tmp_path, capsys):
    src = unmapped_gguf(tmp_path / "m.gguf")
    assert cli_main(["export", str(src), "-o", str(tmp_path / "raw"), "--raw", "--type", "f32"]) == 0
    assert "raw export" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["model.safetensors"]
    got = load_file(str(tmp_path / "raw" / "model.safetensors"))
    assert sorted(got) == ["blk.0.ssm_d", "token_embd.weight"]
    assert np.array_equal(got["token_embd.weight"], np.ones((8, 4), np.float32))


# -- sentence-transformers --------------------------------------------------------------------------------

ST_POOLING = {"word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
              "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
              {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
              {"idx": 3, "name": "3", "path": "../outside", "type": "sentence_transformers.models.Dense"}]


@pytest.fixture
def st_folder(tmp_path) -> Path:
    """The bert fixture as a sentence-transformers folder (the all-MiniLM layout), with a vocabulary."""
    folder = tmp_path / "st"
    shutil.copytree(DATA / "bert", folder)
    cfg = json.loads((folder / "config.json").read_text())
    ST_POOLING["word_embedding_dimension"] = cfg["hidden_size"]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(cfg["vocab_size"] - 5)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    (folder / "modules.json").write_text(json.dumps(ST_MODULES))
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 128, "do_lower_case": false}')
    (folder / "config_sentence_transformers.json").write_text('{"__version__": {"sentence_transformers": "2.0.0"}}')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(ST_POOLING))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not part of the model")
    return folder


ST_NAMES = ["1_Pooling/config.json", "config_sentence_transformers.json", "modules.json",
            "sentence_bert_config.json"]


def test_sentence_transformers_files_survive_export(st_folder, tmp_path):
    out = tmp_path / "out"
    run(export_hf(st_folder, out, dtype="F32"))
    for name in ST_NAMES:
        assert (out / name).read_bytes() == (st_folder / name).read_bytes(), name
    assert not (tmp_path / "out" / "outside").exists() and not list(out.rglob("secret.txt"))
    # over an existing folder: the module folder is created there too
    out2 = tmp_path / "existing"
    out2.mkdir()
    (out2 / "README.md").write_text("kept")
    run(export_hf(st_folder, out2, dtype="F16", format="bin"))
    assert (out2 / "1_Pooling" / "config.json").read_bytes() == (st_folder / "1_Pooling" / "config.json").read_bytes()
    assert (out2 / "README.md").read_text() == "kept" and (out2 / "pytorch_model.bin").is_file()


def test_sentence_transformers_files_survive_merge_lora(st_folder, tmp_path):
    from workbench.convert.lora import merge_lora

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = load_file(str(st_folder / "model.safetensors"))
    target = next(k for k in base if k.endswith("attention.self.query.weight"))
    rows, cols = base[target].shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, cols)).astype(np.float32)
    b = rng.standard_normal((rows, 2)).astype(np.float32)
    module = target[: -len(".weight")]
    from safetensors.numpy import save_file
    save_file({f"base_model.model.{module}.lora_A.weight": a, f"base_model.model.{module}.lora_B.weight": b},
              str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"], "base_model_name_or_path": "x"}))
    out = tmp_path / "merged"
    run(merge_lora(st_folder, adapter, out, dtype="F32"))
    for name in ST_NAMES:
        assert (out / name).read_bytes() == (st_folder / name).read_bytes(), name
    merged = load_file(str(out / "model.safetensors"))
    assert np.allclose(merged[target], base[target].astype(np.float32) + 2.0 * (b @ a), atol=1e-5)


def test_sentence_transformers_pooling_through_gguf(st_folder, tmp_path):
    """HF -> GGUF (pooling_type MEAN, as llama.cpp's converter keeps it) -> HF: modules.json + 1_Pooling."""
    from workbench.convert.hf_to_gguf import convert_hf_to_gguf

    path = run(convert_hf_to_gguf(st_folder, tmp_path / "st.gguf", "F32"))[0]
    assert workbench.open_model(path).meta("bert.pooling_type") == int(gguf.PoolingType.MEAN)
    out = tmp_path / "back"
    run(export_hf(path, out, dtype="F32"))
    modules = json.loads((out / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[1]) for m in modules] == [("", "Transformer"),
                                                                          ("1_Pooling", "Pooling")]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert {k: pooling[k] for k in ST_POOLING} == ST_POOLING
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] > 0
