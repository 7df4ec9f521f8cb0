"""`workbench optimize`: the multiple-choice knapsack against brute force, plans within the budget and the
rows, the estimate's order, the measured sensitivity against whole-plan engines, its cache, and --fit."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.formats import open_model
from workbench.infer import metrics as M
from workbench.infer.engines import load_engine
from workbench.optimize import sensitivity as S
from workbench.optimize.optimizer import kv_cache_bytes, optimize, solve
from workbench.plan import Plan, row_fits
from workbench.progress import run

DATA = Path(__file__).parent / "data"
sys.path[:0] = [str(DATA / "imatrix"), str(Path(__file__).parents[1])]
from make_engine_imatrix_ref import TEXT_FILE, tiny_gguf  # noqa: E402

TYPES = ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_gguf(tmp_path_factory.mktemp("tiny_opt"))


@pytest.fixture(scope="module")
def table(tiny):
    return run(S.estimate_sensitivity(open_model(tiny), TYPES))


def _brute(B, V, budget):
    G, K = V.shape
    best = None
    for c in itertools.product(range(K), repeat=G):
        rows = np.arange(G)
        if not np.isfinite(V[rows, c]).all() or B[rows, c].sum() > budget:
            continue
        v = V[rows, c].sum()
        if best is None or v < best:
            best = v
    return best


def test_knapsack_equals_brute_force_and_respects_the_budget():
    rng = np.random.default_rng(7)
    for _ in range(80):
        G, K = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        B = rng.integers(1, 30, (G, K))
        V = rng.random((G, K))
        V[rng.random((G, K)) < 0.25] = np.inf
        V[:, 0] = rng.random(G)
        budget = int(rng.integers(B[:, 0].sum() // 2, B.sum() + 2))
        best = _brute(B, V, budget)
        if best is None:
            with pytest.raises(ValueError):
                solve(B, V, budget)
            continue
        choice, frontier, exact = solve(B, V, budget)
        rows = np.arange(G)
        assert exact and B[rows, choice].sum() <= budget
        assert V[rows, choice].sum() == pytest.approx(best, abs=1e-12)
        for b, v in frontier:  # every point of the hull walk is the optimum at its own size
            assert v == pytest.approx(_brute(B, V, b), abs=1e-12)


def test_plan_within_budget_fits_rows_and_round_trips(tiny, table, tmp_path):
    model = open_model(tiny)
    target = Plan(model, "Q5_0").nbytes
    res = optimize(model, table, target_bytes=target, types=TYPES)
    assert res.nbytes <= target and res.nbytes == res.plan.nbytes
    grouped = {n for g in table.groups for n in g.tensors}
    assert set(res.plan.overrides) == grouped
    for e in res.plan.entries:
        if e.name in grouped:
            assert row_fits(e.type, e.shape) and e.type in TYPES and "fallback" not in e.reason
        else:
            assert e.type == "F32"  # the norms keep the preset's type
    # a tighter budget predicts more KLD; the frontier is sorted by size
    small = optimize(model, table, target_bytes=Plan(model, "Q4_0").nbytes, types=TYPES)
    assert small.predicted_kld >= res.predicted_kld
    assert [b for b, _ in res.frontier] == sorted(b for b, _ in res.frontier)
    path = tmp_path / "plan.json"
    res.plan.save(path)
    back = Plan.load(model, path)
    assert back.types() == res.plan.types() and back.nbytes == res.nbytes
    lines = dict(line.split("=") for line in res.plan.tensor_type_file().split())
    assert lines["^blk\\.0\\.attn_q\\.weight$"] == res.plan.type_of("blk.0.attn_q.weight").lower()
    assert len(lines) == len(grouped)


def test_estimate_is_monotone_in_bits(tiny):
    model = open_model(tiny)
    g = next(x for x in S.model_groups(model) if x.key == "blk.0.ffn_gate")
    r = S.relative_errors(model, g, TYPES)
    assert r["Q8_0"] < r["Q5_0"] < r["Q4_0"]
    assert r["Q8_0"] < r["Q5_1"] < r["Q4_1"]
    assert 0 < r["Q8_0"] < 1e-3 and r["Q4_0"] < 0.05
    # the relative error equals the one of the tensors the loader quantizes for a plan
    from workbench.infer.weights import load_weights

    plan = Plan(model, "Q8_0")
    plan.set_overrides(g.tensors, "Q4_0")
    q = run(load_weights(model, plan))["model.layers.0.mlp.gate_proj.weight"]
    w = run(load_weights(model))["model.layers.0.mlp.gate_proj.weight"]
    assert r["Q4_0"] == pytest.approx(float(((w - q) ** 2).sum() / (w ** 2).sum()), rel=1e-5)


def test_fit_counts_the_kv_cache(tiny, table):
    model = open_model(tiny)
    # 2 layers x 100 tokens x (2 kv heads x 8 dims for k + the same for v) x 2 bytes
    assert kv_cache_bytes(model, 100) == 2 * 100 * (16 + 16) * 2
    total = Plan(model, "Q8_0").nbytes + 12800
    res = optimize(model, table, fit=(total, 100), types=TYPES)
    assert res.kv_bytes == 12800 and res.budget == total - 12800 and res.nbytes <= total - 12800
    assert res.plan.nbytes == optimize(model, table, target_bytes=total - 12800, types=TYPES).nbytes


def _kld(engine, base, wins, sl):
    vals = [M.token_stats(np.asarray(engine.score(w.tolist(), first=sl.start), np.float32)[:sl.stop - sl.start],
                          b, w[sl.start + 1:sl.stop + 1]).kld for w, b in zip(wins, base)]
    return float(np.concatenate(vals).mean())


def test_measured_swap_equals_whole_plan_and_cache_is_reused(tiny, table, tmp_path, monkeypatch):
    model = open_model(tiny)
    text = TEXT_FILE.read_text(encoding="utf-8")
    cands = [("blk.0.attn_q", "Q4_0"), ("blk.1.ffn_down", "Q4_0"), ("output", "Q4_0"), ("blk.1.attn_v", "Q5_0")]
    monkeypatch.setattr(S, "select_candidates", lambda *a, **k: cands)
    est = S.SensitivityTable.from_json(table.to_json())
    got = run(S.measure_sensitivity(model, TYPES, text=text, n_ctx=32, chunks=2, estimate=est, cache_dir=tmp_path))
    assert set(got.measured) == set(cands)
    # reference: whole engines loaded with the plan (Q8_0 + that group at the type), scored from scratch
    from workbench.infer.tokenizer import load_tokenizer

    tok = load_tokenizer(model)
    ids = tok.encode(text)
    wins = M.windows(ids, 32, tok.bos_id if ids[0] == tok.bos_id else None)[:2]
    sl = M.scored_positions(32)
    base_engine = run(load_engine(model, None))
    base = [np.asarray(base_engine.score(w.tolist(), first=sl.start), np.float32)[:sl.stop - sl.start] for w in wins]
    ref = _kld(run(load_engine(model, "Q8_0")), base, wins, sl)
    assert got.meta["reference_kld"] == pytest.approx(ref, rel=1e-4)
    for key, t in cands:
        plan = Plan(model, "Q8_0")
        plan.set_overrides(got.group(key).tensors, t)
        want = _kld(run(load_engine(model, plan)), base, wins, sl) - ref
        assert got.measured[(key, t)] == pytest.approx(want, rel=1e-3, abs=1e-9)
    assert len(list(tmp_path.glob("*.json"))) == 1
    # the second call reads the cache: no engine is built

    def no_engine(*a, **k):
        raise AssertionError("a forward pass on a cached measurement")
    monkeypatch.setattr("workbench.infer.engines.load_engine", no_engine)
    again = run(S.measure_sensitivity(model, TYPES, text=text, n_ctx=32, chunks=2, cache_dir=tmp_path))
    assert again.measured == got.measured and again.meta["cached"]


def test_spearman_matches_hand_computed():
    assert S.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert S.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks 1,2,3,4 vs 1,3,2,4: 1 - 6*2/(4*15) = 0.8
    assert S.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_cli_optimize_writes_a_plan_within_the_bpw(tiny, tmp_path, capsys):
    out = tmp_path / "opt.json"
    assert main(["optimize", str(tiny), "--target-bpw", "6", "--types", ",".join(TYPES), "-q", "-o", str(out)]) == 0
    model = open_model(tiny)
    plan = Plan.load(model, out)
    assert plan.bits_per_weight <= 6.0 and plan.overrides
    assert json.loads(out.read_text())["format"] == "model-workbench-plan"
    assert main(["optimize", str(tiny), "--target-size", "10", "-o", str(tmp_path / "x.json")]) != 0
    assert "too small" in capsys.readouterr().err


def test_cli_measure_twice_reads_the_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["optimize", str(tiny), "--target-bpw", "5.5", "--types", ",".join(TYPES), "--measure", "--candidates",
            "2", "-q", "-o", str(tmp_path / "a.json")]
    assert main(argv) == 0
    assert len(list((tmp_path / "cache" / "sensitivity").glob("*.json"))) == 1

    def refuse(*a, **k):
        raise AssertionError("work repeated on a cached measurement")
    monkeypatch.setattr(S, "estimate_sensitivity", refuse)
    monkeypatch.setattr("workbench.infer.engines.load_engine", refuse)
    argv[-1] = str(tmp_path / "b.json")
    assert main(argv) == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_calibrate_scales_each_group_by_its_own_measurement():
    groups = [S.Group(k, [k + ".weight"], 32) for k in ("blk.0.attn_q", "blk.1.attn_q", "blk.0.ffn_up", "token_embd")]
    t = S.SensitivityTable("m", "Q8_0", ["Q8_0", "Q5_0", "Q4_0"], groups)
    t.meta["relative_error"] = {g.key: {"Q8_0": 0.0, "Q5_0": 0.002, "Q4_0": 0.008} for g in groups}
    t.meta["reference_types"] = {g.key: "Q8_0" for g in groups}
    S.apply_scale(t, 0.05)
    assert t.estimate[("blk.0.attn_q", "Q4_0")] == pytest.approx(0.0004)
    t.measured = {("blk.0.attn_q", "Q4_0"): 0.0008, ("blk.0.ffn_up", "Q4_0"): 0.0016,
                  ("token_embd", "Q4_0"): 0.08}
    assert S.calibrate(t) == pytest.approx(0.2)  # the median of the factors 0.1, 0.2, 10
    assert t.estimate[("blk.0.attn_q", "Q5_0")] == pytest.approx(0.0002)  # its own factor 0.1
    assert t.estimate[("blk.1.attn_q", "Q5_0")] == pytest.approx(0.0002)  # its kind's factor
    assert t.estimate[("token_embd", "Q5_0")] == pytest.approx(0.02)
    assert t.value("blk.0.attn_q", "Q4_0") == 0.0008
