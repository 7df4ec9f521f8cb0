"""Plans: presets (llama-quantize's rules), fallbacks, precedence, totals, files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from builders import PLAN_MODELS, shape_only_llama
from plan_arch_cases import case_model, case_tensors

from workbench import WorkbenchError
from workbench.plan import PRESETS, Plan, use_more_bits

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def llama16():
    return shape_only_llama(PLAN_MODELS[0])


def test_norms_and_1d_stay_f32(llama16):
    plan = Plan(llama16, "Q4_K_M")
    for e in plan.entries:
        if len(e.shape) == 1:
            assert e.type == "F32" and e.reason == "not quantized"


def test_q4_k_m_raises_attn_v_and_ffn_down_on_use_more_bits_layers(llama16):
    plan = Plan(llama16, "Q4_K_M")
    raised = {i for i in range(16) if use_more_bits(i, 16)}
    for i in range(16):
        v = plan.type_of(f"blk.{i}.attn_v.weight")
        d = plan.type_of(f"blk.{i}.ffn_down.weight")
        assert (v == "Q6_K") == (i in raised), (i, v)
        assert (d == "Q6_K") == (i in raised), (i, d)
        assert plan.type_of(f"blk.{i}.attn_q.weight") == "Q4_K"
    assert plan.type_of("output.weight") == "Q6_K"
    assert plan.type_of("token_embd.weight") == "Q4_K"  # untied: the embedding keeps the base type


def test_use_more_bits_matches_the_first_and_last_eighth_and_every_third():
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]


def test_tied_embeddings_and_fallbacks_on_576_rows():
    model = shape_only_llama(PLAN_MODELS[1])  # SmolLM2 shapes, tied embeddings
    plan = Plan(model, "Q4_K_M")
    assert plan.type_of("token_embd.weight") == "Q8_0"  # output rule; 576 is not a multiple of 256
    e = plan.entry("blk.3.attn_q.weight")
    assert e.type == "Q5_0" and "fallback from Q4_K" in e.reason
    assert plan.type_of("blk.0.ffn_down.weight") == "Q6_K"  # rows of 1536 fit
    assert Plan(model, "Q5_K_S").type_of("blk.3.attn_q.weight") == "Q5_1"
    assert Plan(model, "Q6_K").type_of("blk.3.attn_q.weight") == "Q8_0"
    assert Plan(model, "Q3_K_S").type_of("blk.3.attn_q.weight") == "Q4_0"
    assert Plan(model, "IQ4_XS").type_of("blk.3.attn_q.weight") == "IQ4_NL"


def test_row_not_multiple_of_32_falls_back_to_f16(llama16):
    model = shape_only_llama(("odd", 2, 100, 200, 4, 4, 64, False))
    plan = Plan(model, "Q4_0")
    assert plan.type_of("blk.0.attn_q.weight") == "F16"
    assert Plan(model, "Q4_K_M").type_of("blk.0.attn_q.weight") == "F16"


def test_float_presets(llama16):
    for preset in ("F16", "BF16", "F32"):
        counts = Plan(llama16, preset).type_counts()
        assert set(counts) == {preset, "F32"} or set(counts) == {"F32"}


def test_precedence_override_then_rule_then_preset(llama16):
    plan = Plan(llama16, "Q4_K_M", rules=[(r"attn_(q|k)\.weight", "Q8_0"), (r"attn_q", "Q2_K")])
    assert plan.type_of("blk.3.attn_q.weight") == "Q8_0"  # first matching rule wins
    assert plan.entry("blk.3.attn_k.weight").reason == r"rule attn_(q|k)\.weight"
    plan.set_override("blk.3.attn_q.weight", "Q5_1")
    assert plan.type_of("blk.3.attn_q.weight") == "Q5_1" and plan.entry("blk.3.attn_q.weight").reason == "override"
    plan.set_override("blk.3.attn_q.weight", None)
    assert plan.type_of("blk.3.attn_q.weight") == "Q8_0"
    plan.set_overrides(["blk.0.ffn_up.weight", "blk.1.ffn_up.weight"], "q6_k")
    assert plan.type_of("blk.1.ffn_up.weight") == "Q6_K"


def test_override_that_does_not_fit_falls_back():
    model = shape_only_llama(PLAN_MODELS[1])
    plan = Plan(model, "Q8_0", overrides={"blk.0.attn_q.weight": "Q4_K"})
    e = plan.entry("blk.0.attn_q.weight")
    assert e.type == "Q5_0" and e.reason.startswith("override (fallback from Q4_K")


def test_invalid_edits_are_clear_errors(llama16):
    with pytest.raises(WorkbenchError, match="unknown preset"):
        Plan(llama16, "Q7_K")
    with pytest.raises(WorkbenchError, match="not a valid regular expression"):
        Plan(llama16, rules=[("attn_(", "Q8_0")])
    with pytest.raises(WorkbenchError, match="unknown tensor type 'Q9'"):
        Plan(llama16, overrides={"output.weight": "Q9"})
    with pytest.raises(WorkbenchError, match="does not have"):
        Plan(llama16, overrides={"nope": "Q8_0"})


def test_totals(llama16):
    plan = Plan(llama16, "Q8_0")
    n = sum(t.n_params for t in llama16.tensors)
    assert plan.n_params == n
    expected = sum(int(np.prod(t.shape)) * (34 / 32 if len(t.shape) == 2 else 4) for t in llama16.tensors)
    assert plan.nbytes == expected
    assert 8.5 <= plan.bits_per_weight < 9


def test_json_round_trip(llama16, tmp_path):
    plan = Plan(llama16, "Q5_K_M", rules=[("ffn_down", "Q6_K")], overrides={"output.weight": "Q8_0"})
    plan.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["preset"] == "Q5_K_M" and data["rules"] == [["ffn_down", "Q6_K"]]
    back = Plan.load(llama16, tmp_path / "plan.json")
    assert back.types() == plan.types()
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    with pytest.raises(WorkbenchError, match="bad.json: not a Model Workbench plan"):
        Plan.load(llama16, tmp_path / "bad.json")


def test_tensor_type_file(llama16):
    plan = Plan(llama16, "Q4_K_M", overrides={"blk.2.attn_q.weight": "Q8_0"})
    text = plan.tensor_type_file()
    lines = text.split()
    assert r"^blk\.2\.attn_q\.weight$=q8_0" in lines
    assert not any("norm" in line for line in lines)
    parsed = {}
    for line in lines:  # llama-quantize: pattern=type, regex_search on the tensor name
        pattern, qtype = line.rsplit("=", 1)
        parsed[pattern] = qtype
    for e in plan.entries:
        hits = [t for p, t in parsed.items() if re.search(p, e.gguf_name)]
        if len(e.shape) > 1:
            assert hits == [e.type.lower()]


def test_hf_names_are_planned_by_their_gguf_names(tmp_path):
    from builders import build_hf_folder

    import workbench

    build_hf_folder(tmp_path / "hf")
    plan = Plan(workbench.open_model(tmp_path / "hf"), "Q4_K_M")
    e = plan.entry("model.layers.0.self_attn.v_proj.weight")
    assert e.gguf_name == "blk.0.attn_v.weight" and e.type == "Q5_0"  # Q4_K does not fit rows of 64
    assert plan.entry("lm_head.weight").gguf_name == "output.weight"


PARITY = json.loads((DATA / "llama_quantize_plans.json").read_text())


@pytest.mark.parametrize("case", sorted(PARITY["cases"]))
def test_presets_equal_llama_quantize(case):
    """Against llama-quantize --dry-run's choices, recorded by tests/core/data/make_plan_fixtures.py: llama
    shapes, an imatrix, 80-layer models (llama.cpp's "70B" rule), 8 experts and experts with a shared expert."""
    recorded = PARITY["cases"][case]
    spec, decode = recorded["spec"], {c: t for t, c in PARITY["codes"].items()}
    model = case_model(case, spec)
    names = [n for n, _s, _d in case_tensors(spec)]
    mismatches = []
    for preset, codes in recorded["types"].items():
        assert len(codes) == len(names)
        ours = Plan(model, preset, has_imatrix=bool(spec.get("imatrix"))).types()
        mismatches += [f"{preset} {n}: ours {ours[n]} llama-quantize {decode[c]}"
                       for n, c in zip(names, codes) if ours[n] != decode[c]]
    assert set(recorded["types"]) == set(PRESETS)
    assert not mismatches, f"{len(mismatches)} tensors differ:\n" + "\n".join(mismatches[:20])


def test_parity_cases_reach_the_rules_beyond_llama_shapes():
    """The recorded cases really exercise the 70B, MoE and imatrix rules (a case that lost its point fails)."""
    decode = {c: t for t, c in PARITY["codes"].items()}

    def recorded(case, preset, name):
        spec = PARITY["cases"][case]["spec"]
        names = [n for n, _s, _d in case_tensors(spec)]
        return decode[PARITY["cases"][case]["types"][preset][names.index(name)]]

    assert recorded("llama80-gqa4-70b", "Q4_K_M", "blk.11.attn_v.weight") == "Q5_K"  # Q4_K raised for 70B
    assert recorded("llama80-mha-65b", "Q4_K_M", "blk.11.attn_v.weight") == "Q4_K"
    assert recorded("qwen2-80-mha-70b", "Q4_K_M", "blk.11.attn_v.weight") == "Q5_K"
    assert recorded("mixtral16-8x", "Q4_K_M", "blk.5.attn_k.weight") == "Q8_0"
    assert recorded("mixtral16-8x", "Q4_K_M", "blk.5.attn_output.weight") == "Q5_K"
    assert recorded("llama16-gqa4-imatrix", "Q4_0", "blk.1.ffn_down.weight") == "Q4_1"
    assert recorded("llama16-gqa4", "Q4_0", "blk.1.ffn_down.weight") == "Q4_0"
    # with a shared expert, layer 1's ffn_down tensors are the 3rd and 4th: a counter would call them layer 2/3
    assert recorded("qwen2moe16-4x-shexp-imatrix", "Q4_0", "blk.1.ffn_down_shexp.weight") == "Q4_1"
    assert recorded("qwen2moe16-4x-shexp-imatrix", "Q4_0", "blk.2.ffn_down_exps.weight") == "Q4_0"


def _recorded(case: str, preset: str, name: str) -> str:
    decode = {c: t for t, c in PARITY["codes"].items()}
    spec = PARITY["cases"][case]["spec"]
    names = [n for n, _s, _d in case_tensors(spec)]
    return decode[PARITY["cases"][case]["types"][preset][names.index(name)]]


def test_parity_cases_reach_the_rules_of_issue_14_architectures():
    """The gemma3/gemma2/qwen3/qwen3moe/phi3 cases (converter layouts, tests/plan_arch_cases.py) exercise the
    tied-embedding, expert, router, fused-qkv and longrope rules llama-quantize applies."""
    # tied embeddings: token_embd gets the output rule (Q8_0 on rows of 640, Q6_K on rows of 256)
    assert _recorded("gemma3-270m", "Q4_K_M", "token_embd.weight") == "Q8_0"
    assert _recorded("gemma3-4b", "Q4_K_M", "token_embd.weight") == "Q6_K"
    assert _recorded("qwen3-8b", "Q4_K_M", "token_embd.weight") == "Q4_K"  # untied: the base type
    assert _recorded("gemma3-270m", "Q4_K_M", "blk.3.attn_q_norm.weight") == "F32"
    assert _recorded("gemma3-270m", "Q4_K_M", "blk.3.post_ffw_norm.weight") == "F32"
    # exactly 8 experts: attn_k / attn_v Q8_0, attn_output Q5_K; 16 experts: none of these
    assert _recorded("qwen3moe-8x", "Q4_K_M", "blk.5.attn_k.weight") == "Q8_0"
    assert _recorded("qwen3moe-8x", "Q4_K_M", "blk.5.attn_v.weight") == "Q8_0"
    assert _recorded("qwen3moe-8x", "Q4_K_M", "blk.5.attn_output.weight") == "Q5_K"
    assert _recorded("qwen3moe-16x-imatrix", "Q4_K_M", "blk.5.attn_k.weight") == "Q4_K"
    assert _recorded("qwen3moe-16x-imatrix", "Q4_K_M", "blk.5.attn_output.weight") == "Q4_K"
    # the router stays F32; 3-D expert tensors are planned, ffn_down_exps by the layer in its name
    assert _recorded("qwen3moe-8x", "Q4_K_M", "blk.5.ffn_gate_inp.weight") == "F32"
    assert _recorded("qwen3moe-8x", "Q4_K_M", "blk.4.ffn_down_exps.weight") == "Q6_K"  # use_more_bits(4, 16)
    assert _recorded("qwen3moe-8x", "Q4_K_M", "blk.5.ffn_down_exps.weight") == "Q4_K"
    assert _recorded("qwen3moe-8x", "Q4_K_M", "blk.5.ffn_up_exps.weight") == "Q4_K"
    assert _recorded("qwen3moe-16x-imatrix", "Q4_0", "blk.1.ffn_down_exps.weight") == "Q4_1"  # first eighth
    assert _recorded("qwen3moe-16x-imatrix", "Q4_0", "blk.2.ffn_down_exps.weight") == "Q4_0"
    # phi3: the fused attn_qkv takes attn_v's rules and counter; GQA >= 4 raises it at Q2_K
    assert _recorded("phi3-mini-128k", "Q4_K_M", "blk.6.attn_qkv.weight") == "Q6_K"  # use_more_bits(6, 32)
    assert _recorded("phi3-mini-128k", "Q4_K_M", "blk.5.attn_qkv.weight") == "Q4_K"
    assert _recorded("phi3-mini-128k", "Q3_K_M", "blk.1.attn_qkv.weight") == "Q5_K"  # the first two
    assert _recorded("phi3-mini-128k", "Q3_K_M", "blk.2.attn_qkv.weight") == "Q4_K"
    assert _recorded("phi3-mini-128k", "Q2_K", "blk.2.attn_qkv.weight") == "Q3_K"  # MHA
    assert _recorded("qwen3-8b", "Q2_K", "blk.2.attn_v.weight") == "Q4_K"  # GQA 4
    assert _recorded("phi3-mini-128k", "Q4_K_M", "rope_factors_long.weight") == "F32"
    assert _recorded("phi4-mini", "Q4_K_M", "token_embd.weight") == "Q6_K"


def test_hf_moe_checkpoint_is_planned_like_its_converted_gguf():
    """A qwen3moe Hugging Face checkpoint (one 2-D tensor per expert) gets, for every expert, the type
    llama-quantize gives the stacked 3-D tensor of the GGUF the converter makes of it, for every preset."""
    from plan_arch_cases import hf_moe_model, hf_moe_tensors

    decode = {c: t for t, c in PARITY["codes"].items()}
    mismatches, n = [], 0
    for case in ("qwen3moe-8x", "qwen3moe-16x-imatrix"):
        recorded = PARITY["cases"][case]
        spec = recorded["spec"]
        model = hf_moe_model(case, spec)
        gguf_names = [g for g, _s, _d in case_tensors(spec)]
        for preset, codes in recorded["types"].items():
            if preset in ("F16", "BF16", "F32"):  # a float preset keeps an HF tensor's own float type
                continue
            expected = dict(zip(gguf_names, (decode[c] for c in codes)))
            plan = Plan(model, preset, has_imatrix=bool(spec.get("imatrix")))
            for hf, g, _shape in hf_moe_tensors(spec):
                e = plan.entry(hf)
                n += 1
                if e.gguf_name != g or e.type != expected[g]:
                    mismatches.append(f"{case} {preset} {hf}: ours {e.gguf_name} {e.type}, "
                                      f"llama-quantize {expected[g]}")
    assert n > 10000 and not mismatches, f"{len(mismatches)} of {n} differ:\n" + "\n".join(mismatches[:20])
    text = Plan(hf_moe_model("m", PARITY["cases"]["qwen3moe-8x"]["spec"]), "Q4_K_M").tensor_type_file().split()
    assert r"^blk\.4\.ffn_down_exps\.weight$=q6_k" in text and len(text) == len(set(text))  # one line per stack
