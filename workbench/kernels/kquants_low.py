"""Q2_K and Q3_K: 256-value super-blocks of sixteen 16-value sub-blocks, byte-exact with ggml.

Layout used by the searches: a batch of sub-blocks is transposed to ``X[16, k]`` (row i = the i-th value
of every sub-block), so every step of ggml's per-sub-block loops is one vector operation over k sub-blocks
and the C loops' left-to-right float32 sums are plain row additions in the same order.  Q3_K's
sequential rmse refinement is the exception: its few candidate sub-blocks (those whose first pass would
try a move) are refined as rows ``[k, 16]``, where a sub-block's moves to try pack into a 16-bit mask
(np.packbits) and finished sub-blocks are dropped with row copies; the first iteration takes the first
position to try from the first pass; the few that still move after a couple of iterations
are refined together for several batches (a call's chunk), as an iteration costs much the same for
any number of them.

Only the scales ggml's searches find reach the output in most sub-blocks: the quants are computed again
from the stored (fp16 / 4- or 6-bit) scales.  The searches therefore keep just what is needed to rebuild
their own quants for the few sub-blocks whose stored scale is zero (where ggml keeps the search's quants).
Those final quants are computed, and packed with 64-bit word operations, in the same [16, k] layout.

Where numpy has a fused, sequential form of a C sum (``np.einsum`` over C-contiguous float32, checked at
import) the weighted sums take one pass.  Dequantization works on 64-bit words of the packed codes.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import Kernel, check_finite
from .common import _SCRATCH, F32, MAGIC as _MAGIC, clip_ufunc as _CLIP, fp16_bits, fp16_value, round_int8, \
    scale_codes, seqdot
from .legacy import block_bytes16, block_f16

QK_K = 256
EPS = F32(1e-15)  # GROUP_MAX_EPS
_BATCH = 16384  # sub-blocks per search batch (a whole 256k-value chunk: fewer, longer numpy calls)
_ERR = dict(all="ignore")


_WS = _SCRATCH  # per-thread scratch arrays (common.scratch), names prefixed by their use


# -- exact scalar semantics ----------------------------------------------------------------------

def nearest_int_c(a: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit (also for NaN, Inf and |a| >= 2^22, where it is not a rounding)."""
    v = np.add(a, _MAGIC, dtype=np.float32)
    i = v.view(np.int32)
    i &= 0x007FFFFF
    i -= 0x00400000
    return i


def _rsum_loop(a, from_zero):
    if from_zero:
        s = np.add(F32(0), a[0], dtype=np.float32)
    else:
        s = a[0].astype(np.float32, copy=True)
    for i in range(1, a.shape[0]):
        np.add(s, a[i], out=s)
    return s


def _reduce_is_sequential() -> bool:
    """Whether np.add.reduce over axis 0 of a C-contiguous [n, k>=2] float32 array adds the rows in order
    (numpy keeps the reduced axis outside its inner loop there; checked once, on data where order matters)."""
    rng = np.random.default_rng(5)
    for k in (2, 3, 17, 300):
        a = (rng.standard_normal((256, k)) * 10.0 ** rng.integers(-4, 9, (256, k))).astype(np.float32)
        if not np.array_equal(np.add.reduce(a, axis=0).view(np.uint32), _rsum_loop(a, False).view(np.uint32)):
            return False
    return True


_REDUCE_SEQ = _reduce_is_sequential()


def _rsum(a: np.ndarray, from_zero: bool = False) -> np.ndarray:
    """Sum over axis 0 strictly in row order (a C ``for`` loop over the positions), float32.

    ``from_zero``: the C loop starts from ``sum = 0``: that only turns an all -0.0 sum into +0.0, which is
    what adding +0.0 at the end does."""
    if _REDUCE_SEQ and a.ndim == 2 and a.shape[1] >= 2 and a.flags.c_contiguous and a.dtype == np.float32:
        s = np.add.reduce(a, axis=0)
        if from_zero:
            s += F32(0)
        return s
    return _rsum_loop(a, from_zero)


def _rsum_into(a: np.ndarray, out: np.ndarray) -> None:
    """``_rsum(a, True)`` written into ``out``."""
    if _REDUCE_SEQ and a.ndim == 2 and a.shape[1] >= 2 and a.flags.c_contiguous and a.dtype == np.float32:
        np.add.reduce(a, axis=0, out=out)
        out += F32(0)
    else:
        np.copyto(out, _rsum(a, True))


