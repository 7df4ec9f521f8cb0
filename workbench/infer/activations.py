"""The activations of a matrix product as llama.cpp's CPU backend rounds them.

ggml's CPU matmul does not multiply the float32 activations by the weights: it first converts each row of
activations to the weight type's dot-product partner (``type_traits_cpu[type].vec_dot_type`` in
ggml-cpu.c: Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL, Q8_1 for Q4_1/Q5_1, Q8_K for the K types and the other IQ
types, F16 for F16, BF16 for BF16; F32 stays F32) and takes integer dot products block by block.  The
repacked CPU kernels (repack.cpp: Q4_0 8x8, Q4_K 8x8, ...) quantize the activations to the same partner.
Mathematically that product is ``dequant(quant(x)) @ W`` with ``W`` the dequantized weights, which is what
:func:`round_activations` lets an engine compute.

Q8_0 and Q8_1 follow the AVX2 row quantizers that x86 builds run (a multiply by 127/amax, round half to
even: the reference C functions divide and round halves away from zero, which differs on exact ties); Q8_K
follows quantize_row_q8_K_ref, which x86 builds call (the repacked Q4_K/Q5_K/Q2_K products' 4-row quantizer
gives the same quants but where +amax and -amax are both in a block).  Not reproduced: Q8_1's stored block
sum ``s`` is rounded to F16 (we use the exact sum of the dequantized values), and the products' own float
summation order; both change a product's last bits only.
"""
from __future__ import annotations

import numpy as np

from ..kernels.common import bf16_bits, nearest_int

F32 = np.float32

# weight type -> the type its activations are converted to (None: float32, unchanged)
_Q8_K_PARTNERS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                  "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0", "TQ2_0")
VEC_DOT_TYPE: dict[str, str | None] = {
    "F32": None, "F64": None, "F16": "F16", "BF16": "BF16",
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "IQ4_NL": "Q8_0", "MXFP4": "Q8_0",
    "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    **{t: "Q8_K" for t in _Q8_K_PARTNERS},
}
BLOCK = {"Q8_0": 32, "Q8_1": 32, "Q8_K": 256}


def vec_dot_type(weight_type: str | None) -> str | None:
    """The activation type llama.cpp's CPU backend multiplies ``weight_type`` weights with (None: float32;
    unknown and float types other than F16/BF16 multiply in float32)."""
    if weight_type is None:
        return None
    return VEC_DOT_TYPE.get(str(weight_type).upper())


def _q8_0(b: np.ndarray) -> np.ndarray:
    """quantize_row_q8_0 (AVX2) then dequantize_row_q8_0, on blocks b [n, 32] (float32)."""
    amax = np.abs(b).max(axis=1)  # [n]
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
    q = np.rint(b * inv[:, None])  # _mm256_round_ps(_MM_ROUND_NEAREST): halves to even
    return q * d.astype(np.float16).astype(F32)[:, None]  # the block scale is stored as F16


def _q8_k(b: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K_ref then dequantize_row_q8_K, on blocks b [n, 256]: the scale is -max/127 of the
    value of largest magnitude (float32), the quants round half to even and clip at 127."""
    idx = np.abs(b).argmax(axis=1)  # the first of equal magnitudes, as the C loop's strict '>'
    vmax = b[np.arange(b.shape[0]), idx]  # [n], signed
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(vmax != 0, F32(-127) / vmax, F32(0)).astype(F32)
        d = np.where(vmax != 0, F32(1) / iscale, F32(0)).astype(F32)
    q = np.minimum(nearest_int(b * iscale[:, None]), 127).astype(F32)
    return q * d[:, None]


def round_activations(x: np.ndarray, vtype: str | None) -> np.ndarray:
    """The float32 values of activations ``x`` [..., n] after llama.cpp converts each row to ``vtype``
    (``Q8_0``, ``Q8_1``, ``Q8_K``, ``F16``, ``BF16``; None returns ``x`` itself)."""
    if vtype is None:
        return x
    x = np.ascontiguousarray(x, dtype=F32)
    if vtype == "F16":
        return x.astype(np.float16).astype(F32)
    if vtype == "BF16":
        return (bf16_bits(x).astype(np.uint32) << np.uint32(16)).view(F32).reshape(x.shape)
    bs = BLOCK.get(vtype)
    if bs is None:
        raise ValueError(f"unknown activation type {vtype!r}")
    if x.shape[-1] % bs:
        raise ValueError(f"a row of {x.shape[-1]} values does not split into {vtype} blocks of {bs}")
    blocks = x.reshape(-1, bs)
    out = _q8_k(blocks) if vtype == "Q8_K" else _q8_0(blocks)  # Q8_1 holds the same quants and scale as Q8_0
    return out.reshape(x.shape)
