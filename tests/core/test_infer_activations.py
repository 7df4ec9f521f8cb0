"""Activation rounding of the llama-cpu evaluation against ggml's own row quantizers (the oracle library)."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from workbench.infer.activations import round_activations, vec_dot_type
from workbench.infer.llama import _matmul

Q8_BLOCK_BYTES = {"Q8_0": (32, 34), "Q8_1": (32, 36), "Q8_K": (256, 4 + 256 + 32)}


@pytest.fixture(scope="module")
def ggml():
    from ggml_oracle import ggml as oracle

    return oracle().lib


def activations(rows: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((rows, n)) * rng.exponential(size=(rows, 1))).astype(np.float32)
    x[0, :n] = 0.0  # an all-zero row (d = 0)
    x[1, 3] = 40.0  # an outlier that flattens its block
    x[2, :9] = [127, 0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5]  # scale 1: exact halves (roundf vs rint)
    x[3, n // 2 + 1] = -2 * np.abs(x[3]).max()  # the largest magnitude negative (Q8_K's signed max)
    return x


def ggml_round(lib, x: np.ndarray, vtype: str) -> np.ndarray:
    """x through the row quantizer llama.cpp's x86 CPU backend runs and back: ggml-cpu's AVX2
    quantize_row_q8_0 / quantize_row_q8_1, quantize_row_q8_K_ref (x86 has no SIMD one); Q8_1 is decoded by hand
    (d F16, s F16, 32 int8)."""
    from ggml_oracle import cpu_lib

    block, nbytes = Q8_BLOCK_BYTES[vtype]
    n = x.size
    buf = np.zeros(n // block * nbytes, np.uint8)
    name = f"quantize_row_{vtype.lower().replace('_k', '_K')}"
    q = getattr(lib, name + "_ref") if vtype == "Q8_K" else getattr(cpu_lib(), name)
    q.argtypes, q.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    q(np.ascontiguousarray(x).ctypes.data, buf.ctypes.data, n)
    if vtype == "Q8_1":
        b = buf.reshape(-1, nbytes)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        return (b[:, 4:].view(np.int8).astype(np.float32) * d).reshape(x.shape)
    out = np.zeros(n, np.float32)
    dq = getattr(lib, f"dequantize_row_{vtype.lower().replace('_k', '_K')}")
    dq.argtypes, dq.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    dq(buf.ctypes.data, out.ctypes.data, n)
    return out.reshape(x.shape)


@pytest.mark.parametrize("vtype", ["Q8_0", "Q8_1", "Q8_K"])
def test_activation_quantization_equals_ggml(ggml, vtype):
    x = activations(16, 512)
    got = round_activations(x, vtype)
    want = ggml_round(ggml, x, vtype)
    bad = np.flatnonzero((got != want).any(axis=1))
    assert bad.size == 0, f"{bad.size} of {x.shape[0]} rows differ from ggml's {vtype} (first: row {bad[:1]})"
    assert not np.array_equal(got, x)


def test_float_partners_equal_ggml(ggml):
    x = activations(4, 64)
    for name, vtype in (("ggml_fp32_to_fp16_row", "F16"), ("ggml_fp32_to_bf16_row_ref", "BF16")):
        fn = getattr(ggml, name)
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
        bits = np.zeros(x.size, np.uint16)
        fn(x.ctypes.data, bits.ctypes.data, x.size)
        want = (bits.view(np.float16).astype(np.float32) if vtype == "F16"
                else (bits.astype(np.uint32) << 16).view(np.float32))
        np.testing.assert_array_equal(round_activations(x, vtype), want.reshape(x.shape), err_msg=vtype)
    assert round_activations(x, None) is x


def test_vec_dot_partners_follow_ggml_cpu_type_traits():
    # ggml-cpu.c type_traits_cpu[...].vec_dot_type, written out by hand
    expect = {"F32": None, "F16": "F16", "BF16": "BF16", "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0",
              "IQ4_NL": "Q8_0", "Q4_1": "Q8_1", "Q5_1": "Q8_1", "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K",
              "Q5_K": "Q8_K", "Q6_K": "Q8_K", "IQ4_XS": "Q8_K"}
    assert {t: vec_dot_type(t) for t in expect} == expect
    with pytest.raises(ValueError, match="blocks of 256"):
        round_activations(np.zeros((1, 96), np.float32), "Q8_K")


def test_fused_matrix_rounds_each_column_group_for_its_own_type():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    w = rng.standard_normal((64, 7)).astype(np.float32)
    got = _matmul(x, w, ((0, 4, "Q8_0"), (4, 7, "F16")))
    want = np.concatenate([round_activations(x, "Q8_0") @ w[:, :4], x.astype(np.float16).astype(np.float32) @ w[:, 4:]],
                          axis=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_matmul(x, w, ()), x @ w)