def _dot(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """``s = 0; for i: s += a[i]*b[i]`` (``... (a[i]*b[i])*c[i]``) over axis 0, float32, in one pass."""
    return seqdot(a, b, out=out) if c is None else seqdot(a, b, c, out=out)


_SIGN = np.int32(-2 ** 31)


def _absmax_first(x: np.ndarray):
    """C: ``amax = 0; max = 0; for i: if (fabsf(x[i]) > amax) {amax = fabsf(x[i]); max = x[i];}`` over
    axis 0 of finite ``x`` [16, k]: (amax, max)."""
    p = np.maximum.reduce(x, axis=0)
    m = np.minimum.reduce(x, axis=0)
    nn = np.negative(m)
    amax = np.maximum(p, nn)
    # p when p >= nn (p - nn >= +0), else -nn: amax with the sign bit of p - nn (np.where with a mask that
    # flips at random is several times slower, np.copysign twice as slow as two integer passes)
    mx = np.add(p, m)
    mi = mx.view(np.int32)
    np.bitwise_and(mi, _SIGN, out=mi)
    np.bitwise_or(mi, amax.view(np.int32), out=mi)
    tie = p == nn
    if tie.any():
        tie &= p > 0
        if tie.any():  # +v and -v both reach the max: the first one wins
            idx = np.flatnonzero(tie)
            sub = x[:, idx]
            first = np.argmax(np.abs(sub) == amax[idx], axis=0)
            mx[idx] = sub[first, np.arange(idx.size)]
    mx += F32(0)  # (an all-zero column's -0.0 to 0)
    return amax, mx


def _absmax_first_c(x: np.ndarray):
    """As _absmax_first, also for NaN / Inf values (a NaN is never selected)."""
    amax = np.zeros(x.shape[1], np.float32)
    mx = np.zeros(x.shape[1], np.float32)
    with np.errstate(**_ERR):
        for i in range(x.shape[0]):
            a = np.abs(x[i])
            up = a > amax
            amax = np.where(up, a, amax)
            mx = np.where(up, x[i], mx)
    return amax, mx


# -- ggml's search helpers, over columns of [16, k] -----------------------------------------------

_OFF = 0x00400000  # nearest_int's offset: bits & 0x7FFFFF of (v + 1.5*2^23) is nearest_int(v) + _OFF


def _take_cols(arrays, keep):
    """Columns ``keep`` of [n, k] arrays (a flat gather: np.take along axis 1 is slow for single items)."""
    n, k = arrays[0].shape
    flat = (np.arange(n)[:, None] * k + keep).ravel()
    return [np.take(a.reshape(-1), flat).reshape(n, keep.size) for a in arrays]


def _refine(x, w, wx, L, sumlx, suml2, lo, hi, qp):
    """The ``itry`` loop of make_q3_quants (``qp=False``) / make_qp_quants (``qp=True``): up to five
    sequential passes over the positions that move one quant at a time when that improves sumlx^2/suml2.

    Columns of [n, k] arrays.  Event driven: each iteration finds, for every active column, the first
    position (from its cursor on) whose move is accepted under the current sums, exactly as the C pass
    meets it, and applies it.  ``L`` (float32; for qp the uint8 value 0..255), ``sumlx`` and ``suml2``
    are updated in place."""
    n, k = x.shape
    if k == 0:
        return
    pos = np.arange(n, dtype=np.int8)[:, None]
    rank = np.arange(n, 0, -1, dtype=np.uint8)[:, None]  # n - position
    gidx = np.arange(k)
    xa, wa, wxa, La = x, w, wx, L.copy()
    Li = La.astype(np.int32)
    Li += _OFF
    sx, s2 = sumlx.copy(), suml2.copy()
    kc = k
    cur = np.zeros(k, np.int8)
    npass = np.zeros(k, np.int8)
    changed = np.zeros(k, bool)
    alive = np.ones(k, bool)
    lo_off = None if lo is None else lo + _OFF
    hi_off = hi + _OFF
    first = True
    with np.errstate(**_ERR):
        while True:
            sh = (n, kc)
            slx = np.multiply(wxa, La, out=_WS.get("r_slx", sh))
            np.subtract(sx, slx, out=slx)
            sl2 = np.multiply(wa, La, out=_WS.get("r_sl2", sh))
            sl2 *= La
            np.subtract(s2, sl2, out=sl2)
            ok = np.greater(slx, 0, out=_WS.get("r_ok", sh, bool))
            tb = _WS.get("r_tb", sh, bool)
            if qp:
                ok &= np.greater(sl2, 0, out=tb)
            q = np.multiply(xa, sl2, out=_WS.get("r_q", sh))
            q /= slx
            q += _MAGIC
            ni = q.view(np.int32)
            ni &= 0x007FFFFF  # nearest_int(...) + _OFF
            if lo_off is None:
                np.minimum(ni, hi_off, out=ni)
            else:
                np.clip(ni, lo_off, hi_off, out=ni)
            ok &= np.not_equal(ni, Li, out=tb)
            if first:
                first = False
                cb = np.flatnonzero(np.logical_or.reduce(ok, axis=0))
                if cb.size * 2 <= kc:  # columns without a candidate move are done: keep only the others
                    if cb.size == 0:
                        break
                    gidx = cb
                    xa, wa, wxa, La, Li = _take_cols((xa, wa, wxa, La, Li), cb)
                    sx, s2 = sx[cb], s2[cb]
                    kc = cb.size
                    cur, npass = cur[:kc], npass[:kc]
                    changed, alive = changed[:kc], alive[:kc]
                    first = True
                    continue
            else:
                ok &= np.greater_equal(pos, cur, out=tb)
            nf = _WS.get("r_nf", sh)
            nf[...] = ni
            nf -= F32(_OFF)  # the new quant (exact: |value| < 2^23)
            t = np.multiply(wxa, nf, out=_WS.get("r_t", sh))
            slx += t
            np.multiply(wa, nf, out=t)
            t *= nf
            sl2 += t
            if not qp:
                ok &= np.greater(sl2, 0, out=tb)
            a1 = np.multiply(slx, slx, out=t)
            a1 *= s2
            a2 = np.multiply(sx, sx)
            ok &= np.greater(a1, a2 * sl2, out=tb)  # slx*slx*suml2 > sumlx*sumlx*sl2
            p = np.maximum.reduce(np.multiply(ok, rank, out=_WS.get("r_p", sh, np.uint8)), axis=0)
            cols = np.flatnonzero(p)
            if cols.size:
                pr = n - p[cols].astype(np.intp)
                nv = nf[pr, cols]
                if qp:
                    nv = (nv.astype(np.int32) & 0xFF).astype(np.float32)
                La[pr, cols] = nv
                Li[pr, cols] = nv.astype(np.int32) + _OFF
                L[pr, gidx[cols]] = nv
                sx[cols] = slx[pr, cols]
                s2[cols] = sl2[pr, cols]
                cur[cols] = pr + 1
                changed[cols] = True
            end = alive & (p == 0)
            again = end & changed & (npass < 4)
            cur[again] = 0
            npass[again] += 1
            changed[again] = False
            fin = end & ~again
            if fin.any():
                fc = np.flatnonzero(fin)
                sumlx[gidx[fc]] = sx[fc]
                suml2[gidx[fc]] = s2[fc]
                alive[fc] = False
                cur[fc] = n
            na = int(np.count_nonzero(alive))
            if na == 0:
                break
            if na * 2 <= kc and kc - na >= 256:  # compact the still active columns
                keep = np.flatnonzero(alive)
                gidx = gidx[keep]
                xa, wa, wxa, La, Li = _take_cols((xa, wa, wxa, La, Li), keep)
                sx, s2, cur, npass, changed = sx[keep], s2[keep], cur[keep], npass[keep], changed[keep]
                alive = np.ones(na, bool)
                kc = na


def _plus_off(L, out):
    """Integer-valued float32 L (|L| < 2^22) as int32 L + _OFF in ``out`` (two fast passes: float to int
    casts are slow): the bits of L + 1.5*2^23 hold it in their low 23 bits."""
    np.add(L, _MAGIC, out=out.view(np.float32))
    out &= 0x007FFFFF
    return out


# a row may try the positions from its cursor u (counted over the passes) up to its limit: the end of
# its pass, or of the next one once its pass moved a quant (five passes at most): mask of the first
# min(16, limit - u) bits of its 32-bit mask rotated to start at u
_AVAIL = (1 << np.minimum(np.arange(33), 16)) - 1
_NEXT_END = np.minimum(16 * np.arange(2, 7), 80)  # the limit once pass 0..4 moved a quant
_LOW = np.arange(1 << 16)
_LOW = np.log2(np.maximum(_LOW & -_LOW, 1)).astype(np.int8)  # the lowest set bit of a 16-bit value (0 for 0)


class _Q3Tail:
    """The sub-blocks several refinements hand on (``_refine_q3_steps``), gathered to finish together:
    their rows go straight to scratch arrays with room for ``cap`` of them."""

    def __init__(self, cap):
        self.bufs = [_WS.get("r3m%d" % j, (cap, 16), t) for j, t in enumerate((np.float32,) * 3 + (np.int32,))]
        self.n = 0
        self.small = []

    def add(self, rows, keep, small):
        """Rows ``keep`` of the [k, 16] arrays ``rows`` (x, T1, T2, L + _OFF) with their [keep.size] ids,
        sums, cursors and limits ``small``."""
        o = self.n
        self.n += keep.size
        for a, buf in zip(rows, self.bufs):
            a.take(keep, axis=0, out=buf[o:self.n], mode="clip")
        self.small.append(small)

    def state(self):
        """The refinement state of all the rows handed on (None if none)."""
        if not self.n:
            return None
        ids, sx, s2, u, lim = (np.concatenate(c) for c in zip(*self.small))
        return [ids] + [b[:self.n] for b in self.bufs] + [sx, s2, u, lim]


def _q3_new_l(q):
    """make_q3_quants' ``new_l = clamp(nearest_int(q), -4, 3)`` + _OFF as int32, in the bits of the float32
    quotients q (overwritten), as C computes it (also for huge and non-finite quotients)."""
    q += _MAGIC
    ni = q.view(np.int32)
    ni &= 0x007FFFFF
    return _CLIP(ni, _OFF - 4, _OFF + 3, out=ni)


def _q3_move(xv, nl, slx, sl2, ok, fi, uj, R, Lia, T1a, T2a, sx, s2, lim):
    """C's test of moves to ``new_l = nl - _OFF`` at the values xv (flat positions fi, C positions uj,
    of the rows R of the state arrays Lia, T1a, T2a, sx, s2, lim; R None: every row), where slx, sl2 are
    the sums without the moving terms: ``ok &= sl2 > 0 && slx*slx*suml2 > sumlx*sumlx*sl2`` with the new
    terms added, and the moves that pass it applied (a pass that moved a quant may be followed by
    another, up to five: the row's limit becomes the end of the next one)."""
    sxR, s2R = (sx, s2) if R is None else (sx[R], s2[R])
    nf = np.subtract(nl, _OFF, dtype=np.float32)  # new_l (exact: |new_l + _OFF| < 2^23)
    w = xv * xv  # C: w = x[i]*x[i]; slx += w*x[i]*new_l; sl2 += w*new_l*new_l
    t1 = w * xv
    t1 *= nf
    t2 = np.multiply(w, nf, out=w)
    t2 *= nf
    slx += t1
    sl2 += t2
    ok &= sl2 > 0
    a1 = slx * slx
    a1 *= s2R
    a2 = sxR * sxR
    a2 *= sl2
    ok &= a1 > a2
    e = ok.nonzero()[0]
    if e.size:
        fs = fi[e]
        Lia.reshape(-1)[fs] = nl[e]
        T1a.reshape(-1)[fs] = t1[e]
        T2a.reshape(-1)[fs] = t2[e]
        cs = e if R is None else R[e]
        sx[cs] = slx[e]
        s2[cs] = sl2[e]
        le = uj[e]
        le >>= 4  # the pass
        lim[cs] = _NEXT_END.take(le)


def _refine_q3_steps(st, sumlx, suml2, tail=None, first=None, Lout=None):
    """The ``itry`` loop of make_q3_quants(16, 4, x, L, true) for the sub-blocks of the state ``st``
    (``_q3_batch_state``: rows, one sub-block each): up to five sequential passes over the positions,
    each moving one quant when that raises sumlx^2/suml2.  Runs until every row is done or, with a
    ``tail`` (``_Q3Tail``), fewer than _Q3_TAIL are still active: those go to the tail.  A done row's
    sums go to sumlx, suml2 at its id (with ``Lout``, its quants + _OFF to Lout's row there: int32).

    Event driven: each iteration evaluates every position's move under its row's current sums (a few
    dense passes), packs the positions where C would try one (``new_l != L[i]``) into a 16-bit mask per
    row and runs C's acceptance test on just the first of them the C pass meets from the row's cursor
    on: accepted, the move is applied; rejected, only the cursor passes it (the sums stay, so the next
    iteration finds the same moves after it).  The cursor counts positions over the passes (16 * pass +
    position) up to the row's limit: the end of its pass, or of the next one once its pass changed
    something (five passes at most).  The mask is rotated to start at the cursor and cut at the limit,
    so the positions before the cursor follow as the next pass's when one may follow (the next pass
    starts with the same sums).  A row with nothing left to try is done: as its state no longer changes,
    evaluating it again finds it done again, so it is only dropped once enough rows are done for the row
    gathers to pay (into two alternating sets of scratch arrays).

    ``first``: each row's first position to try when it is known (intp [k], from ``_q3_batch_state``:
    C's, or one before it), which then skips the dense passes in the first iteration: the quotient at
    that position is computed alone (a position that turns out not to move just moves the cursor)."""
    ids, xa, T1a, T2a, Lia, sx, s2, u, lim = st
    kc = ids.size
    stop = 0 if tail is None else _Q3_TAIL
    par = 0
    # the dense passes' scratch arrays, for the rows at the start (their first kc rows after drops)
    wfull = [_WS.get(n, (kc, 16)) for n in ("r3_slx", "r3_sl2", "r3_q")] + [_WS.get("r3_tb", (kc, 16), bool)]
    ws = None
    with np.errstate(**_ERR):
        while True:
            if first is None:
                sh = (kc, 16)
                if ws is None:
                    ws = [w[:kc] for w in wfull]
                slx_a, sl2_a, q, tb = ws
                # (the sums repeated 16 times: a broadcast over rows of 16 runs an inner loop per row)
                np.subtract(np.repeat(sx, 16).reshape(sh), T1a, out=slx_a)
                np.subtract(np.repeat(s2, 16).reshape(sh), T2a, out=sl2_a)
                np.multiply(xa, sl2_a, out=q)
                np.divide(q, slx_a, out=q)
                q += _MAGIC  # (_q3_new_l)
                ni = q.view(np.int32)
                ni &= 0x007FFFFF
                _CLIP(ni, _OFF - 4, _OFF + 3, out=ni)
                np.not_equal(ni, Lia, out=tb)  # new_l != L[i]
                # bit p: a move to try at position p
                bits = np.packbits(tb.reshape(-1), bitorder="little").view("<u2").astype(np.int64)
                bits *= 0x10001  # twice: bits p + 16 are those of the next pass
                bits >>= u & 15
                # from the cursor on, in C's order, up to the row's limit (the next pass's too if one may follow)
                bits &= _AVAIL.take(lim - u)
            else:  # every row has a move to try (its first position is known), from cursor 0 of the first pass
                p = first
                fi = np.arange(0, 16 * kc, 16)
                fi += p
                xv = xa.take(fi)
                slx = T1a.take(fi)
                np.subtract(sx, slx, out=slx)
                sl2 = T2a.take(fi)
                np.subtract(s2, sl2, out=sl2)
                qv = np.multiply(xv, sl2)
                qv /= slx
                nl = _q3_new_l(qv)
                ok = slx > 0
                ok &= np.not_equal(nl, Lia.take(fi))  # (the mask may hold positions C does not try)
                _q3_move(xv, nl, slx, sl2, ok, fi, p, None, Lia, T1a, T2a, sx, s2, lim)
                p += 1
                u = p
                first = None
                continue  # (none is done yet)
            has = bits != 0
            R = has.nonzero()[0]  # the rows with a move to try; the others are done
            if R.size:
                uj = np.add(u.take(R), _LOW.take(bits.take(R)))  # the position tried, counted over the passes
                fi = R << 4
                fi += uj & 15
                xv = xa.take(fi)
                nl = ni.take(fi)
                slx = slx_a.take(fi)
                sl2 = sl2_a.take(fi)
                ok = slx > 0
                _q3_move(xv, nl, slx, sl2, ok, fi, uj, R, Lia, T1a, T2a, sx, s2, lim)
                uj += 1  # the cursor passes the tried position either way
                u[R] = uj
            if R.size < kc:  # the rows without a move to try are done
                if R.size == 0:
                    sumlx[ids] = sx
                    suml2[ids] = s2
                    if Lout is not None:
                        Lout[ids] = Lia
                    return None
                # few done (or few rows at all): they stay (with unchanged state they finish again)
                if (kc - R.size) * 8 < kc or kc < _Q3_NOCOMPACT:
                    continue
                fin = (~has).nonzero()[0]
                idf = ids[fin]
                sumlx[idf] = sx[fin]
                suml2[idf] = s2[fin]
                if Lout is not None:
                    Lout[idf] = Lia[fin]
                keep = R
                ws = None
                kc = keep.size
                ids = ids[keep]
                sx, s2, u, lim = sx[keep], s2[keep], u[keep], lim[keep]
                if kc < stop:  # handed on
                    tail.add((xa, T1a, T2a, Lia), keep, [ids, sx, s2, u, lim])
                    return
                par ^= 1  # into the scratch arrays the ones read now are not in
                xa, T1a, T2a, Lia = (a.take(keep, axis=0, out=_WS.get("r3c%d%d" % (par, j), (kc, 16), a.dtype),
                                            mode="clip") for j, a in enumerate((xa, T1a, T2a, Lia)))
    return None


def _q3_first(xb, a, b, name, res):
    """The part of make_q3_quants(16, 4, x, L, true) before its rmse passes, for the columns of X [16, k]
    = ``_to_T(xb, a, b, name)``: returns X and (sumlx [k], suml2 [k], iscale [k], all-zero flags [k],
    amax [k] = largest |x|, the columns whose first rmse pass may try a move, [k] 16 - the first
    position where it may (0: none)), the arrays being those of ``res`` (sumlx, suml2, iscale, amax,
    all-zero and tried flags, those positions as uint8), filled.  The first quants are
    ``_q3_first_quants(X, iscale)``.

    The columns that may try a move are found with dense passes in this layout: those where
    ``new_l = clip(nearest_int(x*sl2/slx), -4, 3) != L[i]`` at some position, among the non-zero ones
    (all-zero sub-blocks return before the passes) whose first largest |x| is negative: when it is
    positive, iscale < 0 gives every term w*x[i]*L[i] of sumlx the sign of -x[i]*x[i] (<= 0, or NaN), so
    sumlx <= each term (float sums of terms of one sign only grow in magnitude) and ``slx = sumlx -
    w*x[i]*L[i] > 0`` never holds.  It may flag more columns than C tries (np.rint is nearest_int only
    below 2**22: a larger or non-finite quotient counts as a move; C also skips slx == 0), never fewer;
    the refinement decides exactly.

    Done in slices of _Q3_SLICE columns, each transposed just before: X's slice and the few [16, slice]
    temporaries then stay in the L2 cache."""
    k = b - a
    X = _WS.get(name, (16, k))
    sumlx, suml2, iscale, amax, zero, tried, bits = res
    for c in range(0, k, _Q3_SLICE):
        d = min(k, c + _Q3_SLICE)
        Xc = _to_T(xb, a + c, a + d, "q3_x", X[:, c:d])
        _q3_first_slice(Xc, sumlx[c:d], suml2[c:d], iscale[c:d], amax[c:d], zero[c:d], tried[c:d], bits[c:d])
    return X, (sumlx, suml2, iscale, zero, amax, np.flatnonzero(tried), bits)


_Q3_SLICE = 6144
_RANK16 = (16 - np.arange(16, dtype=np.uint8))[:, None]  # 16 - position
_Q3_NOCOMPACT = 256  # below this many rows a refinement no longer drops its done ones (the gathers cost more)


def _q3_first_slice(X, sumlx, suml2, iscale, amax_out, zero, tried, bits):
    """_q3_first for the columns X [16, m] (a view), into the [m] arrays given."""
    shape = X.shape
    amax, mx = _absmax_first(X)
    check_finite(amax)  # NaN and Inf reach the column's largest magnitude (Q3_K.checks_finite)
    amax_out[...] = amax
    np.less(amax, EPS, out=zero)
    with np.errstate(**_ERR):
        np.divide(F32(-4), mx, out=iscale)  # (unused where all |x| < EPS: those quants are 0)
        L = np.multiply(X, iscale, out=_WS.get("q3_l", shape))  # |x * iscale| <= ~4: nearest_int is rint
        np.rint(L, out=L)
        _CLIP(L, F32(-4), F32(3), out=L)  # (np.minimum with a scalar is twice as slow as the clip ufunc)
        w = np.multiply(X, X, out=_WS.get("q3_w", shape))
        T1 = np.multiply(w, X, out=_WS.get("q3_t1", shape))
        T1 *= L  # C: w*x[i]*l
        T2 = np.multiply(w, L, out=w)
        T2 *= L  # w*l*l
        _rsum_into(T1, sumlx)  # C: sumlx += w*x[i]*l; suml2 += w*l*l (from 0, in order)
        _rsum_into(T2, suml2)
        slx = np.subtract(sumlx, T1, out=T1)  # C: slx = sumlx - w*x[i]*L[i]; sl2 = suml2 - w*L[i]*L[i]
        q = np.subtract(suml2, T2, out=T2)
        q *= X  # C: x[i] * sl2 / slx
        q /= slx
        np.rint(q, out=q)
        _CLIP(q, F32(-4), F32(3), out=q)
        tb = np.not_equal(q, L, out=_WS.get("q3_tried", shape, bool)).view(np.uint8)
        tb *= _RANK16  # 16 - p where position p may move, else 0
        np.maximum.reduce(tb, axis=0, out=bits)  # 16 - the first such position (0: none)
        np.not_equal(bits, 0, out=tried)
        tried &= mx < 0
        tried &= ~zero


def _q3_first_quants(x, iscale, out=None):
    """make_q3_quants' first quants ``clip(nearest_int(x * iscale), -4, 3)`` as float32, for x [..., n]
    with iscale broadcast against it (|x * iscale| <= ~4: nearest_int is rint)."""
    with np.errstate(**_ERR):
        L = np.multiply(x, iscale, out=out)
        np.rint(L, out=L)
        return _CLIP(L, F32(-4), F32(3), out=L)


_Q3_GROUP = 3  # batches whose rmse passes end together (Q3_K.chunk_elements: a group per quantize_rows call;
# a larger group keeps more in memory between its first passes and its packing: 8 was 5-8% slower)
_Q3_TAIL = 2048  # ...once fewer sub-blocks than this are still moving in each
_Q3_FINAL = 8192  # sub-blocks quantized again from the stored scales and packed at once
_NO_COLS = np.empty(0, np.intp)


def _q3_batch_state(xb, a, first, id0):
    """The refinement state (``_refine_q3_steps``) of the sub-blocks of xb [nb, 16] from a on whose
    first rmse pass may move a quant (``_q3_first``'s results ``first``; ids from id0), and their first
    positions to try; None, None if none.

    The rows are gathered from xb and their first quants, T1 = w*x[i]*L[i] and T2 = w*L[i]*L[i] computed
    again, bit for bit (cheaper than gathering columns).  The first positions are the first pass's: C's
    where its quotients are below 2^22 (np.rint is nearest_int there).  Without rounding they are at
    most 8 in magnitude: the terms of sumlx are >= 0, so sl2/slx is at most the largest w*L*L / (w*x*L)
    = L/x of the other quants != 0, and those have |x| >= amax/8, so L/x <= 4/amax + 0.5/|x| <= 8/amax.
    Only the sub-blocks where x*sl2 may overflow or the terms may be subnormal start at position 0
    instead (tried exactly; the dense passes take over from position 1)."""
    sumlx, suml2, iscale, _, amax, cols, bits = first
    k = cols.size
    if k == 0:
        return None, None
    sh = (k, 16)  # (scratch arrays: refined before the next batch)
    xr = xb.take(cols + a, axis=0, out=_WS.get("r3s_x", sh), mode="clip")
    L = _q3_first_quants(xr, np.repeat(iscale.take(cols), 16).reshape(sh), _WS.get("r3s_l", sh))
    T2a = np.multiply(xr, xr, out=_WS.get("r3s_t2", sh))
    T1a = np.multiply(T2a, xr, out=_WS.get("r3s_t1", sh))
    T1a *= L  # C: slx = sumlx - w*x[i]*L[i]; sl2 = suml2 - w*L[i]*L[i]
    T2a *= L
    T2a *= L
    s2 = suml2.take(cols)
    p0 = np.subtract(16, bits.take(cols), dtype=np.intp)
    with np.errstate(**_ERR):
        am = amax.take(cols)
        p0[~((am >= F32(1e-11)) & (am * s2 < F32(1e37)))] = 0
    # ids, x, T1, T2, L + _OFF as int, sumlx, suml2, the C pass's position in each row counted over the
    # passes (16 * pass + position), the end of the passes it may go on to (the first one's)
    return [cols + id0, xr, T1a, T2a, _plus_off(L, _WS.get("r3s_li", sh, np.int32)), sumlx.take(cols), s2,
            np.zeros(k, np.intp), np.full(k, 16, np.intp)], p0


def _q3_quants_rows(xr):
    """make_q3_quants(16, 4, x, L, true)'s quants + 4 (0..7; 0 for an all-zero sub-block: its early
    return) of the sub-blocks xr [k, 16] as [16, k]: the quants Q3_K keeps where a sub-block's 6-bit
    scale is 0 (a few sub-blocks: the batches do not keep their refined quants)."""
    k = xr.shape[0]
    res = [np.empty(k, t) for t in (np.float32,) * 4 + (bool,) * 2 + (np.uint8,)]
    X, first = _q3_first(xr, 0, k, "q3_dz", res)
    Lout = _plus_off(np.ascontiguousarray(_q3_first_quants(X, first[2]).T), np.empty((k, 16), np.int32))
    st, b0 = _q3_batch_state(xr, 0, first, 0)
    if st is not None:
        _refine_q3_steps(st, first[0], first[1], None, b0, Lout)
    Lout -= _OFF - 4
    Lout[first[3]] = 0
    return Lout.T


def _make_qx_quants(X, W, nmax, exact):
    """make_qx_quants(n, nmax, x, L, 1, qw) for the columns of X [n, k] with weights W.

    Returns (scale [k], best iscale [k] (0 for all-zero columns), L [n, k] int (0..2*nmax-1)) where L is
    only built when ``exact`` (the small second-level call); otherwise rebuild it with ``_qx_levels``."""
    amax, mx = _absmax_first_c(X) if exact else _absmax_first(X)
    zero = amax < EPS
    mxs = np.where(zero, F32(1), mx)
    wx = np.multiply(W, X, out=_WS.get(("e" if exact else "x") + "_wx", X.shape))
    fmax, fmin = F32(nmax - 1), F32(-nmax)

    shape = X.shape
    tag = "e" if exact else "x"
    tb = _WS.get(tag + "_t", shape)

    def trial(isc):
        if exact:
            lv = np.clip(nearest_int_c(X * isc), -nmax, nmax - 1).astype(np.float32)
        else:
            lv = np.multiply(X, isc, out=_WS.get("x_lv", shape))
            np.rint(lv, out=lv)
            np.clip(lv, fmin, fmax, out=lv)
        sx = _rsum(np.multiply(wx, lv, out=tb), True)
        np.multiply(W, lv, out=tb)
        np.multiply(tb, lv, out=tb)
        return lv, sx, _rsum(tb, True)

    with np.errstate(**_ERR):
        iscale = F32(-nmax) / mxs
        lv, sumlx, suml2 = trial(iscale)
        L = lv if exact else None
        nz = suml2 != 0
        scale = np.where(nz, sumlx / np.where(nz, suml2, F32(1)), F32(0))
        best = scale * sumlx
        best_isc = iscale
        for s in range(-9, 10):
            if s == 0:
                continue
            isc = -(F32(nmax) + F32(0.1) * F32(s)) / mxs
            lv, sx, s2 = trial(isc)
            better = (s2 > 0) & ((sx * sx) > (best * s2))
            if better.any():
                scale = np.where(better, sx / s2, scale)
                best = np.where(better, scale * sx, best)
                best_isc = np.where(better, isc, best_isc)
                if exact:
                    L = np.where(better, lv, L)
    scale[zero] = 0
    best_isc = np.where(zero, F32(0), best_isc)
    if exact:
        L = (L + F32(nmax)).astype(np.int32)
        L[:, zero] = 0
    return scale, best_isc, L


def _qx_levels(x, isc, nmax):
    """The quants make_qx_quants stored for iscale ``isc`` (rows of x [m, n], isc [m]; 0 = all-zero block)."""
    with np.errstate(**_ERR):
        lv = np.clip(nearest_int_c(x * isc[:, None]), -nmax, nmax - 1) + nmax
    lv[isc == 0] = 0
    return lv


def _fit_error(E: np.ndarray, m: np.ndarray, X: np.ndarray, use_mad: bool) -> np.ndarray:
    """``E`` (scale * L) becomes each value's error term in place: |diff| or diff*diff, diff = E + m - x."""
    E += m
    E -= X
    if use_mad:
        np.abs(E, out=E)
    else:
        E *= E
    return E


def _qkx_search(X, W, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants / make_qkx3_quants (identical for finite x) over the columns of X [16, k].

    Returns (scale, the_min, iscale, min, xmin, xmax) where iscale and min rebuild the chosen quants
    (``_qkx_levels``) and xmin / xmax are each column's smallest and largest value.  Raises NonFinite
    when X holds NaN or Inf (they reach xmin or xmax: Q2_K.checks_finite).

    Each step's sums are einsums of W, La (and X) without a W*La temporary, the six products of sums
    its scale and min need come from one outer product of [w, x, l] and [l2, xl, l], and the best fit
    is updated by one bit blend of [5, k] arrays (Q2_K calls this for cache-sized batches, where the
    many small [k] operations per step are a good part of the time)."""
    shape = X.shape
    k = shape[1]
    xmin = X.min(axis=0)
    mx = X.max(axis=0)
    check_finite(xmin, mx)
    mn = np.minimum(xmin, F32(0))
    U = np.empty((3, k), np.float32)  # sum_w, sum_x, sum_l
    V = np.empty((3, k), np.float32)  # sum_l2, sum_xl, sum_l
    sum_w, sum_x = U[0], U[1]
    np.copyto(sum_w, _rsum(W))  # C: sum_w = weights[0]; sum_w += weights[i] (not from 0)
    np.copyto(sum_x, _rsum(np.multiply(W, X, out=_WS.get("qat2", shape))))
    flat = mx == mn
    fmax = F32(nmax)
    with np.errstate(**_ERR):
        rng = mx - mn
        iscale = fmax / np.where(flat, F32(1), rng)
        scale = F32(1) / iscale
        La = np.subtract(X, mn, out=_WS.get("q_la", shape))
        if np.isfinite(iscale).all():  # 0 <= (x - min) * iscale <= ~nmax: nearest_int is rint there
            La *= iscale
            np.rint(La, out=La)
        else:
            La[...] = nearest_int_c(La * iscale)
        _CLIP(La, F32(0), fmax, out=La)
        E = _fit_error(np.multiply(La, scale, out=_WS.get("qat2", shape)), mn, X, use_mad)
        # the best fit so far (error, scale, min, iscale, the min its quants used) and this step's candidate
        # (error, scale, min, iscale, the min it used): C's update when better is one blend of the two
        S = np.empty((5, k), np.float32)
        C = np.empty((5, k), np.float32)
        _dot(W, E, out=S[0])
        S[1], S[2], S[3], S[4] = scale, mn, iscale, mn
        best, scale, mn, best_isc, used_mn = S
        cur, N, isc, cmn = C[0], C[1:3], C[3], C[4]
        ts, tm = N
        P = np.empty((3, 3, k), np.float32)  # U[i] * V[j]
        D = np.empty(k, np.float32)
        ok = np.empty(k, bool)
        ok2 = np.empty(k, bool)
        M = np.empty(k, np.uint32)
        B = np.empty((5, k), np.uint32)
        for s in range(nstep + 1):
            np.subtract(mx, mn, out=rng)
            np.divide(F32(rmin) + F32(rdelta) * F32(s) + fmax, rng, out=isc)
            np.subtract(X, mn, out=La)  # C: l = nearest_int(iscale*(x[i] - min)); MAX(0, MIN(nmax, l))
            La *= isc
            np.rint(La, out=La)
            _CLIP(La, F32(0), fmax, out=La)
            # C: sum_l += w*l; sum_l2 += w*l*l; sum_xl += w*l*x[i] (from 0, in order)
            _dot(W, La, out=V[2])
            _dot(W, La, La, out=V[0])
            _dot(W, La, X, out=V[1])
            U[2] = V[2]
            np.multiply(U[:, None], V[None], out=P)
            np.subtract(P[0, 0], P[2, 2], out=D)  # sum_w*sum_l2 - sum_l*sum_l
            np.subtract(P[0, 1], P[1, 2], out=ts)  # sum_w*sum_xl - sum_x*sum_l
            np.subtract(P[1, 0], P[2, 1], out=tm)  # sum_l2*sum_x - sum_l*sum_xl
            N /= D
            if np.greater(tm, 0, out=ok).any():
                pos = np.flatnonzero(ok)
                tm[pos] = 0
                ts[pos] = V[1, pos] / V[0, pos]
            T2 = _fit_error(np.multiply(La, ts, out=La), tm, X, use_mad)  # C: this_scale*Laux[i] + this_min - x[i]
            _dot(W, T2, out=cur)
            np.less(cur, best, out=ok)
            ok &= np.greater(D, 0, out=ok2)
            nb = np.count_nonzero(ok)
            if nb * 8 > k:  # many: a branch-free blend of the bits (a masked copy mispredicts)
                cmn[...] = mn
                np.copyto(M, ok, casting="unsafe")
                np.negative(M, out=M)
                Su = S.view(np.uint32)
                np.bitwise_xor(Su, C.view(np.uint32), out=B)
                B &= M
                Su ^= B
            elif nb:
                bi = np.flatnonzero(ok)
                used_mn[bi] = mn[bi]
                best[bi] = cur[bi]
                scale[bi] = ts[bi]
                best_isc[bi] = isc[bi]
                mn[bi] = tm[bi]
    scale = scale.copy()
    best_isc = best_isc.copy()
    scale[flat] = 0
    best_isc[flat] = 0
    return scale, -mn, best_isc, used_mn.copy(), xmin, mx


def _qkx_levels(x, isc, mn, nmax):
    """The quants make_qkx2/3_quants stored: rows of x [m, 16] with the chosen iscale and min."""
    with np.errstate(**_ERR):
        return np.clip(nearest_int_c((x - mn[:, None]) * isc[:, None]), 0, nmax)


def _make_qp_quants(x, qw, nmax):
    """make_qp_quants(16, nmax, x, L, qw) for the columns of x [16, k]: (scale [k], L [16, k] int 0..255)."""
    n, k = x.shape
    with np.errstate(**_ERR):
        mx = np.zeros(k, np.float32)
        for i in range(n):  # MAX(max, x[i]) = max > x[i] ? max : x[i]
            mx = np.where(mx > x[i], mx, x[i])
        zero = mx < EPS
        iscale = F32(nmax) / mx
        scale = F32(1) / iscale
        L0 = (nearest_int_c(x * iscale) & 0xFF).astype(np.float32)
        diff = x - scale * L0
        best = _rsum((qw * diff) * diff, True)
        for s in range(-4, 5):
            if s == 0:
                continue
            isc = (F32(0.1) * F32(s) + F32(nmax)) / mx
            sc = F32(1) / isc
            lv = np.minimum(nmax, nearest_int_c(x * isc)).astype(np.float32)
            diff = x - sc * lv
            mse = _rsum((qw * diff) * diff, True)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, isc, iscale)
        lint = np.minimum(nmax, nearest_int_c(x * iscale))
        lf = lint.astype(np.float32)
        wx = qw * x
        sumlx = _rsum(wx * lf, True)
        suml2 = _rsum((qw * lf) * lf, True)
        L = (lint & 0xFF).astype(np.float32)
        _refine(x, qw, wx, L, sumlx, suml2, None, nmax, True)
        out = np.where(suml2 > 0, sumlx / suml2, F32(0))
    out[zero] = 0
    Li = L.astype(np.int32)
    Li[:, zero] = 0
    return out, Li


# -- packing ---------------------------------------------------------------------------------------

def _pack_2bit(L):
    """L uint8 [m, 256] (0..3) -> qs [m, 64]: byte 32h+l holds L[128h + 32s + l] at bits 2s."""
    Lr = L.reshape(-1, 2, 4, 32)
    qs = Lr[:, :, 0] | (Lr[:, :, 1] << 2)
    qs |= Lr[:, :, 2] << 4
    qs |= Lr[:, :, 3] << 6
    return qs.reshape(-1, 64)


# Packing straight from the search layout: quants L8 [16, k] uint8, row i = value i of sub-block c, with
# the 16 sub-blocks of a super-block in consecutive columns.  Viewed as little-endian 64-bit words, one
# word holds value i of 8 consecutive sub-blocks 8h + 2s + t (byte 2s + t), s = 0..3, t = 0..1.

def _as_view(a, shape):
    """``a`` reshaped without a copy (an error if that is impossible: writes must reach ``a``)."""
    v = a.view()
    v.shape = shape
    return v


def _words_T(L8):
    """L8 [16, k] -> little-endian uint64 [16, k // 8] (a view)."""
    return L8.view("<u8")


_M03 = np.uint64(0x0303030303030303)
# Multiplying a word of 2-bit fields b_0..b_7 (one per byte) by this adds copies of it shifted left by
# 48 - 14s (s = 0..3): b_2s lands at bits 48 + 2s, b_2s+1 at 56 + 2s, and no two copies of any fields
# overlap (so no carries): the top two bytes of the product are the packed bytes (t = 0, t = 1).
_MUL_2BIT = np.uint64(sum(1 << (48 - 14 * s) for s in range(4)))


def _pack_2bit_T(L8, out):
    """The low two bits of L8 [16, 16m] into qs ``out`` [m, 64] (Q2_K / Q3_K order): byte 32h + 16t + i
    holds, at bits 2s, value i of sub-block 8h + 2s + t."""
    U = _words_T(L8)
    B = np.bitwise_and(U, _M03, out=_WS.get("pk_b", U.shape, np.uint64))
    B *= _MUL_2BIT  # bits 2s of byte 6 + t: bits 0..1 of byte 2s + t
    m = out.shape[0]
    # the product's top two bytes [16 (i), m, 2 (h), 2 (t)] to byte 32h + 16t + i
    _as_view(out, (m, 2, 2, 16))[...] = B.view(np.uint8).reshape(16, m, 2, 8)[:, :, :, 6:].transpose(1, 2, 3, 0)


_H01 = np.uint64(0x0101010101010101)
_SH2 = np.uint64(2)
_SH4 = np.uint64(4)
# As _MUL_2BIT for 1-bit fields: shifts 48 - 15s put b_2s at bit 48 + s and b_2s+1 at 56 + s (no overlaps);
# the second word of a sub-block's 16 values, shifted 4 more, fills bits 52 + s and 60 + s.
_MUL_HBIT = np.uint64(sum(1 << (48 - 15 * s) for s in range(4)))


def _pack_hmask_T(L8, out):
    """Bit 2 of L8 [16, 16m] into Q3_K's hmask ``out`` [m, 32]: bit j of byte 16t + i is bit 2 of value i
    of sub-block 2j + t."""
    U = _words_T(L8)
    m = out.shape[0]
    W = np.right_shift(U, _SH2, out=_WS.get("pk_h", U.shape, np.uint64))
    W &= _H01  # byte b: the high bit of sub-block 8h + b (h: the word)
    W *= _MUL_HBIT
    Wh = W.reshape(16, m, 2)
    Q = np.left_shift(Wh[:, :, 1], _SH4, out=_WS.get("pk_q", (16, m), np.uint64))
    Q |= Wh[:, :, 0]  # bytes 6 + t: bit j = the high bit of sub-block 2j + t
    _as_view(out, (m, 2, 16))[...] = Q.view(np.uint8).reshape(16, m, 8)[:, :, 6:].transpose(1, 2, 0)


_RD_BIG = F32(120)  # |quotient| bound of _round_div_T's fast path: quant - lo stays within an int8


def _round_div_T(X, off, d, lo, hi, xmin, xmax, sp=None):
    """``clip(nearest_int((X + off) / d), lo, hi) - lo`` (``off`` None: ``X / d``) over the columns of X
    [16, k], as uint8 [16, k] (a reused scratch array): the quants Q2_K and Q3_K compute again from their
    stored scales.  ``xmin`` / ``xmax``: each column's smallest and largest value (or ``sp``: the
    columns that need C's nearest_int, found by the caller).

    Float passes for all columns whose quotients are surely below _RD_BIG in magnitude (there nearest_int
    is a rounding: ``q + 1.5*2^23 - lo`` is an integer float whose low byte is quant - lo as an int8,
    clipped in bytes); C's nearest_int bit for bit for the others (large, infinite or NaN quotients,
    d == 0)."""
    Q = _WS.get("rd_q", X.shape)
    if off is None:
        np.divide(X, d, out=Q)
    else:
        np.add(X, off, out=Q)
        Q /= d
    L = round_int8(Q, _WS.get("rd_l", X.shape, np.int8), 0, hi - lo, -lo).view(np.uint8)
    with np.errstate(**_ERR):
        if sp is None:
            if off is None:
                big = np.maximum(np.abs(xmin), np.abs(xmax))
            else:
                big = np.maximum(np.abs(xmin + off), np.abs(xmax + off))
            sp = np.flatnonzero(~(big < _RD_BIG * np.abs(d)))
        if sp.size:
            q = X[:, sp] if off is None else X[:, sp] + off[sp]
            L[:, sp] = np.clip(nearest_int_c(q / d[sp]), lo, hi) - lo
    return L


def _to_T(xb, a, b, name="t_x", out=None):
    """Sub-blocks a..b of xb [k, 16] as [16, b - a] (in a reused scratch array, or in ``out``): one
    strided copy (numpy 2's transposing copy is as fast as moving 16-byte pieces first, and needs no
    temporary)."""
    src = xb[a:b]
    if out is None:
        out = _WS.get(name, (16, src.shape[0]))
    np.copyto(out, src.T)
    return out


def _superblock_weights(x, imatrix, factor):
    """quant weights of the *_impl functions: qw[j] * sqrtf(sigma2 + x[j]^2), sigma2 = factor*sum(x^2)/QK_K
    per super-block (the C loop's order). Returns [nsb, 256]."""
    rows, n = x.shape
    xs = x.reshape(-1, QK_K)
    x2 = np.ascontiguousarray((xs * xs).T)
    sumx2 = _rsum(x2, True)
    if factor == 2:
        sigma2 = (F32(2) * sumx2) / F32(QK_K)
    else:
        sigma2 = sumx2 / F32(QK_K)
    qw = np.broadcast_to(imatrix.reshape(1, n // QK_K, QK_K), (rows, n // QK_K, QK_K)).reshape(-1, QK_K)
    return (qw * np.sqrt(sigma2[:, None] + xs * xs)).astype(np.float32)


# -- Q2_K ------------------------------------------------------------------------------------------

def _q2_scales_ref(scales, mins):
    """quantize_row_q2_K_ref's super-block scales: 4-bit scales and mins against max/15 (fp16).
    (Worked on [2, 16, nsb] transposed copies: numpy is slow along rows of 16.)"""
    nsb = scales.size // 16
    SM = np.empty((2, 16, nsb), np.float32)
    SM[0] = scales.reshape(nsb, 16).T
    SM[1] = mins.reshape(nsb, 16).T
    with np.errstate(**_ERR):
        mx = np.fmax(np.fmax.reduce(SM, axis=1), F32(0))  # C: if (scale > max_scale); max_min alike
        has = mx > 0
        L = nearest_int_c(SM * (F32(15) / mx)[:, None, :])
        L *= has[:, None, :]  # 0 where max <= 0
        L[1] <<= 4
        L[0] &= 0xFF
        L[1] &= 0xFF
        L[0] |= L[1]
        sc = np.ascontiguousarray(L[0].T).astype(np.uint8)
        bits = fp16_bits(np.where(has, mx / F32(15), F32(0)))
    return sc, bits[0], bits[1]


def _q2_scales_impl(scales, mins, sw):
    """quantize_row_q2_K_impl's: make_qp_quants(16, 15, ...) of the scales and of the mins (in one go)."""
    nsb = scales.size // 16
    swT = sw.reshape(nsb, 16).T
    both, Lb = _make_qp_quants(np.concatenate([scales.reshape(nsb, 16).T, mins.reshape(nsb, 16).T], axis=1),
                               np.concatenate([swT, swT], axis=1), 15)
    sc = ((Lb[:, :nsb] | (Lb[:, nsb:] << 4)) & 0xFF).T.astype(np.uint8)
    return sc, fp16_bits(both[:nsb]), fp16_bits(both[nsb:])


_Q2_BATCH = 8192  # sub-blocks per Q2_K batch: the search's [16, k] arrays stay in the L2 cache


class Q2_K(Kernel, qtype=T.Q2_K):
    gil_bound = True
    uses_imatrix = True
    checks_finite = True  # from the sub-block extremes (_qkx_search)

    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        nsb = rows * n // QK_K
        nb = nsb * 16
        xb = x.reshape(nb, 16)
        wt = None if imatrix is None else _superblock_weights(x, imatrix, 1).reshape(nb, 16)
        out = np.empty((nsb, cls.type_size), np.uint8)
        for a in range(0, nb, _Q2_BATCH):
            b = min(nb, a + _Q2_BATCH)
            X = _to_T(xb, a, b)
            if wt is None:  # quantize_row_q2_K_ref: make_qkx2_quants(16, 3, x, |x|, ..., -0.5, 0.1, 15, true)
                W = np.abs(X, out=_WS.get("t_w", X.shape))
                scales, mins, iscs, used, xmin, xmax = _qkx_search(X, W, 3, -0.5, 0.1, 15, True)
                sc, d_bits, m_bits = _q2_scales_ref(scales, mins)
            else:  # quantize_row_q2_K_impl: make_qkx3_quants(..., -0.9, 0.05, 36, false) + make_qp_quants
                W = _to_T(wt, a, b, "t_w")
                sw = _rsum(W, True)
                scales, mins, iscs, used, xmin, xmax = _qkx_search(X, W, 3, -0.9, 0.05, 36, False)
                sc, d_bits, m_bits = _q2_scales_impl(scales, mins, sw)
            # the quants again from the stored scales (sub-blocks whose scale is 0 keep the search's quants)
            d = (fp16_value(d_bits)[:, None] * (sc & 0xF).astype(np.float32)).reshape(-1)
            dmn = (fp16_value(m_bits)[:, None] * (sc >> 4).astype(np.float32)).reshape(-1)
            L8 = _round_div_T(X, dmn, d, 0, 3, xmin, xmax)
            dz = np.flatnonzero(d == 0)
            if dz.size:
                with np.errstate(**_ERR):
                    L8[:, dz] = np.clip(nearest_int_c((X[:, dz] - used[dz]) * iscs[dz]), 0, 3)
            o = out[a // 16:b // 16]
            o[:, :16] = sc
            _pack_2bit_T(L8, o[:, 16:80])
            o[:, 80:82] = d_bits.reshape(-1, 1).view(np.uint8)
            o[:, 82:84] = m_bits.reshape(-1, 1).view(np.uint8)
        return out.reshape(rows, -1)

    @classmethod
    def dequantize_into(cls, q, n, out):  # dequantize_row_q2_K
        blk = q.reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d = block_f16(blk, 40)[:, None]
        dmin = block_f16(blk, 41)[:, None]
        sc = blk[:, :16]
        with np.errstate(**_ERR):  # an inf scale times 0: NaN, as in C
            dl = d * (sc & 0xF).astype(np.float32)
            ml = dmin * (sc >> 4).astype(np.float32)
            scale_codes(_q2_codes(blk, 16, nb), dl, out, minus=ml)


def _qs_words(blk, start, nb):
    """The 64 bytes of 2-bit codes at ``start`` as uint64 [nb, 2, 4]: group n holds values 128n + 32j + l
    at bits 2j of byte l."""
    qs = _WS.get("dq_qs", (nb, 2, 4), np.uint64)
    for k in range(4):
        block_bytes16(blk, start + 16 * k, qs.reshape(nb, 4, 2)[:, k])
    return qs


_V32 = np.dtype("V32")


def _value_order(C, nb):
    """C [4 (j), nb, 2 (n), 4] uint64 (j outermost: long vector operations) -> bytes [nb, 256] in value
    order, value 128n + 32j + l (a copy of 32-byte pieces)."""
    codes = _WS.get("dq_codes", (nb, 2, 4, 4), np.uint64)
    cv = codes.view(_V32)  # [nb, 2, 4, 1]
    for j in range(4):
        cv[:, :, j] = C[j].view(_V32)
    return codes.view(np.uint8).reshape(nb, QK_K)


def _q2_codes(blk, start, nb):
    """Q2_K's codes 0..3 as bytes [nb, 256] in value order (value 128n + 32j + l: bits 2j of qs[32n + l])."""
    qs = _qs_words(blk, start, nb)
    C = _WS.get("dq_c", (4, nb, 2, 4), np.uint64)
    for j in range(4):
        np.right_shift(qs, _SHJ[j], out=C[j])
        C[j] &= _M2
    return _value_order(C, nb)


_SHJ = [np.uint64(2 * j) for j in range(4)]
_M2 = np.uint64(0x0303030303030303)
_M1 = np.uint64(0x0101010101010101)
_FC = np.uint64(0xFC)


# -- Q3_K ------------------------------------------------------------------------------------------

_M4W = np.uint32(0x0F0F0F0F)
_M3W = np.uint32(0x03030303)


def _pack_q3_scales(l):
    """6-bit scales l [m, 16] (0..63) -> the 12 scale bytes of block_q3_K: bytes 0..7 hold the low nibbles
    of scales j and 8 + j, bytes 8..11 the high two bits of scales j, 4 + j, 8 + j, 12 + j (as 32-bit words,
    four scales per operation)."""
    m = l.shape[0]
    w = np.ascontiguousarray(l, dtype=np.uint8).view("<u4").astype(np.uint32)  # [m, 4]: scales 4q..4q+3
    s = np.empty((m, 3), "<u4")
    s[:, 0] = (w[:, 0] & _M4W) | ((w[:, 2] & _M4W) << np.uint32(4))
    s[:, 1] = (w[:, 1] & _M4W) | ((w[:, 3] & _M4W) << np.uint32(4))
    h = np.right_shift(w, np.uint32(4))
    h &= _M3W
    # (column by column: a reduction or a broadcast over rows of 4 is slow)
    hb = np.left_shift(h[:, 3], np.uint32(6), out=s[:, 2])
    for q in range(3):
        hb |= h[:, q] << np.uint32(2 * q)
    return s.view(np.uint8)


def _q3_scales_ref(scales):
    """quantize_row_q3_K_ref's super-block scale: 6-bit scales against max_scale / -32 (fp16)."""
    S = scales.reshape(-1, 16)
    nsb = S.shape[0]
    with np.errstate(**_ERR):
        A = np.abs(S)
        A[np.isnan(A)] = -1  # never selected by `if (scale > amax)`
        # the first largest per super-block, in the [16, nsb] layout (np.argmax over rows of 16 is slow)
        At = np.ascontiguousarray(A.T)
        amax = np.maximum.reduce(At, axis=0)
        first = np.maximum.reduce(np.multiply(At == amax, _RANK16), axis=0)  # 16 - its position
        idx = np.arange(0, 16 * nsb, 16) + (16 - first.astype(np.intp))
        max_scale = np.where(amax > 0, np.take(S, idx), F32(0))
        has = max_scale != 0
        iscale = F32(-32) / max_scale
        # int8_t l = nearest_int(iscale*scales[j]) (for any value); MAX(-32, MIN(31, l)) + 32
        v = np.multiply(S.reshape(-1), np.repeat(iscale, 16)).reshape(nsb, 16)
        ls = round_int8(v, np.empty((nsb, 16), np.int8), -32, 31)
        ls += np.int8(32)
        ls[~has] = 0  # memset(y[i].scales, 0, 12)
        d_bits = fp16_bits(np.where(has, F32(1) / iscale, F32(0)))
    return ls, d_bits


class Q3_K(Kernel, qtype=T.Q3_K):
    gil_bound = True
    uses_imatrix = True
    chunk_elements = _BATCH * 16 * _Q3_GROUP
    checks_finite = True  # from the block extremes (_q3_first_slice), or one pass with an imatrix

    @classmethod
    def quantize_rows(cls, x, imatrix):
        rows, n = x.shape
        nsb = rows * n // QK_K
        nb = nsb * 16
        xb = x.reshape(nb, 16)
        out = np.empty((nsb, cls.type_size), np.uint8)
        if imatrix is None:  # quantize_row_q3_K_ref: make_q3_quants(16, 4, x, L, true)
            spans = [(a, min(nb, a + _BATCH)) for a in range(0, nb, _BATCH)]
            for g in range(0, len(spans), _Q3_GROUP):
                group = spans[g:g + _Q3_GROUP]
                ga, gb = group[0][0], group[-1][1]
                # the group's sumlx, suml2, iscale, amax (float32), all-zero and tried flags, filled per batch
                G = [np.empty(gb - ga, t) for t in (np.float32,) * 4 + (bool,) * 2 + (np.uint8,)]
                # each batch is refined on its own (its arrays stay in cache) until few of its sub-blocks
                # still move; those of all batches then finish together: the last iterations of a
                # refinement cost about the same for any number of sub-blocks
                Xs, tail = [], _Q3Tail(len(group) * _Q3_TAIL)
                for j, (a, b) in enumerate(group):
                    X, first = _q3_first(xb, a, b, "t_x%d" % j, [r[a - ga:b - ga] for r in G])
                    Xs.append(X)
                    st, b0 = _q3_batch_state(xb, a, first, a - ga)
                    if st is not None:
                        _refine_q3_steps(st, G[0], G[1], tail, b0)
                st = tail.state()
                if st is not None:
                    _refine_q3_steps(st, G[0], G[1])
                # the scales of the whole group at once (fewer, longer numpy calls)
                sumlx, suml2, _, amax, zero, _, _ = G
                with np.errstate(**_ERR):
                    scales = np.where(suml2 > 0, sumlx / suml2, F32(0))
                scales[zero] = 0
                ls, d_bits = _q3_scales_ref(scales)
                # the quants again from the stored scales; d * -32 == 0 (also the memset case) skips the
                # sub-block: it keeps the search's quants
                d = np.repeat(fp16_value(d_bits), 16) * (ls - 32).astype(np.float32).reshape(-1)
                with np.errstate(**_ERR):  # the sub-blocks whose quotients may reach _RD_BIG (see _round_div_T)
                    exact = ~(amax < _RD_BIG * np.abs(d))
                anyexact, anydz = exact.any(), not d.all()
                og = out[ga // 16:gb // 16]
                og[:, 96:108] = _pack_q3_scales(ls)
                og[:, 108:110] = d_bits.reshape(-1, 1).view(np.uint8)
                for (a, b), X in zip(group, Xs):
                    for c in range(0, b - a, _Q3_FINAL):
                        e = min(b - a, c + _Q3_FINAL)
                        o, oe = a - ga + c, a - ga + e
                        sp = exact[o:oe].nonzero()[0] if anyexact else _NO_COLS
                        L8 = _round_div_T(X[:, c:e], None, d[o:oe], -4, 3, None, None, sp)
                        dz = (d[o:oe] == 0).nonzero()[0] if anydz else ()
                        if len(dz):
                            L8[:, dz] = _q3_quants_rows(xb[a + c + dz])
                        ob = out[(a + c) // 16:(a + e) // 16]
                        _pack_hmask_T(L8, ob[:, :32])
                        _pack_2bit_T(L8, ob[:, 32:96])
            return out.reshape(rows, -1)
        check_finite(x)
        wt = _superblock_weights(x, imatrix, 2).reshape(nb, 16)
        for a in range(0, nb, _BATCH):
            b = min(nb, a + _BATCH)
            X = _to_T(xb, a, b)
            # quantize_row_q3_K_impl: make_qx_quants(16, 4, x, L, 1, weight), then of the scales
            W = _to_T(wt, a, b, "t_w")
            sw = _rsum(W, True)
            scales, iscs, _ = _make_qx_quants(X, W, 4, False)
            m = (b - a) // 16
            d_block, _, Lsc = _make_qx_quants(np.ascontiguousarray(scales.reshape(m, 16).T),
                                              np.ascontiguousarray(sw.reshape(m, 16).T), 32, True)
            ls = Lsc.T
            d_bits = fp16_bits(d_block)
            amax = np.maximum(X.max(axis=0), -X.min(axis=0))
            d = (fp16_value(d_bits)[:, None] * (ls - 32).astype(np.float32)).reshape(-1)
            L8 = _round_div_T(X, None, d, -4, 3, -amax, amax)
            dz = np.flatnonzero(d == 0)
            if dz.size:
                with np.errstate(**_ERR):
                    L8[:, dz] = np.clip(nearest_int_c(X[:, dz] * iscs[dz]), -4, 3) + 4
                L8[:, dz[iscs[dz] == 0]] = 0
            cls._pack(out[a // 16:b // 16], L8, ls, d_bits)
        return out.reshape(rows, -1)

    @staticmethod
    def _pack(o, L8, ls, d_bits):
        """block_q3_K bytes o [m, 110] from the quants + 4 L8 [16, 16m], the 6-bit scales and d."""
        _pack_hmask_T(L8, o[:, :32])
        _pack_2bit_T(L8, o[:, 32:96])
        o[:, 96:108] = _pack_q3_scales(ls)
        o[:, 108:110] = d_bits.reshape(-1, 1).view(np.uint8)

    @classmethod
    def dequantize_into(cls, q, n, out):  # dequantize_row_q3_K
        blk = q.reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d_all = block_f16(blk, 54)[:, None]
        qs = _qs_words(blk, 32, nb)
        # hmask bit 4n + j of byte l is set where value 128n + 32j + l is (q & 3), clear where it is (q & 3) - 4
        nh = _WS.get("dq_hm", (nb, 2, 4), np.uint64)  # [:, n]: the bits 4n.. of every byte shifted down
        block_bytes16(blk, 0, nh[:, 0, :2])
        block_bytes16(blk, 16, nh[:, 0, 2:])
        np.invert(nh[:, 0], out=nh[:, 0])
        np.right_shift(nh[:, 0], np.uint64(4), out=nh[:, 1])
        C = _WS.get("dq_c", (4, nb, 2, 4), np.uint64)
        h = _WS.get("dq_h", (nb, 2, 4), np.uint64)
        for j in range(4):
            t = np.right_shift(qs, _SHJ[j], out=C[j])
            t &= _M2
            np.right_shift(nh, _SHJ1[j], out=h)
            h &= _M1
            h *= _FC  # q - 4 as a byte: q | 0xFC
            t |= h
        with np.errstate(**_ERR):
            scale_codes(_value_order(C, nb).view(np.int8), d_all * _q3_scale_values(blk[:, 96:108]), out)


def _q3_scale_values(s):
    """The 12 scale bytes of Q3_K blocks -> (scale - 32) as float32 [nb, 16] (dequantize_row_q3_K's kmask
    shuffle, on 64-bit words): scale k < 8 is the low nibble of byte k, k >= 8 the high nibble of byte
    k - 8, with two high bits from bytes 8..11 (bits 2(k // 4) of byte 8 + k % 4)."""
    a = s[:, :8].view("<u8")[:, 0].astype(np.uint64)
    t = s[:, 8:12].view("<u4")[:, 0].astype(np.uint64)
    sc = np.empty((s.shape[0], 2), "<u8")
    np.bitwise_or(a & _M4, (((t | ((t >> _SHJ[1]) << _S32)) & _M2) << _SHJ[2]), out=sc[:, 0])
    np.bitwise_or((a >> _SHJ[2]) & _M4, ((((t >> _SHJ[2]) | ((t >> _SHJ[3]) << _S32)) & _M2) << _SHJ[2]),
                  out=sc[:, 1])
    v = sc.view(np.uint8).astype(np.float32)
    v -= F32(32)
    return v


_SHJ1 = [np.uint64(j) for j in range(4)]
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_S32 = np.uint64(32)
