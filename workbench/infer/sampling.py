"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p.

The filters apply in transformers' order: logits / temperature, then keep the ``top_k`` most likely
tokens, then the smallest set of most likely tokens whose probability reaches ``top_p``.  The draw uses a
``numpy.random.Generator``, so a seed gives the same tokens every run.
"""
from __future__ import annotations

import numpy as np

from ..errors import WorkbenchError


def check_params(temperature: float, top_k: int, top_p: float) -> None:
    if not np.isfinite(temperature) or temperature < 0:
        raise WorkbenchError(f"temperature must be 0 (greedy) or positive, not {temperature}")
    if top_k < 0:
        raise WorkbenchError(f"top-k must be 0 (off) or a positive number of tokens, not {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise WorkbenchError(f"top-p must be in (0, 1], not {top_p}")


def probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The distribution a token is drawn from: float64 [vocab], zero outside the top-k / top-p set."""
    check_params(temperature, top_k, top_p)
    if temperature == 0:
        p = np.zeros(logits.shape[-1])
        p[int(np.argmax(logits))] = 1.0
        return p
    z = np.asarray(logits, dtype=np.float64) / temperature
    keep = np.isfinite(z)
    if top_k and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k)[-top_k]
        keep &= z >= kth  # ties with the k-th value stay in, as in transformers' TopKLogitsWarper
    z = np.where(keep, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        n = int(np.searchsorted(cum, top_p * (1 - 1e-12))) + 1  # the smallest prefix reaching top_p
        cut = np.zeros_like(p)
        cut[order[:n]] = p[order[:n]]
        p = cut / cut.sum()
    return p


def sample(logits: np.ndarray, rng: np.random.Generator | None = None, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0) -> int:
    """The next token id: argmax when ``temperature`` is 0, else a draw from :func:`probabilities`."""
    if temperature == 0:
        check_params(temperature, top_k, top_p)
        return int(np.argmax(logits))
    p = probabilities(logits, temperature, top_k, top_p)
    rng = rng if rng is not None else np.random.default_rng()
    cum = np.cumsum(p)
    i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    i = min(i, p.shape[0] - 1)
    while p[i] == 0:  # never land on an excluded token through rounding at the edge
        i -= 1
    return i


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())
