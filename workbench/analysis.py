"""Quantization error analysis: what a type costs a tensor, and a whole model under a plan."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Generator, Iterable, Mapping, Sequence

import numpy as np

from . import kernels
from .dtypes import block_info, is_quantized
from .errors import Cancelled
from .model import Model, Tensor
from .plan import Plan, row_fits, tensor_nbytes
from .progress import Progress, relay

SAMPLE_LIMIT = 1 << 20  # error values kept per tensor and type for histograms


@dataclass(frozen=True)
class ErrorStats:
    name: str
    qtype: str
    n: int
    nbytes: int
    bits_per_weight: float
    rmse: float
    max_abs: float
    rel_rmse: float  # rmse / rms(original)
    snr_db: float  # 10 log10(signal power / noise power); inf for an exact type
    cosine: float
    sample: np.ndarray | None = None  # deterministic subsample of (dequantized - original), float32
    rms: float = 0.0  # rms(original): with ``rmse`` and ``n``, what errors of several tensors add up to

    def histogram(self, bins: int = 101, value_range: tuple[float, float] | None = None):
        return error_histogram(self.sample, bins, value_range)


def error_histogram(sample: np.ndarray, bins: int = 101, value_range=None) -> tuple[np.ndarray, np.ndarray]:
    if sample is None or sample.size == 0:
        return np.zeros(bins, np.int64), np.linspace(-1, 1, bins + 1)
    if value_range is None:
        lim = float(np.max(np.abs(sample))) or 1e-12
        value_range = (-lim, lim)
    counts, edges = np.histogram(sample, bins=bins, range=value_range)
    return counts.astype(np.int64), edges


def shared_histograms(stats: Iterable[ErrorStats], bins: int = 101):
    """Histograms of several types' errors over one common symmetric range (for overlaying)."""
    stats = list(stats)
    lim = max((float(np.max(np.abs(s.sample))) for s in stats if s.sample is not None and s.sample.size), default=1e-12)
    lim = lim or 1e-12
    edges = np.linspace(-lim, lim, bins + 1)
    return edges, [error_histogram(s.sample, bins, (-lim, lim))[0] for s in stats]


def normalized_histograms(stats: Iterable[ErrorStats], bins: int = 101, limit: float = 6.0):
    """Histograms of each type's error divided by that type's RMSE, over one range of ±``limit`` RMSEs: every
    type spans the same width, so a precise type (Q8_0) is not a spike beside a coarse one (Q2_K) and the
    shapes (uniform rounding, heavy tails) compare directly.  Values beyond the range fall in the end bins; an
    exact type (RMSE 0) gets an empty histogram."""
    stats = list(stats)
    edges = np.linspace(-limit, limit, bins + 1)
    counts = []
    for st in stats:
        if st.sample is None or not st.sample.size or not st.rmse > 0:
            counts.append(np.zeros(bins, np.int64))
            continue
        z = np.clip(np.asarray(st.sample, np.float64) / st.rmse, -limit, limit)
        counts.append(np.histogram(z, bins=edges)[0])
    return edges, counts


