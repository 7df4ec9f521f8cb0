import numpy as np

import workbench
from workbench.formats.safetensors import write_safetensors
from workbench.progress import run
from workbench.stats import SAMPLE_LIMIT, tensor_stats


def test_stats_match_numpy(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 70)).astype(np.float32)
    x[0, :5] = 0
    x[1, 0], x[1, 1], x[1, 2] = np.nan, np.inf, -np.inf
    write_safetensors(tmp_path / "s.safetensors", {"w": ("F32", x)})
    m = workbench.open_model(tmp_path / "s.safetensors")
    progress = []
    s = run(tensor_stats(m.tensor("w"), bins=32, chunk=1000), progress.append)
    fin = x[np.isfinite(x)]
    assert (s.count, s.nan, s.inf, s.zeros) == (x.size, 1, 2, 5)
    assert s.min == fin.min() and s.max == fin.max()
    assert np.isclose(s.mean, fin.astype(np.float64).mean()) and np.isclose(s.std, fin.astype(np.float64).std())
    counts, edges = np.histogram(fin, bins=32, range=(float(fin.min()), float(fin.max())))
    np.testing.assert_array_equal(s.hist_counts, counts)
    np.testing.assert_allclose(s.hist_edges, edges)
    assert len(progress) > 5 and progress[-1].done == x.size


def test_histogram_subsample_is_deterministic_and_bounded(tmp_path):
    x = np.random.default_rng(1).standard_normal((2048, 1030)).astype(np.float32)  # > SAMPLE_LIMIT values
    write_safetensors(tmp_path / "big.safetensors", {"w": ("F32", x)})
    t = workbench.open_model(tmp_path / "big.safetensors").tensor("w")
    a = run(tensor_stats(t, chunk=100_000))
    b = run(tensor_stats(t, chunk=333_333))  # different chunking, same sample
    stride = -(-x.size // SAMPLE_LIMIT)
    assert a.sampled == b.sampled == x.reshape(-1)[::stride].size <= SAMPLE_LIMIT
    np.testing.assert_array_equal(a.hist_counts, b.hist_counts)
    expected, _ = np.histogram(x.reshape(-1)[::stride], bins=128, range=(float(x.min()), float(x.max())))
    np.testing.assert_array_equal(a.hist_counts, expected)


def test_constant_tensor(tmp_path):
    write_safetensors(tmp_path / "c.safetensors", {"w": ("F32", np.full(10, 2.5, np.float32))})
    s = run(tensor_stats(workbench.open_model(tmp_path / "c.safetensors").tensor("w")))
    assert s.min == s.max == 2.5 and s.std == 0 and s.hist_counts.sum() == 10
