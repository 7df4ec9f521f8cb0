"""Quality metrics of a quantized model against its base, computed the way ``llama-perplexity
--kl-divergence`` computes them.

The calibration text is cut into windows of ``n_ctx`` tokens (the first token of each replaced by BOS when the
model adds one); only the second half of each window is scored, so every scored token has at least
``n_ctx / 2`` tokens of context.  Per scored token we keep the negative log-likelihood of the true next token
under both models, the KL divergence ``sum p_base * (log p_base - log p_q)``, the difference of the true
token's probability (``Δp = p_q - p_base``) and whether both models rank the same token first.  The summary
gives the means with llama.cpp's uncertainty estimates and the same percentiles it prints.

llama.cpp stores the base log-probabilities as 16-bit fixed point (``--kl-divergence-base``) and skips terms
with ``log p_base <= -16`` in the KL sum: :func:`fixed_log_probs` and :func:`token_stats_fixed` do the same
(the "as llama.cpp CPU runs it" evaluation of :mod:`workbench.infer.compare`); :func:`token_stats` keeps the
base in float64 and sums every term (the exact evaluation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0, 0.1)
DP_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 75.0, 25.0, 10.0, 5.0, 1.0, 0.1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (numerically stable)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def windows(tokens: Sequence[int], n_ctx: int, bos_id: int | None = None) -> list[np.ndarray]:
    """The evaluation windows of llama-perplexity: ``len(tokens) // n_ctx`` consecutive chunks of ``n_ctx``
    tokens, the first token of each replaced by ``bos_id`` when given."""
    if n_ctx < 4:
        raise ValueError("the context window must hold at least 4 tokens")
    toks = np.asarray(tokens, dtype=np.int64)
    n_chunk = len(toks) // n_ctx
    out = []
    for i in range(n_chunk):
        w = toks[i * n_ctx:(i + 1) * n_ctx].copy()
        if bos_id is not None:
            w[0] = bos_id
        out.append(w)
    return out


def scored_positions(n_ctx: int) -> slice:
    """Positions of a window whose logits are scored (each predicts the token after it)."""
    return slice(n_ctx // 2, n_ctx - 1)


@dataclass
class TokenStats:
    """Per-token statistics of one window (arrays of equal length)."""
    nll: np.ndarray
    nll_base: np.ndarray
    kld: np.ndarray
    p_diff: np.ndarray
    same_top: np.ndarray  # bool


ROW_BLOCK = 32  # rows per step: the float64 temporaries stay a few times 32 x vocab


def token_stats(logits: np.ndarray, base_logits: np.ndarray, targets: Sequence[int]) -> TokenStats:
    """Statistics of ``logits`` (the quantized model) against ``base_logits`` for each row, whose true next
    token is ``targets[row]``.  Both arrays are [n, vocab].  Rows are processed a block at a time, so the
    float64 temporaries stay bounded for large vocabularies (one window of SmolLM2 is 255 x 49,152)."""
    t = np.asarray(targets, dtype=np.int64)
    n = len(t)
    nll, nll_base, kld, p_diff = (np.empty(n) for _ in range(4))
    same = np.empty(n, bool)
    for a in range(0, n, ROW_BLOCK):
        b = min(n, a + ROW_BLOCK)
        rows = np.arange(b - a)
        lq = log_softmax(logits[a:b])
        lb = log_softmax(base_logits[a:b])
        tt = t[a:b]
        nll[a:b] = -lq[rows, tt]
        nll_base[a:b] = -lb[rows, tt]
        kld[a:b] = np.einsum("ij,ij->i", np.exp(lb), lb - lq)
        same[a:b] = np.argmax(logits[a:b], axis=-1) == np.argmax(base_logits[a:b], axis=-1)
    p_diff[:] = np.exp(-nll) - np.exp(-nll_base)
    return TokenStats(nll, nll_base, np.maximum(kld, 0.0), p_diff, same)


@dataclass
class FixedLogProbs:
    """Base log-probabilities as llama-perplexity's ``--kl-divergence-base`` file stores them: per row a
    float32 scale and minimum and one uint16 per vocabulary entry; log p = scale * q + min_log_prob."""
    scale: np.ndarray  # [n] float32
    min_log_prob: np.ndarray  # [n] float32
    q: np.ndarray  # [n, vocab] uint16

    def __len__(self) -> int:
        return int(self.q.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.q.nbytes + self.scale.nbytes + self.min_log_prob.nbytes)

    def log_probs(self, a: int, b: int) -> np.ndarray:
        """The decoded log-probabilities of rows a..b, float32 [b - a, vocab]."""
        return self.q[a:b] * self.scale[a:b, None] + self.min_log_prob[a:b, None]


FIXED_RANGE = 16.0  # log-probabilities more than 16 below the top are stored as the minimum (and skipped)


def fixed_log_probs(logits: np.ndarray) -> FixedLogProbs:
    """llama-perplexity's 16-bit storage of log_softmax(logits) (its ``log_softmax(..., uint16_t *, ...)``):
    the logits above max - 16 are mapped linearly onto 0..65535 (round half to even), the others to 0."""
    n = logits.shape[0]
    scale = np.empty(n, np.float32)
    min_lp = np.empty(n, np.float32)
    q = np.empty(logits.shape, np.uint16)
    for a in range(0, n, ROW_BLOCK):
        x = np.asarray(logits[a:a + ROW_BLOCK], np.float32)
        mx = x.max(axis=1)
        mn = np.maximum(x.min(axis=1), mx - np.float32(FIXED_RANGE))
        lse = np.log(np.exp(x - mx[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)
        sc = ((mx - mn) / np.float32(65535)).astype(np.float32)
        scale[a:a + len(x)] = sc
        min_lp[a:a + len(x)] = (mn - mx) - lse
        with np.errstate(divide="ignore"):
            inv = np.where(sc != 0, np.float32(1) / sc, np.float32(0)).astype(np.float32)
        v = np.rint(inv[:, None] * (x - mn[:, None]))
        q[a:a + len(x)] = np.where(x > mn[:, None], v, 0).astype(np.uint16)
    return FixedLogProbs(scale, min_lp, q)


def token_stats_fixed(logits: np.ndarray, base: FixedLogProbs, targets: Sequence[int]) -> TokenStats:
    """:func:`token_stats` against base log-probabilities stored as llama-perplexity stores them: the base's
    NLL, top token and KL terms come from the 16-bit values, KL terms with log p_base <= -16 are skipped,
    and the sum is not clipped at 0 (the stored distribution does not sum to exactly 1)."""
    t = np.asarray(targets, dtype=np.int64)
    n = len(t)
    if len(base) != n:
        raise ValueError(f"{n} targets for {len(base)} base rows")
    nll, nll_base, kld = (np.empty(n) for _ in range(3))
    same = np.empty(n, bool)
    for a in range(0, n, ROW_BLOCK):
        b = min(n, a + ROW_BLOCK)
        rows = np.arange(b - a)
        lq = log_softmax(logits[a:b])
        lb = base.log_probs(a, b).astype(np.float64)
        tt = t[a:b]
        nll[a:b] = -lq[rows, tt]
        nll_base[a:b] = -lb[rows, tt]
        terms = np.where(lb > -FIXED_RANGE, np.exp(lb) * (lb - lq), 0.0)
        kld[a:b] = terms.sum(axis=1)
        same[a:b] = np.argmax(logits[a:b], axis=-1) == np.argmax(lb, axis=-1)
    p_diff = np.exp(-nll) - np.exp(-nll_base)
    return TokenStats(nll, nll_base, kld, p_diff, same)


def nll_only(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of each row's target (for the base model's own perplexity), a block at a time."""
    t = np.asarray(targets, dtype=np.int64)
    out = np.empty(len(t))
    for a in range(0, len(t), ROW_BLOCK):
        lq = log_softmax(logits[a:a + ROW_BLOCK])
        out[a:a + ROW_BLOCK] = -lq[np.arange(len(lq)), t[a:a + ROW_BLOCK]]
    return out


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error, as llama-perplexity computes them (0 for fewer than 11 values)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n < 1:
        return 0.0, 0.0
    f = float(v.sum() / n)
    df = float((v * v).sum() / n - f * f)
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def covariance(a: np.ndarray, b: np.ndarray) -> float:
    """Covariance of the means of ``a`` and ``b`` (llama-perplexity's estimate)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.size
    if n < 10:
        return 0.0
    return float(((a * b).sum() / n - (a.sum() / n) * (b.sum() / n)) / (n - 1))


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama-perplexity's percentile: linear interpolation between the two nearest ranks."""
    v = sorted_values
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = fraction * (len(v) - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)])


