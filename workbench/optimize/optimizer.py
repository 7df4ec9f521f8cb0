"""The best plan for a size budget: a type per group that minimizes the predicted KLD within the bytes.

Each group (:mod:`workbench.optimize.sensitivity`) has options: the allowed types whose blocks fit every one of
its tensors' rows, each with its bytes and its ΔKLD from the table (measured, else estimated).  The effects
are taken as additive, so the problem is a multiple-choice knapsack: pick one option per group, total bytes
<= budget, minimum total ΔKLD.  It is solved in three steps:

1. Lagrangian relaxation / convex-hull greedy: every group starts at its smallest option; the steps along
   each group's lower convex hull (bytes, ΔKLD) are taken in order of KLD saved per byte while they fit.  The
   points of this walk are the *frontier* (each is the exact optimum for its own byte count).
2. Fill: the bytes left are spent on the single option change (any option, not only hull points) that saves
   the most KLD, repeatedly, until nothing fits.
3. Exact search: a dynamic programme over the groups keeping only the Pareto-optimal (bytes, ΔKLD) partial
   plans that can still fit and still beat step 2's plan (bounded by the best possible rest).  When its state
   count stays under ``max_states`` (small tables, or many identical groups) the result is the exact optimum
   (``OptimizeResult.exact``); otherwise step 2's plan is kept.

Tensors outside the groups (norms...) keep the base preset's types; the result is an ordinary
:class:`~workbench.plan.Plan` (the preset plus one override per grouped tensor).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import WorkbenchError
from ..model import Model
from ..plan import PRESETS, TYPES, ModelFacts, Plan, row_fits, tensor_nbytes
from ..units import human_bytes
from .sensitivity import SensitivityTable, predicted_kld

MAX_STATES = 200_000


@dataclass
class OptimizeResult:
    plan: Plan
    predicted_kld: float
    nbytes: int  # the plan's tensor bytes
    frontier: list[tuple[int, float]]  # (tensor bytes, predicted KLD) along the hull walk, smallest first
    budget: int = 0  # the tensor bytes allowed (the target minus the KV cache for ``fit``)
    kv_bytes: int = 0  # the KV cache counted by ``fit``
    exact: bool = False  # the exact search finished: no assignment of the options is better within the budget
    assignment: dict[str, str] = field(default_factory=dict)  # group key -> type


def kv_cache_bytes(model: Model, n_ctx: int) -> int:
    """The F16 KV cache llama.cpp allocates for ``n_ctx`` tokens: n_layer x n_ctx x (k + v dims) x 2 bytes,
    with k dims = n_head_kv x key_length and v dims = n_head_kv x value_length (head size = embedding / heads
    when the model gives none)."""
    facts = ModelFacts.from_model(model)
    a = facts.arch or ""

    def meta_int(*keys):
        for k in keys:
            v = model.meta(k)
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
                return int(v)
        return 0

    hidden = meta_int(f"{a}.embedding_length", "hidden_size", "d_model", "n_embd")
    n_head = facts.n_head or meta_int("num_attention_heads")
    n_kv = facts.n_head_kv or n_head
    head = meta_int("head_dim") or (hidden // n_head if n_head else 0)
    k_len = meta_int(f"{a}.attention.key_length") or head
    v_len = meta_int(f"{a}.attention.value_length") or head
    if not facts.n_layer or not n_kv or not k_len:
        raise WorkbenchError("the model's layer and head counts are unknown: the KV cache cannot be counted",
                             path=model.path, hint="Give --target-size instead of --fit.")
    return int(facts.n_layer) * int(n_ctx) * n_kv * (k_len + v_len) * 2


def _hull(b: np.ndarray, v: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the points (b, v) that decreases in v, smallest b first."""
    order = np.lexsort((v, b))
    pts: list[int] = []
    best = np.inf
    for i in order:  # drop dominated options (not less KLD than a smaller one)
        if v[i] < best:
            pts.append(int(i))
            best = v[i]
    hull: list[int] = []
    for i in pts:
        while len(hull) >= 2:
            i0, i1 = hull[-2], hull[-1]
            # i1 is above (or on) the segment i0 -> i: not convex
            if (v[i1] - v[i0]) * (b[i] - b[i0]) >= (v[i] - v[i0]) * (b[i1] - b[i0]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def solve(bytes_: np.ndarray, values: np.ndarray, budget: int, *, max_states: int = MAX_STATES):
    """The multiple-choice knapsack on an option matrix: ``bytes_`` int [G, K], ``values`` float [G, K] (inf: not
    an option).  Returns (choice int [G], frontier [(bytes, value)], exact).  Raises ValueError when even the
    smallest options exceed the budget."""
    B = np.asarray(bytes_, dtype=np.int64)
    V = np.asarray(values, dtype=np.float64)
    G, K = V.shape
    ok = np.isfinite(V)
    if not ok.any(axis=1).all():
        raise ValueError("a group has no option")
    Bm = np.where(ok, B, np.iinfo(np.int64).max)
    choice = np.zeros(G, np.int64)
    for g in range(G):  # the smallest option; among equal sizes the lowest value
        cand = np.flatnonzero(ok[g] & (B[g] == Bm[g].min()))
        choice[g] = cand[np.argmin(V[g, cand])]
    used = int(B[np.arange(G), choice].sum())
    if used > budget:
        raise ValueError(used)
    # 1. the hull walk
    steps_g, steps_to, steps_db, steps_dv = [], [], [], []
    for g in range(G):
        idx = np.flatnonzero(ok[g])
        h = idx[_hull(B[g, idx], V[g, idx])]
        for a, c in zip(h[:-1], h[1:]):
            steps_g.append(g)
            steps_to.append(int(c))
            steps_db.append(int(B[g, c] - B[g, a]))
            steps_dv.append(float(V[g, c] - V[g, a]))
    value = float(V[np.arange(G), choice].sum())
    frontier = [(used, value)]
    if steps_g:
        sg, st = np.array(steps_g), np.array(steps_to)
        db, dv = np.array(steps_db, np.int64), np.array(steps_dv)
        slope = dv / np.maximum(db, 1)
        order = np.lexsort((np.arange(len(sg)), slope))  # most KLD saved per byte first (stable)
        cum_b = used + np.cumsum(db[order])
        cum_v = value + np.cumsum(dv[order])
        frontier += list(zip(cum_b.tolist(), cum_v.tolist()))
        n_take = int(np.searchsorted(cum_b, budget, side="right"))
        for s in order[:n_take]:
            choice[sg[s]] = st[s]
    # 2. fill: the best single change that fits the bytes left, repeatedly
    rows = np.arange(G)
    for _ in range(G * K):
        cur_b, cur_v = B[rows, choice], V[rows, choice]
        left = budget - int(cur_b.sum())
        gain = np.where(ok & (B - cur_b[:, None] <= left), cur_v[:, None] - V, -np.inf)
        g, k = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if not gain[g, k] > 1e-15:
            break
        choice[g] = k
    # 3. exact: Pareto dynamic programme with bounds
    best_value = float(V[rows, choice].sum())
    exact_choice = _pareto(B, V, ok, budget, best_value, max_states)
    exact = exact_choice is not None
    if exact and float(V[rows, exact_choice].sum()) < best_value - 1e-15:
        choice = exact_choice
    return choice, frontier, exact


def _pareto(B, V, ok, budget, incumbent, max_states):
    """The exact optimum by a Pareto-front dynamic programme, or None when the front grows past max_states."""
    G, K = V.shape
    Vf = np.where(ok, V, np.inf)
    Bf = np.where(ok, B, 0)
    min_b = np.where(ok, B, np.iinfo(np.int64).max).min(axis=1)
    min_v = Vf.min(axis=1)
    rest_b = np.concatenate([np.cumsum(min_b[::-1])[::-1][1:], [0]])  # smallest bytes of the groups after g
    rest_v = np.concatenate([np.cumsum(min_v[::-1])[::-1][1:], [0.0]])
    sb = np.zeros(1, np.int64)
    sv = np.zeros(1)
    hist: list[tuple[np.ndarray, np.ndarray]] = []  # per group: (parent state, option) of each state
    tol = 1e-12 * max(1.0, abs(incumbent))
    for g in range(G):
        ks = np.flatnonzero(ok[g])
        nb = (sb[:, None] + Bf[g, ks][None, :]).ravel()
        nv = (sv[:, None] + Vf[g, ks][None, :]).ravel()
        parent = np.repeat(np.arange(len(sb)), len(ks))
        opt = np.tile(ks, len(sb))
        keep = (nb + rest_b[g] <= budget) & (nv + rest_v[g] <= incumbent + tol)
        nb, nv, parent, opt = nb[keep], nv[keep], parent[keep], opt[keep]
        if not len(nb):
            return None
        order = np.lexsort((nv, nb))
        nb, nv, parent, opt = nb[order], nv[order], parent[order], opt[order]
        run_min = np.minimum.accumulate(nv)
        front = np.concatenate([[True], nv[1:] < run_min[:-1]])  # strictly better than every smaller state
        nb, nv, parent, opt = nb[front], nv[front], parent[front], opt[front]
        if len(nb) > max_states:
            return None
        hist.append((parent, opt))
        sb, sv = nb, nv
    s = int(np.argmin(sv))
    choice = np.zeros(G, np.int64)
    for g in range(G - 1, -1, -1):
        parent, opt = hist[g]
        choice[g] = opt[s]
        s = int(parent[s])
    return choice


def _base_preset(assignment_bytes: dict[str, int]) -> str:
    """The preset whose default type holds the most bytes of the plan (the file type to quantize it as)."""
    for t, _ in sorted(assignment_bytes.items(), key=lambda kv: -kv[1]):
        for p, (_, default) in PRESETS.items():
            if default == t and p == t:
                return p
    return "Q8_0"


def optimize(model: Model, table: SensitivityTable, *, target_bytes: int | None = None,
             target_bpw: float | None = None, fit: tuple[int, int] | None = None,
             types: Sequence[str] | None = None, preset: str | None = None,
             max_states: int = MAX_STATES) -> OptimizeResult:
    """The plan of least predicted KLD within the budget (exactly one of ``target_bytes``: the tensor bytes;
    ``target_bpw``: bits per weight over all tensors; ``fit=(bytes, n_ctx)``: the tensors plus the F16 KV cache
    at that context).  ``types``: the allowed types (default: the table's).  ``preset``: the base preset of the
    result (default: the preset of the type holding the most bytes)."""
    if sum(x is not None for x in (target_bytes, target_bpw, fit)) != 1:
        raise WorkbenchError("give exactly one budget: a size, bits per weight, or a memory size with a context")
    allowed = [str(t).upper() for t in (types or table.types)]
    for t in allowed:
        if t not in TYPES:
            raise WorkbenchError(f"unknown tensor type {t!r}", hint="Choose among: " + ", ".join(TYPES))
    base = Plan(model, preset or "Q8_0")
    entries = {e.name: e for e in base.entries}
    grouped = {n for g in table.groups for n in g.tensors}
    missing = [n for n in grouped if n not in entries]
    if missing:
        raise WorkbenchError(f"the sensitivity table names tensor {missing[0]!r}, which this model does not have",
                             hint="Estimate or measure the sensitivity for this model.")
    fixed = sum(e.nbytes for e in base.entries if e.name not in grouped)
    n_params = sum(e.n_params for e in base.entries)
    kv = 0
    if target_bytes is not None:
        total = int(target_bytes)
    elif target_bpw is not None:
        total = int(float(target_bpw) * n_params / 8)
    else:
        total, n_ctx = int(fit[0]), int(fit[1])
        kv = kv_cache_bytes(model, n_ctx)
    budget = total - kv - fixed
    G, K = len(table.groups), len(allowed)
    Bm = np.zeros((G, K), np.int64)
    Vm = np.full((G, K), np.inf)
    for gi, g in enumerate(table.groups):
        shapes = [entries[n].shape for n in g.tensors]
        for ki, t in enumerate(allowed):
            if not all(row_fits(t, s) for s in shapes):
                continue
            v = table.value(g.key, t)
            if v is None and t == (table.meta.get("reference_types") or {}).get(g.key, table.reference):
                v = 0.0
            if v is None:
                continue
            Bm[gi, ki] = sum(tensor_nbytes(t, s) for s in shapes)
            Vm[gi, ki] = v
        if not np.isfinite(Vm[gi]).any():
            raise WorkbenchError(f"no allowed type fits the rows of {g.key} (or the table has no value for them)",
                                 hint="Allow a type with 32-value blocks (Q8_0, Q5_0, Q4_0...).")
    try:
        choice, frontier, exact = solve(Bm, Vm, budget, max_states=max_states)
    except ValueError as exc:
        smallest = int(exc.args[0]) + fixed + kv if exc.args and isinstance(exc.args[0], int) else 0
        raise WorkbenchError(f"the budget of {human_bytes(total)} is too small: the smallest plan with these types "
                             f"takes {human_bytes(smallest)}" + (f" (with a {human_bytes(kv)} KV cache)" if kv else ""),
                             hint="Allow smaller types, or give a larger budget.") from None
    assignment = {g.key: allowed[int(choice[gi])] for gi, g in enumerate(table.groups)}
    per_type: dict[str, int] = {}
    for gi, g in enumerate(table.groups):
        per_type[assignment[g.key]] = per_type.get(assignment[g.key], 0) + int(Bm[gi, choice[gi]])
    plan = Plan(model, preset or _base_preset(per_type), has_imatrix=bool(table.meta.get("imatrix")))
    plan.set_state(plan.preset, [], {n: assignment[g.key] for g in table.groups for n in g.tensors})
    ref_kld = float(table.meta.get("reference_kld") or 0.0)
    frontier = [(int(b + fixed), float(v + ref_kld)) for b, v in frontier]
    return OptimizeResult(plan, predicted_kld(table, assignment), int(plan.nbytes), frontier, budget + fixed, kv,
                          exact, assignment)
