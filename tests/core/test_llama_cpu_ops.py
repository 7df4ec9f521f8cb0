"""The "llama-cpu" evaluation's elementwise ops against ggml's CPU backend, bit for bit.

ggml_ops_ref.npz was recorded by make_ggml_ops_ref.py (beside it) from the ggml libraries of the llama.cpp
anchor build: ggml_rms_norm + ggml_mul, ggml_rope_ext and ggml-cpu's quantize_row_q8_0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench.infer.activations import round_activations
from workbench.infer.decoder import DecoderEngine, ggml_rope_tables, rms_norm, rms_norm_ggml, rope_fma_

REF = np.load(Path(__file__).parent / "data" / "infer" / "ggml_ops_ref.npz")


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def test_rms_norm_rounds_as_ggml():
    """Squares summed in double, the mean and scale in float32, x*scale*w: every value equals ggml's."""
    x, w, eps = REF["norm_x"], REF["norm_w"], float(REF["eps"])
    assert np.array_equal(bits(rms_norm_ggml(x, w, eps)), bits(REF["norm_y"]))
    assert np.array_equal(bits(rms_norm_ggml(x[3:4], w, eps)), bits(REF["norm_y"][3:4]))  # one token (decode)
    # the reference formula (float32 mean, a division) is close but not the same bits: the test can tell
    assert not np.array_equal(bits(rms_norm(x, w, eps)), bits(REF["norm_y"]))
    np.testing.assert_allclose(rms_norm(x, w, eps), REF["norm_y"], rtol=2e-6, atol=1e-6)


def test_rope_tables_and_rotation_are_ggmls():
    """theta multiplied pair by pair in float32, the C library's cosf/sinf, the fused multiply-add rotation:
    llama's adjacent-pair rope at positions up to 8191 equals ggml_rope_ext's output bit for bit."""
    x, pos, want = REF["rope_x"].copy(), REF["rope_pos"], REF["rope_y"]
    cos, sin = ggml_rope_tables(int(pos.max()) + 1, 64, float(REF["rope_base"]))
    c, s = cos[pos][:, None], sin[pos][:, None]  # [P, 1, 32]
    rope_fma_(x[..., 0::2], x[..., 1::2], c, s)
    assert np.array_equal(bits(x), bits(want))
    # float64 angles (pos * base^(-2i/64)) give other bits at large positions
    inv = 1.0 / float(REF["rope_base"]) ** (np.arange(0, 64, 2) / 64)
    assert not np.array_equal(np.cos(pos[:, None] * inv).astype(np.float32), cos[pos])


def test_q8_0_activations_round_as_ggmls_row_quantizer():
    """Activations converted to Q8_0 as the AVX2 quantize_row_q8_0 does (scale 127/amax, halves to even, the
    block scale stored as F16), also on rows of exact ties where roundf's halves-away-from-zero differs."""
    x, q = REF["q8_x"], REF["q8_bytes"].reshape(len(REF["q8_x"]), -1, 34)
    d = q[:, :, :2].copy().view(np.float16).astype(np.float32)
    want = (q[:, :, 2:].view(np.int8).astype(np.float32) * d).reshape(x.shape)
    assert np.array_equal(round_activations(x, "Q8_0"), want)  # values (a -0.0 quant is ggml's int8 0)
    ties = x[-8:]
    assert np.any(np.abs(ties - np.trunc(ties)) == 0.5)  # the tie rows are there


@pytest.mark.parametrize("numerics, ggml", [("llama-cpu", True), ("exact", False)])
def test_the_engine_takes_ggmls_rope_and_norm_only_in_llama_cpu_numerics(numerics, ggml):
    from workbench.infer.engines import load_engine
    from workbench.progress import run

    data = Path(__file__).parent / "data" / "infer" / "llama"
    eng = run(load_engine(data, None, numerics=numerics))
    assert all((r.ggml is not None) == ggml for r in eng.layer_rope)
    assert (eng._norm is rms_norm_ggml) == ggml
    assert isinstance(eng, DecoderEngine)
