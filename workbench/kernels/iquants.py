"""IQ4_NL and IQ4_XS: 4-bit indices into ggml's non-linear table ``kvalues_iq4nl``.

Both come from ggml's ``quantize_row_iq4_nl_impl`` (ntry = 7): every 32-value sub-block gets a scale
from a small search (a first guess from the largest value, then 15 trials ``id = (itry - 127) / max``),
keeping the one with the best weighted fit.  IQ4_NL stores that scale as fp16 per 32 values; IQ4_XS
stores one fp16 per 256 values plus a 6-bit scale per sub-block.

The search is vectorized over all sub-blocks of a chunk, position-major ([32, nb]) so that the C's
sequential float32 sums are 32 vector additions.  Three facts keep it exact and cheap:

* ``best_index_int8`` (nearest table entry, ties to the upper one) equals "the number of midpoints
  between neighbouring table values that are <= x" for every float32 x (checked exhaustively against
  the C logic), so an index is a table lookup at ``floor(2 * x)`` (the midpoints are half-integers).
* Over the 15 trials ``|id|`` moves by at most 14/127 of itself, which never spans two midpoints of
  one sign, so each value takes the table entry of the first trial and, from some trial on, possibly
  its neighbour: that trial is found exactly (estimated, then settled with the C's own rounding of
  ``((itry + values[0]) / max) * x``), and each trial's sums are redone after patching only the values
  that switch there.
* The choice among the trials is the C's sequential ``if`` over the 15 sums, vectorized over blocks.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import Kernel
from .common import F32, fp16_bits, pack_nibbles, safe_recip, scratch
from .legacy import block_bytes16, block_f16, block_u16

# kvalues_iq4nl (ggml-common.h)
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
KV = KVALUES.astype(np.float32)
MIDS = ((KV[:-1] + KV[1:]) / F32(2)).astype(np.float32)  # exact half-integers
GROUP_MAX_EPS = F32(1e-15)
NTRY = 7

SUB = 32  # values per scale
NTR = 2 * NTRY + 1  # the trials itry = -7..7, numbered k = itry + 7
TNUM0 = int(KVALUES[0]) - NTRY  # itry + values[0] at k = 0

# best_index_int8 as a lookup at p = floor(2*x) + _LIM: the index is the number of midpoints m with
# 2*m <= floor(2*x).  Positions outside the table clip to its ends, which are the right answers.
_LIM = 300
_IDX = np.searchsorted((2 * MIDS).astype(np.int64), np.arange(-_LIM, _LIM + 1), side="right").astype(np.uint8)
_QV = KV[_IDX]  # values[best_index_int8]
_NEXT = np.full(256, np.nan, np.float32)  # the next table value above value v, at v + 128
_NEXT[KVALUES[:-1].astype(np.intp) + 128] = KV[1:]

def _buf(name: str, shape: tuple, dtype=np.float32) -> np.ndarray:
    """Per-thread work arrays (common.scratch), reused from chunk to chunk."""
    return scratch("iq_" + name, shape, dtype)


def _lookup(al: np.ndarray, table: np.ndarray, out: np.ndarray, bounded: bool) -> np.ndarray:
    """out = table[best_index_int8(al)] (al is overwritten).  ``bounded``: al is finite and |al| < 2**60,
    and already doubled (see _scaled2); else any float32, NaN/inf as in the C.  Positions beyond the
    table clip to its ends (the right entries)."""
    if not bounded:
        np.multiply(al, F32(2), out=al)  # exact
    np.floor(al, out=al)
    if not bounded:
        np.fmin(al, F32(_LIM), out=al)  # fmin/fmax drop a NaN: NaN -> _LIM -> 15, as best_index_int8 gives
        np.fmax(al, F32(-_LIM), out=al)
    al += F32(_LIM)  # exact: small integers
    pos = _buf("pos", al.shape, np.intp)
    np.copyto(pos, al, casting="unsafe")
    return np.take(table, pos, out=out, mode="clip")


# Dequantization: kvalues of two packed bytes (a little-endian uint16: four 4-bit indices) in one
# lookup: entry u = (kv[b0 & 15], kv[b1 & 15], kv[b0 >> 4], kv[b1 >> 4]) as int8 bytes of a uint32.
_U16 = np.arange(1 << 16, dtype=np.uint32)
_KV8 = KVALUES.view(np.uint8).astype(np.uint32)
_QUADS = (_KV8[_U16 & 0xF] | (_KV8[(_U16 >> 8) & 0xF] << 8) | (_KV8[(_U16 >> 4) & 0xF] << 16)
          | (_KV8[_U16 >> 12] << 24)).astype(np.uint32)
del _U16, _KV8


def _kvalues_into(qs: np.ndarray, nsub: int, out: np.ndarray) -> np.ndarray:
    """kvalues of 32-value sub-blocks as int8 [nsub, 32] (``out``, value order: the low nibbles of the 16
    bytes, then the high ones) from their packed bytes ``qs`` (16 bytes per sub-block, contiguous)."""
    idx = _buf("dq_idx", (nsub * 8,), np.intp)
    np.copyto(idx, qs.reshape(-1).view("<u2"), casting="unsafe")
    g = np.take(_QUADS, idx, out=_buf("dq_g", (nsub * 8,), np.uint32), mode="clip")
    half = out.view("<u2").reshape(nsub, 2, 8)  # two kvalues per uint16
    lo = g.astype("<u2")
    hi = (g >> np.uint32(16)).astype("<u2")
    hv = half.view(np.complex128)  # [nsub, 2, 1]: 16 bytes at a time
    hv[:, 0, 0] = lo.view(np.complex128)
    hv[:, 1, 0] = hi.view(np.complex128)
    return out.view(np.int8)


def _nearest_int(a: np.ndarray) -> np.ndarray:
    """ggml nearest_int bit for bit, also where it is not rounding (NaN, inf, |a| >= 2**22): the low
    mantissa bits of a + 1.5 * 2**23."""
    with np.errstate(invalid="ignore", over="ignore"):
        bits = (np.asarray(a, np.float32) + F32(12582912)).astype(np.float32).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _scaled2(idv: np.ndarray, xT: np.ndarray, out: np.ndarray) -> np.ndarray:
    """2 * (id * x) for the search, computed as (2*id) * x: the same float32 (doubling is exact), except
    where id * x would be subnormal, and there both are below 1 in magnitude: best_index_int8 gives 8."""
    return np.multiply((idv * F32(2)).astype(np.float32), xT, out=out)


def best_index(al: np.ndarray) -> np.ndarray:
    """ggml best_index_int8(16, kvalues_iq4nl, al) elementwise (al is overwritten)."""
    return _lookup(al, _IDX, np.empty(al.shape, np.uint8), False)


def _terms(wT: np.ndarray, xT: np.ndarray, q: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The terms w*q*x and w*q*q of sumqx and sumq2 (C order: (w*q)*x) into out [32, 2, nb]."""
    wq = np.multiply(wT, q, out=_buf("wq", q.shape))
    np.multiply(wq, xT, out=out[:, 0])
    np.multiply(wq, q, out=out[:, 1])
    return out


