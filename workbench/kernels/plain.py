"""F32, F16 and BF16: element conversions (ggml_fp32_to_fp16_row, ggml_fp32_to_bf16_row_ref)."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import Kernel
from .common import bf16_bits


class F32(Kernel, qtype=T.F32):
    @classmethod
    def quantize_rows(cls, x, imatrix):
        return x.astype("<f4").view(np.uint8)

    @classmethod
    def dequantize_into(cls, q, n, out):
        np.copyto(out, np.ascontiguousarray(q).view("<f4"))


class F16(Kernel, qtype=T.F16):
    @classmethod
    def quantize_rows(cls, x, imatrix):
        return x.astype("<f2").view(np.uint8)

    @classmethod
    def dequantize_into(cls, q, n, out):  # numpy's own half conversion is slow: bit operations instead
        h = np.ascontiguousarray(q).view("<u2").reshape(-1)
        u = out.view(np.uint32).reshape(-1)
        np.copyto(u, h, casting="same_kind")
        sign = np.bitwise_and(u, np.uint32(0x8000))
        u ^= sign
        u <<= np.uint32(13)  # exponent and mantissa at their float32 places: the value * 2^-112 exactly
        special = np.flatnonzero(u >= np.uint32(0x7C00 << 13))  # inf and NaN
        u.view(np.float32)[...] *= np.float32(2.0 ** 112)  # (subnormal halves become normal floats)
        if special.size:  # all-ones exponent, the payload kept; a NaN comes out quiet, as GGML_FP16_TO_FP32 gives it
            mant = (h[special].astype(np.uint32) & np.uint32(0x03FF)) << np.uint32(13)
            u[special] = np.uint32(0x7F800000) | mant | np.where(mant != 0, np.uint32(0x00400000), np.uint32(0))
        sign <<= np.uint32(16)
        u |= sign


class BF16(Kernel, qtype=T.BF16):
    @classmethod
    def quantize_rows(cls, x, imatrix):
        return bf16_bits(x).view(np.uint8)

    @classmethod
    def dequantize_into(cls, q, n, out):  # the bf16 bits are the float32's high half
        u = out.view(np.uint32)
        np.copyto(u, np.ascontiguousarray(q).view("<u2"), casting="same_kind")
        u <<= np.uint32(16)
