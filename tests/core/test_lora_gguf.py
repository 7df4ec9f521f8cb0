"""PEFT LoRA -> GGUF adapter (read back with gguf-py), scale folding, merging into GGUF, the real T5 adapter, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

import convert_fixtures as cf
from fetch_models import real_model
from ggml_oracle import ggml
from workbench import Cancelled, UnsupportedError, WorkbenchError, open_model
from workbench.cli import main
from workbench.convert import convert_hf_to_gguf, lora_to_gguf, merge_lora
from workbench.formats.safetensors import write_safetensors
from workbench.plan import Plan
from workbench.progress import run

P = "base_model.model."
HEADS = {"q_proj": 4, "k_proj": 2}  # cf.LLAMA_CONFIG: 4 heads, 2 KV heads
# cf.LLAMA_CONFIG shapes (out, in): hidden 64, KV rows 32, intermediate 96
SHAPES = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
          "self_attn.o_proj": (64, 64), "mlp.gate_proj": (96, 64), "mlp.up_proj": (96, 64), "mlp.down_proj": (64, 96)}
GGUF_PART = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(HF folder, its F32 GGUF)."""
    folder = tmp_path_factory.mktemp("hf") / "Tiny-Llama"
    cf.build_llama(folder)
    return folder, run(convert_hf_to_gguf(folder, tmp_path_factory.mktemp("gguf"), "F32"))[0]


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory) -> dict[str, np.ndarray]:
    """The exact float32 values of the ``llama`` fixture's tensors (the same seeded builder)."""
    return cf.build_llama(tmp_path_factory.mktemp("values") / "Tiny-Llama")


def make_adapter(folder: Path, cfg: dict | None = None, modules=tuple(SHAPES), *, layers=(0, 1), seed=3,
                 extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A PEFT LoRA adapter on cf.build_llama's shapes; returns its tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    full = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "fan_in_fan_out": False,
            "bias": "none", "target_modules": sorted({m.split(".")[1] for m in modules}), **(cfg or {})}
    (folder / "adapter_config.json").write_text(json.dumps(full))
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in layers:
        for m in modules:
            out_f, in_f = SHAPES[m]
            r = (full.get("rank_pattern") or {}).get(m.split(".")[1], full["r"])
            name = f"{P}model.layers.{i}.{m}"
            tensors[name + ".lora_A.weight"] = (0.3 * rng.standard_normal((r, in_f))).astype(np.float32)
            tensors[name + ".lora_B.weight"] = (0.3 * rng.standard_normal((out_f, r))).astype(np.float32)
    tensors.update(extra or {})
    write_safetensors(folder / "adapter_model.safetensors", {k: ("F32", v) for k, v in tensors.items()})
    return tensors


def to_gguf(adapter, out, **kw):
    messages = []
    path = run(lora_to_gguf(adapter, out, **kw), lambda p: messages.append(p.message))
    return path, messages


