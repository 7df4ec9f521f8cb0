"""Our kernels against ggml's own quantizer (ggml_quantize_chunk through ctypes), byte for byte.

Failures report how many blocks differ, not just "not equal".
"""
from __future__ import annotations

import numpy as np
import pytest
from ggml_oracle import ggml

from workbench import WorkbenchError, kernels

ALL_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
             "IQ4_NL", "IQ4_XS"]
N = 512  # a multiple of every block size (32 and 256)


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    r = 24
    cases = {"normal": rng.standard_normal((r, N)).astype(np.float32)}
    z = rng.standard_normal((r, N)).astype(np.float32)
    z[::2] = 0
    z[1::4, 256:] = 0  # whole zero super-blocks next to non-zero ones
    z[3::4, :32] = 0
    cases["zeros"] = z
    nz = rng.standard_normal((r, N)).astype(np.float32)
    nz[::3] = -0.0
    nz[1::3, ::2] = -0.0
    cases["negzero"] = nz
    cases["ties"] = (rng.integers(-32, 33, (r, N)) / 2).astype(np.float32)
    cases["small_ints"] = rng.integers(-8, 9, (r, N)).astype(np.float32)
    const = np.repeat(rng.standard_normal((r, N // 32)), 32, axis=1).astype(np.float32)
    const[0] = 1.0
    const[1] = -3.0
    cases["constant"] = const
    out = rng.standard_normal((r, N)).astype(np.float32)
    out[np.arange(r), rng.integers(0, N, r)] = 1e4
    out[np.arange(r), rng.integers(0, N, r)] = -3e3
    cases["outliers"] = out
    mag = 10.0 ** rng.uniform(-5, 3, (r, N))
    cases["dynamic"] = (mag * rng.choice([-1.0, 1.0], (r, N))).astype(np.float32)
    sub = (rng.standard_normal((r, N)) * 1e-39).astype(np.float32)  # float32 subnormals
    sub[::2, ::7] = 1e-20
    cases["subnormal"] = sub
    tiny = (rng.standard_normal((r, N)) * 1e-8).astype(np.float32)
    cases["tiny"] = tiny
    # sub-blocks of 1e10..1e29: sums of x^3 overflow, fp16 scales saturate (the exact rounding paths)
    huge = rng.standard_normal((r, N)) * 10.0 ** rng.integers(10, 30, (r, N // 16)).repeat(16, 1)
    cases["huge"] = huge.astype(np.float32)
    edges = rng.standard_normal((r, N)).astype(np.float32)
    blocks = edges.reshape(r, -1, 32)
    blocks[:, :, 0] = 127.0  # Q8_0 scale 1: x * id is x itself, so these are the values rounded
    below = np.float32(0.5) - np.float32(2.0 ** -25)  # x + 0.5 rounds up to 1.0 in float32
    blocks[:, :, 1:9] = np.array([below, -below, 0.5, -0.5, 1.5, -2.5, 0.5 + 2.0 ** -24, -126.5], np.float32)
    cases["round_edges"] = edges
    return cases


CASES = _cases()


def _imatrices() -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(99)
    w = rng.gamma(1.0, 1.0, N).astype(np.float32)
    wz = w.copy()
    wz[::5] = 0
    return {"none": None, "imatrix": w, "imatrix_zeros": wz}


IMATRICES = _imatrices()


def _differing_blocks(a: np.ndarray, b: np.ndarray, type_size: int) -> int:
    return int((a.reshape(-1, type_size) != b.reshape(-1, type_size)).any(axis=1).sum())


@pytest.mark.parametrize("imat", list(IMATRICES))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_quantize_matches_ggml(qtype, case, imat):
    if qtype not in kernels.supported_types():
        pytest.fail(f"{qtype} has no kernel yet")
    x, w = CASES[case], IMATRICES[imat]
    ours = kernels.quantize(x, qtype, w)
    ref = ggml().quantize(x, qtype, w)
    assert ours.shape == ref.shape
    k = kernels.get_kernel(qtype)
    bad = _differing_blocks(ours, ref, k.type_size)
    assert bad == 0, f"{qtype}/{case}/{imat}: {bad} of {ours.size // k.type_size} blocks differ from ggml"


@pytest.mark.parametrize("case", ["normal", "outliers", "dynamic", "constant"])
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_dequantize_bit_identical(qtype, case):
    if qtype not in kernels.supported_types():
        pytest.fail(f"{qtype} has no kernel yet")
    q = ggml().quantize(CASES[case], qtype)
    ours = kernels.dequantize(q, qtype, N)
    ref = ggml().dequantize(q, qtype, N)
    diff = int((ours.view(np.uint32) != ref.view(np.uint32)).sum())
    assert diff == 0, f"{qtype}/{case}: {diff} values differ from ggml's dequantize"


def test_every_type_of_the_issue_is_registered():
    assert set(ALL_TYPES) <= set(kernels.supported_types())


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "F16"])
def test_result_independent_of_threads_and_chunks(qtype, monkeypatch):
    x = np.random.default_rng(7).standard_normal((300, 256)).astype(np.float32)
    one = kernels.quantize(x, qtype, threads=1)
    monkeypatch.setattr(kernels.base, "CHUNK_ELEMENTS", 1000)  # many chunks over two threads
    two = kernels.quantize(x, qtype, threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(kernels.dequantize(one, qtype, threads=1), kernels.dequantize(two, qtype, threads=2))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16"])
@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_a_clear_error(bad, qtype, with_imatrix):
    """Each kernel, whether it checks its input itself (from its block extremes) or is checked before."""
    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)
    x[2, 37] = bad
    im = np.ones(256, np.float32) if with_imatrix else None
    with pytest.raises(WorkbenchError, match=r"blk\.0\.attn_q\.weight: row 2 contains NaN or Inf"):
        kernels.quantize(x, qtype, im, name="blk.0.attn_q.weight", threads=1)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(WorkbenchError, match="multiple of the Q4_K block size 256"):
        kernels.quantize(np.zeros((2, 100), np.float32), "Q4_K")
    with pytest.raises(WorkbenchError, match="not supported"):
        kernels.quantize(np.zeros((2, 64), np.float32), "Q9_X")
    with pytest.raises(WorkbenchError, match="importance matrix has 3 values"):
        kernels.quantize(np.zeros((2, 64), np.float32), "Q4_0", np.ones(3, np.float32))


def test_one_dimensional_input_and_type_enum():
    from gguf import GGMLQuantizationType

    x = np.linspace(-1, 1, 64, dtype=np.float32)
    a = kernels.quantize(x, GGMLQuantizationType.Q8_0)
    assert a.shape == (1, 68)
    np.testing.assert_allclose(kernels.dequantize(a, "q8_0")[0], x, atol=1 / 127)


@pytest.mark.parametrize("qtype", ["Q4_K", "IQ4_NL", "Q3_K"])
def test_worker_processes_give_the_same_bytes(qtype, monkeypatch):
    x = np.random.default_rng(11).standard_normal((96, 512)).astype(np.float32)
    one = kernels.quantize(x, qtype, threads=1)
    monkeypatch.setattr(kernels.base, "PROCESS_MIN_ELEMENTS", 1)  # force the process pool
    np.testing.assert_array_equal(kernels.quantize(x, qtype, threads=2), one)
    x[50, 3] = np.nan
    with pytest.raises(WorkbenchError, match="w.weight: row 50 contains NaN"):
        kernels.quantize(x, qtype, threads=2, name="w.weight")


@pytest.mark.parametrize("k", [1, 2, 7, 300, 5000])
def test_fused_products_sum_in_c_order(k):
    """The one-pass weighted sums of the K-quant searches (np.einsum where the import-time self-check
    found it sequential) equal the C loop ``s = 0; for i: s += a[i]*b[i]`` (``(a[i]*b[i])*c[i]``) bit for bit."""
    from workbench.kernels.common import seqdot

    rng = np.random.default_rng(k)
    a, b, c = ((rng.standard_normal((16, k)) * 10.0 ** rng.integers(-6, 9, (16, k))).astype(np.float32)
               for _ in range(3))
    a[:, 0] = -0.0
    for args in ((a, b), (a, b, c), (a[:, ::-1], b), (np.asfortranarray(a), b, c)):
        seq = np.zeros(k, np.float32)
        prod = args[0] * args[1] if len(args) == 2 else (args[0] * args[1]) * args[2]
        for row in prod:
            seq = seq + row
        got = seqdot(*args)
        assert np.array_equal(got.view(np.uint32), seq.view(np.uint32))


def test_f16_dequantize_every_half():
    """F16 decodes through bit operations (numpy's own conversion is slow): every one of the 65536 halves,
    subnormals, infinities and NaN payloads included, gives ggml's float32 bit for bit."""
    q = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view(np.uint8).reshape(4, -1)
    ours = kernels.dequantize(q, "F16")
    ref = ggml().dequantize(q, "F16", 1 << 14)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q6_K"])
def test_searches_without_einsum_give_the_same_bytes(qtype, monkeypatch):
    """Where einsum is not C's loop (an FMA build), the searches fall back to plain row loops: same bytes."""
    from workbench.kernels import common

    x = np.random.default_rng(11).standard_normal((8, 512)).astype(np.float32)
    fast = kernels.quantize(x, qtype, threads=1)
    monkeypatch.setattr(common, "_SEQ_EINSUM", False)
    assert np.array_equal(kernels.quantize(x, qtype, threads=1), fast)
    assert np.array_equal(fast, ggml().quantize(x, qtype))


@pytest.mark.parametrize("qw0", [-0.011249977, -0.011249988])
def test_q6_k_requantizes_huge_ratios_like_ggml(qw0):
    """Q6_K with quant weights: a negative importance entry (a hand-edited imatrix) cancels a sub-block's
    weighted sums, so its scale, and with it the super-block's d, is ~1e6 times smaller than its values.
    ggml's nearest_int(x/d) is then no rounding (|x/d| >= 2**22); our kernel's exact fallback must match."""
    x = np.zeros((1, 256), np.float32)
    x[0, 0] = -1000.0
    x[0, 1:9] = -45.0
    w = np.ones(256, np.float32)
    w[0] = qw0
    ref = ggml().quantize(x, "Q6_K", w)
    d = ref[0, 208:210].view("<f2").astype(np.float32) * ref[0, 192:208].view(np.int8).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(x[0].reshape(16, 16) / d[:, None])[d != 0]
    assert ratio.max() >= 2.0 ** 22  # the case reaches the large-ratio path (checked on ggml's own bytes)
    assert np.array_equal(kernels.quantize(x, "Q6_K", w), ref)


def test_q3_k_rmse_passes_on_many_sub_blocks():
    """make_q3_quants' rmse passes (a cursor per sub-block, at most five passes, a pass ending where no
    move is accepted) over 16,384 sub-blocks: enough of them need four or five passes that a wrong pass
    limit, cursor or pass-end rule changes some block."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 1024)).astype(np.float32)
    x[::3] = np.round(x[::3] * 2) / 2  # half-integers: many exact ties
    ours, ref = kernels.quantize(x, "Q3_K", threads=1), ggml().quantize(x, "Q3_K")
    assert _differing_blocks(ours, ref, 110) == 0


def test_q3_k_rmse_pass_limit():
    """make_q3_quants stops after its fifth rmse pass even when that pass still moved a quant: uniform
    values have a few sub-blocks (about one in 5,000) that would still move in a sixth pass, so a pass
    count or limit off by one changes some block."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (512, 4096)).astype(np.float32)
    ours, ref = kernels.quantize(x, "Q3_K", threads=1), ggml().quantize(x, "Q3_K")
    assert _differing_blocks(ours, ref, 110) == 0


def test_q3_k_batches_refined_together():
    """Q3_K refines the sub-blocks of several 16,384-sub-block batches of one call together once few of
    each batch still move (and keeps the refined quants of the sub-blocks whose 6-bit scale is 0): a
    call of all but a part of its last batch, with super-blocks holding many tiny sub-blocks (hundreds
    of them refined again at once), against ggml."""
    from workbench.kernels import kquants_low

    rng = np.random.default_rng(5)
    rows = kquants_low.Q3_K.chunk_elements // 1024 - 64
    x = rng.standard_normal((rows, 1024)).astype(np.float32)
    x[::3] = np.round(x[::3] * 2) / 2  # half-integers: many exact ties, sub-blocks that move for passes
    x.reshape(-1, 16)[rng.random(x.size // 16) < 0.3] *= 1e-3  # scales that round to 0 against the max (many)
    assert x.size > (kquants_low._Q3_GROUP - 1) * kquants_low._BATCH * 16 >= 2 * kquants_low._BATCH * 16
    assert kernels.base._chunks(rows, 1024, kquants_low.Q3_K.chunk_elements) == [(0, rows)]  # one call
    ours, ref = kernels.quantize(x, "Q3_K", threads=1), ggml().quantize(x, "Q3_K")
    assert _differing_blocks(ours, ref, 110) == 0


def test_scratch_arrays_start_on_a_cache_line():
    """The kernels' scratch arrays start on a 64-byte boundary (ufuncs writing an array that starts 16
    bytes past one, as numpy's big allocations do, run 30-40% slower), whatever their shape and type."""
    from workbench.kernels.common import aligned_empty, scratch

    for shape, dtype in (((32, 8192), np.float32), ((3, 5), np.uint8), ((7,), np.int32), ((16, 1000), bool)):
        a = scratch("test_align", shape, dtype)
        assert a.ctypes.data % 64 == 0 and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        b = aligned_empty(shape, dtype)
        assert b.ctypes.data % 64 == 0 and b.shape == shape and b.dtype == dtype
