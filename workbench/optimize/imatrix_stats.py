"""Per-tensor statistics of an importance matrix: what ``llama-imatrix --in-file F --show-statistics`` prints.

For every entry the activations are ``in_sum2 / counts`` per expert (an expert that saw no token is left out;
an entry whose experts all saw none gets no row), and over them:

- ``sum`` Σ(Act²) (the activations are already mean squares), ``min``, ``max``, ``mean`` μ and ``std`` σ
  (population, from Σx² / N − μ²);
- ``active``: the share of activations above 1e-5 in magnitude; ``n``: how many there are;
- ``entropy``: −Σ p log2 p with p = act / Σ(Act²), and ``entropy_norm`` = 100 · entropy / log2 N (%);
- ``zd``: the share of activations more than one σ above μ (the "ZD score");
- ``cossim``: the cosine similarity of the raw sums with the same tensor one block earlier
  (``blk.N.`` → ``blk.N-1.``; 0 without one).

:func:`layer_statistics` gives the per-layer aggregates printed after the table: the N-weighted means of
Σ(Act²), ZD and CosSim over a block's tensors.  llama.cpp computes all of it in float32, adding values one
after the other; so does this module (``np.add.accumulate`` on float32 adds in order), so the numbers equal
llama.cpp's to its printed precision.  (llama-imatrix multiplies a legacy ``.dat`` file's values and counts by
its chunk size, 512, on loading: a power of two, which changes no quotient and no cosine.)
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from .imatrix import Imatrix

ACTIVE_THRESHOLD = np.float32(1e-5)
_BLK = re.compile(r"blk\.(\d+)\.")
_INT = re.compile(r"\s*[+-]?\d+")

#: the column keys, in the order llama-imatrix prints them (``layer``, ``kind`` first)
COLUMNS = ("layer", "kind", "sum", "min", "max", "mean", "std", "active", "n", "entropy", "entropy_norm", "zd",
           "cossim")
#: headers as llama-imatrix prints them (percent columns are shown as %)
HEADERS = {"layer": "Layer", "kind": "Tensor", "sum": "Σ(Act²)", "min": "Min", "max": "Max", "mean": "μ",
           "std": "σ", "active": "% Active", "n": "N", "entropy": "Entropy", "entropy_norm": "E (norm)",
           "zd": "ZD", "cossim": "CosSim", "name": "Name"}
SORT_KEYS = ("name",) + COLUMNS


@dataclass(frozen=True)
class TensorStats:
    """One printed row.  ``active`` and ``zd`` are fractions (0..1; llama-imatrix prints them times 100),
    ``entropy_norm`` is already in percent, as printed.  ``layer`` is the text after ``blk.`` (``"-"`` for a
    tensor outside the blocks) and ``block`` its number (-1 outside); ``kind`` the name part before
    ``weight`` (``attn_q``), or the whole name."""

    name: str
    layer: str
    block: int
    kind: str
    sum: float
    min: float
    max: float
    mean: float
    std: float
    active: float
    n: int
    entropy: float
    entropy_norm: float
    zd: float
    cossim: float
    n_experts: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerStats:
    """llama-imatrix's per-layer aggregates: N-weighted means over a block's tensors."""

    block: int
    sum: float
    zd: float
    cossim: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def parse_name(name: str) -> tuple[str, str]:
    """(layer, kind) as llama-imatrix reads them from a tensor name: the part after the first ``blk``
    (``"-"`` without one) and the part before the first ``weight`` (the whole name without one)."""
    parts = name.split(".")
    layer = next((parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "blk"), "")
    kind = next((parts[i - 1] for i in range(1, len(parts)) if parts[i] == "weight"), "")
    return layer or "-", kind or name


def _block(layer: str) -> int:
    m = _INT.match(layer)  # std::stoi: leading digits, else -1 (not a block)
    return int(m.group()) if m else -1


def _seq_sum(x: np.ndarray) -> np.float32:
    """Σx in float32, added in order from 0 (std::accumulate / std::inner_product with 0.0f)."""
    return np.add.accumulate(x.astype(np.float32, copy=False), dtype=np.float32)[-1] if x.size else np.float32(0)


def _values_counts(imatrix: Imatrix, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw values [n_mat, n_cols] float32 and counts [n_mat] int64."""
    e = imatrix.entries[name]
    return np.asarray(e.sums, dtype=np.float32), np.asarray(e.counts, dtype=np.int64).reshape(-1)


def _tensor_stats(name: str, values: np.ndarray, counts: np.ndarray) -> TensorStats | None:
    keep = counts != 0
    if not keep.any():
        return None  # llama-imatrix skips it too ("all counts are zero")
    act = (values[keep] / counts[keep].astype(np.float32)[:, None]).astype(np.float32).reshape(-1)
    n = act.size
    total = _seq_sum(act)
    mean = np.float32(total / np.float32(n))
    sq_total = _seq_sum(act * act)
    var = np.float32(np.float32(sq_total / np.float32(n)) - np.float32(mean * mean))
    std = np.float32(np.sqrt(max(np.float32(0), var)))
    inactive = int(np.count_nonzero(np.abs(act) <= ACTIVE_THRESHOLD))
    active = np.float32(1) - np.float32(np.float32(inactive) / np.float32(n))
    entropy = np.float32(0)
    if total > 0:
        p = (act / total).astype(np.float32)
        p = p[p > 0]
        entropy = -_seq_sum((p * np.log2(p)).astype(np.float32)) if p.size else np.float32(0)
    z = int(np.count_nonzero((act - mean) / std > 1)) if std > 0 else 0
    zd = np.float32(np.float32(z) / np.float32(n))
    entropy_norm = np.float32(100.0 * (float(entropy) / np.log2(float(n))))
    layer, kind = parse_name(name)
    return TensorStats(name, layer, _block(layer), kind, float(total), float(act.min()), float(act.max()), float(mean),
                       float(std), float(active), n, float(entropy), float(entropy_norm), float(zd), 0.0,
                       int(values.shape[0]))


