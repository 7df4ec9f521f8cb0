import numpy as np
import pytest

import workbench
from workbench import Cancelled, kernels
from workbench.analysis import analyze_plan, analyze_presets, error_stats, shared_histograms
from workbench.formats.safetensors import write_safetensors
from workbench.plan import Plan
from workbench.progress import run


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(2)
    d = tmp_path_factory.mktemp("an")
    write_safetensors(d / "m.safetensors", {"w": ("F32", rng.standard_normal((64, 256)).astype(np.float32)),
                                            "blk.0.attn_q.weight": ("F32", rng.standard_normal((32, 64)).astype(np.float32)),
                                            "norm": ("F32", np.ones(64, np.float32))})
    return workbench.open_model(d / "m.safetensors")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1", "F16"])
def test_error_stats_match_numpy(model, qtype):
    t = model.tensor("w")
    x = t.to_float32()
    y = kernels.dequantize(kernels.quantize(x, qtype), qtype, 256)
    e = (y - x).astype(np.float64)
    s = run(error_stats(t, qtype, chunk=1000))
    assert s.n == x.size and s.qtype == qtype
    assert s.rmse == pytest.approx(np.sqrt(np.mean(e ** 2)), rel=1e-9)
    assert s.max_abs == pytest.approx(np.abs(e).max())
    assert s.rel_rmse == pytest.approx(s.rmse / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert s.snr_db == pytest.approx(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(e ** 2)))
    cos = np.dot(x.ravel().astype(np.float64), y.ravel()) / np.linalg.norm(x) / np.linalg.norm(y)
    assert s.cosine == pytest.approx(cos)
    assert s.nbytes == kernels.quantize(x, qtype).nbytes and s.bits_per_weight == 8 * s.nbytes / x.size
    np.testing.assert_array_equal(s.sample, (y - x).ravel())  # small tensor: every error kept


def test_exact_type_has_infinite_snr(model):
    s = run(error_stats(model.tensor("w"), "F32"))
    assert s.rmse == 0 and s.snr_db == float("inf") and s.cosine == 1.0


def test_errors_grow_as_bits_shrink(model):
    t = model.tensor("w")
    rmse = [run(error_stats(t, q)).rmse for q in ("F16", "Q8_0", "Q5_0", "Q4_0")]
    assert rmse == sorted(rmse)


def test_shared_histograms_use_one_range(model):
    t = model.tensor("w")
    stats = [run(error_stats(t, q)) for q in ("Q8_0", "Q4_0")]
    edges, counts = shared_histograms(stats, bins=51)
    assert len(edges) == 52 and edges[0] == -edges[-1]
    assert edges[-1] == pytest.approx(max(np.abs(s.sample).max() for s in stats))
    assert [int(c.sum()) for c in counts] == [s.sample.size for s in stats]


def test_analyze_plan_covers_every_tensor_with_progress(model):
    plan = Plan(model, "Q8_0")
    steps = []
    results = run(analyze_plan(plan), steps.append)
    assert [r.name for r in results] == [t.name for t in model.tensors]
    assert {r.name: r.qtype for r in results} == plan.types()
    assert steps[-1].done == steps[-1].total == sum(t.n_params for t in model.tensors)
    assert all(r.sample is None for r in results)


def test_analyze_presets_and_cancel(model):
    out = run(analyze_presets(model, ["Q8_0", "Q4_0"]))
    assert list(out) == ["Q8_0", "Q4_0"]
    q = {p: {r.name: r for r in rs} for p, rs in out.items()}
    assert q["Q4_0"]["blk.0.attn_q.weight"].rmse > q["Q8_0"]["blk.0.attn_q.weight"].rmse > 0
    assert q["Q4_0"]["w"].qtype == "F32"  # llama-quantize's rule: only names ending in "weight" are quantized
    with pytest.raises(Cancelled):
        run(analyze_plan(Plan(model, "Q4_0"), cancel=lambda: True))


def test_integer_tensors_are_left_out(tmp_path):
    write_safetensors(tmp_path / "i.safetensors", {"ids": ("I64", np.arange(64)),
                                                   "w.weight": ("F32", np.ones((4, 64), np.float32))})
    results = run(analyze_plan(Plan(workbench.open_model(tmp_path / "i.safetensors"), "Q8_0")))
    assert [r.name for r in results] == ["w.weight"]


def test_plan_set_state_and_lookup(model):
    plan = Plan(model, "Q8_0")
    plan.set_state("Q4_0", [("attn", "Q8_0")], {"w": "F16"})
    assert plan.preset == "Q4_0" and plan.type_of("blk.0.attn_q.weight") == "Q8_0" and plan.type_of("w") == "F16"
    with pytest.raises(workbench.WorkbenchError, match="no tensor named 'nope'"):
        plan.entry("nope")
