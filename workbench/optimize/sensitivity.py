"""Sensitivity: what putting one group of tensors at one type does to the model's output.

A *group* is the same kind of tensor in one layer (``blk.3.attn_v``: the tensors of that layer whose GGUF names
end in ``attn_v.weight``, or ``token_embd`` / ``output`` outside the layers).  For each group and each candidate
type, :class:`SensitivityTable` holds

* ``measured[(group, type)]``: the increase of the mean KL divergence from the base on calibration text when
  only that group is put at that type and every other tensor stays at the table's ``reference`` type (measured
  by running the engine);
* ``estimate[(group, type)]``: a cheap prediction of the same quantity from the weights alone (the
  importance-weighted quantization error of the group's tensors; no forward pass), used to rank candidates
  before measuring and reported beside the measurement (``rank_correlation``).

The optimizer (:mod:`workbench.optimize.optimizer`) treats the effects as additive: a plan's predicted KLD is
the sum of its groups' entries (``value()`` prefers the measurement and falls back to the estimate).

This module holds the data types and their JSON form (the on-disk cache, keyed by model, text and types) and
the jobs that fill them:

* :func:`estimate_sensitivity`: no forward pass; the importance-weighted relative squared error of each group at
  each type, times a scale (:data:`KLD_PER_RELATIVE_ERROR`) that turns it into mean KLD;
* :func:`measure_sensitivity`: the engine, one group swapped at a time into a prepared reference engine, for the
  candidates the estimate makes plausible near the budget; the estimate's scale is refitted to the
  measurements (:func:`calibrate`) and the rank correlation of the two is recorded.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Generator

import numpy as np

from ..errors import WorkbenchError
from ..progress import Progress

_LAYER = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight|\.bias)?$")
FORMAT = 1


def group_key(gguf_name: str) -> str:
    """``blk.3.attn_v.weight`` -> ``blk.3.attn_v``; ``token_embd.weight`` -> ``token_embd``."""
    m = _LAYER.match(gguf_name)
    if m:
        return f"blk.{m.group(1)}.{m.group(2)}"
    return re.sub(r"\.(weight|bias)$", "", gguf_name)


def group_layer_kind(key: str) -> tuple[int | None, str]:
    """``blk.3.attn_v`` -> (3, "attn_v"); ``output`` -> (None, "output")."""
    m = re.match(r"^blk\.(\d+)\.(.+)$", key)
    return (int(m.group(1)), m.group(2)) if m else (None, key)


@dataclass
class Group:
    key: str  # "blk.3.attn_v"
    tensors: list[str]  # the source tensor names (as the model names them) in the group
    n_params: int

    @property
    def layer(self) -> int | None:
        return group_layer_kind(self.key)[0]

    @property
    def kind(self) -> str:
        return group_layer_kind(self.key)[1]


@dataclass
class SensitivityTable:
    model: str  # the model's path (or a stable identity)
    reference: str  # the type every other group stays at while one group is swapped (e.g. "Q8_0")
    types: list[str]  # the candidate types
    groups: list[Group]
    measured: dict[tuple[str, str], float] = field(default_factory=dict)  # (group key, type) -> ΔKLD
    estimate: dict[tuple[str, str], float] = field(default_factory=dict)  # (group key, type) -> predicted ΔKLD
    text_sha256: str = ""  # the calibration text measured on
    n_tokens: int = 0  # tokens scored per measurement
    rank_correlation: float | None = None  # Spearman correlation of estimate and measurement, where both exist
    meta: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str, qtype: str) -> float | None:
        """The measured ΔKLD of putting group ``key`` at ``qtype``, else the estimate, else None."""
        if (key, qtype) in self.measured:
            return self.measured[(key, qtype)]
        return self.estimate.get((key, qtype))

    def group(self, key: str) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    # -- JSON (the cache) ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "model": self.model, "reference": self.reference, "types": self.types,
            "groups": [{"key": g.key, "tensors": g.tensors, "n_params": g.n_params} for g in self.groups],
            "measured": [[k, t, v] for (k, t), v in sorted(self.measured.items())],
            "estimate": [[k, t, v] for (k, t), v in sorted(self.estimate.items())],
            "text_sha256": self.text_sha256, "n_tokens": self.n_tokens,
            "rank_correlation": self.rank_correlation, "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SensitivityTable":
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError("not a sensitivity table of this version")
            return cls(model=str(d["model"]), reference=str(d["reference"]), types=[str(t) for t in d["types"]],
                       groups=[Group(str(g["key"]), [str(t) for t in g["tensors"]], int(g["n_params"]))
                               for g in d["groups"]],
                       measured={(str(k), str(t)): float(v) for k, t, v in d["measured"]},
                       estimate={(str(k), str(t)): float(v) for k, t, v in d["estimate"]},
                       text_sha256=str(d.get("text_sha256", "")), n_tokens=int(d.get("n_tokens", 0)),
                       rank_correlation=(None if d.get("rank_correlation") is None
                                         else float(d["rank_correlation"])),
                       meta=dict(d.get("meta") or {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkbenchError(f"the sensitivity cache is not readable: {exc}",
                                 hint="Delete it; it is measured again.") from None


# -- groups of a model -------------------------------------------------------------------------------------

def model_groups(model) -> list[Group]:
    """The groups of ``model``: every tensor llama-quantize may quantize, by :func:`group_key` of its GGUF name
    (the experts of a Hugging Face MoE layer join their stacked tensor's group), in the model's order."""
    from ..plan import Plan, allows_quantization

    plan = Plan(model, "Q8_0")
    out: dict[str, Group] = {}
    for e in plan.entries:
        if not allows_quantization(e.gguf_name, e.shape):
            continue
        key = group_key(e.gguf_name)
        g = out.setdefault(key, Group(key, [], 0))
        g.tensors.append(e.name)
        g.n_params += e.n_params
    return list(out.values())


def group_fits(model, group: Group, qtype: str) -> bool:
    """Every tensor of the group has rows that hold whole blocks of ``qtype``."""
    from ..plan import row_fits

    return all(row_fits(qtype, _shape(model, n)) for n in group.tensors)


def _shape(model, name: str) -> tuple[int, ...]:
    for t in model.tensors:
        if t.name == name:
            return tuple(t.shape)
    raise KeyError(name)


# -- the cheap estimate --------------------------------------------------------------------------------------

# Estimated ΔKLD = KLD_PER_RELATIVE_ERROR x (relative importance-weighted error of the group at the type minus
# at the reference type).  The constant was fitted once on SmolLM2-135M (its Q4_1 GGUF as the base, the bundled
# calibration text): the median over 64 measured groups of measured ΔKLD / relative error (the "scale" that
# bench/optimize.py prints).  A measurement (measure_sensitivity) refits it per group for the model.
KLD_PER_RELATIVE_ERROR = 0.08
MAX_ROWS = 1024  # rows sampled per tensor for the estimate (evenly spaced; rows quantize independently)


def _rows_sample(n_rows: int, max_rows: int) -> np.ndarray:
    if n_rows <= max_rows:
        return np.arange(n_rows)
    return np.unique(np.linspace(0, n_rows - 1, max_rows).round().astype(np.int64))


def relative_errors(model, group: Group, types, imatrix=None, *, max_rows: int = MAX_ROWS,
                    cancel=None) -> dict[str, float]:
    """type -> the group's importance-weighted squared quantization error relative to its weighted energy:
    sum(im_c (w - q(w))^2) / sum(im_c w^2) over its tensors (``im``: the imatrix's per-column weights, 1 without
    one; the quantizer also gets them, as a conversion with that imatrix would).  Only types whose blocks fit
    every tensor of the group are included.  ``max_rows`` rows per tensor, evenly spaced, are used."""
    from .. import kernels
    from ..errors import Cancelled
    from ..plan import plan_gguf_name, row_fits
    from ..plan import ModelFacts
    from .imatrix import source_weights

    facts = ModelFacts.from_model(model)
    infos = {t.name: t for t in model.tensors}
    fitting = [t for t in types if all(row_fits(t, tuple(infos[n].shape)) for n in group.tensors)]
    err = {t: 0.0 for t in fitting}
    energy = 0.0
    for name in group.tensors:
        if cancel is not None and cancel():
            raise Cancelled("estimating the sensitivity was cancelled")
        info = infos[name]
        shape = tuple(info.shape)
        cols = shape[-1]
        n_rows = info.n_params // max(cols, 1)
        idx = _rows_sample(n_rows, max_rows)
        raw = model.tensor(name).raw().reshape(n_rows, -1)
        from ..infer.weights import _decode_rows

        x = np.ascontiguousarray(_decode_rows(raw[idx], info.dtype, len(idx), cols), dtype=np.float32)
        gname = plan_gguf_name(name, facts.arch, facts.n_layer)
        im_all = None
        if imatrix is not None:
            try:
                im_all = source_weights(imatrix, gname, name, shape, "IQ4_NL")  # any type that takes weights
            except Exception:  # noqa: BLE001 - an entry of the wrong size: unweighted
                im_all = None
        w_col = np.ones(cols) if im_all is None else np.asarray(im_all, np.float64).mean(axis=0)
        scale = n_rows / len(idx)
        x64 = x.astype(np.float64)
        energy += scale * float(((x64 * x64) @ w_col).sum())
        for t in fitting:
            if t == "F32":
                continue
            im = None
            if im_all is not None and kernels.get_kernel(t).uses_imatrix:
                im = im_all[0]
            q = kernels.dequantize(kernels.quantize(x, t, im, name=name), t, cols).astype(np.float64)
            d = x64 - q
            err[t] += scale * float(((d * d) @ w_col).sum())
        if hasattr(model, "release"):
            model.release(name)
    return {t: (e / energy if energy > 0 else 0.0) for t, e in err.items()}


def estimate_sensitivity(model, types, imatrix=None, reference: str = "Q8_0", *, scale: float | None = None,
                         max_rows: int = MAX_ROWS, cancel=None) -> Generator[Progress, None, SensitivityTable]:
    """The cheap estimate (a job generator, no forward pass): for every group and candidate type,
    ``scale x (r(group, type) - r(group, reference))`` where r is :func:`relative_errors` (the
    importance-weighted relative squared quantization error).  Treating the errors as independent noise at the
    matrices' outputs, the KLD they cause grows linearly with r; ``scale`` (default
    :data:`KLD_PER_RELATIVE_ERROR`, calibrated on SmolLM2-135M) converts it to mean KLD, so that
    ``meta["reference_kld"] + sum over groups of estimate[(group, its type)]`` predicts a plan's mean KLD
    (``meta["reference_kld"] = scale x sum_g r(g, reference)``).  The raw r values are kept in
    ``meta["relative_error"]`` so a measurement can refit the scale (:func:`calibrate`).  A group the
    reference type does not fit uses its llama-quantize fallback type as its reference."""
    from ..formats import open_model
    from ..model import Model
    from ..plan import fallback, row_fits

    if not isinstance(model, Model):
        model = open_model(model)
    types = [str(t).upper() for t in types]
    reference = reference.upper()
    groups = model_groups(model)
    scale = KLD_PER_RELATIVE_ERROR if scale is None else float(scale)
    rel: dict[str, dict[str, float]] = {}
    ref_of: dict[str, str] = {}
    infos = {t.name: t for t in model.tensors}
    total = sum(g.n_params for g in groups) or 1
    done = 0
    yield Progress(0, total, "Estimating the sensitivity")
    for g in groups:
        shape = tuple(infos[g.tensors[0]].shape)
        ref = reference if all(row_fits(reference, tuple(infos[n].shape)) for n in g.tensors) \
            else fallback(reference, shape)
        ref_of[g.key] = ref
        rel[g.key] = relative_errors(model, g, list(dict.fromkeys(types + [ref])), imatrix, max_rows=max_rows,
                                     cancel=cancel)
        done += g.n_params
        yield Progress(done, total, f"Estimated {g.key}")
    table = SensitivityTable(str(model.path), reference, types, groups)
    table.meta["relative_error"] = {k: v for k, v in rel.items()}
    table.meta["reference_types"] = ref_of
    table.meta["imatrix"] = imatrix is not None
    apply_scale(table, scale)
    return table


def apply_scale(table: SensitivityTable, scale: float, group_scale: dict[str, float] | None = None) -> None:
    """(Re)compute ``table.estimate`` and the estimated reference KLD from the raw relative errors: ``scale`` for
    every group, or its own factor from ``group_scale``."""
    rel = table.meta.get("relative_error") or {}
    refs = table.meta.get("reference_types") or {}
    group_scale = group_scale or {}
    table.estimate = {}
    ref_total = 0.0
    for key, by_type in rel.items():
        f = group_scale.get(key, scale)
        r0 = by_type.get(refs.get(key, table.reference), 0.0)
        ref_total += f * r0
        for t in table.types:
            if t in by_type:
                table.estimate[(key, t)] = f * (by_type[t] - r0)
    table.meta["scale"] = float(scale)
    table.meta["group_scale"] = {k: float(v) for k, v in group_scale.items()}
    table.meta.setdefault("reference_kld_measured", None)
    if table.meta.get("reference_kld_measured") is None:
        table.meta["reference_kld"] = ref_total


def calibrate(table: SensitivityTable) -> float:
    """Refit the estimate to the measured entries and apply it; returns the model-wide scale.

    Each measured group gets its own factor (the median of measured ÷ unscaled estimate over its measured
    types), so its unmeasured types stay consistent with its measured ones; an unmeasured group takes the
    median factor of the measured groups of its kind (``attn_q``...), else the median over all measured groups
    (medians: one very sensitive group, such as the embeddings, does not rescale the others).  Without
    measurements the scale is unchanged."""
    rel = table.meta.get("relative_error") or {}
    refs = table.meta.get("reference_types") or {}
    ratios: dict[str, list[float]] = {}
    for (key, t), v in table.measured.items():
        by_type = rel.get(key) or {}
        if t not in by_type:
            continue
        e = by_type[t] - by_type.get(refs.get(key, table.reference), 0.0)
        if e > 0:
            ratios.setdefault(key, []).append(max(0.0, v) / e)
    if not ratios:
        scale = float(table.meta.get("scale") or KLD_PER_RELATIVE_ERROR)
        apply_scale(table, scale, table.meta.get("group_scale") or {})
        return scale
    per_group = {k: float(np.median(v)) for k, v in ratios.items()}
    scale = float(np.median(list(per_group.values())))
    by_kind: dict[str, list[float]] = {}
    for k, f in per_group.items():
        by_kind.setdefault(group_layer_kind(k)[1], []).append(f)
    kind_scale = {kind: float(np.median(v)) for kind, v in by_kind.items()}
    factors = {}
    for g in table.groups:
        factors[g.key] = per_group.get(g.key, kind_scale.get(g.kind, scale))
    apply_scale(table, scale, factors)
    return scale


def predicted_kld(table: SensitivityTable, assignment: dict[str, str]) -> float:
    """The table's prediction of a plan's mean KLD: the reference level's KLD plus the sum of the groups'
    values (``assignment``: group key -> type; a group missing or without a value counts 0)."""
    total = float(table.meta.get("reference_kld") or 0.0)
    for key, t in assignment.items():
        v = table.value(key, t)
        total += v if v is not None else 0.0
    return total


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two equal-length sequences (average ranks for ties); None below 3."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) < 3:
        return None

    def ranks(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb) / den if den > 0 else None


# -- the measurement -----------------------------------------------------------------------------------------

def default_cache_dir():
    from ..paths import cache_dir

    return cache_dir() / "sensitivity"


def cache_key(model, text: str, types, reference: str, n_ctx: int, chunks: int, imatrix=None) -> str:
    """The cache file's name for a measurement: the model file (path, size, modification time), the text, the
    types, the reference, the windows and whether an imatrix was used."""
    import hashlib
    import os

    p = model.path
    try:
        st = os.stat(p)
        ident = f"{p}|{st.st_size}|{int(st.st_mtime)}"
    except OSError:
        ident = str(p)
    im = getattr(imatrix, "path", None) if imatrix is not None else None
    parts = [ident, hashlib.sha256(text.encode()).hexdigest(), ",".join(types), reference, str(n_ctx), str(chunks),
             "" if imatrix is None else f"imatrix:{im}:{len(imatrix)}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _layer_step(engine, x: np.ndarray, i: int, masks: dict, long: bool) -> np.ndarray:
    """Layer ``i`` on the hidden states ``x`` [T, H] of one window from position 0, as the engine's forward
    computes it (fills the layer's KV cache); a new array."""
    return engine.layer_step(i, x.copy(), 0, masks, long)


def _setup(engine, t: int):
    engine._reserve(t)
    masks = {win: engine._mask(t, 0, win) for win in set(engine.windows)} if t > 1 else {}
    long = any(r.long_inv_freq is not None and t > r.switch for r in engine._ropes.values())
    return masks, long


def _run_layers(engine, x: np.ndarray, first: int) -> np.ndarray:
    """The layers ``first``.. on the hidden states entering layer ``first``; the final-normed output [T, H]."""
    from ..infer.decoder import rms_norm

    masks, long = _setup(engine, len(x))
    for i in range(first, engine.n_layer):
        x = _layer_step(engine, x, i, masks, long)
    engine.pos = len(x)
    return rms_norm(x, engine.norm, engine.eps)


def _layer_inputs(engine, ids: np.ndarray) -> list[np.ndarray]:
    """The hidden states entering every layer of one window, and the final-normed output last."""
    from ..infer.decoder import rms_norm

    engine.reset()
    x = engine._embed(np.asarray(ids, np.int64))
    masks, long = _setup(engine, len(x))
    out = [x]
    for i in range(engine.n_layer):
        x = _layer_step(engine, x, i, masks, long)
        out.append(x)
    out[-1] = rms_norm(x, engine.norm, engine.eps)
    engine.pos = len(x)
    return out


_ROLE = re.compile(r"^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|qkv|o|gate|up|gate_up|down)_proj\.weight$")


def _slot(engine, hf_name: str):
    """(prepared [in, out] array, column slice, scale of the values) where the engine keeps HF weight
    ``hf_name`` transposed; None for a weight it does not keep that way (experts, routers)."""
    h = engine.hidden
    if hf_name in ("lm_head.weight",) or (hf_name == "model.embed_tokens.weight" and engine.tied):
        return engine, "w_out", slice(None), 1.0
    if hf_name == "model.embed_tokens.weight":
        return None
    m = _ROLE.match(hf_name)
    if not m:
        return None
    i, role = int(m.group(1)), m.group(2)
    L = engine.layers[i]
    if L.router is not None and role in ("gate", "up", "gate_up", "down"):
        return None
    qc, kc = engine.n_head * engine.head_dim, engine.n_kv * engine.head_dim
    scale = 1.0 if engine.spec.qk_norm else float(engine.attn_scale)
    nf = L.w_down.shape[0] if L.w_down is not None else 0
    return {"q": (L, "w_qkv", slice(0, qc), scale), "k": (L, "w_qkv", slice(qc, qc + kc), 1.0),
            "v": (L, "w_qkv", slice(qc + kc, qc + 2 * kc), 1.0), "qkv": (L, "w_qkv", slice(None), None),
            "o": (L, "w_o", slice(None), 1.0), "gate": (L, "w_gate_up", slice(0, nf), 1.0),
            "up": (L, "w_gate_up", slice(nf, 2 * nf), 1.0), "gate_up": (L, "w_gate_up", slice(None), 1.0),
            "down": (L, "w_down", slice(None), 1.0)}[role] if h else None


class _Swapper:
    """Puts one group's tensors, quantized to a type, into a prepared engine, and puts the old values back."""

    def __init__(self, model, engine, imatrix=None):
        from ..convert import gguf_to_hf
        from ..infer.weights import _hf_names, model_arch
        from ..plan import ModelFacts, plan_gguf_name

        self.model, self.engine, self.imatrix = model, engine, imatrix
        self.hf = _hf_names(model, model_arch(model))
        self.infos = {t.name: t for t in model.tensors}
        facts = ModelFacts.from_model(model)
        self.gguf = {t.name: plan_gguf_name(t.name, facts.arch, facts.n_layer) for t in model.tensors}
        self.heads = (lambda n: gguf_to_hf.qk_heads(model, n)) if model.format == "gguf" else (lambda n: None)
        self.saved: list = []

    def supported(self, group: Group) -> bool:
        return self.engine.cache is None and all(
            self.hf.get(n) is not None and _slot(self.engine, self.hf[n]) is not None for n in group.tensors)

    def swap(self, group: Group, qtype: str, cancel=None) -> None:
        from ..convert import gguf_to_hf
        from ..infer.weights import _load_tensor
        from .imatrix import source_weights

        for name in group.tensors:
            info = self.infos[name]
            im = None
            if self.imatrix is not None:
                im = source_weights(self.imatrix, self.gguf[name], name, tuple(info.shape), qtype)
            w = _load_tensor(self.model, info, qtype, cancel, im)
            heads = self.heads(name)
            if heads:
                w = gguf_to_hf.unpermute(w, heads)
            obj, attr, cols, scale = _slot(self.engine, self.hf[name])
            arr = getattr(obj, attr)
            if not arr.flags.writeable:
                arr = arr.copy()
                setattr(obj, attr, arr)
            new = np.asarray(w, np.float32).T
            if scale is None:  # fused qkv: the q rows carry the attention scale
                qc = self.engine.n_head * self.engine.head_dim
                new = new.copy()
                if not self.engine.spec.qk_norm:
                    new[:, :qc] *= np.float32(self.engine.attn_scale)
            elif scale != 1.0:
                new = new * np.float32(scale)
            self.saved.append((arr, cols, arr[:, cols].copy()))
            arr[:, cols] = new
            self.model.release(name)

    def restore(self) -> None:
        for arr, cols, old in reversed(self.saved):
            arr[:, cols] = old
        self.saved.clear()


def select_candidates(table: SensitivityTable, model, budgets=(), max_candidates: int | None = None):
    """The (group, type) pairs worth measuring: for each byte budget in ``budgets`` (tensor bytes), the type the
    optimizer picks from the estimate for each group and its neighbours on the group's (bytes, ΔKLD) hull; without
    budgets, every hull point.  Ranked by the estimated |ΔKLD| (largest first), at most ``max_candidates``."""
    from ..plan import row_fits, tensor_nbytes
    from .optimizer import _hull, optimize

    shapes = {t.name: tuple(t.shape) for t in model.tensors}
    refs = table.meta.get("reference_types") or {}
    hulls: dict[str, list[str]] = {}
    for g in table.groups:
        ts = [t for t in table.types if (g.key, t) in table.estimate
              and all(row_fits(t, shapes[n]) for n in g.tensors)]
        if not ts:
            continue
        b = np.array([sum(tensor_nbytes(t, shapes[n]) for n in g.tensors) for t in ts], np.float64)
        v = np.array([table.estimate[(g.key, t)] for t in ts])
        hulls[g.key] = [ts[i] for i in _hull(b, v)]
    chosen: set[tuple[str, str]] = set()
    if budgets:
        for budget in budgets:
            try:
                res = optimize(model, table, target_bytes=int(budget))
            except WorkbenchError:
                continue
            for key, t in res.assignment.items():
                h = hulls.get(key, [])
                if t in h:
                    i = h.index(t)
                    chosen.update((key, x) for x in h[max(0, i - 1):i + 2])
                else:
                    chosen.add((key, t))
    else:
        chosen = {(k, t) for k, h in hulls.items() for t in h}
    chosen = {(k, t) for k, t in chosen if t != refs.get(k, table.reference)}
    ranked = sorted(chosen, key=lambda kt: (-abs(table.estimate.get(kt, 0.0)), kt))
    return ranked[:max_candidates] if max_candidates else ranked


def default_text() -> str:
    """The bundled calibration text's train part (its held-out part is never measured on)."""
    from ..infer.compare import default_calibration_text
    from .imatrix_compute import split_calibration

    return split_calibration(default_calibration_text())[0]


def cached_table(model, types, *, text: str | None = None, reference: str = "Q8_0", n_ctx: int = 256,
                 chunks: int = 2, imatrix=None, cache_dir=None) -> SensitivityTable | None:
    """The cached measurement for these arguments (as :func:`measure_sensitivity` takes them), or None."""
    from pathlib import Path

    types = [str(t).upper() for t in types]
    text = default_text() if text is None else text
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / (cache_key(model, text, types, reference.upper(), n_ctx, chunks, imatrix) + ".json")
    if not path.is_file():
        return None
    try:
        table = SensitivityTable.from_json(path.read_text(encoding="utf-8"))
    except (OSError, WorkbenchError):
        return None
    table.meta["cached"] = str(path)
    return table


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def measure_sensitivity(model, types, *, text: str | None = None, reference: str = "Q8_0", n_ctx: int = 256,
                        chunks: int = 2, imatrix=None, cache_dir=None, cancel=None, budgets=(),
                        max_candidates: int | None = 96, estimate: SensitivityTable | None = None,
                        on_measured=None) -> Generator[Progress, None, SensitivityTable]:
    """The measured sensitivity (a job generator; see the module docstring).

    The base logits (the stored weights, as float32) are computed once, then the ``reference`` level is loaded
    once; for each candidate (group, type) only that group's tensors are quantized to the type and written into
    the prepared engine in place, the windows are run again from the hidden states entering the group's layer
    (kept from the reference run: the layers below are unchanged) and the mean KLD against the base minus the
    reference's is recorded; then the group's values are put back.  Candidates are those
    :func:`select_candidates` ranks plausible near ``budgets`` (tensor bytes; none: every hull point), at most
    ``max_candidates``; the others keep the estimate (whose scale is refitted to the measurements).
    ``text``: the calibration text (default: the bundled text's train part); ``chunks`` windows of ``n_ctx``
    tokens, the second half of each scored.  The table is cached in ``cache_dir`` (default
    ``~/.cache/model-workbench/sensitivity``) per model, text, types and reference: a second call reads it.
    ``on_measured(key, type, value)`` is called as each result arrives (a chart can stream them)."""
    import time
    from pathlib import Path

    from ..errors import Cancelled
    from ..formats import open_model
    from ..infer import metrics as M
    from ..infer.engines import load_engine
    from ..infer.tokenizer import load_tokenizer
    from ..model import Model

    if not isinstance(model, Model):
        model = open_model(model)
    types = [str(t).upper() for t in types]
    reference = reference.upper()
    text = default_text() if text is None else text
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / (cache_key(model, text, types, reference, n_ctx, chunks, imatrix) + ".json")
    cached = cached_table(model, types, text=text, reference=reference, n_ctx=n_ctx, chunks=chunks,
                          imatrix=imatrix, cache_dir=folder)

    def check() -> None:
        if cancel is not None and cancel():
            raise Cancelled("measuring the sensitivity was cancelled")

    if cached is not None:
        table = cached
    else:
        if estimate is None:
            estimate = yield from estimate_sensitivity(model, types, imatrix, reference, cancel=cancel)
        table = estimate
    # the candidates are chosen on the estimate alone, so the same budgets choose the same ones again
    plain = SensitivityTable(table.model, table.reference, table.types, table.groups, {}, {}, meta=dict(table.meta))
    apply_scale(plain, KLD_PER_RELATIVE_ERROR)
    skipped = set(map(tuple, table.meta.get("not_measurable") or []))
    cands = [c for c in select_candidates(plain, model, budgets, max_candidates)
             if c not in table.measured and c not in skipped]
    if cached is not None and not cands:
        calibrate(table)
        yield Progress(1, 1, "Sensitivity read from the cache")
        return table
    tok = load_tokenizer(model)
    ids = tok.encode(text)
    add_bos = tok.bos_id is not None and bool(ids) and ids[0] == tok.bos_id
    wins = M.windows(ids, n_ctx, tok.bos_id if add_bos else None)[:chunks]
    if not wins:
        raise WorkbenchError(f"the calibration text is too short: {len(ids)} tokens, one window needs {n_ctx}",
                             hint="Use a longer text or a smaller context.")
    sl = M.scored_positions(n_ctx)
    total = 2 + len(cands)
    yield Progress(0, total, "Base logits (stored weights)")
    base_engine = yield from load_engine(model, None, cancel=cancel)
    base = [np.asarray(base_engine.score(w.tolist(), first=sl.start), np.float32)[:sl.stop - sl.start]
            for w in wins]
    del base_engine
    check()
    yield Progress(1, total, f"Reference level {reference}")
    engine = yield from load_engine(model, reference, cancel=cancel, imatrix=imatrix)
    inputs = [_layer_inputs(engine, w) for w in wins]

    def kld_of(hidden_list) -> float:
        vals = []
        for h, b, w in zip(hidden_list, base, wins):
            logits = engine._logits(h[sl.start:sl.stop])
            vals.append(M.token_stats(logits, b, w[sl.start + 1:sl.stop + 1]).kld)
        return float(np.concatenate(vals).mean())

    ref_kld = kld_of([x[-1] for x in inputs])
    swapper = _Swapper(model, engine, imatrix)
    by_key = {g.key: g for g in table.groups}
    t0 = time.monotonic()
    measured = 0
    for n, (key, qtype) in enumerate(cands):
        check()
        g = by_key[key]
        eta = ""
        if measured:
            eta = f", ETA {_fmt_eta((time.monotonic() - t0) / measured * (len(cands) - n))}"
        yield Progress(2 + n, total, f"Measuring {key} at {qtype} ({n + 1}/{len(cands)}{eta})")
        if not swapper.supported(g):
            skipped.add((key, qtype))
            continue
        try:
            swapper.swap(g, qtype, cancel)
            first = g.layer if g.layer is not None else 0
            outs = []
            for w, x in zip(wins, inputs):
                if g.kind in ("token_embd", "output") and g.layer is None:
                    if engine.tied or g.kind == "token_embd":
                        h = _run_layers(engine, engine._embed(np.asarray(w, np.int64)), 0)
                    else:
                        h = x[-1]
                else:
                    h = _run_layers(engine, x[first], first)
                outs.append(h)
            value = kld_of(outs) - ref_kld
        finally:
            swapper.restore()
        table.measured[(key, qtype)] = value
        measured += 1
        if on_measured is not None:
            on_measured(key, qtype, value)
    table.meta["not_measurable"] = sorted(list(c) for c in skipped)
    table.meta["reference_kld_measured"] = ref_kld
    table.meta["reference_kld"] = ref_kld
    table.meta["measure_seconds"] = round(time.monotonic() - t0 + float(table.meta.get("measure_seconds") or 0), 2)
    table.meta["candidates"] = len(table.measured)
    table.text_sha256 = __import__("hashlib").sha256(text.encode()).hexdigest()
    table.n_tokens = len(wins) * (sl.stop - sl.start)
    pairs = [(table.estimate[k], v) for k, v in table.measured.items() if k in table.estimate]
    table.rank_correlation = spearman([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
    calibrate(table)
    yield Progress(total, total, f"Measured {measured} candidates")
    from ..fsutil import atomic_write_path

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(path) as tmp:
            Path(tmp).write_text(table.to_json(), encoding="utf-8")
    except OSError:
        pass  # the cache is an optimisation
    return table
