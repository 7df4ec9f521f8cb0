"""The comparison metrics against values computed by hand."""
import math

import numpy as np
import pytest

from workbench.infer import metrics as M


def test_log_softmax_matches_the_definition():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]], dtype=np.float32)
    got = M.log_softmax(x)
    assert got[0] == pytest.approx(np.log(np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()))
    assert got[1, :2] == pytest.approx([math.log(0.5)] * 2)  # stable for huge logits
    assert np.isfinite(got).all()


def test_token_stats_two_token_vocabulary_by_hand():
    q = np.array([[0.0, 0.0]])                # p  = (1/2, 1/2)
    b = np.array([[math.log(3.0), 0.0]])      # pb = (3/4, 1/4)
    s = M.token_stats(q, b, [0])
    assert s.kld[0] == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    assert s.nll[0] == pytest.approx(math.log(2.0))
    assert s.nll_base[0] == pytest.approx(-math.log(0.75))
    assert s.p_diff[0] == pytest.approx(0.5 - 0.75)
    assert bool(s.same_top[0])
    s1 = M.token_stats(q, b, [1])
    assert s1.p_diff[0] == pytest.approx(0.5 - 0.25)
    other = M.token_stats(np.array([[0.0, 1.0]]), b, [1])
    assert not bool(other.same_top[0])


def test_identical_models_have_zero_divergence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 50)).astype(np.float32)
    targets = rng.integers(0, 50, size=200)
    acc = M.KldAccumulator()
    acc.add(M.token_stats(logits, logits, targets))
    s = acc.summary()
    assert s["tokens"] == 200
    assert s["kld_mean"] == pytest.approx(0.0, abs=1e-12)
    assert s["kld_max"] == pytest.approx(0.0, abs=1e-12)
    assert s["ln_ppl_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert s["ppl"] == pytest.approx(s["ppl_base"])
    assert s["same_top"] == 1.0 and s["dp_rms"] == 0.0
    assert s["ln_ppl_cor"] == pytest.approx(1.0)


def test_uniform_model_has_perplexity_equal_to_the_vocabulary_size():
    v = 37
    base = np.random.default_rng(1).normal(size=(64, v))
    acc = M.KldAccumulator()
    acc.add(M.token_stats(np.zeros((64, v)), base, np.arange(64) % v))
    assert acc.summary()["ppl"] == pytest.approx(v)
    assert M.perplexity(np.full(20, math.log(v)))[0] == pytest.approx(v)


def test_mean_and_uncertainty_and_covariance():
    v = np.arange(20, dtype=float)
    m, unc = M.mean_and_uncertainty(v)
    assert m == 9.5
    assert unc == pytest.approx(math.sqrt(((20 ** 2 - 1) / 12) / 19))
    assert M.mean_and_uncertainty(v[:5])[1] == 0.0  # too few values: no uncertainty, as llama.cpp
    assert M.covariance(v, v) == pytest.approx(unc ** 2)
    assert M.covariance(v, -v) == pytest.approx(-unc ** 2)


def test_percentiles_and_median_as_llama_perplexity():
    v = np.sort(np.random.default_rng(2).exponential(size=1001))
    for q in (0.001, 0.1, 0.5, 0.9, 0.99, 0.999):
        assert M.percentile(v, q) == pytest.approx(np.percentile(v, 100 * q))
    assert M.percentile(v, 0) == v[0] and M.percentile(v, 1) == v[-1]
    assert M.median(v) == v[500]
    assert M.median(np.array([1.0, 2.0, 4.0, 10.0])) == 3.0


def test_windows_score_the_second_half():
    toks = list(range(100, 110))
    ws = M.windows(toks, 4, bos_id=1)
    assert [w.tolist() for w in ws] == [[1, 101, 102, 103], [1, 105, 106, 107]]
    assert list(M.iter_scored(ws[0])) == [(2, 103)]
    assert M.scored_positions(512) == slice(256, 511)
    assert len(M.windows(toks, 4)[0]) == 4 and M.windows(toks, 4)[0][0] == 100
    with pytest.raises(ValueError):
        M.windows(toks, 2)


def test_summary_keys_and_orders():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 20))
    q = base + rng.normal(scale=0.3, size=base.shape)
    acc = M.KldAccumulator()
    t = rng.integers(0, 20, size=300)
    acc.add(M.token_stats(q[:150], base[:150], t[:150]))
    acc.add(M.token_stats(q[150:], base[150:], t[150:]))
    s = acc.summary()
    assert s["tokens"] == 300
    assert s["kld_min"] <= s["kld_p1"] <= s["kld_median"] <= s["kld_p99"] <= s["kld_p99.9"] <= s["kld_max"]
    assert s["dp_min"] <= s["dp_p25"] <= s["dp_median"] <= s["dp_p75"] <= s["dp_max"]
    assert 0 < s["same_top"] < 1
    assert s["kld_mean"] > 0
    assert s["ppl_ratio"] == pytest.approx(math.exp(s["ln_ppl_ratio"]))
    with pytest.raises(ValueError):
        M.KldAccumulator().summary()


def test_first_divergence():
    assert M.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert M.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert M.first_divergence([1, 2, 3], [1, 2]) == 2
    assert M.first_divergence([], [4]) == 0
