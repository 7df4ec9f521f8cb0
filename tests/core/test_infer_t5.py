"""The numpy T5 engine against transformers' outputs on two tiny random models (tests/core/data/infer_t5, made by
make_t5_fixtures.py there): relative-position buckets, encoder output, teacher-forced logits, greedy ids, cached
versus uncached decoding, decoder history, the GGUF route, errors."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import convert_fixtures as cf
from workbench import WorkbenchError, open_model
from workbench.convert import convert_hf_to_gguf
from workbench.infer import engines, t5, weights
from workbench.infer.base import Engine
from workbench.infer.t5 import T5Engine, relative_position_bucket
from workbench.progress import run

DATA = Path(__file__).resolve().parent / "data" / "infer_t5"
NAMES = ["t5-tiny", "flan-t5-tiny"]


def folder_weights(folder: Path) -> SimpleNamespace:
    """config.json + every tensor as float32 under its HF name (what the weights loader hands an engine)."""
    m = open_model(folder)
    return SimpleNamespace(config=json.loads((folder / "config.json").read_text()),
                           tensors={t.name: m.tensor(t.name).to_float32() for t in m.tensors})


def gguf_weights(path: Path):
    try:
        from workbench.infer.weights import load_weights
    except ImportError:  # the stand-in: GGUF names mapped back to HF names, config rebuilt from the header
        from workbench.convert import gguf_to_hf

        m = open_model(path)
        names = gguf_to_hf.hf_names(m)
        return SimpleNamespace(config=gguf_to_hf.hf_config(m, "F32"),
                               tensors={names[t.name]: m.tensor(t.name).to_float32() for t in m.tensors})
    return run(load_weights(path))


@pytest.fixture(scope="module", params=NAMES)
def fixture(request):
    folder = DATA / request.param
    return SimpleNamespace(name=request.param, folder=folder, weights=folder_weights(folder),
                           ref=dict(np.load(folder / "reference.npz")))


@pytest.fixture(scope="module")
def engine(fixture):
    return T5Engine(fixture.weights)


def close(got: np.ndarray, want: np.ndarray, rel: float = 1e-4) -> None:
    """Equal within ``rel`` of the reference's magnitude."""
    assert got.shape == want.shape and got.dtype == np.float32
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel:g} × {scale:.3g}"


def greedy(e: T5Engine, prompt, n_new: int, *, use_cache: bool, eos: int = 1) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding as transformers' generate() does it: the start token, then argmax until eos or n_new."""
    ids, steps = [e.decoder_start_id], []
    logits = e.start(prompt, use_cache=use_cache)
    while True:
        steps.append(logits)
        tok = int(np.argmax(logits))
        ids.append(tok)
        if tok == eos or len(ids) > n_new:
            return ids, steps
        logits = e.step(tok)


def sample(e: T5Engine, prompt, n_new: int, *, use_cache: bool, seed: int, temperature: float = 1.0) -> list[int]:
    rng = np.random.default_rng(seed)
    ids = [e.decoder_start_id]
    logits = e.start(prompt, use_cache=use_cache)
    for _ in range(n_new):
        p = np.exp((logits - logits.max()) / temperature).astype(np.float64)
        tok = int(rng.choice(p.size, p=p / p.sum()))
        ids.append(tok)
        logits = e.step(tok)
    return ids


# -- against transformers -------------------------------------------------------------------------

def test_fixture_models_are_what_they_claim(fixture, engine):
    cfg = fixture.weights.config
    flan = fixture.name.startswith("flan")
    assert engine.gated == flan and engine.act == ("gelu_new" if flan else "relu")
    assert engine.scale_output == (not flan) and cfg["tie_word_embeddings"] == (not flan)
    assert ("lm_head.weight" in fixture.weights.tensors) == flan
    assert (engine.lm_head is engine.embed) == (not flan)
    assert engine.n_dec >= 1 and engine.vocab_size == 64
    assert isinstance(engine, Engine) and engine.is_encoder_decoder


def test_relative_position_buckets_match_transformers(fixture, engine):
    ref = fixture.ref
    for bidirectional, key in ((True, "buckets_bi"), (False, "buckets_uni")):
        got = relative_position_bucket(ref["rel_positions"], bidirectional, engine.num_buckets, engine.max_distance)
        assert np.array_equal(got, ref[key]), f"{key}: {int((got != ref[key]).sum())} of {got.size} differ"
    # the log-spaced buckets are exercised, not only the exact ones
    assert len(set(ref["buckets_uni"].tolist())) == engine.num_buckets