def read(path) -> tuple[dict, dict]:
    r = GGUFReader(path)
    return ({k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")},
            {t.name: t for t in r.tensors})


def values(t) -> np.ndarray:
    shape = tuple(int(x) for x in reversed(t.shape))
    return np.asarray(t.data, dtype=np.float32).reshape(shape)


def permuted(name: str, b: np.ndarray) -> np.ndarray:
    for proj, heads in HEADS.items():
        if name.endswith("." + proj) or f".{proj}." in name:
            return cf.permute_qk(b, heads)
    return b


def gguf_name(i: int, module: str) -> str:
    return f"blk.{i}.{GGUF_PART[module]}.weight"


# -- PEFT -> GGUF adapter ------------------------------------------------------------------------

def test_adapter_reads_back_with_names_shapes_alpha_and_permuted_values(llama, tmp_path):
    folder, _ = llama
    tensors = make_adapter(tmp_path / "My-Adapter", {"loftq_config": {}, "megatron_core": "megatron.core"})
    path, messages = to_gguf(tmp_path / "My-Adapter", tmp_path / "out", base=folder, outtype="f32")
    assert path == tmp_path / "out" / "My-Adapter-F32-LoRA.gguf"
    kv, got = read(path)
    assert kv["general.architecture"] == "llama" and kv["general.type"] == "adapter"
    assert kv["adapter.type"] == "lora" and kv["adapter.lora.alpha"] == 8.0
    assert kv["general.name"] == "My Adapter"
    names = [gguf_name(i, m) + s for i in (0, 1) for m in SHAPES for s in (".lora_a", ".lora_b")]
    assert sorted(got) == sorted(names) and len(got) == 28
    for i in (0, 1):
        for m in SHAPES:
            hf = f"{P}model.layers.{i}.{m}"
            a, b = values(got[gguf_name(i, m) + ".lora_a"]), values(got[gguf_name(i, m) + ".lora_b"])
            assert got[gguf_name(i, m) + ".lora_a"].tensor_type.name == "F32"
            np.testing.assert_array_equal(a, tensors[hf + ".lora_A.weight"])
            np.testing.assert_array_equal(b, permuted(hf, tensors[hf + ".lora_B.weight"]))
    q = f"{P}model.layers.0.self_attn.q_proj.lora_B.weight"
    assert not np.array_equal(values(got["blk.0.attn_q.weight.lora_b"]), tensors[q])  # the permutation is real
    assert "loftq_config" in messages[-1] and "megatron_core" in messages[-1] and "folded" not in messages[-1]


def test_gguf_base_gives_the_same_file_and_q8_0_falls_back_like_the_reference(llama, tmp_path):
    folder, base_gguf = llama
    tensors = make_adapter(tmp_path / "ad")
    from_hf, _ = to_gguf(tmp_path / "ad", tmp_path / "hf.gguf", base=folder, outtype="q8_0")
    from_gguf, _ = to_gguf(tmp_path / "ad", tmp_path / "gguf.gguf", base=base_gguf, outtype="q8_0")
    _, a = read(from_hf)
    _, b = read(from_gguf)
    assert list(a) == list(b)
    for name in a:
        assert a[name].data.tobytes() == b[name].data.tobytes(), name
    # lora_a rows (64 values) are Q8_0; lora_b rows (r = 4) fit no block: F16, as convert_lora_to_gguf.py does
    hf = f"{P}model.layers.1.self_attn.k_proj"
    assert a["blk.1.attn_k.weight.lora_a"].tensor_type.name == "Q8_0"
    want = ggml().quantize(tensors[hf + ".lora_A.weight"], "Q8_0")  # ggml's own quantizer
    assert a["blk.1.attn_k.weight.lora_a"].data.tobytes() == want.tobytes()
    assert a["blk.1.attn_k.weight.lora_b"].tensor_type.name == "F16"
    np.testing.assert_array_equal(values(a["blk.1.attn_k.weight.lora_b"]),
                                  cf.permute_qk(tensors[hf + ".lora_B.weight"], 2).astype(np.float16).astype(np.float32))


def effective_scale(alpha: float, b_written: np.ndarray, b_peft_permuted: np.ndarray, rank: int) -> float:
    """llama.cpp's alpha / rank times the factor folded into lora_b."""
    ratio = float(np.median(b_written / b_peft_permuted))
    np.testing.assert_allclose(b_written, ratio * b_peft_permuted, rtol=1e-6)
    return alpha / rank * ratio


def test_rslora_rank_and_alpha_patterns_fold_into_lora_b(llama, tmp_path):
    folder, _ = llama
    cfg = {"use_rslora": True, "r": 8, "lora_alpha": 16, "rank_pattern": {"k_proj": 2}, "alpha_pattern": {"v_proj": 4}}
    tensors = make_adapter(tmp_path / "ad", cfg)
    path, messages = to_gguf(tmp_path / "ad", tmp_path / "a.gguf", base=folder, outtype="F32")
    kv, got = read(path)
    alpha = kv["adapter.lora.alpha"]
    assert alpha == pytest.approx(16 * math.sqrt(8), rel=1e-6)  # what most modules need: no folding for them
    for i in (0, 1):
        for m in SHAPES:
            proj = m.split(".")[1]
            r = {"k_proj": 2}.get(proj, 8)
            want = {"v_proj": 4}.get(proj, 16) / math.sqrt(r)  # PEFT's rsLoRA scale for this module
            hf = f"{P}model.layers.{i}.{m}"
            b = values(got[gguf_name(i, m) + ".lora_b"])
            assert b.shape == (SHAPES[m][0], r)
            scale = effective_scale(alpha, b, permuted(hf, tensors[hf + ".lora_B.weight"]), r)
            assert scale == pytest.approx(want, rel=1e-6), m
    assert "folded into their lora_b" in messages[-1] and "of 4 modules" in messages[-1]  # k and v, 2 layers


def test_plain_rslora_needs_no_folding(llama, tmp_path):
    folder, _ = llama
    tensors = make_adapter(tmp_path / "ad", {"use_rslora": True, "r": 4, "lora_alpha": 8}, modules=("self_attn.v_proj",))
    path, messages = to_gguf(tmp_path / "ad", tmp_path / "a.gguf", base=folder, outtype="F32")
    kv, got = read(path)
    assert kv["adapter.lora.alpha"] == pytest.approx(8 * 2)  # alpha / sqrt(r) == (alpha * sqrt(r)) / r
    np.testing.assert_array_equal(values(got["blk.0.attn_v.weight.lora_b"]),
                                  tensors[f"{P}model.layers.0.self_attn.v_proj.lora_B.weight"])
    assert "folded" not in messages[-1]


def test_refusals_name_the_problem(llama, tmp_path):
    folder, base_gguf = llama
    make_adapter(tmp_path / "dora", {"use_dora": True})
    with pytest.raises(UnsupportedError, match="DoRA"):
        to_gguf(tmp_path / "dora", tmp_path / "o.gguf", base=folder)
    make_adapter(tmp_path / "ia3", {"peft_type": "IA3"})
    with pytest.raises(UnsupportedError, match="IA3, not LoRA"):
        to_gguf(tmp_path / "ia3", tmp_path / "o.gguf", base=folder)
    rng = np.random.default_rng(0)
    make_adapter(tmp_path / "odd", extra={f"{P}model.layers.0.mlp.odd_proj.lora_A.weight": rng.random((4, 64), np.float32),
                                          f"{P}model.layers.0.mlp.odd_proj.lora_B.weight": rng.random((8, 4), np.float32)})
    with pytest.raises(UnsupportedError, match=r"model\.layers\.0\.mlp\.odd_proj has no tensor in a llama GGUF"):
        to_gguf(tmp_path / "odd", tmp_path / "o.gguf", base=folder)
    make_adapter(tmp_path / "save", extra={f"{P}lm_head.weight": rng.random((304, 64), np.float32)})
    with pytest.raises(UnsupportedError, match="modules_to_save"):
        to_gguf(tmp_path / "save", tmp_path / "o.gguf", base=folder)
    make_adapter(tmp_path / "deep", layers=(0, 5))  # the base has 2 layers
    with pytest.raises(WorkbenchError, match=r"maps to blk\.5\.attn_q\.weight, but the base model has 2 layers"):
        to_gguf(tmp_path / "deep", tmp_path / "o.gguf", base=base_gguf)
    assert not (tmp_path / "o.gguf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_real_t5_adapter(tmp_path):
    adapter = real_model("t5-lora")
    base = tmp_path / "t5-large"  # t5-large's config.json: no weights needed
    base.mkdir()
    cfg = {**cf.t5_config(gated=False, vocab_size=32128), "d_model": 1024, "d_ff": 4096, "d_kv": 64, "num_heads": 16,
           "num_layers": 24, "num_decoder_layers": 24}
    (base / "config.json").write_text(json.dumps(cfg))
    path, messages = to_gguf(adapter, tmp_path, base=base, outtype="F32")
    assert path.name == "Bias-Detector-Output-F32-LoRA.gguf"
    kv, got = read(path)
    assert kv["general.architecture"] == "t5" and kv["adapter.lora.alpha"] == 32.0
    assert kv["general.type"] == "adapter" and kv["adapter.type"] == "lora"
    assert len(got) == 288
    peft = open_model(adapter)
    expected = {}
    for stack, n_layers, parts in (("encoder", 24, [("0.SelfAttention", "attn")]),
                                   ("decoder", 24, [("0.SelfAttention", "attn"), ("1.EncDecAttention", "cross_attn")])):
        for i in range(n_layers):
            for hf_part, g_part in parts:
                for proj in "qv":
                    g = f"{stack[:3]}.blk.{i}.{g_part}_{proj}.weight"
                    expected[g] = f"{P}{stack}.block.{i}.layer.{hf_part}.{proj}"
    assert sorted(got) == sorted(g + s for g in expected for s in (".lora_a", ".lora_b"))
    for g, hf in expected.items():
        a, b = got[g + ".lora_a"], got[g + ".lora_b"]
        assert tuple(int(x) for x in reversed(a.shape)) == (16, 1024) and tuple(int(x) for x in reversed(b.shape)) == (1024, 16)
    for g in ("enc.blk.0.attn_q.weight", "dec.blk.23.cross_attn_v.weight"):
        hf = expected[g]
        np.testing.assert_array_equal(values(got[g + ".lora_a"]), peft.tensor(hf + ".lora_A.weight").to_float32())
        np.testing.assert_array_equal(values(got[g + ".lora_b"]), peft.tensor(hf + ".lora_B.weight").to_float32())
    assert "loftq_config" in messages[-1] and "folded" not in messages[-1]


# -- merging into GGUF ---------------------------------------------------------------------------

def test_merge_into_gguf_base_equals_hf_merge_then_convert(llama, llama_source, tmp_path):
    folder, base_gguf = llama
    tensors = make_adapter(tmp_path / "ad", {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"o_proj": 3}})
    into_gguf = run(merge_lora(base_gguf, tmp_path / "ad", tmp_path / "a.gguf"))[0]  # to="gguf" implied
    direct = run(merge_lora(folder, tmp_path / "ad", tmp_path / "b.gguf", to="gguf", plan_or_preset="F32"))[0]
    run(merge_lora(folder, tmp_path / "ad", tmp_path / "merged-hf", dtype="F32"))
    reference = run(convert_hf_to_gguf(tmp_path / "merged-hf", tmp_path / "c.gguf", "F32"))[0]
    a, b, c, base = (open_model(p) for p in (into_gguf, direct, reference, base_gguf))
    assert [t.name for t in a.tensors] == [t.name for t in base.tensors]
    for t in c.tensors:
        want = c.tensor(t.name).raw().tobytes()
        assert a.tensor(t.name).raw().tobytes() == want, t.name
        assert b.tensor(t.name).raw().tobytes() == want, t.name
    changed = [t.name for t in base.tensors if base.tensor(t.name).raw().tobytes() != a.tensor(t.name).raw().tobytes()]
    assert sorted(changed) == sorted(gguf_name(i, m) for i in (0, 1) for m in SHAPES)
    # and the merge itself, by hand: W + alpha / r * B @ A, Q/K rows in llama.cpp's order
    for i, module, scale, heads in ((0, "self_attn.q_proj", 8 / 4, 4), (1, "self_attn.k_proj", 8 / 4, 2),
                                    (0, "self_attn.v_proj", 8 / 2, 0), (1, "self_attn.o_proj", 3 / 4, 0)):
        hf = f"model.layers.{i}.{module}"
        want = llama_source[hf + ".weight"] + np.float32(scale) * (tensors[f"{P}{hf}.lora_B.weight"] @
                                                                   tensors[f"{P}{hf}.lora_A.weight"])
        want = cf.permute_qk(want, heads) if heads else want
        np.testing.assert_allclose(a.tensor(gguf_name(i, module)).raw(), want, rtol=1e-6, atol=1e-6, err_msg=hf)
    assert not (tmp_path / "b.gguf.partial").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.gguf", "ad", "b.gguf", "c.gguf", "merged-hf"]  # no intermediate folder for the direct GGUF merge


def test_merge_into_quantized_gguf_keeps_types(llama, tmp_path):
    oracle = ggml()
    folder, base_gguf = llama
    tensors = make_adapter(tmp_path / "ad", modules=("self_attn.q_proj", "mlp.down_proj"), layers=(1,))
    q8 = run(convert_hf_to_gguf(folder, tmp_path / "base-q8.gguf", "Q8_0"))[0]
    messages = []
    out = run(merge_lora(q8, tmp_path / "ad", tmp_path / "m.gguf"), lambda p: messages.append(p.message))[0]
    base, merged, f32 = open_model(q8), open_model(out), open_model(base_gguf)
    for t in base.tensors:
        assert merged.info(t.name).dtype == t.dtype
        if t.name not in ("blk.1.attn_q.weight", "blk.1.ffn_down.weight"):
            assert merged.tensor(t.name).raw().tobytes() == base.tensor(t.name).raw().tobytes(), t.name
    for g, hf, heads in (("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj", 4),
                         ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj", 0)):
        delta = np.float32(2.0) * (tensors[f"{P}{hf}.lora_B.weight"] @ tensors[f"{P}{hf}.lora_A.weight"])
        delta = cf.permute_qk(delta, heads) if heads else delta
        # ggml's dequantized base + delta, requantized to its own type by ggml: what llama.cpp would compute
        exact = oracle.dequantize(base.tensor(g).raw(), "Q8_0", base.info(g).shape[-1]) + delta
        assert merged.tensor(g).raw().tobytes() == oracle.quantize(exact, "Q8_0").tobytes()
        full = f32.tensor(g).to_float32() + delta  # the F32 merge: within Q8_0's error
        assert np.abs(merged.tensor(g).to_float32() - full).max() < 0.02 * np.abs(full).max()
    assert "2 LoRA modules merged" in messages[-1]


def test_merge_hf_to_gguf_with_a_plan_split_and_tokenizer(llama, tmp_path):
    folder, base_gguf = llama
    make_adapter(tmp_path / "ad", modules=("self_attn.v_proj",))
    plan = Plan(open_model(folder), "Q8_0", rules=[(r"ffn_down", "Q4_0")])
    paths = run(merge_lora(folder, tmp_path / "ad", tmp_path / "out", to="gguf", plan_or_preset=plan,
                           split_max_tensors=10))
    assert len(paths) == 3 and paths[0].name.endswith("-Q8_0-00001-of-00003.gguf")
    m = open_model(paths[0])
    assert m.info("blk.0.ffn_down.weight").dtype == "Q4_0" and m.info("blk.0.attn_v.weight").dtype == "Q8_0"
    base = open_model(base_gguf)
    assert m.meta("tokenizer.ggml.tokens") == base.meta("tokenizer.ggml.tokens")
    assert m.meta("general.file_type") == 7


def test_merge_modules_to_save_into_gguf_and_cancel(llama, tmp_path):
    folder, base_gguf = llama
    head = np.random.default_rng(9).standard_normal((304, 64)).astype(np.float32)
    make_adapter(tmp_path / "ad", modules=("self_attn.q_proj",), extra={f"{P}lm_head.weight": head})
    out = run(merge_lora(base_gguf, tmp_path / "ad", tmp_path / "m.gguf"))[0]
    np.testing.assert_array_equal(open_model(out).tensor("output.weight").to_float32(), head)
    calls = []
    with pytest.raises(Cancelled):
        run(merge_lora(base_gguf, tmp_path / "ad", tmp_path / "c.gguf", plan_or_preset="Q8_0",
                       cancel=lambda: calls.append(1) or len(calls) > 3))
    assert not (tmp_path / "c.gguf").exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    with pytest.raises(WorkbenchError, match="a plan or preset sets GGUF tensor types"):
        run(merge_lora(folder, tmp_path / "ad", tmp_path / "x", plan_or_preset="Q8_0"))


# -- command line ----------------------------------------------------------------------------------

def test_cli_lora_to_gguf_and_merge_to_gguf(llama, tmp_path, capsys):
    folder, base_gguf = llama
    make_adapter(tmp_path / "ad")
    assert main(["lora-to-gguf", str(tmp_path / "ad"), "-o", str(tmp_path / "out"), "--base", str(folder),
                 "--outtype", "q8_0"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "Ad-Q8_0-LoRA.gguf")]  # gguf-py's Metadata names it
    assert read(printed[0])[0]["adapter.type"] == "lora"
    assert main(["lora-to-gguf", str(tmp_path / "ad"), "-o", str(tmp_path / "x.gguf"), "--base", str(tmp_path)]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()
    assert main(["merge-lora", str(folder), str(tmp_path / "ad"), "-o", str(tmp_path / "m"), "--to", "gguf",
                 "--type", "Q8_0"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 1 and printed[0].endswith("-Q8_0.gguf") and Path(printed[0]).parent == tmp_path / "m"
    assert open_model(printed[0]).info("blk.0.attn_q.weight").dtype == "Q8_0"
    assert main(["merge-lora", str(base_gguf), str(tmp_path / "ad"), "-o", str(tmp_path / "g.gguf")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "g.gguf")]
    # what the user should know reaches stderr as warning lines: folded scales, ignored config keys
    make_adapter(tmp_path / "ad2", {"alpha_pattern": {"o_proj": 3}, "megatron_core": "megatron.core"})
    assert main(["lora-to-gguf", str(tmp_path / "ad2"), "-o", str(tmp_path / "w.gguf"), "--base", str(folder),
                 "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("warning: ") for line in err), err
    assert any(line.startswith("warning: per-module scales differ") and "2 modules" in line for line in err), err
    assert "warning: adapter_config.json keys ignored: megatron_core" in err


def test_t5_merge_to_gguf_with_the_adapters_tokenizer(tmp_path):
    base = tmp_path / "t5"
    cf.build_t5(base)
    adapter = tmp_path / "ad"
    adapter.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # as the real T5 adapter: the tokenizer ships with it
        (base / name).rename(adapter / name)
    rng = np.random.default_rng(4)
    modules = ["encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.1.EncDecAttention.v"]
    tensors = {}
    for m in modules:
        tensors[f"{P}{m}.lora_A.weight"] = ("F32", rng.standard_normal((4, 32)).astype(np.float32))
        tensors[f"{P}{m}.lora_B.weight"] = ("F32", rng.standard_normal((32, 4)).astype(np.float32))
    write_safetensors(adapter / "adapter_model.safetensors", tensors)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 32,
                                                             "target_modules": ["q", "v"]}))
    direct = run(merge_lora(base, adapter, tmp_path / "a.gguf", to="gguf", plan_or_preset="F32"))[0]
    run(merge_lora(base, adapter, tmp_path / "merged", dtype="F32"))  # copies the adapter's tokenizer beside it
    reference = run(convert_hf_to_gguf(tmp_path / "merged", tmp_path / "b.gguf", "F32"))[0]
    a, b = open_model(direct), open_model(reference)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for t in b.tensors:
        assert a.tensor(t.name).raw().tobytes() == b.tensor(t.name).raw().tobytes(), t.name
    assert a.meta("tokenizer.ggml.tokens") == b.meta("tokenizer.ggml.tokens") and a.meta("tokenizer.ggml.model") == "t5"
    merged_q = a.tensor("enc.blk.0.attn_q.weight").to_float32()
    base_q = open_model(base).tensor("encoder.block.0.layer.0.SelfAttention.q.weight").to_float32()
    A, B = tensors[f"{P}{modules[0]}.lora_A.weight"][1], tensors[f"{P}{modules[0]}.lora_B.weight"][1]
    np.testing.assert_array_equal(merged_q, base_q + np.float32(8.0) * (B @ A))