def _seq_pair_sum(t: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Strict left-to-right float32 sums over axis 0 of ``t`` [32, 2, nb] -> (sumqx, sumq2)."""
    acc = np.zeros(t.shape[1:], t.dtype) if out is None else out
    acc[...] = 0  # C starts from 0.0f (and 0.0f + -0.0f is +0.0f)
    for j in range(t.shape[0]):
        acc += t[j]
    return acc[0], acc[1]


def _signed_absmax(xT: np.ndarray):
    """amax and max of the C loop ``if (fabsf(x) > amax) { amax = fabsf(x); max = x; }`` per column."""
    pmax = xT.max(axis=0)
    nmax = -xT.min(axis=0)
    amax = np.maximum(pmax, nmax)
    mx = np.where(pmax >= nmax, pmax, -nmax).astype(np.float32)
    tie = np.flatnonzero((pmax == nmax) & (amax > 0))  # +a and -a both present: the first one counts
    if tie.size:
        sub = xT[:, tie]
        first = np.argmax(np.abs(sub) == amax[tie], axis=0)
        mx[tie] = sub[first, np.arange(tie.size)]
    return amax, mx


def _search_scales(xT: np.ndarray, wT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-32 scale search of quantize_row_iq4_nl_impl (ntry = 7), over all sub-blocks at once.

    xT, wT: values and weights position-major, float32 [32, nb].  Returns the scales [nb] (0 where
    amax < GROUP_MAX_EPS) and amax [nb]."""
    nb = xT.shape[1]
    shape = xT.shape
    amax, mx = _signed_absmax(xT)
    valid = amax >= GROUP_MAX_EPS
    mx = np.where(valid, mx, F32(1)).astype(np.float32)
    al = _buf("al", shape)
    q_a, q_b = _buf("qa", shape), _buf("qb", shape)
    t_a = _buf("ta", (SUB, 2, nb))

    # first guess: d = -max/values[0], id = 1/d
    id0 = (F32(1) / ((-mx) / KV[0])).astype(np.float32)
    _lookup(_scaled2(id0, xT, al), _QV, q_a, True)
    sumqx, sumq2 = _seq_pair_sum(_terms(wT, xT, q_a, t_a))
    pos = sumq2 > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.where(pos, sumqx / sumq2, F32(0)).astype(np.float32)
        best = (d * sumqx).astype(np.float32)

    # the trials: id = (itry + values[0]) / max.  |id| shrinks with k, so a value's table entry can
    # change once at most between the first (k = 0) and the last trial (k = 14)
    _lookup(_scaled2((F32(TNUM0) / mx).astype(np.float32), xT, al), _QV, q_a, True)
    _lookup(_scaled2((F32(TNUM0 + NTR - 1) / mx).astype(np.float32), xT, al), _QV, q_b, True)
    sw = np.flatnonzero(np.not_equal(q_a, q_b, out=_buf("sw", shape, bool)))  # the values that switch
    n = sw.size
    qsa = np.take(q_a.reshape(-1), sw, out=_buf("qsa", (n,)), mode="clip")
    qsb = np.take(q_b.reshape(-1), sw, out=_buf("qsb", (n,)), mode="clip")
    h0 = np.greater(qsa, qsb, out=_buf("h0", (n,), bool))  # at k = 0 they sit on the upper side of...
    # (the two entries are neighbours: |id| changes by 14/127 at most over the trials, and no two
    # consecutive midpoints of one sign are that close; checked here all the same)
    lo = np.minimum(qsa, qsb, out=_buf("lo", (n,)))
    lo += F32(128)
    if not np.array_equal(np.take(_NEXT, lo.astype(np.intp), mode="clip"), np.maximum(qsa, qsb)):
        raise AssertionError("IQ4 trial search spans two table midpoints")
    ms = np.add(qsa, qsb, out=qsa)
    ms *= F32(0.5)  # ...the midpoint between their two entries (exact)
    _terms(wT, xT, q_a, t_a)

    jn = np.floor_divide(sw, nb, out=_buf("jn", (n,), np.intp))
    jn *= nb  # row start of each value in [32, nb]
    bs = np.subtract(sw, jn, out=_buf("bs", (n,), np.intp))
    xs = np.take(xT.reshape(-1), sw, out=_buf("xs", (n,)), mode="clip")
    mxs = np.take(mx, bs, out=_buf("mxs", (n,)), mode="clip")
    np.add(sw, jn, out=jn)  # flat index of their w*q*x terms in [32, 2, nb]

    def switched(k, sel=None):  # exact: has value i left its k = 0 entry by trial k?
        if sel is None:
            al = np.add(k, F32(TNUM0), out=_buf("sal", (n,)), dtype=np.float32)
            al /= mxs
            al *= xs
            c = np.greater_equal(al, ms, out=_buf("sc", (n,), bool))
            return np.not_equal(c, h0, out=c)
        al = (k.astype(np.float32) + F32(TNUM0)) / mxs[sel] * xs[sel]
        return (al >= ms[sel]) != h0[sel]  # best_index_int8 takes the upper entry from the midpoint on

    # the first trial where it switched: estimated from (k + TNUM0) * x / max = mid, then settled exactly
    with np.errstate(divide="ignore", invalid="ignore"):
        ks = np.multiply(ms, mxs, out=_buf("ks", (n,)))
        ks /= xs
        ks -= F32(TNUM0 - 1)
    np.floor(ks, out=ks)
    np.clip(ks, 1, NTR - 1, out=ks)
    sk = _buf("sk", (n,), np.int8)
    np.copyto(sk, ks, casting="unsafe")
    bad = ~switched(sk)
    sk -= 1
    bad |= switched(sk)
    sk += 1
    bad = np.flatnonzero(bad)
    for _ in range(NTR):
        if not bad.size:
            break
        k = sk[bad]
        step = (~switched(k, bad)).astype(np.int8) - switched(k - 1, bad)
        sk[bad] += step
        bad = bad[step != 0]
    else:  # pragma: no cover
        raise AssertionError("IQ4 trial search did not settle")
    # the term positions (w*q*x, then w*q*q nb further) and their values after the switch, grouped by
    # the trial where they switch
    order = np.argsort(sk, kind="stable")
    where = _buf("where", (n, 2), np.intp)
    np.take(jn, order, out=where[:, 0], mode="clip")
    np.add(where[:, 0], nb, out=where[:, 1])
    where = where.reshape(-1)
    # (gathered in memory order, then put in trial order)
    wq = np.take(wT.reshape(-1), sw, out=_buf("ws", (n,)), mode="clip")
    wq *= qsb
    after = _buf("after", (n, 2))
    np.multiply(wq, xs, out=after[:, 0])
    np.multiply(wq, qsb, out=after[:, 1])
    after = np.take(after.view(np.complex64).reshape(-1), order, out=_buf("aftero", (n,), np.complex64),
                    mode="clip").view(np.float32)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(sk, minlength=NTR)) * 2])

    # the 15 trials' sums (row k + 1; row 0 is the first guess)
    sums = _buf("sums", (NTR + 1, 2, nb))
    sums[0, 0], sums[0, 1] = sumqx, sumq2
    cur = t_a.reshape(-1)
    for k in range(NTR):
        if k:
            a, b = bounds[k], bounds[k + 1]
            cur[where[a:b]] = after[a:b]
        _seq_pair_sum(t_a, out=sums[k + 1])
    # and the choice: if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { d = sumqx/sumq2; best = d*sumqx; }
    X, Q = sums[1:, 0], sums[1:, 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        D = np.divide(sums[:, 0], sums[:, 1], out=_buf("D", (NTR + 1, nb)))
        D[0] = d
        XX = np.multiply(X, X, out=_buf("XX", (NTR, nb)))
        B = np.multiply(D[1:], X, out=_buf("B", (NTR, nb)))
        qpos = np.greater(Q, 0, out=_buf("qpos", (NTR, nb), bool))
        pick = np.zeros(nb, np.int8)  # the row of D that wins: the last accepted trial
        bq = _buf("bq", (nb,))
        ok = _buf("ok", (nb,), bool)
        okk, mask, flip = _buf("okk", (nb,), np.int8), _buf("mask", (nb,), np.int32), _buf("flip", (nb,), np.int32)
        bi, Bi = best.view(np.int32), B.view(np.int32)
        for k in range(NTR):
            np.multiply(best, Q[k], out=bq)
            np.greater(XX[k], bq, out=ok)
            ok &= qpos[k]
            # best = ok ? B[k] : best, as a bit blend (exact, and faster than np.where/putmask)
            np.negative(ok.view(np.int8), out=mask, casting="unsafe")
            np.bitwise_xor(bi, Bi[k], out=flip)
            flip &= mask
            bi ^= flip
            np.multiply(ok.view(np.int8), np.int8(k + 1), out=okk)
            np.maximum(pick, okk, out=pick)
    d = np.take(D.reshape(-1), pick.astype(np.intp) * nb + np.arange(nb), mode="clip")
    return np.where(valid, d, F32(0)).astype(np.float32), amax


def _prepare(x: np.ndarray, imatrix: np.ndarray | None, sbs: int):
    """Values and weights position-major [32, nb].  weight[j] of quantize_row_iq4_nl_impl: x*x, or
    qw[j] * sqrtf(sigma2 + x*x) with sigma2 = 2/super_block_size * (sum of x*x over the super-block)."""
    rows, n = x.shape
    nb = x.size // SUB
    xT = _buf("x", (SUB, nb))
    np.copyto(xT, x.reshape(nb, SUB).T)
    wT = np.multiply(xT, xT, out=_buf("w", (SUB, nb)))
    if imatrix is not None:
        # sigma2: the super-block's x*x in order (sub-block by sub-block, position by position)
        per = sbs // SUB
        xx = wT if per == 1 else np.ascontiguousarray(wT.reshape(SUB, -1, per).transpose(2, 0, 1))
        xx = xx.reshape(sbs, -1)
        sig = np.zeros(xx.shape[1], np.float32)
        for row in xx:
            sig += row
        sig *= F32(2 / sbs)
        if per > 1:
            sig = np.repeat(sig, per)
        wT += sig
        np.sqrt(wT, out=wT)
        wT.reshape(SUB, rows, n // SUB)[...] *= imatrix.reshape(-1, SUB).T[:, None, :]
    return xT, wT


def _final_L(x: np.ndarray, inv: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """best_index_int8(inv * x) per sub-block, packed: q4 [nb, 16] with q4[j] = L[j] | L[16 + j] << 4.
    amax: the largest |x| of each sub-block."""
    nb = inv.shape[0]
    xb = x.reshape(nb, SUB)
    al = _buf("al", xb.shape)
    inv2 = (inv * F32(2)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        small = bool(np.all(np.abs(inv2) * amax < F32(2.0**60)))
    if small:  # finite, no overflow: (2*inv) * x is exactly 2 * (inv * x), as in _scaled2
        np.multiply(xb, inv2[:, None], out=al)
    else:
        np.multiply(xb, inv[:, None], out=al)
    L = _lookup(al, _IDX, _buf("L", xb.shape, np.uint8), small)
    L8 = L.view(np.uint64).reshape(nb, 2, 2)  # bytes 0-15 and 16-31 of each sub-block, 8 at a time
    q4 = np.left_shift(L8[:, 1], np.uint64(4), out=_buf("q4", (nb, 2), np.uint64))  # indices < 16: no carry
    q4 |= L8[:, 0]
    return q4.view(np.uint8)


class IQ4_NL(Kernel, qtype=T.IQ4_NL):
    gil_bound = True
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, x, imatrix):  # quantize_iq4_nl
        rows, n = x.shape
        xT, wT = _prepare(x, imatrix, SUB)
        scale, amax = _search_scales(xT, wT)
        nb = scale.shape[0]
        out = np.empty((nb, cls.type_size), np.uint8)
        out[:, :2] = fp16_bits(scale).reshape(nb, 1).view(np.uint8)  # dh = fp16(scales[0])
        out[:, 2:] = _final_L(x, safe_recip(scale), amax)  # L = best_index_int8(x / scales[0])
        return out.reshape(rows, -1)

    @classmethod
    def dequantize_into(cls, q, n, out):  # dequantize_row_iq4_nl: y[j] = d * kvalues[...]
        blk = q.reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d = block_f16(blk, 0)
        qs = block_bytes16(blk, 2, _buf("dq_qs", (nb, 16), np.uint8))
        v = out.reshape(-1)
        np.copyto(v, _kvalues_into(qs, nb, _buf("dq_kv", (nb, 32), np.uint8)).reshape(-1), casting="unsafe")
        with np.errstate(invalid="ignore"):  # an inf scale times a 0 from nothing: NaN, as in the C
            v *= np.repeat(d, SUB)


class IQ4_XS(Kernel, qtype=T.IQ4_XS):
    gil_bound = True
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, x, imatrix):  # quantize_iq4_xs
        rows, n = x.shape
        xT, wT = _prepare(x, imatrix, 256)
        scales, amax = _search_scales(xT, wT)
        scales = scales.reshape(-1, 8)  # [nsb, 8]
        nsb = scales.shape[0]
        # the super-block scale d = -max_scale/32, max_scale the first largest |scale| (strict >, from 0)
        # (a NaN scale, from overflowed sums, never compares greater)
        a = np.abs(scales)
        k = np.argmax(np.where(np.isnan(a), F32(0), a), axis=1)
        ms = scales[np.arange(nsb), k]
        ms = np.where(np.abs(ms) > 0, ms, F32(0)).astype(np.float32)
        d = ((-ms) / F32(32)).astype(np.float32)
        l = np.clip(_nearest_int(safe_recip(d)[:, None] * scales), -32, 31)
        dl = (d[:, None] * l.astype(np.float32)).astype(np.float32)
        lu = (l + 32).astype(np.uint8)
        out = np.empty((nsb, cls.type_size), np.uint8)
        out[:, 0:2] = fp16_bits(d).reshape(nsb, 1).view(np.uint8)
        sh = np.zeros(nsb, np.uint16)
        for ib in range(8):
            sh |= (lu[:, ib] >> 4).astype(np.uint16) << (2 * ib)
        out[:, 2:4] = sh.astype("<u2").reshape(nsb, 1).view(np.uint8)
        out[:, 4:8] = pack_nibbles(lu[:, 0::2], lu[:, 1::2])
        out[:, 8:] = _final_L(x, safe_recip(dl.reshape(-1)), amax).reshape(nsb, 128)
        return out.reshape(rows, -1)

    @classmethod
    def dequantize_into(cls, q, n, out):  # dequantize_row_iq4_xs
        blk = q.reshape(-1, cls.type_size)
        nsb = blk.shape[0]
        d = block_f16(blk, 0)[:, None]
        sh = block_u16(blk, 1).astype(np.int32)[:, None]  # scales_h
        sl = blk[:, 4:8].astype(np.int32)
        ls = np.empty((nsb, 8), np.int32)
        ls[:, 0::2] = sl & 0x0F
        ls[:, 1::2] = sl >> 4
        ls |= ((sh >> _SH_XS) & 3) << 4
        qs = _buf("dq_qs", (nsb, 8, 16), np.uint8)
        qs.view(np.complex128)[:, :, 0] = blk[:, 8:].view(np.complex128)
        v = out.reshape(-1)
        np.copyto(v, _kvalues_into(qs, nsb * 8, _buf("dq_kv", (nsb * 8, 32), np.uint8)).reshape(-1),
                  casting="unsafe")
        with np.errstate(invalid="ignore"):  # inf * 0 (an overflowed scale): NaN, as in the C
            v *= np.repeat(d * (ls - 32).astype(np.float32), SUB)  # dl = d * (ls - 32)


_SH_XS = 2 * np.arange(8, dtype=np.int32)
