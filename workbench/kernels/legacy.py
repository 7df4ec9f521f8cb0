"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32-value blocks with one fp16 scale (and a min for the _1 types)."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import Kernel
from .common import (F32, first_max, first_min, fp16_bits, fp16_value, make_qkx_quants, make_qx_quants, pack_bits,
                     roundf, safe_recip, seqsum)

QK = 32


def _blocks(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, QK)


def row_weights(x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Quant weights as ggml's *_impl functions build them: qw[j] * sqrt(sigma2 + x[j]^2), sigma2 per row."""
    rows, n = x.shape
    sigma2 = (seqsum(x * x) / F32(n)).astype(np.float32)
    return (imatrix[None, :] * np.sqrt(sigma2[:, None] + x * x)).astype(np.float32)


def _absmax_signed(b: np.ndarray) -> np.ndarray:
    """The value with the largest magnitude, first one on ties (C: ``if (amax < fabsf(v))``); +0.0 when
    every value is zero, since C starts from ``max = 0.0f``."""
    mx, mn = b.max(axis=1), b.min(axis=1)
    v = np.where(-mn > mx, mn, mx)
    tie = (-mn == mx) & (mx != 0)
    if tie.any():  # +a and -a both present: C keeps whichever comes first
        bt = b[tie]
        v[tie] = bt[np.arange(bt.shape[0]), np.argmax(np.abs(bt), axis=1)]
    v[v == 0] = 0  # -0.0 -> +0.0
    return v


def _pack(L: np.ndarray, *heads: np.ndarray, qh: bool = False) -> np.ndarray:
    """Block bytes: fp16 fields (``heads``), then for 5-bit types the qh bits, then the low nibbles."""
    nb = L.shape[0]
    h = 2 * len(heads) + (4 if qh else 0)
    out = np.empty((nb, h + 16), np.uint8)
    for k, bits in enumerate(heads):
        out[:, 2 * k:2 * k + 2] = bits.reshape(nb, 1).view(np.uint8)
    if qh:
        out[:, 2 * len(heads):h] = pack_bits(L >> 4, 1)
        L = L & 0x0F
    np.bitwise_or(L[:, :16], L[:, 16:] << 4, out=out[:, h:])
    return out


def _quant_offset(b: np.ndarray, iv: np.ndarray, offset: float, top: int) -> np.ndarray:
    """``MIN(top, (int8_t)(x*id + offset))`` as uint8."""
    q = b * iv[:, None]
    q += F32(offset)
    L = q.astype(np.int8).view(np.uint8)
    np.minimum(L, top, out=L)
    return L


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _unpack_qh(qh: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(qh, axis=1, bitorder="little")
    return bits.astype(np.uint8) << 4


class Q4_0(Kernel, qtype=T.Q4_0):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        b = _blocks(x)
        if imatrix is None:  # quantize_row_q4_0_ref
            d = (_absmax_signed(b) / F32(-8)).astype(np.float32)
            iv = safe_recip(d)
            L = _quant_offset(b, iv, 8.5, 15)
        else:  # quantize_row_q4_0_impl
            w = _blocks(row_weights(x, imatrix))
            d, L = make_qx_quants(b, 8, 1, w)
        return _pack(L, fp16_bits(d)).reshape(rows, -1)

    @classmethod
    def dequantize_rows(cls, q, n):
        blk = q.reshape(-1, cls.type_size)
        d = fp16_value(np.ascontiguousarray(blk[:, :2]).view("<u2"))
        v = _unpack_nibbles(blk[:, 2:]).astype(np.int32) - 8
        return (v.astype(np.float32) * d).reshape(q.shape[0], n)


class Q4_1(Kernel, qtype=T.Q4_1):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        b = _blocks(x)
        if imatrix is None:  # quantize_row_q4_1_ref
            mn, mx = first_min(b), first_max(b)
            d = ((mx - mn) / F32(15)).astype(np.float32)
            iv = safe_recip(d)
            L = _quant_offset(b - mn[:, None], iv, 0.5, 15)
            m = mn
        else:  # quantize_row_q4_1_impl
            w = _blocks(row_weights(x, imatrix))
            d, the_min, L = make_qkx_quants(b, 15, w, -0.9, 0.05, 36, False, qkx3=True)
            m = -the_min
        return _pack(L, fp16_bits(d), fp16_bits(m)).reshape(rows, -1)

    @classmethod
    def dequantize_rows(cls, q, n):
        blk = q.reshape(-1, cls.type_size)
        dm = fp16_value(np.ascontiguousarray(blk[:, :4]).view("<u2"))
        v = _unpack_nibbles(blk[:, 4:]).astype(np.float32)
        return (v * dm[:, :1] + dm[:, 1:2]).reshape(q.shape[0], n)


class Q5_0(Kernel, qtype=T.Q5_0):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        b = _blocks(x)
        if imatrix is None:  # quantize_row_q5_0_ref
            d = (_absmax_signed(b) / F32(-16)).astype(np.float32)
            iv = safe_recip(d)
            L = _quant_offset(b, iv, 16.5, 31)
        else:  # quantize_row_q5_0_impl
            w = _blocks(row_weights(x, imatrix))
            d, L = make_qx_quants(b, 16, 1, w)
        return _pack(L, fp16_bits(d), qh=True).reshape(rows, -1)

    @classmethod
    def dequantize_rows(cls, q, n):
        blk = q.reshape(-1, cls.type_size)
        d = fp16_value(np.ascontiguousarray(blk[:, :2]).view("<u2"))
        v = (_unpack_nibbles(blk[:, 6:]) | _unpack_qh(blk[:, 2:6])).astype(np.int32) - 16
        return (v.astype(np.float32) * d).reshape(q.shape[0], n)


class Q5_1(Kernel, qtype=T.Q5_1):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        b = _blocks(x)
        if imatrix is None:  # quantize_row_q5_1_ref
            mn, mx = first_min(b), first_max(b)
            d = ((mx - mn) / F32(31)).astype(np.float32)
            iv = safe_recip(d)
            L = _quant_offset(b - mn[:, None], iv, 0.5, 31)  # C: (uint8_t)(x + 0.5f), never above 31
            m = mn
        else:  # quantize_row_q5_1_impl
            w = _blocks(row_weights(x, imatrix))
            d, the_min, L = make_qkx_quants(b, 31, w, -0.9, 0.05, 36, False, qkx3=True)
            m = -the_min
        return _pack(L, fp16_bits(d), fp16_bits(m), qh=True).reshape(rows, -1)

    @classmethod
    def dequantize_rows(cls, q, n):
        blk = q.reshape(-1, cls.type_size)
        dm = fp16_value(np.ascontiguousarray(blk[:, :4]).view("<u2"))
        v = (_unpack_nibbles(blk[:, 8:]) | _unpack_qh(blk[:, 4:8])).astype(np.float32)
        return (v * dm[:, :1] + dm[:, 1:2]).reshape(q.shape[0], n)


class Q8_0(Kernel, qtype=T.Q8_0):  # quantize_row_q8_0_ref (ggml ignores quant weights for Q8_0)
    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        b = _blocks(x)
        d = (np.abs(b).max(axis=1) / F32(127)).astype(np.float32)
        iv = safe_recip(d)
        qs = roundf(b * iv[:, None], np.int8)
        return np.concatenate([fp16_bits(d).reshape(-1, 1).view(np.uint8), qs.view(np.uint8)], axis=1).reshape(rows, -1)

    @classmethod
    def dequantize_rows(cls, q, n):
        blk = q.reshape(-1, cls.type_size)
        d = fp16_value(np.ascontiguousarray(blk[:, :2]).view("<u2"))
        return (blk[:, 2:].view(np.int8).astype(np.float32) * d).reshape(q.shape[0], n)
