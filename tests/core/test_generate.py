"""Generation: sampling distributions, seeds, cached == uncached, EOS, chat prompts, streaming text."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetch_models import real_model
from workbench.errors import WorkbenchError
from workbench.formats import open_model
from workbench.infer.generate import Token, detect_repetition, generate, generate_text, prompt_ids
from workbench.infer.sampling import probabilities, sample
from workbench.infer.engines import load_engine
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer"
PROMPT = [1, 17, 42, 99, 5, 63, 120, 7, 88, 31, 2, 54]
DECODERS = ["llama", "llama_tied", "qwen2"]


def collect(gen):
    """(tokens, return value) of a generate() generator."""
    out = []
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            return out, stop.value


@pytest.fixture(scope="module")
def models():
    from workbench.infer.tokenizer import load_tokenizer

    out = {}
    for name in DECODERS:
        model = open_model(DATA / name)
        out[name] = (run(load_engine(model)), load_tokenizer(model))
    return out


# -- sampling on hand-made logits -----------------------------------------------------------------

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))


def test_probabilities_follow_temperature_top_k_and_top_p():
    np.testing.assert_allclose(probabilities(LOGITS), [0.5, 0.3, 0.15, 0.05], atol=1e-6)
    hot = probabilities(LOGITS, temperature=2.0)
    expect = np.sqrt([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(hot, expect / expect.sum(), atol=1e-6)
    np.testing.assert_allclose(probabilities(LOGITS, top_k=2), [0.625, 0.375, 0, 0], atol=1e-6)
    np.testing.assert_allclose(probabilities(LOGITS, top_p=0.7), [0.625, 0.375, 0, 0], atol=1e-6)
    np.testing.assert_allclose(probabilities(LOGITS, top_p=0.8), [0.625, 0.375, 0, 0], atol=1e-6)  # reaches 0.8
    np.testing.assert_allclose(probabilities(LOGITS, top_p=0.81), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=1e-6)
    np.testing.assert_allclose(probabilities(LOGITS, top_p=0.1), [1, 0, 0, 0])
    # top-k first, then top-p on the renormalized set (transformers' order)
    np.testing.assert_allclose(probabilities(LOGITS, top_k=3, top_p=0.84), [0.625, 0.375, 0, 0], atol=1e-6)
    assert np.count_nonzero(probabilities(LOGITS, top_p=0.84)) == 3
    assert probabilities(LOGITS, temperature=0.0).tolist() == [1, 0, 0, 0]
    for bad in ({"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(WorkbenchError):
            probabilities(LOGITS, **bad)


def test_draws_match_the_distribution_and_seeds_repeat():
    rng = np.random.default_rng(0)
    draws = np.array([sample(LOGITS, rng, temperature=1.0, top_k=3) for _ in range(20000)])
    freq = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=0.012)
    assert freq[3] == 0
    a = [sample(LOGITS, np.random.default_rng(5), temperature=1.0) for _ in range(3)]
    rng1, rng2 = np.random.default_rng(42), np.random.default_rng(42)
    assert [sample(LOGITS, rng1, 1.0) for _ in range(50)] == [sample(LOGITS, rng2, 1.0) for _ in range(50)]
    assert len(set(a)) == 1
    assert sample(LOGITS, None, temperature=0.0) == 0


# -- generation on the fixtures ---------------------------------------------------------------------

@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generation_matches_transformers(models, name):
    eng, tok = models[name]
    ref = np.load(DATA / name / "greedy.npy").tolist()
    toks, why = collect(generate(eng, tok, PROMPT, max_tokens=len(ref)))
    assert [t.id for t in toks] == ref and why == "length"
    assert all(isinstance(t, Token) and t.logprob <= 0 for t in toks)
    assert "".join(t.text for t in toks) == tok.decode(ref)


@pytest.mark.parametrize("name", DECODERS)
def test_cached_and_uncached_decoding_give_identical_tokens(models, name):
    eng, tok = models[name]
    for kw in ({}, {"temperature": 1.0, "top_k": 40, "top_p": 0.95, "seed": 7},
               {"temperature": 0.7, "seed": 123}):
        cached = [t.id for t in generate(eng, tok, PROMPT, max_tokens=16, use_cache=True, **kw)]
        uncached = [t.id for t in generate(eng, tok, PROMPT, max_tokens=16, use_cache=False, **kw)]
        assert cached == uncached and len(cached) == 16, kw


def test_seeded_sampling_repeats_and_differs_from_greedy(models):
    eng, tok = models["llama"]
    a = [t.id for t in generate(eng, tok, PROMPT, max_tokens=20, temperature=1.5, seed=1)]
    b = [t.id for t in generate(eng, tok, PROMPT, max_tokens=20, temperature=1.5, seed=1)]
    c = [t.id for t in generate(eng, tok, PROMPT, max_tokens=20, temperature=1.5, seed=2)]
    greedy = [t.id for t in generate(eng, tok, PROMPT, max_tokens=20)]
    assert a == b and a != c and a != greedy


def test_generation_stops_at_eos_and_at_the_context(models):
    eng, tok = models["llama"]
    ref = np.load(DATA / "llama" / "greedy.npy").tolist()
    toks, why = collect(generate(eng, tok, PROMPT, max_tokens=20, stop_ids=[ref[3]]))
    assert [t.id for t in toks] == ref[:3] and why == "eos"
    long = [5 + i % 90 for i in range(250)]  # the fixture has 256 positions
    toks, why = collect(generate(eng, tok, long, max_tokens=50))
    assert len(toks) == 6 and why == "context"
    toks, why = collect(generate(eng, tok, PROMPT, max_tokens=0))
    assert toks == [] and why == "length"
    with pytest.raises(WorkbenchError, match="empty"):
        collect(generate(eng, tok, [], max_tokens=3))


def test_prompt_text_and_chat_template(models):
    eng, tok = models["qwen2"]
    plain = prompt_ids(tok, "the cat", chat=False)
    assert plain == tok.encode("the cat")
    chat = prompt_ids(tok, "the cat", chat=True)
    expect = tok.encode("<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n", add_special=False)
    assert chat == expect and chat[0] == 3 and chat[-1] != plain[-1]
    text = generate_text(eng, tok, "the cat", max_tokens=5, chat=False)
    assert text == tok.decode([t.id for t in generate(eng, tok, "the cat", max_tokens=5, chat=False)])


def test_detect_repetition():
    assert detect_repetition([7] * 12)
    assert not detect_repetition([7] * 11)
    assert detect_repetition([1, 2, 3] + [5, 6] * 6)
    phrase = list(range(100, 110))
    assert detect_repetition([1, 2] + phrase * 3)
    assert not detect_repetition([1, 2] + phrase * 2)
    assert not detect_repetition(list(range(200)))
    assert not detect_repetition([])


@pytest.mark.realmodel
def test_smollm2_generates_paris_and_follows_the_chat_template():
    from workbench.infer.tokenizer import load_tokenizer

    model = open_model(real_model("smollm2"))
    eng = run(load_engine(model))
    tok = load_tokenizer(model)
    text = generate_text(eng, tok, "The capital of France is", max_tokens=3, chat=False)
    assert text.startswith(" Paris")
    assert tok.chat_template
    answer = generate_text(eng, tok, "What is the capital of France?", max_tokens=24)
    assert "Paris" in answer


# -- the generate command ------------------------------------------------------------------------------

def test_cli_generate_streams_the_greedy_completion(capsys, models):
    from workbench.cli import main

    eng, tok = models["qwen2"]
    expect = generate_text(eng, tok, "the cat", max_tokens=6, chat=False)
    assert main(["generate", str(DATA / "qwen2"), "--prompt", "the cat", "--no-chat", "--max-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert out == expect + "\n" and "6 tokens" in err
    q8 = run(load_engine(DATA / "qwen2", "Q8_0"))
    expect_q8 = generate_text(q8, tok, "the cat", max_tokens=6, chat=False, temperature=0.9, seed=3)
    assert main(["generate", str(DATA / "qwen2"), "--prompt", "the cat", "--no-chat", "--max-tokens", "6",
                 "--type", "q8_0", "--temperature", "0.9", "--seed", "3"]) == 0
    assert capsys.readouterr().out == expect_q8 + "\n"


def test_cli_generate_errors(capsys, tmp_path):
    from workbench.cli import main

    assert main(["generate", str(DATA / "qwen2"), "--prompt", "x", "--temperature", "-1"]) == 1
    assert "temperature" in capsys.readouterr().err
    assert main(["generate", str(DATA / "bert"), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
