"""Value statistics of one tensor, computed in chunks so memory stays bounded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import numpy as np

from .model import Tensor
from .progress import Progress

SAMPLE_LIMIT = 1 << 20  # values kept for the histogram


@dataclass(frozen=True)
class TensorStats:
    name: str
    count: int
    min: float
    max: float
    mean: float
    std: float
    nan: int
    inf: int
    zeros: int
    hist_counts: np.ndarray  # int64 [bins]
    hist_edges: np.ndarray  # float64 [bins + 1]
    sampled: int  # how many values the histogram is drawn from


def tensor_stats(tensor: Tensor, bins: int = 128, chunk: int = 1 << 22) -> Generator[Progress, None, TensorStats]:
    """One pass over the tensor: exact min/max/mean/std and counts; the histogram is drawn from a
    deterministic, evenly strided subsample of at most ``SAMPLE_LIMIT`` values."""
    info = tensor.info
    n = info.n_params
    stride = max(1, -(-n // SAMPLE_LIMIT))
    total = 0
    s1 = s2 = 0.0
    lo, hi = np.inf, -np.inf
    nan = inf = zeros = 0
    samples: list[np.ndarray] = []
    seen = 0
    yield Progress(0, n, f"Reading {info.name}")
    for part in tensor.iter_float32(chunk):
        finite_mask = np.isfinite(part)
        nan += int(np.count_nonzero(np.isnan(part)))
        inf += int(part.size - np.count_nonzero(finite_mask)) - int(np.count_nonzero(np.isnan(part)))
        zeros += int(np.count_nonzero(part == 0))
        fin = part[finite_mask] if not finite_mask.all() else part
        if fin.size:
            lo = min(lo, float(fin.min()))
            hi = max(hi, float(fin.max()))
            f64 = fin.astype(np.float64)
            s1 += float(f64.sum())
            s2 += float(np.dot(f64, f64))
            total += fin.size
        first = (-seen) % stride  # keep global indices that are multiples of stride
        samples.append(part[first::stride][np.isfinite(part[first::stride])])
        seen += part.size
        yield Progress(seen, n, f"Reading {info.name}")
    mean = s1 / total if total else float("nan")
    var = max(0.0, s2 / total - mean * mean) if total else float("nan")
    sample = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    if sample.size and hi > lo:
        counts, edges = np.histogram(sample, bins=bins, range=(lo, hi))
    elif sample.size:
        counts, edges = np.array([sample.size]), np.array([lo - 0.5, lo + 0.5])
    else:
        counts, edges = np.zeros(0, np.int64), np.zeros(1)
    return TensorStats(info.name, n, lo if total else float("nan"), hi if total else float("nan"), mean,
                       float(np.sqrt(var)), nan, inf, zeros, counts.astype(np.int64), edges.astype(np.float64),
                       int(sample.size))