def test_t5_base_buckets():
    """T5's usual 32 buckets / 128 distance, as transformers computes them: exact below 8 (bidirectional) or 16, log-spaced to 128."""
    rel = np.array([-200, -128, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 127, 128, 500])
    bi = relative_position_bucket(rel, True, 32, 128)
    uni = relative_position_bucket(rel, False, 32, 128)
    assert bi.tolist() == [15, 15, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 31, 31, 31]
    assert uni.tolist() == [31, 31, 17, 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_encoder_output_matches_transformers(fixture, engine):
    close(engine.encode(fixture.ref["input_ids"]), fixture.ref["encoder_out"])


def test_teacher_forced_logits_match_transformers(fixture, engine):
    ref = fixture.ref
    logits = engine.score(ref["input_ids"], ref["decoder_ids"])
    close(logits, ref["logits"])
    # in chunks of 3 decoder tokens (the cache carries the earlier chunks) the same
    close(engine.score(ref["input_ids"], ref["decoder_ids"], chunk=3), logits, 1e-6)


def test_greedy_ids_equal_transformers_cached_and_uncached(fixture, engine):
    ref = fixture.ref
    assert np.array_equal(ref["greedy"], ref["greedy_nocache"])
    n_new = len(ref["greedy"]) - 1
    cached, steps_c = greedy(engine, ref["input_ids"], n_new, use_cache=True)
    uncached, steps_u = greedy(engine, ref["input_ids"], n_new, use_cache=False)
    assert cached == ref["greedy"].tolist()
    assert uncached == cached
    for a, b in zip(steps_c, steps_u):
        close(a, b, 1e-5)


def test_cache_growth_keeps_the_history(fixture):
    """A cache that starts at one position and doubles as it fills decodes exactly as a roomy one."""
    ref = fixture.ref
    small = T5Engine(fixture.weights, n_ctx=1)
    ids, steps = greedy(small, ref["input_ids"], len(ref["greedy"]) - 1, use_cache=True)
    assert ids == ref["greedy"].tolist()
    assert small.cache.k.shape[2] >= len(ids) - 1 and small.cache.len == len(ids) - 1
    assert small.cache_nbytes() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_cached_equals_uncached(fixture, engine, seed):
    prompt = fixture.ref["input_ids"][:9]
    a = sample(engine, prompt, 12, use_cache=True, seed=seed, temperature=1.5)
    b = sample(engine, prompt, 12, use_cache=False, seed=seed, temperature=1.5)
    assert a == b
    assert len(set(a[1:])) > 3  # a varied sequence, not one token repeated


# -- the decoder reads its history (flan-t5's "repeats its first token" failure) -------------------

def test_each_step_sees_every_earlier_decoder_token(fixture, engine):
    ref = fixture.ref
    prompt = ref["input_ids"]
    first = engine.start(prompt)
    second = engine.step(int(ref["greedy"][1]))
    assert float(np.abs(second - first).max()) > 0.1, "the second step's logits equal the first's"
    assert engine.decoder_ids == [engine.decoder_start_id, int(ref["greedy"][1])]
    # the same last token after a different history gives other logits
    other = int(ref["greedy"][1]) ^ 5
    engine.start(prompt)
    engine.step(other)
    after_other = engine.step(int(ref["greedy"][2]))
    engine.start(prompt)
    engine.step(int(ref["greedy"][1]))
    after_greedy = engine.step(int(ref["greedy"][2]))
    assert float(np.abs(after_other - after_greedy).max()) > 0.05
    # every cached step equals the uncached recomputation of the whole prefix (teacher forcing)
    ids, steps = greedy(engine, prompt, len(ref["greedy"]) - 1, use_cache=True)
    full = engine.score(prompt, ids[:-1])
    for i, row in enumerate(steps):
        close(row, full[i], 1e-5)
    # and transformers' own teacher-forced logits along its greedy path agree on each choice
    assert [int(np.argmax(r)) for r in full] == ref["greedy"][1:].tolist()


def test_score_defaults_to_the_prompt_shifted_behind_the_start_token(engine, fixture):
    ids = fixture.ref["input_ids"][:7].tolist()
    assert np.array_equal(engine.score(ids), engine.score(ids, [engine.decoder_start_id] + ids[:-1]))


def test_score_does_not_disturb_a_generation(engine, fixture):
    prompt = fixture.ref["input_ids"]
    engine.start(prompt)
    want = engine.score(prompt, [0, 5, 6])[-1]
    engine.start(prompt)
    engine.step(5)
    engine.score(prompt[:3], [0, 9, 9, 9])
    close(engine.step(6), want, 1e-5)


# -- the GGUF route -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_gguf_f32_gives_the_same_logits(tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    cf.unigram_tokenizer(folder)  # the converter needs a vocabulary
    path = run(convert_hf_to_gguf(folder, tmp_path / "out", "F32"))[0]
    w = gguf_weights(path)
    e_gguf, e_hf = T5Engine(w), T5Engine(folder_weights(DATA / name))
    assert (e_gguf.gated, e_gguf.scale_output, e_gguf.num_buckets) == (e_hf.gated, e_hf.scale_output, e_hf.num_buckets)
    assert e_gguf.nbytes() == e_hf.nbytes()
    ref = np.load(DATA / name / "reference.npz")
    logits = e_gguf.score(ref["input_ids"], ref["decoder_ids"])
    close(logits, e_hf.score(ref["input_ids"], ref["decoder_ids"]), 1e-6)
    close(logits, ref["logits"])
    ids, _ = greedy(e_gguf, ref["input_ids"], len(ref["greedy"]) - 1, use_cache=True)
    assert ids == ref["greedy"].tolist()


@pytest.mark.parametrize("name", NAMES)
def test_load_engine_builds_the_t5_engine_at_each_level(name):
    ref = np.load(DATA / name / "reference.npz")
    err = {}
    for plan in (None, "Q8_0", "Q4_0"):
        e = run(engines.load_engine(DATA / name, plan))
        assert isinstance(e, T5Engine)
        logits = e.score(ref["input_ids"], ref["decoder_ids"])
        err[plan] = float(np.abs(logits - ref["logits"]).mean())
        if plan is None:
            close(logits, ref["logits"])
    assert 0 < err["Q8_0"] < err["Q4_0"], err


# -- pieces and errors ----------------------------------------------------------------------------

def test_nbytes_counts_the_shared_embedding_once(fixture, engine):
    t = fixture.weights.tensors
    copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    want = sum(4 * a.size for n, a in t.items() if n not in copies)
    assert engine.nbytes() == want


def test_activations():
    x = np.linspace(-4, 4, 81, dtype=np.float32)
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.astype(np.float64) ** 3)))
    np.testing.assert_allclose(t5.activation("gelu_new", x.copy()), tanh, atol=2e-6)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    np.testing.assert_allclose(t5.activation("gelu", x.copy()), exact, atol=2e-6)
    np.testing.assert_allclose(t5.activation("relu", x.copy()), np.maximum(x, 0))
    np.testing.assert_allclose(t5.activation("silu", x.copy()), x / (1 + np.exp(-x.astype(np.float64))), atol=2e-6)
    assert t5.feed_forward_kind({"feed_forward_proj": "gated-gelu"}) == (True, "gelu_new")
    assert t5.feed_forward_kind({"feed_forward_proj": "gelu"}) == (False, "gelu")
    assert t5.feed_forward_kind({}) == (False, "relu")
    with pytest.raises(WorkbenchError, match="not supported"):
        t5.activation("mish", x.copy())