def error_stats(tensor: Tensor, qtype: str, imatrix: np.ndarray | None = None, *, keep_sample: bool = True,
                chunk: int = 1 << 20, threads: int | None = None, cancel=None) -> Generator[Progress, None, ErrorStats]:
    """Quantize ``tensor`` to ``qtype`` and back, chunk by chunk, and measure the error."""
    info = tensor.info
    qtype = qtype.upper()
    shape = info.shape if info.shape else (1,)
    row = shape[-1]
    n = info.n_params
    stride = max(1, -(-n // SAMPLE_LIMIT))
    s_e2 = s_x2 = s_y2 = s_xy = 0.0
    max_abs = 0.0
    samples: list[np.ndarray] = []
    seen = 0
    yield Progress(0, n, f"{info.name} → {qtype}")
    for part in tensor.iter_float32(chunk):
        x = part.reshape(-1, row)
        if qtype == "F32":
            y = x
        else:
            y = kernels.dequantize(kernels.quantize(x, qtype, imatrix, threads=threads, name=info.name), qtype, row,
                                   threads=threads)
        err = (y - x).reshape(-1)
        xf, yf = x.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)
        ef = err.astype(np.float64)
        s_e2 += float(ef @ ef)
        s_x2 += float(xf @ xf)
        s_y2 += float(yf @ yf)
        s_xy += float(xf @ yf)
        if err.size:
            max_abs = max(max_abs, float(np.max(np.abs(err))))
        if keep_sample:
            first = (-seen) % stride
            samples.append(err[first::stride].copy())
        seen += part.size
        if cancel is not None and cancel():
            raise Cancelled()
        yield Progress(seen, n, f"{info.name} → {qtype}")
    rmse = float(np.sqrt(s_e2 / n)) if n else 0.0
    rms_x = float(np.sqrt(s_x2 / n)) if n else 0.0
    snr = float("inf") if s_e2 == 0 else (10 * np.log10(s_x2 / s_e2) if s_x2 > 0 else float("-inf"))
    cos = s_xy / np.sqrt(s_x2 * s_y2) if s_x2 > 0 and s_y2 > 0 else (1.0 if s_e2 == 0 else 0.0)
    nbytes = tensor_nbytes(qtype, shape)
    sample = np.concatenate(samples) if keep_sample and samples else (np.zeros(0, np.float32) if keep_sample else None)
    return ErrorStats(info.name, qtype, n, nbytes, 8.0 * nbytes / n if n else 0.0, rmse, max_abs,
                      rmse / rms_x if rms_x else 0.0, float(snr), float(cos), sample, rms_x)


def combined_error(stats: Iterable[ErrorStats]) -> tuple[float, float]:
    """``(SNR in dB, relative RMSE)`` of several tensors taken as one: noise and signal power summed over all
    their values (a large tensor weighs more than a small one)."""
    noise = signal = 0.0
    for s in stats:
        noise += s.rmse * s.rmse * s.n
        signal += s.rms * s.rms * s.n
    if noise == 0:
        return float("inf"), 0.0
    if signal == 0:
        return float("-inf"), float("inf")
    return float(10 * np.log10(signal / noise)), float(np.sqrt(noise / signal))


def is_float_type(dtype: str) -> bool:
    """Float tensors (plain or quantized) have a quantization error; integer and bool tensors do not."""
    return dtype in ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2") or is_quantized(dtype)


def compatible_types(shape: tuple[int, ...], types: Iterable[str]) -> list[str]:
    return [t for t in types if row_fits(t, shape)]


def analyze_plan(plan: Plan, imatrix: dict[str, np.ndarray] | None = None, *, names: Iterable[str] | None = None,
                 cancel=None, on_result: Callable[[ErrorStats], Any] | None = None
                 ) -> Generator[Progress, None, list[ErrorStats]]:
    """Error statistics for every tensor under ``plan`` (progress in values processed over the model).
    ``on_result(stats)`` is called as each tensor finishes (before its progress is yielded), so a caller can
    show rows while the analysis runs."""
    wanted = None if names is None else set(names)
    # integer tensors (token ids, position ids) are never quantized: nothing to measure
    entries = [e for e in plan.entries if (wanted is None or e.name in wanted) and is_float_type(e.source)]
    return (yield from analyze_tensors(plan.model, [(e.name, e.type) for e in entries],
                                       [_importance(imatrix, e) for e in entries], cancel=cancel,
                                       on_result=on_result))


def analyze_tensors(model: Model, pairs: Sequence[tuple[str, str]], weights: Sequence[np.ndarray | None] = (), *,
                    cancel=None, on_result: Callable[[ErrorStats], Any] | None = None
                    ) -> Generator[Progress, None, list[ErrorStats]]:
    """Error statistics of each ``(tensor, type)`` in ``pairs``, quantized with its ``weights`` (importance,
    or None), in order; progress in values processed.  ``on_result`` as in :func:`analyze_plan`."""
    total = sum(model.info(name).n_params for name, _t in pairs)
    done = 0
    results: list[ErrorStats] = []
    for i, (name, qtype) in enumerate(pairs):
        w = weights[i] if i < len(weights) else None
        job = error_stats(model.tensor(name), qtype, w, keep_sample=False, cancel=cancel)
        base, text = done, f"[{i + 1}/{len(pairs)}] {name} → {qtype}"
        results.append((yield from relay(job, lambda p, base=base, text=text: Progress(base + p.done, total, text))))
        done += model.info(name).n_params
        if on_result is not None:
            on_result(results[-1])
            yield Progress(done, total, text)
    return results


def _importance(imatrix, entry) -> np.ndarray | None:
    """The quantization weights of a plan entry as llama-quantize would use them (None: none, the type takes
    none, or an expert tensor, whose experts each have their own: measured without)."""
    if imatrix is None:
        return None
    from .optimize.imatrix import tensor_weights

    w = tensor_weights(imatrix, entry.gguf_name, tuple(entry.shape), entry.type)
    return None if w is None or w.shape[0] != 1 else w[0]


def analyze_plans(plans: Mapping[str, Plan], cancel=None, on_result: Callable[[str, ErrorStats], Any] | None = None,
                  imatrix=None) -> Generator[Progress, None, dict[str, list[ErrorStats]]]:
    """:func:`analyze_plan` for several plans (e.g. presets) one after the other: label -> results.
    ``on_result(label, stats)`` as each tensor of each plan finishes; ``imatrix`` (an
    :class:`~workbench.optimize.imatrix.Imatrix` or name -> weights) weights the quantization as convert does."""
    out: dict[str, list[ErrorStats]] = {}
    for k, (label, plan) in enumerate(plans.items()):
        prefix = f"{label}: " if len(plans) > 1 else ""
        hook = None if on_result is None else (lambda s, label=label: on_result(label, s))
        out[label] = yield from relay(analyze_plan(plan, imatrix, cancel=cancel, on_result=hook), lambda p, k=k, prefix=prefix: Progress(
            k * p.total + p.done, len(plans) * p.total, prefix + p.message))
    return out


def analyze_presets(model: Model, presets: Iterable[str], cancel=None) -> Generator[Progress, None, dict[str, list[ErrorStats]]]:
    """:func:`analyze_plans` for presets of one model."""
    return (yield from analyze_plans({p: Plan(model, p) for p in presets}, cancel=cancel))


def without_sample(s: ErrorStats) -> ErrorStats:
    return replace(s, sample=None)


__all__ = ["ErrorStats", "analyze_plan", "analyze_plans", "analyze_presets", "compatible_types", "error_histogram", "error_stats",
           "normalized_histograms", "shared_histograms", "block_info"]
