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


def test_each_windows_mean_nll_is_kept_as_llama_perplexity_prints_per_chunk():
    # two windows: a uniform model over 4 tokens (NLL ln 4 each), then one that gives the target 1/2 (ln 2)
    acc = M.KldAccumulator()
    acc.add(M.token_stats(np.zeros((3, 4)), np.zeros((3, 4)), [0, 1, 2]))
    half = np.log(np.array([[1 / 2, 1 / 6, 1 / 6, 1 / 6]] * 2))
    acc.add(M.token_stats(half, np.zeros((2, 4)), [0, 0]))
    s = acc.summary()
    assert s["window_nll"] == pytest.approx([math.log(4), math.log(2)])
    assert s["window_nll_base"] == pytest.approx([math.log(4), math.log(4)])
    assert s["ppl"] == pytest.approx(math.exp((3 * math.log(4) + 2 * math.log(2)) / 5))


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


def test_ppl_ratio_uncertainty_and_correlation_by_hand():
    # 12 tokens: base NLL mean 2, variance 1; quantized NLL mean 3, variance 4; E[q*b] = 20/3, so
    # cov = (20/3 - 6) / 11 = 2/33 and u(ln ratio) = sqrt(4/11 + 1/11 - 2 * 2/33) = sqrt(1/3)
    b = np.array([1, 1, 1, 1, 3, 3, 1, 1, 3, 3, 3, 3], float)
    q = np.array([1] * 6 + [5] * 6, float)
    acc = M.KldAccumulator()
    acc.add(M.TokenStats(q, b, np.zeros(12), np.zeros(12), np.ones(12, bool)))
    s = acc.summary()
    assert s["ln_ppl_ratio"] == pytest.approx(1.0)
    assert s["ln_ppl_ratio_unc"] == pytest.approx(math.sqrt(1 / 3))
    assert s["ppl_ratio"] == pytest.approx(math.e) and s["ppl_ratio_unc"] == pytest.approx(math.e * math.sqrt(1 / 3))
    assert s["ppl"] == pytest.approx(math.exp(3)) and s["ppl_unc"] == pytest.approx(math.exp(3) * 2 / math.sqrt(11))
    assert s["ppl_base_unc"] == pytest.approx(math.exp(2) / math.sqrt(11))
    assert s["ln_ppl_cor"] == pytest.approx((2 / 33) / (2 / math.sqrt(11) / math.sqrt(11)))  # = 1/3


def test_non_integer_percentiles_interpolate_by_hand():
    v = np.array([0.0, 1.0, 2.0, 10.0])
    assert M.percentile(v, 0.5) == pytest.approx(1.5)  # rank 1.5
    assert M.percentile(v, 0.9) == pytest.approx(0.3 * 2 + 0.7 * 10)  # rank 2.7
    assert M.percentile(v, 0.1) == pytest.approx(0.3)  # rank 0.3
    ks = np.array([0.0, 1.0, 2.0, 10.0, 20.0])  # 5 values: p99 at rank 3.96, p90 at 3.6, p1 at 0.04
    acc = M.KldAccumulator()
    acc.add(M.TokenStats(np.ones(5), np.ones(5), ks, ks - 5, np.ones(5, bool)))
    s = acc.summary()
    assert s["kld_p99"] == pytest.approx(0.04 * 10 + 0.96 * 20)
    assert s["kld_p90"] == pytest.approx(0.4 * 10 + 0.6 * 20)
    assert s["kld_p1"] == pytest.approx(0.04)
    assert s["dp_p75"] == pytest.approx(10 - 5) and s["dp_p25"] == pytest.approx(1 - 5)  # integer ranks 3 and 1
    assert s["dp_p10"] == pytest.approx(0.4 - 5)


def test_fixed_log_probs_as_llama_perplexity_stores_them():
    # max 2, min clamped to 2 - 16 = -14; 16 / 65535 per step; -20 is below the range (stored as 0)
    logits = np.array([[2.0, 0.0, -20.0, -13.0]], np.float32)
    f = M.fixed_log_probs(logits)
    lse = math.log(1 + math.exp(-2) + math.exp(-22) + math.exp(-15))
    assert f.scale[0] == pytest.approx(16 / 65535)
    assert f.min_log_prob[0] == pytest.approx(-16 - lse)
    assert f.q[0].tolist() == [65535, round(14 * 65535 / 16), 0, round(65535 / 16)]  # 57343.1 and 4095.9
    lp = f.log_probs(0, 1)[0]
    assert lp[0] == pytest.approx(-lse, abs=1e-5) and lp[1] == pytest.approx(-2 - lse, abs=2e-4)
    assert f.q.dtype == np.uint16 and f.nbytes == 4 * 2 + 8


def test_kld_against_fixed_base_by_hand():
    b = np.array([[math.log(3.0), 0.0]])      # pb = (3/4, 1/4), stored exactly enough
    s = M.token_stats_fixed(np.array([[0.0, 0.0]]), M.fixed_log_probs(b), [0])
    assert s.kld[0] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    assert s.nll_base[0] == pytest.approx(-math.log(0.75), abs=1e-6) and s.nll[0] == pytest.approx(math.log(2))
    assert bool(s.same_top[0])
    # 100,000 base tokens 17 below the top: llama.cpp drops their KL terms (log p_base <= -16) and keeps the
    # head's term unclipped: exp(lb0) * (lb0 - lq0) with lb0 = -ln Z, Z = 1 + 1e5 e^-17, lq0 = ~0
    n = 100_000
    base = np.full((1, n + 1), -17.0, np.float32)
    base[0, 0] = 0.0
    q = np.full((1, n + 1), -100.0, np.float32)
    q[0, 0] = 0.0
    z = 1 + n * math.exp(-17)
    got = M.token_stats_fixed(q, M.fixed_log_probs(base), [0]).kld[0]
    assert got == pytest.approx(-math.log(z) / z, rel=1e-3) and got < 0
    assert M.token_stats(q, base, [0]).kld[0] == pytest.approx(n * math.exp(-17) / z * 83 - math.log(z), rel=1e-4)