def test_errors(fixture, engine):
    w = fixture.weights
    tensors = dict(w.tensors)
    del tensors["decoder.block.0.layer.1.EncDecAttention.k.weight"]
    with pytest.raises(WorkbenchError, match=r"decoder\.block\.0\.layer\.1\.EncDecAttention\.k\.weight"):
        T5Engine(SimpleNamespace(config=w.config, tensors=tensors))
    flipped = dict(w.config, feed_forward_proj="relu" if fixture.name.startswith("flan") else "gated-gelu")
    with pytest.raises(WorkbenchError, match="feed_forward_proj"):
        T5Engine(SimpleNamespace(config=flipped, tensors=w.tensors))
    if fixture.name.startswith("flan"):
        no_head = {n: a for n, a in w.tensors.items() if n != "lm_head.weight"}
        with pytest.raises(WorkbenchError, match="lm_head.weight.*tie_word_embeddings"):
            T5Engine(SimpleNamespace(config=w.config, tensors=no_head))
    with pytest.raises(WorkbenchError, match="d_model"):
        T5Engine(SimpleNamespace(config={k: v for k, v in w.config.items() if k != "d_model"}, tensors=w.tensors))
    with pytest.raises(WorkbenchError, match="relative_attention_bias"):
        T5Engine(SimpleNamespace(config=dict(w.config, relative_attention_num_buckets=32), tensors=w.tensors))
    fresh = T5Engine(w)
    with pytest.raises(WorkbenchError, match="before start"):
        fresh.step(3)
    with pytest.raises(WorkbenchError, match="no tokens"):
        engine.start([])
    with pytest.raises(WorkbenchError, match="outside the vocabulary"):
        engine.start([3, 64])
    engine.start([3, 4])
    with pytest.raises(WorkbenchError, match="outside the vocabulary"):
        engine.step(-1)