def _cossim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1), b.reshape(-1)
    if a.size != b.size:
        return 0.0  # llama-imatrix reads past the shorter one; no meaningful value
    dp = _seq_sum(a * b)
    mag = np.float32(np.sqrt(_seq_sum(a * a))) * np.float32(np.sqrt(_seq_sum(b * b)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float32(dp) / np.float32(mag))


def _sort_key(t: TensorStats):
    return t.kind, -t.sum, t.name


def statistics(imatrix: Imatrix) -> list[TensorStats]:
    """One :class:`TensorStats` per entry with activations, in llama-imatrix's order: by tensor kind, then
    Σ(Act²) descending (name last, for ties)."""
    raw = {name: _values_counts(imatrix, name) for name in imatrix.entries}
    rows = {}
    for name, (values, counts) in raw.items():
        t = _tensor_stats(name, values, counts)
        if t is not None:
            rows[name] = t
    out = []
    for name, t in rows.items():
        m = _BLK.search(name)
        cs = 0.0
        if m:
            prev = name[:m.start(1)] + str(int(m.group(1)) - 1) + name[m.end(1):]
            if prev in rows:
                cs = _cossim(raw[name][0], raw[prev][0])
        out.append(TensorStats(**{**t.to_dict(), "cossim": cs}))
    return sorted(out, key=_sort_key)


def layer_statistics(stats: list[TensorStats]) -> list[LayerStats]:
    """llama-imatrix's per-layer table: for each block (tensors outside the blocks are left out) the
    N-weighted mean Σ(Act²), ZD and CosSim, accumulated in float32 in the table's order."""
    acc: dict[int, list] = {}
    for t in sorted(stats, key=_sort_key):
        n = np.float32(t.n)
        a = acc.setdefault(t.block, [np.float32(0), np.float32(0), np.float32(0), 0])
        a[0] = np.float32(a[0] + np.float32(n * np.float32(t.sum)))
        a[1] = np.float32(a[1] + np.float32(n * np.float32(t.zd)))
        a[2] = np.float32(a[2] + np.float32(n * np.float32(t.cossim)))
        a[3] += t.n
    out = []
    for block in sorted(acc):
        s, z, c, n = acc[block]
        if block < 0 or n == 0:
            continue
        nf = np.float32(n)
        out.append(LayerStats(block, float(np.float32(s / nf)), float(np.float32(z / nf)),
                              float(np.float32(c / nf)), n))
    return out


def sort_stats(stats: list[TensorStats], key: str, descending: bool | None = None) -> list[TensorStats]:
    """``stats`` sorted by a column key of :data:`SORT_KEYS` (numbers descending, text ascending unless
    ``descending`` says otherwise)."""
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}; one of {', '.join(SORT_KEYS)}")
    if key == "layer":
        by = lambda t: (t.block, t.layer, t.kind)  # noqa: E731
    else:
        by = lambda t: (getattr(t, key), t.name)  # noqa: E731
    numeric = key not in ("name", "kind", "layer")
    return sorted(stats, key=by, reverse=numeric if descending is None else descending)


def format_table(stats: list[TensorStats], layers: list[LayerStats] | None = None) -> str:
    """The two tables as text, with llama-imatrix's columns and precision."""
    head = ["Layer", "Tensor", "Σ(Act²)", "Min", "Max", "μ", "σ", "% Active", "N", "Entropy", "E (norm)", "ZD",
            "CosSim"]
    rows = [[t.layer, t.kind, f"{t.sum:.2f}", f"{t.min:.4f}", f"{t.max:.4f}", f"{t.mean:.2f}", f"{t.std:.2f}",
             f"{100 * np.float32(t.active):.2f}%", str(t.n), f"{t.entropy:.4f}", f"{t.entropy_norm:.2f}%",
             f"{100 * np.float32(t.zd):.2f}%", f"{t.cossim:.4f}"] for t in stats]
    lines = _columns(head, rows, left=(1,))
    if layers:
        lrows = [[str(s.block), f"{s.sum:.2f}", f"{100 * np.float32(s.zd):.4f}%", f"{s.cossim:.4f}"] for s in layers]
        lines += ["", f"Per layer ({len(layers)} layers, N-weighted means)"]
        lines += _columns(["Layer", "μΣ(Act²)", "μZD", "μCosSim"], lrows)
    return "\n".join(lines)


def _columns(head: list[str], rows: list[list[str]], left: tuple[int, ...] = ()) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
