"""Every step for every architecture, through the CLI as a user runs it (issue 14 §1 "each through every step").

For each tiny transformers-made fixture of tests/core/data/infer/<arch> (gemma3, gemma2, qwen3, qwen3moe, phi3,
phi3_longrope, mistral; llama and qwen2 as controls): open, plan, HF folder -> GGUF, generate, compare,
GGUF -> HF folder and merge-lora, one after the other, against references outside the code:
- plan: llama-quantize's types on the GGUF our converter writes (arch_steps_llama_quantize.json, recorded by
  make_arch_steps_ref.py), and the folder's plan gives the same types under the GGUF names;
- generate: transformers' greedy tokens (greedy.npy) from the GGUF, and `workbench generate`'s text is theirs;
- compare: a table with finite PPL and KL divergence, Q8_0 closer to the base than Q4_0;
- export: the fixture's tensor names and values and its config fields (test_export_archs.canonical);
- merge-lora: W + (alpha / r) * B @ A computed here with numpy for the adapter's tensors, the rest unchanged,
  into a safetensors folder and into a GGUF (equal to converting the numpy-merged folder).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from workbench.cli import main
from workbench.infer.engines import load_engine
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer"
PROMPT = [1, 17, 42, 99, 5, 63, 120, 7, 88, 31, 2, 54]  # make_infer_fixtures.PROMPT
PROMPT_TEXT = '<s>,E~ Znd"s:</s>Q'  # PROMPT through the fixtures' tokenizer.json (checked below)
ARCHS = ["gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral", "llama", "qwen2"]
REF_PLANS = json.loads((DATA / "arch_steps_llama_quantize.json").read_text())
# modules the adapters target (what PEFT names them on these models): q/v, phi3's fused qkv, one expert's up_proj
TARGETS = {"phi3": ["layers.0.self_attn.qkv_proj", "layers.1.self_attn.qkv_proj"],
           "phi3_longrope": ["layers.0.self_attn.qkv_proj", "layers.1.mlp.gate_up_proj"],
           "qwen3moe": ["layers.0.self_attn.q_proj", "layers.1.mlp.experts.2.up_proj"]}
DEFAULT_TARGETS = ["layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj"]


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def ok(*args) -> str:
    rc, out, err = cli(*args, "-q")
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, Path]:
    """Each fixture converted to an F32 GGUF by `workbench convert` (the HF folder -> GGUF step)."""
    tmp = tmp_path_factory.mktemp("arch_steps")
    out = {}
    for arch in ARCHS:
        out[arch] = tmp / f"{arch}.gguf"
        ok("convert", DATA / arch, "-o", out[arch], "--type", "F32")
    return out


# -- open and plan -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["Q4_K_M", "Q3_K_M"])
@pytest.mark.parametrize("arch", ARCHS)
def test_plan_gives_llama_quantize_types_for_every_tensor(ggufs, arch, preset):
    rc, out, _ = cli("inspect", ggufs[arch], "--json")
    assert rc == 0
    names = [t["name"] for t in json.loads(out)["tensors"]]
    ref = REF_PLANS[arch][preset]
    assert sorted(names) == sorted(ref)
    plan = json.loads(ok("plan", ggufs[arch], "--type", preset, "--json"))
    assert {e["name"]: e["type"] for e in plan["tensors"]} == ref
    # the HF folder's plan: every source tensor has a type, the same as its GGUF tensor's (experts: the stack's)
    hf_plan = json.loads(ok("plan", DATA / arch, "--type", preset, "--json"))["tensors"]
    assert len(hf_plan) == len(load_file(str(DATA / arch / "model.safetensors")))
    hf_types = {e["gguf_name"]: e["type"] for e in hf_plan}
    assert hf_types == {k: v for k, v in ref.items() if not k.startswith("rope_factors_")}  # longrope: config
    table = ok("plan", DATA / arch, "--type", preset).splitlines()
    assert sum(1 for line in table if line.startswith("model.") or line.startswith("lm_head")) == len(hf_plan)


# -- generate -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_greedy_tokens_are_transformers_and_generate_prints_them(ggufs, arch):
    greedy = np.load(DATA / arch / "greedy.npy").tolist()
    eng = run(load_engine(ggufs[arch]))
    logits, toks = eng.start(PROMPT), []
    for _ in range(len(greedy)):
        toks.append(int(np.argmax(logits)))
        logits = eng.step(toks[-1])
    assert toks == greedy
    # the CLI as a user runs it: no chat template, greedy (temperature 0 is the default)
    vocab = json.loads((DATA / arch / "tokenizer.json").read_text())["model"]["vocab"]
    piece = {i: t for t, i in vocab.items()}
    n = 4  # llama's 6th token is <unk>, printed as nothing
    expected = "".join(piece[t] for t in greedy[:n])
    assert ok("generate", DATA / arch, "--prompt", PROMPT_TEXT, "--no-chat", "--max-tokens", n,
              "--temperature", 0) == expected + "\n"
    # the GGUF's byte-level BPE tokenizer (as llama.cpp reads it) drops the space: a prompt without one
    text = PROMPT_TEXT.replace(" ", "")
    assert ok("generate", ggufs[arch], "--prompt", text, "--no-chat", "--max-tokens", 6) == \
        ok("generate", DATA / arch, "--prompt", text, "--no-chat", "--max-tokens", 6)


# -- compare ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_compare_prints_finite_ppl_and_kld(ggufs, arch):
    out = ok("compare", ggufs[arch], "--levels", "Q8_0,Q4_0", "--ctx", 16, "--chunks", 1, "--no-generate")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    head = rows[0]
    body = {r[0]: dict(zip(head, r)) for r in rows[2:]}
    assert list(body) == ["F32", "Q8_0", "Q4_0"]
    ppl = {k: float(v["PPL"]) for k, v in body.items()}
    kld = {k: float(body[k]["KLD mean"]) for k in ("Q8_0", "Q4_0")}
    assert all(math.isfinite(v) and v > 1 for v in ppl.values()), ppl
    assert all(math.isfinite(v) and v >= 0 for v in kld.values()), kld
    assert kld["Q8_0"] < kld["Q4_0"]
    assert "7 tokens scored in 1 windows of 16" in out  # llama-perplexity: n_ctx / 2 - 1


# -- GGUF -> HF folder -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_export_gives_back_the_fixture(ggufs, arch, tmp_path):
    from test_export_archs import canonical

    ok("export", ggufs[arch], "-o", tmp_path / "out")
    ref = load_file(str(DATA / arch / "model.safetensors"))
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(got) == sorted(ref)
    for name, want in ref.items():
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name].astype(np.float32), want.astype(np.float32), rtol=2 ** -11, atol=0,
                                   err_msg=name)
    cfg = json.loads((DATA / arch / "config.json").read_text())
    assert canonical(json.loads((tmp_path / "out" / "config.json").read_text())) == canonical(cfg)


# -- merge-lora --------------------------------------------------------------------------------------------------

def build_adapter(arch: str, folder: Path, r: int = 4, alpha: int = 8) -> dict[str, np.ndarray]:
    """A PEFT adapter on TARGETS[arch]; returns HF tensor name -> float64 delta (alpha / r) * B @ A."""
    base = load_file(str(DATA / arch / "model.safetensors"))
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    tensors, deltas = {}, {}
    targets = TARGETS.get(arch, DEFAULT_TARGETS)
    for module in targets:
        out_dim, in_dim = base[f"model.{module}.weight"].shape
        a = rng.standard_normal((r, in_dim)).astype(np.float32)
        b = rng.standard_normal((out_dim, r)).astype(np.float32)
        tensors[f"base_model.model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.model.{module}.lora_B.weight"] = b
        deltas[f"model.{module}.weight"] = (alpha / r) * (b.astype(np.float64) @ a.astype(np.float64))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": arch, "r": r, "lora_alpha": alpha,
        "lora_dropout": 0.0, "target_modules": sorted({m.rsplit(".", 1)[1] for m in targets}),
        "fan_in_fan_out": False, "bias": "none", "modules_to_save": None, "use_rslora": False}))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return deltas


def merged_by_hand(arch: str, deltas: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    base = load_file(str(DATA / arch / "model.safetensors"))
    out = {k: v.astype(np.float32) for k, v in base.items()}
    for name, d in deltas.items():
        out[name] = (out[name].astype(np.float64) + d).astype(np.float32)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_lora_into_a_folder_and_a_gguf(ggufs, arch, tmp_path):
    deltas = build_adapter(arch, tmp_path / "adapter")
    want = merged_by_hand(arch, deltas)
    base = load_file(str(DATA / arch / "model.safetensors"))
    # into a safetensors folder, F32: the targeted tensors are W + scale * B @ A, the others untouched
    ok("merge-lora", DATA / arch, tmp_path / "adapter", "-o", tmp_path / "hf", "--type", "F32")
    got = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(got) == sorted(want)
    for name in got:
        assert got[name].dtype == np.float32, name
        if name in deltas:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
            assert not np.array_equal(got[name], base[name].astype(np.float32))
        else:
            assert np.array_equal(got[name], want[name]), name
    # kept types: the untargeted tensors are the base's F16 bytes
    ok("merge-lora", DATA / arch, tmp_path / "adapter", "-o", tmp_path / "hf16")
    got16 = load_file(str(tmp_path / "hf16" / "model.safetensors"))
    for name in got16:
        if name not in deltas:
            assert got16[name].dtype == np.float16 and got16[name].tobytes() == base[name].tobytes(), name
    # into a GGUF: the same tensors as converting the numpy-merged folder
    hand = tmp_path / "hand"
    shutil.copytree(DATA / arch, hand, ignore=shutil.ignore_patterns("*.npy", "model.safetensors"))
    save_file(want, str(hand / "model.safetensors"))
    ok("convert", hand, "-o", tmp_path / "ref.gguf", "--type", "F32")
    ok("merge-lora", DATA / arch, tmp_path / "adapter", "-o", tmp_path / "merged.gguf", "--to", "gguf",
       "--type", "F32")
    ref = {t.name: t for t in gguf.GGUFReader(tmp_path / "ref.gguf").tensors}
    got_g = {t.name: t for t in gguf.GGUFReader(tmp_path / "merged.gguf").tensors}
    assert sorted(got_g) == sorted(ref)
    unmerged = {t.name: t.data for t in gguf.GGUFReader(ggufs[arch]).tensors}
    changed = 0
    for name, t in got_g.items():
        assert t.tensor_type == ref[name].tensor_type == gguf.GGMLQuantizationType.F32, name
        np.testing.assert_allclose(t.data, ref[name].data, rtol=1e-6, atol=1e-6, err_msg=name)
        changed += not np.array_equal(t.data, unmerged[name])
    assert changed == len(deltas)  # qwen3moe: one stacked expert tensor for one expert
    # into our GGUF of the base: the same tensors (qwen3moe: refused, a stacked expert has no LoRA name in GGUF)
    rc, _out, err = cli("merge-lora", ggufs[arch], tmp_path / "adapter", "-o", tmp_path / "from_gguf.gguf", "-q")
    if arch == "qwen3moe":
        assert rc == 1 and "qwen3moe" in err and "Traceback" not in err
        return
    assert rc == 0, err
    from_gguf = gguf.GGUFReader(tmp_path / "from_gguf.gguf").tensors
    assert sorted(t.name for t in from_gguf) == sorted(ref)
    for t in from_gguf:
        np.testing.assert_allclose(t.data, ref[t.name].data, rtol=1e-6, atol=1e-6, err_msg=t.name)


# -- refusals ------------------------------------------------------------------------------------------------------

def test_prompt_text_is_the_reference_prompt():
    from workbench.formats import iter_open_model
    from workbench.infer.tokenizer import load_tokenizer

    tok = load_tokenizer(run(iter_open_model(DATA / "gemma3")))
    assert tok.encode(PROMPT_TEXT, add_special=False) == PROMPT


@pytest.mark.parametrize("arch", ["GPTNeoXForCausalLM", "BertModel"])
def test_generate_refuses_what_it_cannot_generate_naming_it(arch, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DATA / ("bert" if arch == "BertModel" else "llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = [arch]
    cfg["model_type"] = "gpt_neox" if arch != "BertModel" else "bert"
    (folder / "config.json").write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    rc, out, err = cli("generate", folder, "--prompt", "hi")
    assert rc == 1 and out == ""
    assert time.perf_counter() - t0 < 1.0
    assert "Traceback" not in err
    if arch == "BertModel":
        assert "encoder" in err
    else:
        assert "GPTNeoXForCausalLM" in err
    for name in ("qwen3", "gemma3", "phi3", "t5"):
        assert name in err
    assert "bert" not in err.lower().replace("bertmodel", "")
