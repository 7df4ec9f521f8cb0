"""The llama-family engine and the shared weight loader against transformers' reference outputs.

Fixtures (tests/core/data/infer, made by make_infer_fixtures.py with transformers in float32): tiny random
llama (separate head), llama_tied (tied embeddings, llama3 rope scaling with a frequency in its smoothing band, one KV head) and qwen2 (q/k/v
biases, GQA, rope_theta 1e6) with the logits of a 12-token prompt and of 8 greedy steps.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from builders import greedy_steps
from fetch_models import real_model
from workbench import kernels
from workbench.errors import Cancelled, UnsupportedError, WorkbenchError
from workbench.formats import open_model
from workbench.infer.llama import LlamaEngine, rope_inv_freq
from workbench.infer.engines import load_engine
from workbench.infer.weights import load_weights
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer"
PROMPT = [1, 17, 42, 99, 5, 63, 120, 7, 88, 31, 2, 54]
DECODERS = ["llama", "llama_tied", "qwen2"]


def tol(ref: np.ndarray) -> float:
    return 2e-5 * max(1.0, float(np.abs(ref).max()))


def engine(src, plan=None, **kw) -> LlamaEngine:
    return run(load_engine(src, plan, **kw))


@pytest.mark.parametrize("name", DECODERS)
def test_prompt_logits_match_transformers(name):
    ref = np.load(DATA / name / "logits.npy")
    eng = engine(DATA / name)
    got = eng.score(PROMPT)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol(ref))
    np.testing.assert_allclose(eng.start(PROMPT), ref[-1], rtol=0, atol=tol(ref))


@pytest.mark.parametrize("name", DECODERS)
def test_step_logits_and_greedy_tokens_match_transformers(name):
    ref_steps = np.load(DATA / name / "step_logits.npy")
    ref_tokens = np.load(DATA / name / "greedy.npy").tolist()
    eng = engine(DATA / name)
    toks, steps = greedy_steps(eng, PROMPT, len(ref_tokens))
    assert toks == ref_tokens
    np.testing.assert_allclose(steps, ref_steps, rtol=0, atol=tol(ref_steps))


@pytest.mark.parametrize("name", DECODERS)
def test_uncached_decoding_gives_the_same_tokens(name):
    eng = engine(DATA / name)
    cached, cached_logits = greedy_steps(eng, PROMPT, 8, use_cache=True)
    uncached, uncached_logits = greedy_steps(eng, PROMPT, 8, use_cache=False)
    assert cached == uncached
    np.testing.assert_allclose(cached_logits, uncached_logits, rtol=0, atol=1e-4)


def test_cache_growth_and_chunked_scoring_agree():
    ref = np.load(DATA / "llama" / "logits.npy")
    eng = engine(DATA / "llama", n_ctx=2)  # the cache starts tiny and doubles several times
    np.testing.assert_allclose(eng.score(PROMPT, chunk=5), ref, rtol=0, atol=tol(ref))
    parts = list(eng.iter_score(PROMPT, chunk=4))
    assert [p.shape[0] for p in parts] == [4, 4, 4]
    np.testing.assert_allclose(np.concatenate(parts), ref, rtol=0, atol=tol(ref))
    toks, steps = greedy_steps(eng, PROMPT[:3], 20)  # grows while stepping
    ref_eng = engine(DATA / "llama")
    np.testing.assert_allclose(steps, greedy_steps(ref_eng, PROMPT[:3], 20)[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_f32_gguf_gives_the_same_logits(tmp_path, name):
    """HF folder -> F32 GGUF (llama Q/K rows permuted, llama3 rope as rope_freqs) -> loader -> same logits."""
    from workbench.convert.hf_to_gguf import convert_hf_to_gguf

    out = run(convert_hf_to_gguf(DATA / name, tmp_path / "m.gguf", "F32"))[0]
    w = run(load_weights(open_model(out)))
    assert w.arch == ("qwen2" if name == "qwen2" else "llama")
    hf = run(load_weights(DATA / name))
    for k, v in hf.tensors.items():  # un-permuted Q/K, mapped names: the same tensors
        np.testing.assert_array_equal(w.tensors[k], v, err_msg=k)
    if name == "llama_tied":
        assert "rope_freqs.weight" in w.tensors and w.config.get("rope_scaling") is None  # factors, not a config entry
    ref = np.load(DATA / name / "logits.npy")
    np.testing.assert_allclose(engine(out).score(PROMPT), ref, rtol=0, atol=tol(ref))


def test_rope_freqs_factors_equal_llama3_scaling():
    cfg = {"rope_theta": 1000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}
    scaled = rope_inv_freq(cfg, 8)
    plain = rope_inv_freq({"rope_theta": 1000.0}, 8)
    # by hand: wavelength 2 pi / f; below 64 / 4 kept, above 64 / 1 divided by 8, between them smoothed with
    # s = (64 / wavelength - 1) / (4 - 1): f * ((1 - s) / 8 + s)
    f = [1000.0 ** (-i / 8) for i in (0, 2, 4, 6)]
    s = (64 / (2 * np.pi / f[1]) - 1) / 3
    assert 0 < s < 1
    np.testing.assert_allclose(scaled, [f[0], f[1] * ((1 - s) / 8 + s), f[2] / 8, f[3] / 8], rtol=1e-12)
    np.testing.assert_allclose(rope_inv_freq({"rope_theta": 1000.0}, 8, plain / scaled), scaled, rtol=1e-12)
    linear = rope_inv_freq({"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}, 8)
    np.testing.assert_allclose(linear, rope_inv_freq({"rope_theta": 10000.0}, 8) / 4)
    with pytest.raises(UnsupportedError, match="yarn"):
        rope_inv_freq({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, 8)


def test_plan_rounds_weights_through_the_kernels(tmp_path):
    """A Q8_0 plan on the F16 folder gives exactly the values of a Q8_0 GGUF written by the converter,
    i.e. kernels.dequantize(kernels.quantize(w)), and leaves norms alone."""
    from workbench.convert.hf_to_gguf import convert_hf_to_gguf

    plain = run(load_weights(DATA / "llama"))
    q8 = run(load_weights(DATA / "llama", "Q8_0"))
    assert q8.plan == "Q8_0" and plain.plan is None
    name = "model.layers.0.self_attn.q_proj.weight"
    expect = kernels.dequantize(kernels.quantize(plain.tensors[name], "Q8_0"), "Q8_0", 32)
    np.testing.assert_array_equal(q8.tensors[name], expect)
    assert not np.array_equal(q8.tensors[name], plain.tensors[name])
    assert q8.types[name] == "Q8_0" and q8.types["model.norm.weight"] == "F16"  # stored F16, planned F32: as stored
    np.testing.assert_array_equal(q8.tensors["model.norm.weight"], plain.tensors["model.norm.weight"])
    gguf = run(convert_hf_to_gguf(DATA / "llama", tmp_path / "q8.gguf", "Q8_0"))[0]
    from_file = run(load_weights(open_model(gguf)))
    for k, v in q8.tensors.items():
        np.testing.assert_array_equal(from_file.tensors[k], v, err_msg=k)
    # quantized weights change the logits a little, not a lot
    ref = np.load(DATA / "llama" / "logits.npy")
    got = engine(DATA / "llama", "Q8_0").score(PROMPT)
    err = np.abs(got - ref).max()
    assert 1e-5 < err < 0.05 * np.abs(ref).max()


def test_plan_keeps_tensors_already_at_their_level(tmp_path):
    from workbench.convert.hf_to_gguf import convert_hf_to_gguf
    from workbench.plan import Plan

    gguf = run(convert_hf_to_gguf(DATA / "qwen2", tmp_path / "q.gguf", "Q8_0"))[0]
    model = open_model(gguf)
    stored = run(load_weights(model))
    again = run(load_weights(model, Plan(model, "Q8_0")))  # Q8_0 stays as stored (no second rounding)
    for k in stored.tensors:
        np.testing.assert_array_equal(again.tensors[k], stored.tensors[k], err_msg=k)
    q4 = run(load_weights(model, "Q4_0"))
    assert q4.types["model.layers.0.mlp.up_proj.weight"] == "Q4_0"


def test_loader_errors_and_cancel(tmp_path):
    with pytest.raises(Cancelled):
        run(load_weights(DATA / "llama", cancel=lambda: True))
    with pytest.raises(WorkbenchError, match="unknown preset"):
        run(load_weights(DATA / "llama", "Q9_9"))
    folder = tmp_path / "noconf"
    shutil.copytree(DATA / "llama", folder)
    (folder / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    with pytest.raises(UnsupportedError, match="cannot be run"):
        run(load_weights(folder))
    (folder / "config.json").unlink()
    with pytest.raises(WorkbenchError):
        run(load_weights(folder))
    eng = engine(DATA / "llama")
    with pytest.raises(WorkbenchError, match="outside the vocabulary"):
        eng.start([1, 500])
    with pytest.raises(WorkbenchError, match="longer than the model's context"):
        eng.score(list(range(3)) * 100)
    with pytest.raises(WorkbenchError, match="before start"):
        engine(DATA / "llama").step(3)


def test_engine_reports_memory():
    w = run(load_weights(DATA / "llama"))
    n = w.nbytes
    assert n == sum(a.nbytes for a in w.tensors.values()) > 0
    eng = LlamaEngine(w)  # not consumed: the weights stay usable
    assert eng.nbytes() == n and len(w.tensors) > 0
    eng2 = run(load_engine(DATA / "llama"))
    assert eng2.nbytes() == n
    eng.start(PROMPT)
    assert eng.cache_nbytes() >= 2 * 2 * 2 * len(PROMPT) * 8 * 4


@pytest.mark.realmodel
def test_smollm2_q4_1_says_paris():
    from workbench.infer.tokenizer import load_tokenizer

    model = open_model(real_model("smollm2"))
    eng = engine(model)
    tok = load_tokenizer(model)
    ids = tok.encode("The capital of France is", add_special=False)
    logits = eng.start(ids)
    out = []
    for _ in range(2):
        out.append(int(np.argmax(logits)))
        logits = eng.step(out[-1])
    assert tok.decode(out).startswith(" Paris")


def test_scoring_from_a_first_position_skips_only_the_head():
    eng = engine(DATA / "llama")
    full = eng.score(PROMPT, chunk=5)
    np.testing.assert_array_equal(eng.score(PROMPT, chunk=5, first=7), full[7:])
    np.testing.assert_array_equal(eng.score(PROMPT, chunk=5, first=5), full[5:])  # a chunk boundary


def test_llama_cpu_numerics_follow_the_planned_types():
    """Activations are rounded for the type a file of the level stores (the plan's), not the source's: the F16
    folder under an F32 plan multiplies float32 activations, as llama.cpp does on an F32 GGUF; as stored it
    rounds them to F16; a Q8_0 plan to Q8_0 (every matrix of the tiny llama has 32-wide rows)."""
    groups = lambda e: {g[2] for L in e.layers for m in (L.act_qkv, L.act_o, L.act_gate_up, L.act_down)  # noqa: E731
                        for g in m} | {g[2] for g in e.act_out}
    assert groups(engine(DATA / "llama", "F32", numerics="llama-cpu")) == {None}
    assert groups(engine(DATA / "llama", None, numerics="llama-cpu")) == {"F16"}
    assert groups(engine(DATA / "llama", "Q8_0", numerics="llama-cpu")) == {"Q8_0"}
    assert groups(engine(DATA / "llama", "Q8_0")) == set()  # exact
    with pytest.raises(WorkbenchError, match="unknown numerics"):
        engine(DATA / "llama", numerics="gpu")


def test_padded_attention_output_gives_the_same_steps(monkeypatch):
    """The decode step's zero-padded attention output matrix (gemv_pad) changes no logit: forced on the tiny
    model, the transformers reference steps still match and the weights grow by exactly the padding."""
    from workbench.infer import decoder

    monkeypatch.setattr(decoder, "_blas_splits_gemv", lambda: True)
    assert decoder.gemv_pad(576, 576) == 224  # 576 x 800 values: OpenBLAS's threading threshold, whole lines
    assert decoder.gemv_pad(576, 800) == 0 and decoder.gemv_pad(64, 64) == 0  # big enough / padding too big
    ref_steps = np.load(DATA / "llama" / "step_logits.npy")
    ref_tokens = np.load(DATA / "llama" / "greedy.npy").tolist()
    plain = engine(DATA / "llama")
    monkeypatch.setattr(decoder, "gemv_pad", lambda n_in, n_out: 16)
    padded = engine(DATA / "llama")
    assert padded._o_pad == 16
    assert padded.nbytes() - plain.nbytes() == 4 * 16 * padded.n_head * padded.head_dim * padded.n_layer
    toks, steps = greedy_steps(padded, PROMPT, len(ref_tokens))
    assert toks == ref_tokens
    np.testing.assert_allclose(steps, ref_steps, rtol=0, atol=tol(ref_steps))
