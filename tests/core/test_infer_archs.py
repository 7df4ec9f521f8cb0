"""The one decoder engine (workbench/infer/decoder.py driven by workbench/infer/specs.py) against transformers.

Fixtures (tests/core/data/infer/<arch>, made by make_arch_fixtures.py with transformers 5.25 in float32): tiny
random gemma3 (sliding + full layers with their own rope bases, q/k norms, sandwich norms, (1 + w) norms,
sqrt(hidden) embeddings, GeGLU), gemma2 (attention and final soft-caps that saturate, alternating window),
qwen3 (q/k norms), qwen3moe (4 experts, top-2, renormalized), phi3 (fused qkv / gate_up), phi3_longrope
(short factors and the attention factor) and mistral (window 4 on every layer), each with the logits of a
12-token prompt and of 8 greedy steps.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from builders import greedy_steps

from workbench.infer.decoder import DecoderEngine
from workbench.infer.engines import engine_for, load_engine
from workbench.infer.specs import SPECS, spec_for
from workbench.infer.weights import load_weights
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer"
PROMPT = [1, 17, 42, 99, 5, 63, 120, 7, 88, 31, 2, 54]  # make_infer_fixtures.PROMPT
ARCHS = ["gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral"]
WINDOWED = ["gemma3", "gemma2", "mistral"]  # window 4 < the prompt


def tol(ref: np.ndarray) -> float:
    return 1e-4 * float(np.abs(ref).max())


def engine(name: str, **kw) -> DecoderEngine:
    return run(load_engine(DATA / name, **kw))


@pytest.mark.parametrize("name", ARCHS)
def test_prompt_logits_match_transformers(name):
    ref = np.load(DATA / name / "logits.npy")
    eng = engine(name)
    assert isinstance(eng, DecoderEngine)
    got = eng.score(PROMPT)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol(ref))
    np.testing.assert_allclose(eng.start(PROMPT), ref[-1], rtol=0, atol=tol(ref))


@pytest.mark.parametrize("name", ARCHS)
def test_greedy_steps_match_transformers_cached_and_uncached(name):
    ref_steps = np.load(DATA / name / "step_logits.npy")
    ref_tokens = np.load(DATA / name / "greedy.npy").tolist()
    eng = engine(name, n_ctx=2)  # caches (and sliding rings) start tiny and grow while decoding
    for use_cache in (True, False):
        toks, steps = greedy_steps(eng, PROMPT, len(ref_tokens), use_cache)
        assert toks == ref_tokens
        np.testing.assert_allclose(steps, ref_steps, rtol=0, atol=tol(ref_steps))


@pytest.mark.parametrize("name", ARCHS)
def test_chunked_scoring_equals_one_pass(name):
    eng = engine(name)
    full = eng.score(PROMPT, chunk=len(PROMPT))
    for chunk in (1, 3, 5):  # chunks shorter than, crossing and longer than the window of 4
        parts = list(eng.iter_score(PROMPT, chunk=chunk))
        assert [len(p) for p in parts] == [min(chunk, len(PROMPT) - a) for a in range(0, len(PROMPT), chunk)]
        np.testing.assert_allclose(np.concatenate(parts), full, rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("name", WINDOWED)
def test_the_sliding_window_matters_and_bounds_the_cache(name):
    ref = np.load(DATA / name / "logits.npy")
    eng = engine(name)
    cfg = eng.config
    sliding = [i for i, w in enumerate(eng.windows) if w]
    assert sliding and all(eng.windows[i] == cfg["sliding_window"] == 4 for i in sliding)
    if name == "gemma3":
        assert eng.windows[2] is None  # its full-attention layer
    no_window = engine(name)
    no_window.windows = [None] * no_window.n_layer
    assert np.abs(no_window.score(PROMPT) - ref).max() > 100 * tol(ref)  # the fixture sees the window
    # long decoding: a sliding layer's ring never holds more than the window, and equals full recompute
    eng = engine(name, n_ctx=2)
    cached = greedy_steps(eng, PROMPT, 30)
    assert all(eng.k_cache[i].shape[1] == 4 for i in sliding)
    assert all(eng.k_cache[i].shape[1] >= len(PROMPT) + 30 for i in range(eng.n_layer) if i not in sliding)
    uncached = greedy_steps(eng, PROMPT, 30, use_cache=False)
    assert cached[0] == uncached[0]
    np.testing.assert_allclose(cached[1], uncached[1], rtol=0, atol=1e-5 * np.abs(cached[1]).max())


def test_specs_are_found_by_config_before_the_loader_arch():
    w = run(load_weights(DATA / "mistral"))
    assert w.arch == "llama" and spec_for(w.config, w.arch) is SPECS["mistral"]  # HF mistral loads as llama
    assert spec_for({"model_type": "gemma3_text"}) is SPECS["gemma3"]
    assert spec_for({"architectures": ["Qwen3MoeForCausalLM"]}) is SPECS["qwen3moe"]
    assert spec_for({"model_type": "bert"}, "bert") is None
    assert run(load_weights(DATA / "gemma3")).arch == "gemma3"


@pytest.mark.parametrize("name", ["qwen3moe", "gemma3", "llama"])
def test_memory_budget_gives_the_same_logits_within_the_budget(name):
    ref = engine(name)
    full = ref.score(PROMPT)
    ref_steps = greedy_steps(ref, PROMPT, 4)
    size = ref.prepared_nbytes
    assert ref.cache is None and ref.nbytes() >= size - 4 * ref.hidden
    layer = max(ref.layers[i].nbytes for i in range(ref.n_layer))
    # nothing fits; one layer is pinned beside the one streamed (the budget keeps room for it)
    for budget in (1, 2 * layer):
        eng = engine(name, memory_budget=budget)
        assert eng.cache is not None and eng.layers == []
        np.testing.assert_array_equal(eng.score(PROMPT, chunk=5), ref.score(PROMPT, chunk=5))
        toks, steps = greedy_steps(eng, PROMPT, 4)
        assert toks == ref_steps[0]
        np.testing.assert_array_equal(steps, ref_steps[1])
        assert eng.cache.nbytes <= budget and (budget < layer or eng.cache.peak <= budget)
        assert eng.cache.misses > eng.n_layer  # the streamed layers are prepared again
        layers_kept = [k for k in eng.cache.items if isinstance(k, int)]
        assert len(layers_kept) == (0 if budget == 1 else 1)  # nothing fits / one layer (and the head) fits
        assert eng.cache.peak >= budget // 2
    np.testing.assert_array_equal(full, ref.score(PROMPT))
    assert engine(name, memory_budget=size).cache is None  # the whole model fits: prepared at build time


def test_engine_for_builds_every_spec_and_keeps_unconsumed_weights():
    w = run(load_weights(DATA / "phi3"))
    n = len(w.tensors)
    eng = engine_for(w)
    assert isinstance(eng, DecoderEngine) and eng.spec is SPECS["phi3"] and len(w.tensors) == n
    np.testing.assert_allclose(eng.score(PROMPT), engine_for(w, consume=True).score(PROMPT), rtol=0, atol=0)
    assert len(w.tensors) < n


def test_longrope_uses_the_long_factors_beyond_the_original_length():
    """transformers' rule (modeling_rope_utils' longrope_frequency_update): a forward whose last position is
    beyond original_max_position_embeddings (32 here) rotates every position with the long factors, else the
    short ones (the fixture's references, 20 positions, are all short)."""
    short = engine_for(run(load_weights(DATA / "phi3_longrope")))
    w = run(load_weights(DATA / "phi3_longrope"))
    w.config = copy.deepcopy(w.config)
    w.config["rope_parameters"]["short_factor"] = w.config["rope_parameters"]["long_factor"]
    long = engine_for(w)  # long factors at every length
    ids = (PROMPT * 4)[:40]
    np.testing.assert_array_equal(short.score(ids), long.score(ids))
    assert np.abs(short.score(ids[:32]) - long.score(ids[:32])).max() > 1e-2


@pytest.mark.parametrize("name", ARCHS)
def test_gguf_written_by_our_converter_gives_the_same_logits(tmp_path, name):
    """HF folder -> F32 GGUF (Gemma norms stored as 1 + w, qwen3moe experts stacked in 3-D tensors, phi3's
    rope factors as tensors) -> loader -> the same logits; held as stored tensors under a budget too small for
    one layer, the same logits bit for bit."""
    from workbench.convert.hf_to_gguf import convert_hf_to_gguf

    out = run(convert_hf_to_gguf(DATA / name, tmp_path / "m.gguf", "F32"))[0]
    ref = np.load(DATA / name / "logits.npy")
    eng = run(load_engine(out))
    assert eng.spec is spec_for(run(load_weights(DATA / name)).config)
    got = eng.score(PROMPT)
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol(ref))
    np.testing.assert_array_equal(run(load_engine(out, memory_budget=1)).score(PROMPT), got)


@pytest.mark.parametrize("name", ["gemma2", "qwen3"])
def test_budget_head_blocks_round_activations_as_the_whole_head(name):
    """llama-cpu numerics under a budget too small for the head: its row blocks multiply the activations rounded
    for the head's type (Q8_0 here) as the whole prepared head does, soft-cap (gemma2) included."""
    ref = engine(name, plan="Q8_0", numerics="llama-cpu")
    eng = engine(name, plan="Q8_0", numerics="llama-cpu", memory_budget=1)
    assert eng.act_out and eng.act_out[0][2] == "Q8_0" and "out" not in eng.cache.items
    np.testing.assert_array_equal(eng.score(PROMPT, chunk=5), ref.score(PROMPT, chunk=5))
    assert greedy_steps(eng, PROMPT, 3)[1].tobytes() == greedy_steps(ref, PROMPT, 3)[1].tobytes()
