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
    def dequantize_rows(cls, q, n):
        return np.ascontiguousarray(q).view("<f4").astype(np.float32)


class F16(Kernel, qtype=T.F16):
    @classmethod
    def quantize_rows(cls, x, imatrix):
        return x.astype("<f2").view(np.uint8)

    @classmethod
    def dequantize_rows(cls, q, n):
        return np.ascontiguousarray(q).view("<f2").astype(np.float32)


class BF16(Kernel, qtype=T.BF16):
    @classmethod
    def quantize_rows(cls, x, imatrix):
        return bf16_bits(x).view(np.uint8)

    @classmethod
    def dequantize_rows(cls, q, n):
        return (np.ascontiguousarray(q).view("<u2").astype(np.uint32) << 16).view(np.float32)
