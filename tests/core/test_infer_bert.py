"""The BERT encoder against transformers (tiny random fixture) and all-MiniLM-L6-v2 on real sentences."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetch_models import real_model
from workbench.formats import open_model
from workbench.infer.bert import BertEncoder, erf, gelu
from workbench.infer.engines import load_engine
from workbench.infer.weights import load_weights
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer" / "bert"
BATCH = [[1, 20, 33, 47, 59, 61, 72, 2], [1, 90, 14, 2]]


def test_embeddings_match_transformers_with_padding():
    enc = run(load_engine(DATA))
    assert isinstance(enc, BertEncoder)
    ref = np.load(DATA / "embeddings.npy")
    got = enc.embed(BATCH)
    assert got.dtype == np.float32 and got.shape == (2, 32)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    hidden = enc.hidden_states(np.array([BATCH[0]]), np.ones((1, 8), np.float32))[0]
    np.testing.assert_allclose(hidden, np.load(DATA / "hidden.npy"), rtol=0, atol=1e-5)


def test_padding_and_batching_do_not_change_an_embedding():
    enc = run(load_engine(DATA))
    alone = enc.embed([BATCH[1]])[0]
    np.testing.assert_allclose(enc.embed(BATCH)[1], alone, atol=1e-6)
    small = BertEncoder(run(load_weights(DATA)), batch_size=1)
    np.testing.assert_allclose(small.embed(BATCH), enc.embed(BATCH), atol=1e-6)
    long = enc.embed([list(range(3, 100))])  # longer than the 64 positions: cut to fit
    assert long.shape == (1, 32) and np.isfinite(long).all()
    assert enc.nbytes() == run(load_weights(DATA)).nbytes


def test_bert_gguf_gives_the_same_embeddings(tmp_path):
    """HF folder -> F32 GGUF -> loader (names mapped back) -> same embeddings."""
    import shutil

    from workbench.convert.hf_to_gguf import convert_hf_to_gguf

    folder = tmp_path / "bert"
    shutil.copytree(DATA, folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(123)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    import json

    (folder / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, w in enumerate(words[:5])],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {w: i for i, w in enumerate(words)}}}))
    out = run(convert_hf_to_gguf(folder, tmp_path / "bert.gguf", "F32"))[0]
    enc = run(load_engine(open_model(out)))
    np.testing.assert_allclose(enc.embed(BATCH), np.load(DATA / "embeddings.npy"), rtol=0, atol=1e-5)


def test_erf_and_gelu_are_accurate():
    import math

    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    exact = np.array([math.erf(float(v)) for v in x])
    assert np.abs(erf(x) - exact).max() < 5e-7  # 1.5e-7 of the formula + float32 rounding
    g_exact = np.array([0.5 * float(v) * (1 + math.erf(float(v) / math.sqrt(2))) for v in x])
    assert np.abs(gelu(x) - g_exact).max() < 1e-6


@pytest.mark.realmodel
def test_minilm_paraphrases_are_closer_than_unrelated_sentences():
    from workbench.infer.tokenizer import load_tokenizer

    model = open_model(real_model("minilm"))
    enc = run(load_engine(model))
    tok = load_tokenizer(model)
    sents = ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today."]
    e = enc.embed([tok.encode(s) for s in sents])
    sim = e @ e.T
    assert sim[0, 1] > 0.7  # sentence-transformers gives ~0.8 for this pair
    assert sim[0, 2] < 0.2 and sim[1, 2] < 0.2
    assert sim[0, 1] > sim[0, 2] + 0.5
