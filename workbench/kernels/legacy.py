"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32-value blocks with one fp16 scale (and a min for the _1 types)."""
from __future__ import annotations

import sys

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import Kernel, check_finite
from .common import (F32, fp16_bits, make_qkx_quants, make_qx_quants, pack_bits,
                     roundf, safe_recip, scale_codes, scratch, seqsum)

QK = 32
_LE = sys.byteorder == "little"


def _blocks(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, QK)


def row_weights(x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Quant weights as ggml's *_impl functions build them: qw[j] * sqrt(sigma2 + x[j]^2), sigma2 per row."""
    rows, n = x.shape
    sigma2 = (seqsum(x * x) / F32(n)).astype(np.float32)
    return (imatrix[None, :] * np.sqrt(sigma2[:, None] + x * x)).astype(np.float32)


# The reference paths work on blocks in a "quad" layout [8, 4 * nb]: row q holds values 4q..4q+3 of every
# block, block after block.  numpy reduces and broadcasts far faster along those long rows than over
# 32-value rows, and the layout moves whole 16-byte pieces (one complex128 each), about four times
# cheaper than transposing single floats to [32, nb].

_U4 = np.uint32(4)


def _quads(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` [rows, n] as [8, 4 * nb]: element [q, 4b + r] is value 4q + r of block b."""
    c = np.ascontiguousarray(x).reshape(-1).view(np.complex128).reshape(-1, QK // 4)
    out = scratch("lg_xq", c.shape[::-1], np.complex128)  # a reused buffer: fresh ones cost page faults
    np.copyto(out, c.T)
    return out.view(np.float32)


def _per_block(v: np.ndarray, op) -> np.ndarray:
    """Combine a reduction over the quad rows [4 * nb] into one value per block with ``op``."""
    r = v.reshape(-1, 4)
    return op(op(r[:, 0], r[:, 1]), op(r[:, 2], r[:, 3]))


def _block_order(xq: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """The blocks ``sel`` of quad-layout ``xq`` as rows [len(sel), 32] in C's value order."""
    return xq.reshape(8, -1, 4)[:, sel, :].transpose(1, 0, 2).reshape(-1, QK)


def _first_extreme(xq: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Patch zero extremes with the sign of the first zero, as a C ``if (x < min) min = x`` loop keeps it."""
    zero = np.flatnonzero(value == 0)
    if zero.size:
        sub = _block_order(xq, zero)
        value[zero] = sub[np.arange(zero.size), np.argmax(sub == 0, axis=1)]
    return value


def _quant_offset(xq: np.ndarray, iv: np.ndarray, offset: float, top: int, minus=None) -> np.ndarray:
    """``MIN(top, (int8_t)(x*id + offset))`` as uint8 in the quad layout (``iv``: id per block), of
    ``x - min`` when ``minus`` gives the min per block."""
    q = scratch("lg_q", xq.shape)
    if minus is None:
        np.multiply(xq, np.repeat(iv, 4), out=q)
    else:
        np.subtract(xq, np.repeat(minus, 4), out=q)
        q *= np.repeat(iv, 4)
    q += F32(offset)
    if np.isfinite(iv).all():
        # x*id + offset lies in [0, top + 1): clamping the float before the truncation equals C's MIN after
        # it, and a float clip is far cheaper than np.minimum on bytes
        np.clip(q, F32(-128), F32(top), out=q)
        L = scratch("lg_L", q.shape, np.int8)
        np.copyto(L, q, casting="unsafe")
        return L.view(np.uint8)
    L = q.astype(np.int8).view(np.uint8)  # id = inf (subnormal scales): C's int8 of +-inf / NaN is 0
    np.minimum(L, top, out=L)
    return L


def _pack(L: np.ndarray, *heads: np.ndarray, qh: bool = False) -> np.ndarray:
    """Block bytes from quad-layout quants [8, 4 * nb]: fp16 fields (``heads``), the qh bits of 5-bit
    types, the nibbles.

    The quants are handled as little-endian 32-bit words (quants 4q..4q+3 of a block in word [q, b]), and
    every field starts on an even byte, so the block is written as 16-bit words, a column at a time
    (numpy is slow on a transposed assignment of short rows)."""
    nb = L.shape[1] // 4
    h = 2 * len(heads) + (4 if qh else 0)
    out = np.empty((nb, h + 16), np.uint8)
    words = out.view("<u2")  # [nb, h/2 + 8]
    for k, bits in enumerate(heads):
        words[:, k] = bits.reshape(nb)
    w = np.ascontiguousarray(L).view("<u4")  # [8, nb]
    if qh:
        # the fifth bits of quants 4q..4q+3 sit at bits 4, 12, 20, 28 of w[q]: gather them into bits 24..27
        # with one multiply (the partial products never overlap), then qh bit j = fifth bit of quant j
        f = (w >> _U4) & np.uint32(0x01010101)
        f *= np.uint32(0x01020408)
        f >>= np.uint32(24)
        bits = f[0].copy()
        for q in range(1, 8):
            bits |= f[q] << np.uint32(4 * q)
        words[:, len(heads)] = bits
        words[:, len(heads) + 1] = bits >> np.uint32(16)
        w = w & np.uint32(0x0F0F0F0F)
    nib = w[:4] | (w[4:] << _U4)  # [4, nb]: bytes 4q..4q+3 of qs (quants j and j + 16 in byte j)
    for q in range(4):
        words[:, h // 2 + 2 * q] = nib[q]
        words[:, h // 2 + 2 * q + 1] = nib[q] >> np.uint32(16)
    return out


# Row layout [nb, 32]: faster for the symmetric types, whose block maximum is one argmax

def _abs_bits(b: np.ndarray) -> np.ndarray:
    """|x| as uint32 bit patterns: ordered like the magnitudes, and reduced much faster than floats."""
    return b.view(np.uint32) & np.uint32(0x7FFFFFFF)


def _absmax_signed_rows(b: np.ndarray) -> np.ndarray:
    """Per block the value with the largest magnitude, the first one on a +a/-a tie (C: ``if (amax <
    fabsf(v))``); +0.0 when every value is zero, since C starts from ``max = 0.0f``."""
    a = _abs_bits(b)
    amax = a.max(axis=1)
    v = np.take_along_axis(b, (a == amax[:, None]).argmax(axis=1)[:, None], axis=1)[:, 0]
    v[amax == 0] = 0  # -0.0 -> +0.0
    return v


def _absmax_signed_quads(xq: np.ndarray) -> np.ndarray:
    """As _absmax_signed_rows for quad-layout blocks, from two float reductions: the block's maximum when
    it is the larger in magnitude, its minimum when that is; only blocks holding both +a and -a look for
    the first of them."""
    mx = _per_block(xq.max(axis=0), np.maximum)
    mn = _per_block(xq.min(axis=0), np.minimum)
    check_finite(mx, mn)
    neg = np.negative(mn)
    v = np.where(neg > mx, mn, mx)
    tie = np.flatnonzero((neg == mx) & (mx != 0))
    if tie.size:  # +a and -a both present: the first one in the block wins
        sub = _block_order(xq, tie)
        first = np.argmax(np.abs(sub) == mx[tie, None], axis=1)
        v[tie] = sub[np.arange(tie.size), first]
    v[v == 0] = 0  # all zeros (or -0.0): +0.0, as C starts from max = 0.0f
    return v


def _pack_rows(L: np.ndarray, *heads: np.ndarray, qh: bool = False) -> np.ndarray:
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


def _quant_offset_rows(b: np.ndarray, iv: np.ndarray, offset: float, top: int) -> np.ndarray:
    """``MIN(top, (int8_t)(x*id + offset))`` as uint8."""
    q = b * iv[:, None]
    q += F32(offset)
    L = q.astype(np.int8).view(np.uint8)
    np.minimum(L, top, out=L)
    return L


# Dequantization works on whole 16-byte pieces of every block (one complex128 element each: numpy copies
# them in one strided loop) and on 64-bit words of codes (eight values per operation): numpy is slow
# on the short rows of a [blocks, 32] layout.

_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_FOUR = np.uint64(4)
_REP8 = np.uint64(0x0101010101010101)  # byte t to all eight bytes
_BITK = np.uint64(0x8040201008040201)  # byte k keeps bit k
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_TOP = np.uint64(0x8080808080808080)
_THREE = np.uint64(3)


def block_u16(blk: np.ndarray, col: int) -> np.ndarray:
    """The little-endian uint16 at byte 2*col of every block of ``blk`` [nb, type_size] (a strided view
    when it can be one)."""
    nb, ts = blk.shape
    if ts % 2 == 0 and blk.strides[1] == 1 and blk.strides[0] == ts:
        return blk.reshape(-1).view("<u2").reshape(nb, ts // 2)[:, col]
    return np.ascontiguousarray(blk[:, 2 * col:2 * col + 2]).view("<u2")[:, 0]


def block_f16(blk: np.ndarray, col: int) -> np.ndarray:
    """The fp16 field at byte 2*col of every block, as float32 [nb] (GGML_FP16_TO_FP32)."""
    return block_u16(blk, col).view("<f2").astype(np.float32)


def block_bytes16(blk: np.ndarray, start: int, out: np.ndarray) -> np.ndarray:
    """Bytes start..start+16 of every block into ``out`` ([nb, 16 bytes] with a contiguous last axis)."""
    out.view(np.complex128)[:, 0] = blk[:, start:start + 16].view(np.complex128)[:, 0]
    return out


def _dequant_into(q: np.ndarray, out: np.ndarray, type_size: int, heads: int, offset: int, qh: bool) -> None:
    """dequantize_row_q4_0/q4_1/q5_0/q5_1 into ``out``: y = (code - offset) * d (+ m)."""
    blk = q.reshape(-1, type_size)
    nb = blk.shape[0]
    d = block_f16(blk, 0)
    m = block_f16(blk, 1) if heads == 2 else None
    start = 2 * heads + (4 if qh else 0)
    qs = block_bytes16(blk, start, scratch("lg_qs", (nb, 2), np.uint64))
    lo = np.bitwise_and(qs, _M4, out=scratch("lg_lo", (nb, 2), np.uint64))  # values 0..15
    hi = np.right_shift(qs, _FOUR, out=scratch("lg_hi", (nb, 2), np.uint64))  # values 16..31
    hi &= _M4
    codes = scratch("lg_codes", (nb, 4), np.uint64)
    cc = codes.view(np.complex128)
    cc[:, 0] = lo.view(np.complex128)[:, 0]
    cc[:, 1] = hi.view(np.complex128)[:, 0]
    if qh:  # bit j of qh: the fifth bit of value j, spread to bit 4 of byte j
        hb = scratch("lg_hb", (nb, 4), np.uint64)
        for k in range(4):
            np.copyto(hb[:, k], blk[:, 2 * heads + k], casting="unsafe")
        hb *= _REP8
        hb &= _BITK
        hb += _LOW7  # bit 7 of byte k: bit k of the qh byte
        hb &= _TOP
        hb >>= _THREE
        if not _LE:  # pragma: no cover - byte k of a word is byte 7 - k in memory there
            hb.byteswap(inplace=True)
        codes |= hb
    b = codes.view(np.uint8)
    if offset:
        b -= np.uint8(offset)  # (code - offset) as int8
        b = b.view(np.int8)
    scale_codes(b, d, out, plus=m)


def _quantize_symmetric(x: np.ndarray, imatrix, nmax: int) -> np.ndarray:
    """quantize_row_q4_0/q5_0 (_ref without quant weights, _impl with): d = max / -nmax, codes 0..2*nmax-1."""
    rows, n = x.shape
    b = _blocks(x)
    if imatrix is None:
        xq = _quads(x)
        d = (_absmax_signed_quads(xq) / F32(-nmax)).astype(np.float32)
        L = _quant_offset(xq, safe_recip(d), nmax + 0.5, 2 * nmax - 1)
        return _pack(L, fp16_bits(d), qh=nmax == 16).reshape(rows, -1)
    check_finite(x)
    d, L = make_qx_quants(b, nmax, 1, _blocks(row_weights(x, imatrix)))
    return _pack_rows(L, fp16_bits(d), qh=nmax == 16).reshape(rows, -1)


def _quantize_min_max(x: np.ndarray, imatrix, nmax: int) -> np.ndarray:
    """quantize_row_q4_1/q5_1 (_ref without quant weights, _impl with): d = (max - min) / nmax, stored min."""
    rows, n = x.shape
    if imatrix is None:
        xq = _quads(x)
        mn = _first_extreme(xq, _per_block(xq.min(axis=0), np.minimum))
        mx = _first_extreme(xq, _per_block(xq.max(axis=0), np.maximum))
        check_finite(mn, mx)
        d = ((mx - mn) / F32(nmax)).astype(np.float32)
        # Q5_1's C cast has no MIN(): never above 31 anyway
        L = _quant_offset(xq, safe_recip(d), 0.5, nmax, minus=mn)
        m = mn
    else:
        check_finite(x)
        b = _blocks(x)
        d, the_min, L = make_qkx_quants(b, nmax, _blocks(row_weights(x, imatrix)), -0.9, 0.05, 36, False, qkx3=True)
        L = np.ascontiguousarray(L.reshape(-1, 8, 4).transpose(1, 0, 2)).reshape(8, -1)  # quad layout
        m = -the_min
    return _pack(L, fp16_bits(d), fp16_bits(m), qh=nmax == 31).reshape(rows, -1)


class Q4_0(Kernel, qtype=T.Q4_0):
    uses_imatrix = True
    checks_finite = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        return _quantize_symmetric(x, imatrix, 8)

    @classmethod
    def dequantize_into(cls, q, n, out):
        with np.errstate(invalid="ignore", over="ignore"):  # an inf scale times 0: NaN, as in C
            _dequant_into(q, out, cls.type_size, 1, 8, False)


class Q4_1(Kernel, qtype=T.Q4_1):
    uses_imatrix = True
    checks_finite = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        return _quantize_min_max(x, imatrix, 15)

    @classmethod
    def dequantize_into(cls, q, n, out):
        with np.errstate(invalid="ignore", over="ignore"):  # an inf scale times 0: NaN, as in C
            _dequant_into(q, out, cls.type_size, 2, 0, False)


class Q5_0(Kernel, qtype=T.Q5_0):
    uses_imatrix = True
    checks_finite = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        return _quantize_symmetric(x, imatrix, 16)

    @classmethod
    def dequantize_into(cls, q, n, out):
        with np.errstate(invalid="ignore", over="ignore"):  # an inf scale times 0: NaN, as in C
            _dequant_into(q, out, cls.type_size, 1, 16, True)


class Q5_1(Kernel, qtype=T.Q5_1):
    uses_imatrix = True
    checks_finite = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        return _quantize_min_max(x, imatrix, 31)

    @classmethod
    def dequantize_into(cls, q, n, out):
        with np.errstate(invalid="ignore", over="ignore"):  # an inf scale times 0: NaN, as in C
            _dequant_into(q, out, cls.type_size, 2, 0, True)


class Q8_0(Kernel, qtype=T.Q8_0):  # quantize_row_q8_0_ref (ggml ignores quant weights for Q8_0)
    checks_finite = True

    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        b = _blocks(x)
        nb = b.shape[0]
        u = _quads(x).view(np.uint32)  # amax over the quad layout: reductions along long rows
        u &= np.uint32(0x7FFFFFFF)
        amax = _per_block(u.max(axis=0), np.maximum)
        check_finite(amax.view(np.float32))
        d = amax.view(np.float32) / F32(127)
        out = np.empty((nb, cls.type_size), np.uint8)
        out.view("<u2")[:, 0] = fp16_bits(d)
        a = np.multiply(b, np.repeat(safe_recip(d), QK).reshape(nb, QK), out=scratch("q8_a", b.shape))
        roundf(a, out=out[:, 2:].view(np.int8))  # straight into the block bytes
        return out.reshape(rows, -1)

    @classmethod
    def dequantize_into(cls, q, n, out):  # dequantize_row_q8_0
        blk = q.reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d = block_f16(blk, 0)
        qs = scratch("lg_qs8", (nb, 4), np.uint64)
        block_bytes16(blk, 2, qs[:, :2])
        block_bytes16(blk, 18, qs[:, 2:])
        with np.errstate(invalid="ignore", over="ignore"):
            scale_codes(qs.view(np.int8), d, out)