def median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    if n % 2 == 0:
        return float(0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))
    return float(sorted_values[n // 2])


@dataclass
class KldAccumulator:
    """Collects :class:`TokenStats` window by window and summarizes them."""
    parts: list[TokenStats] = field(default_factory=list)

    def add(self, stats: TokenStats) -> None:
        self.parts.append(stats)

    def _cat(self, name: str) -> np.ndarray:
        if not self.parts:
            return np.zeros(0)
        return np.concatenate([getattr(p, name) for p in self.parts])

    @property
    def count(self) -> int:
        return int(sum(len(p.nll) for p in self.parts))

    def kld_values(self) -> np.ndarray:
        return self._cat("kld")

    def summary(self) -> dict[str, Any]:
        """All statistics llama-perplexity --kl-divergence prints, as a dict of floats (percentages as
        fractions: ``same_top`` 0.97 means 97 %)."""
        n = self.count
        if n == 0:
            raise ValueError("nothing was scored: the text is shorter than one context window")
        nll, nll_b = self._cat("nll"), self._cat("nll_base")
        kld, dp, same = self._cat("kld"), self._cat("p_diff"), self._cat("same_top")
        lp, lp_unc = mean_and_uncertainty(nll)
        lb, lb_unc = mean_and_uncertainty(nll_b)
        cov = covariance(nll, nll_b)
        ratio = lp - lb
        ratio_unc = math.sqrt(max(lp_unc ** 2 + lb_unc ** 2 - 2.0 * cov, 0.0))
        ppl, ppl_b = math.exp(lp), math.exp(lb)
        k_mean, k_unc = mean_and_uncertainty(kld)
        d_mean, d_unc = mean_and_uncertainty(dp)
        mse, mse_unc = mean_and_uncertainty(dp * dp)
        rms = math.sqrt(mse)
        ks, ds = np.sort(kld), np.sort(dp)
        p_top = float(same.sum()) / n
        out: dict[str, Any] = {
            "tokens": n,
            "ppl": ppl, "ppl_unc": ppl * lp_unc,
            "ppl_base": ppl_b, "ppl_base_unc": ppl_b * lb_unc,
            "ln_ppl_ratio": ratio, "ln_ppl_ratio_unc": ratio_unc,
            "ppl_ratio": math.exp(ratio), "ppl_ratio_unc": math.exp(ratio) * ratio_unc,
            "ppl_diff": ppl - ppl_b,
            "ln_ppl_cor": (cov / (lp_unc * lb_unc)) if lp_unc > 0 and lb_unc > 0 else float("nan"),
            "kld_mean": k_mean, "kld_mean_unc": k_unc,
            "kld_max": float(ks[-1]), "kld_median": median(ks), "kld_min": float(ks[0]),
            "dp_mean": d_mean, "dp_mean_unc": d_unc,
            "dp_max": float(ds[-1]), "dp_median": median(ds), "dp_min": float(ds[0]),
            "dp_rms": rms, "dp_rms_unc": (0.5 / rms * mse_unc) if rms > 0 else 0.0,
            "same_top": p_top,
            "same_top_unc": math.sqrt(p_top * (1 - p_top) / (n - 1)) if n > 1 else 0.0,
            # the mean NLL of each window (llama-perplexity prints their running PPL as [1]..[N])
            "window_nll": [float(np.mean(p.nll)) for p in self.parts],
            "window_nll_base": [float(np.mean(p.nll_base)) for p in self.parts],
        }
        for q in KLD_PERCENTILES:
            out[f"kld_p{q:g}"] = percentile(ks, q / 100.0)
        for q in DP_PERCENTILES:
            out[f"dp_p{q:g}"] = percentile(ds, q / 100.0)
        return out


def perplexity(nll: np.ndarray) -> tuple[float, float]:
    """Perplexity and its uncertainty from per-token negative log-likelihoods."""
    m, unc = mean_and_uncertainty(nll)
    return math.exp(m), math.exp(m) * unc


def first_divergence(base: Sequence[int], other: Sequence[int]) -> int | None:
    """Index of the first token where ``other`` differs from ``base`` (None when one is a prefix of the
    other and they agree on the common length)."""
    n = min(len(base), len(other))
    a = np.asarray(base[:n])
    b = np.asarray(other[:n])
    diff = np.nonzero(a != b)[0]
    if diff.size:
        return int(diff[0])
    return None if len(base) == len(other) else n


def iter_scored(window: np.ndarray) -> Iterator[tuple[int, int]]:
    """(position, target token) pairs scored in one window (used by tests and docs)."""
    sl = scored_positions(len(window))
    for pos in range(sl.start, sl.stop):
        yield pos, int(window[pos + 1])
