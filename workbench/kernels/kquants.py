"""Q4_K, Q5_K, Q6_K: ggml's 256-value super-block ("k-quant") types, byte-identical to ggml.

How the C loops are vectorized:

* The searches (make_qkx2/3_quants, make_qx_quants) run on *position-major* copies of the values,
  ``[positions, groups]`` (32 positions per Q4_K/Q5_K sub-block, 16 per Q6_K sub-block).  A C loop
  ``for (i = 0; i < n; ++i) sum += ...`` is then ``np.add.reduce(axis=0)``, which adds the rows one
  after the other exactly like the C loop, while each elementwise step runs over all groups at once.
* A search only remembers, per group, the parameters of its best trial; the quants of that trial are
  recomputed once at the end, and only for the few groups whose final quants still come from the
  search (ggml requantizes every sub-block whose stored scale is not zero).
* ``np.rint`` (round half to even) is ggml's ``nearest_int`` for |v| < 2**22; groups where a search
  could round something larger (or inf/NaN, e.g. float32 subnormal inputs) are redone with an exact
  emulation of the bit trick (``_nint``).  Clamps are skipped when the value range proves them no-ops.
* Per-group bookkeeping uses index lists (np.where on float vectors is slow) and C's comparison order,
  so NaN/inf behave as in ggml.
"""
from __future__ import annotations

import functools

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import Kernel, check_finite
from .common import F32, MAGIC as _MAGIC, fp16_bits, fp16_value, round_int8, scale_codes, scratch, seqdot, seqdot_for
from .legacy import block_f16

QK_K = 256
# below this |x/d| Q6_K rounds its final quants in int8 bytes (see Q6_K.quantize_rows): x/d + 32 stays below
# 128.  Quotients are rarely above ~50 (a sub-block's scale fits its values, and its 8-bit scale and the
# fp16 d round by at most 1.5x); larger ones, infinite and NaN ones take the exact path
_I8_SAFE = F32(90)
_SAFE = F32(4.0e6)  # below this |value| ggml's nearest_int is exactly np.rint (round half to even)
_EPS = F32(1e-15)  # GROUP_MAX_EPS
# bit twiddling on 32-bit little-endian words (4 quants at a time) for the dequantizers
_NIB = np.uint32(0x0F0F0F0F)
_BIT = np.uint32(0x01010101)
_TWO = np.uint32(0x03030303)
_SH4 = np.array([0, 2, 4, 6], np.uint32).reshape(4, 1)
_SH_NIB = np.array([0, 4], np.uint32).reshape(2, 1)  # low then high nibbles
_SH_Q5 = np.arange(8, dtype=np.uint32).reshape(4, 2, 1)  # Q5_K: the qh bit of sub-block 2k + half


def _words(b: np.ndarray, shape) -> np.ndarray:
    """Bytes [nb, k] (any row stride) as little-endian uint32 words of the given shape."""
    return np.ascontiguousarray(b).view("<u4").reshape(shape)


def _quiet(fn):
    """Run ``fn`` with numpy float warnings off (inf/NaN intermediates behave as in C, silently)."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        with np.errstate(all="ignore"):
            return fn(*args, **kw)
    return wrapper


def _nint(a) -> np.ndarray:
    """ggml nearest_int, bit for bit, for any float32 input (also out of range, inf and NaN)."""
    a = np.asarray(a, dtype=np.float32)
    return ((a + _MAGIC).view(np.int32) & 0x7FFFFF) - 0x400000


def _rsum(a: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum over axis 0, like ``sum = 0; for (...) sum += a[i];`` in C.

    On a C-contiguous array with at least two columns ``np.add.reduce(axis=0)`` adds whole rows one
    after the other; when axis 0 would be numpy's inner loop (one column, other layouts) numpy sums
    pairwise, so that case is an explicit loop."""
    if a[0].size >= 2:
        return np.add.reduce(np.ascontiguousarray(a), axis=0)
    acc = np.zeros(a.shape[1:], np.float32)
    for row in a:
        acc = acc + row
    return acc


def _cmax(v: np.ndarray, axis: int = 0) -> np.ndarray:
    """C loop ``m = 0; if (v[i] > m) m = v[i];``: NaNs never win, the result is +0.0 or positive."""
    m = np.fmax.reduce(v, axis=axis)
    return np.where(m > 0, m, F32(0)).astype(np.float32)


def _first_by_abs(v: np.ndarray, vmax: np.ndarray, vmin: np.ndarray):
    """C loop ``amax = max = 0; if (fabsf(v[i]) > amax) { amax = fabsf(v[i]); max = v[i]; }`` over
    axis 0 of finite ``v`` [n, G] given its column max/min.  Returns (amax, max)."""
    amax = np.maximum(vmax, -vmin)
    mx = np.where(vmax >= -vmin, vmax, vmin)
    tie = np.flatnonzero((vmax == -vmin) & (vmax != 0))
    if tie.size:  # +a and -a both present: the first one in the loop wins
        sub = v[:, tie]
        first_pos = np.argmax(sub == vmax[tie], axis=0)
        first_neg = np.argmax(sub == vmin[tie], axis=0)
        mx[tie] = np.where(first_pos < first_neg, vmax[tie], vmin[tie])
    mx[amax == 0] = 0
    return amax.astype(np.float32), mx.astype(np.float32)


def _take_cols(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[:, idx])


# -- make_qkx2_quants / make_qkx3_quants (use_mad = false) ---------------------------------------------

def _qkx_levels(x, isc, m, nmax: int, exact: bool) -> np.ndarray:
    """L[i] = MAX(0, MIN(nmax, nearest_int(iscale*(x[i] - min)))) for columns of x [n, k]."""
    t = (x - m) * isc
    if exact:
        return np.clip(_nint(t), 0, nmax).astype(np.uint8)
    return np.rint(np.clip(t, F32(0), F32(nmax))).astype(np.uint8)


class _QkxResult:
    """Per-group outcome of make_qkx*_quants: scale, the_min, and how to rebuild its quants L."""

    def __init__(self, x, nmax, scale, the_min, isc, m, flat, exact, xmin, xmax):
        self.x, self.nmax = x, nmax
        self.scale, self.the_min = scale, the_min
        self.isc, self.m, self.flat, self.exact = isc, m, flat, exact
        self.xmin, self.xmax = xmin, xmax

    def levels(self, idx: np.ndarray) -> np.ndarray:
        """The search's quants of groups ``idx``, as [len(idx), n] uint8."""
        xs = _take_cols(self.x, idx)
        out = _qkx_levels(xs, self.isc[idx], self.m[idx], self.nmax, False)
        ex = np.flatnonzero(self.exact[idx])
        if ex.size:
            out[:, ex] = _qkx_levels(xs[:, ex], self.isc[idx][ex], self.m[idx][ex], self.nmax, True)
        out[:, self.flat[idx]] = 0
        return out.T


@_quiet
def _qkx_core(x, w, nmax, rmin, rdelta, nstep, qkx3, exact):
    """The search of make_qkx2_quants (qkx3=False) / make_qkx3_quants (qkx3=True), use_mad=false, for
    every column of x [n, G] with weights w [n, G].  Returns (scale, the_min, best_isc, best_min,
    flat, unsafe, xmin, xmax); levels of the best trial are (x - best_min) * best_isc rounded."""
    n, G = x.shape
    if G < 2:  # np.add.reduce below must not become numpy's (pairwise) inner loop
        x = np.concatenate([x, x], axis=1)
        w = np.concatenate([w, w], axis=1)
        return tuple(a[:1] for a in _qkx_core(x, w, nmax, rmin, rdelta, nstep, qkx3, exact))
    fn = F32(nmax)
    fn_half, top = fn + F32(0.5), fn + F32(0.499)
    xmin = np.min(x, axis=0)
    xmax = np.max(x, axis=0)
    check_finite(xmin, xmax)  # checks_finite
    tag = "qkx_e" if exact else "qkx"
    lv = scratch(tag + "_lv", x.shape)
    dot = seqdot_for(x, w, lv)  # the fused sums below take these three
    sums = np.empty((6, G), np.float32)  # [sum_l2, sum_xl, sum_l2] and [sum_l, sum_x, sum_xl]
    U, V = sums[:3], sums[3:]
    sum_l2, sum_xl, sum_l, sum_x = U[0], U[1], V[0], V[1]
    const = np.empty((3, G), np.float32)  # [sum_w, sum_w, sum_x]
    np.add.reduce(w, axis=0, out=const[0])
    const[1] = const[0]
    dot(w, x, out=const[2])
    sum_x[...] = const[2]
    # the current trial [D, this_scale, this_min, cur_error, iscale, the min its levels used] and the best
    # one [-, scale, min, best_error, iscale, min]: a trial that wins is one column copy (min = this_min)
    cand = np.empty((6, G), np.float32)
    D, this_scale, this_min, cur, isc, cur_m = cand
    PQ = cand[:3]
    state = np.empty((6, G), np.float32)
    _, scale, mn, best, best_isc, best_m = state
    Q = np.empty((3, G), np.float32)
    win = np.empty(G, bool)
    pos = np.empty(G, bool)
    t1 = np.empty(G, np.float32)
    t2 = np.empty(G, np.float32)
    mn[...] = np.where(xmin > 0, F32(0), xmin)  # if (min > 0) min = 0;
    flat = (xmax <= mn) if qkx3 else (xmax == mn)
    unsafe = np.zeros(G, bool)

    def levels(isc, c):
        # L[i] = MAX(0, MIN(nmax, nearest_int(iscale*(x[i] - min))))
        np.subtract(x, mn, out=lv)
        np.multiply(lv, isc, out=lv)
        if exact:
            li = _nint(lv)
            np.clip(li, 0, nmax, out=li)
            lv[...] = li
            return
        # iscale*(x[i] - min) runs from ta = iscale*(xmin - min) to iscale*(max - min) = c(1 +- 2**-23)
        # (or the other way round if iscale < 0); float ops are monotonic, so these bound every value
        ta = np.multiply(isc, np.subtract(xmin, mn, out=t1), out=t1)
        lo, hi = np.minimum.reduce(ta), np.maximum.reduce(ta)  # NaN if any is NaN
        full = c >= top
        cols = None
        if not (lo >= F32(-0.5) and hi < fn_half) and not full:
            cols = np.flatnonzero(~((ta >= F32(-0.5)) & (ta < fn_half)))
            if cols.size > G // 256:  # clamping a few columns is cheaper than a full pass, not many
                full, cols = True, None
        if not (lo > -_SAFE and hi < _SAFE):
            np.logical_or(unsafe, ~((ta > -_SAFE) & (ta < _SAFE)), out=unsafe)
        if full:
            np.clip(lv, F32(0), fn, out=lv)
        np.rint(lv, out=lv)
        if cols is not None and cols.size:
            lv[:, cols] = np.clip(lv[:, cols], F32(0), fn)

    def error(s, m, out):  # sum of w*diff*diff, diff = scale*L + min - x (in lv: the levels are spent)
        np.multiply(lv, s, out=lv)
        np.add(lv, m, out=lv)
        np.subtract(lv, x, out=lv)
        dot(lv, lv, w, out=out)  # cur_error += w * (diff*diff)

    np.subtract(xmax, mn, out=t2)
    np.divide(fn, t2, out=best_isc)  # iscale = nmax/(max - min)
    np.divide(F32(1), best_isc, out=scale)
    best_m[...] = mn
    levels(best_isc, fn)
    error(scale, mn, best)
    for step in range(nstep + 1):
        c = F32(rmin) + F32(rdelta) * F32(step) + fn
        np.subtract(xmax, mn, out=t2)
        np.divide(c, t2, out=isc)
        levels(isc, c)
        dot(w, lv, out=sum_l)  # sum_l += w*l; sum_l2 += w*l*l; sum_xl += w*l*x[i];
        dot(w, lv, lv, out=sum_l2)
        dot(w, lv, x, out=sum_xl)
        U[2] = sum_l2
        V[2] = sum_xl
        # D = sum_w*sum_l2 - sum_l*sum_l; scale = (sum_w*sum_xl - sum_x*sum_l)/D; min = (sum_l2*sum_x - sum_l*sum_xl)/D
        np.multiply(const, U, out=PQ)
        np.multiply(V, sum_l, out=Q)
        np.subtract(PQ, Q, out=PQ)
        np.divide(PQ[1:], D, out=PQ[1:])
        if np.fmax.reduce(this_min) > 0:  # if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; }
            p = np.flatnonzero(this_min > 0)
            this_min[p] = 0
            this_scale[p] = sum_xl[p] / sum_l2[p]
        error(this_scale, this_min, cur)
        np.less(cur, best, out=win)
        np.greater(D, 0, out=pos)
        win &= pos
        b = win.nonzero()[0]
        if b.size:
            cur_m[...] = mn
            state[:, b] = cand[:, b]
    unsafe &= ~flat
    if flat.any():
        scale[flat] = 0
    return scale.copy(), -mn, best_isc.copy(), best_m.copy(), flat, unsafe, xmin, xmax


def _qkx(x, w, nmax, rmin, rdelta, nstep, qkx3) -> _QkxResult:
    """make_qkx2_quants / make_qkx3_quants over the columns of x [n, G] (see _qkx_core)."""
    scale, the_min, isc, m, flat, unsafe, xmin, xmax = _qkx_core(x, w, nmax, rmin, rdelta, nstep, qkx3, False)
    if unsafe.any():  # rare: redo these groups with the exact nearest_int emulation
        idx = np.flatnonzero(unsafe)
        r = _qkx_core(_take_cols(x, idx), _take_cols(w, idx), nmax, rmin, rdelta, nstep, qkx3, True)
        scale[idx], the_min[idx], isc[idx], m[idx] = r[0], r[1], r[2], r[3]
    return _QkxResult(x, nmax, scale, the_min, isc, m, flat, unsafe, xmin, xmax)


# -- make_qp_quants ----------------------------------------------------------------------------------

@_quiet
def _qp(x: np.ndarray, nmax: int, qw: np.ndarray):
    """ggml make_qp_quants for every column of ``x`` [n, G] (n = 8 sub-block scales or mins) with
    weights ``qw`` [n, G].  Returns (scale [G] float32, L [n, G] uint8)."""
    x = np.ascontiguousarray(x)
    qw = np.ascontiguousarray(qw)
    n, G = x.shape
    fn = F32(nmax)
    mx = np.zeros(G, np.float32)
    for i in range(n):  # max = MAX(max, x[i])
        mx = np.where(mx > x[i], mx, x[i])
    zero = mx < _EPS
    mxs = np.where(zero, F32(1), mx)

    def mse(isc, sc, clamp):
        li = _nint(isc * x)
        if clamp:
            li = np.minimum(nmax, li)
        else:
            li &= 0xFF  # the first pass stores nearest_int() in uint8 L[]
        diff = x - sc * li.astype(np.float32)
        return _rsum((qw * diff) * diff)

    iscale = fn / mxs
    best = mse(iscale, F32(1) / iscale, False)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        isc = (F32(0.1) * F32(step) + fn) / mxs
        cur = mse(isc, F32(1) / isc, True)
        b = np.flatnonzero(cur < best)
        best[b] = cur[b]
        iscale[b] = isc[b]
    Li = np.minimum(nmax, _nint(iscale * x))  # int l (may be negative); L[] keeps it modulo 256
    lf = Li.astype(np.float32)
    sumlx = _rsum((qw * x) * lf)
    suml2 = _rsum((qw * lf) * lf)
    L = Li & 0xFF
    wx = qw * x
    # up to 5 refinement passes; a group whose pass changed nothing is done (the next pass would see the
    # same state and change nothing either: ggml's `break`), so later passes only visit the rest
    act = np.arange(G)
    for _ in range(5):
        if act.size == G:
            xa, qa, wxa, La, sx, s2 = x, qw, wx, L, sumlx, suml2
        else:
            xa, qa, wxa, La = x[:, act], qw[:, act], wx[:, act], L[:, act]
            sx, s2 = sumlx[act], suml2[act]
        changed = np.zeros(act.size, bool)
        for i in range(n):
            w = qa[i]
            Lf = La[i].astype(np.float32)
            slx = sx - wxa[i] * Lf
            sl2 = s2 - (w * Lf) * Lf
            new_l = np.minimum(nmax, _nint((xa[i] * sl2) / slx))
            ok = (slx > 0) & (sl2 > 0) & (new_l != La[i])
            nf = new_l.astype(np.float32)
            slx = slx + wxa[i] * nf
            sl2 = sl2 + (w * nf) * nf
            ok &= (slx * slx) * s2 > (sx * sx) * sl2
            k = np.flatnonzero(ok)
            if k.size:
                La[i, k] = new_l[k] & 0xFF
                sx[k] = slx[k]
                s2[k] = sl2[k]
                changed[k] = True
        if act.size != G:
            L[:, act], sumlx[act], suml2[act] = La, sx, s2
        act = act[changed]
        if not act.size:
            break
    out = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(np.float32)
    out[zero] = 0
    L[:, zero] = 0
    return out, L.astype(np.uint8)


# -- make_qx_quants (rmse_type = 1) --------------------------------------------------------------------

_QX_SLICE = 4096  # groups per slice of _qx's trials: [16, slice] float32 arrays of 256 KB


@_quiet
def _qx(x: np.ndarray, nmax: int, qw: np.ndarray | None):
    """ggml make_qx_quants(n, nmax, x, L, rmse_type=1, qw) for every column of ``x`` [n, G].
    Returns (scale [G], best_isc [G], zero [G], xmin, xmax): the quants of a group are
    clamp(nearest_int(best_isc * x)) + nmax, or 0 for a zero group."""
    n, G = x.shape
    if G < 2:  # np.add.reduce below must not become numpy's (pairwise) inner loop
        x2 = np.concatenate([x, x], axis=1)
        return tuple(a[:1] for a in _qx(x2, nmax, None if qw is None else np.concatenate([qw, qw], axis=1)))
    xmax = np.max(x, axis=0)
    xmin = np.min(x, axis=0)
    check_finite(xmin, xmax)  # checks_finite
    amax, mx = _first_by_abs(x, xmax, xmin)
    zero = amax < _EPS
    mxs = np.where(zero, F32(1), mx)
    opp = np.where(mx > 0, xmin, xmax)  # iscale*x lies between iscale*max and iscale*opp
    lo, hi = F32(-nmax), F32(nmax - 1)
    # the trials are independent of each other: iscale = -nmax/max, then -(nmax + 0.1*is)/max
    steps = [0] + [k for k in range(-9, 10) if k != 0]
    nums = np.array([F32(-nmax) if k == 0 else -(F32(nmax) + F32(0.1) * F32(k)) for k in steps], np.float32)
    iscs = np.divide(nums[:, None], mxs[None, :], out=scratch("qx_iscs", (len(steps), G)))
    SX = scratch("qx_sx", (len(steps), G))  # sum of w*x*l per trial
    S2 = scratch("qx_s2", (len(steps), G))  # sum of w*l*l per trial
    # l = MAX(-nmax, MIN(nmax-1, nearest_int(iscale*x[i]))).  iscale*x[i] lies between iscale*max
    # = -(nmax + 0.1*is)(1 +- 2**-23) and iscale*opp, whose size is at most that (float ops are
    # monotonic): the clamp is a no-op for is <= -6, needed everywhere for is >= 6, and in between
    # needed only by the groups whose values reach past -nmax - 0.5 or nmax - 0.5.  Per trial: clamp
    # all (True), none (None), or only the groups listed
    clamps = []
    for r, k in enumerate(steps):
        c = True if k >= 6 else None
        if -5 <= k <= 5:
            isc = iscs[r]
            bad = isc * opp >= hi + F32(0.5)
            if k == 5:
                bad |= isc * mxs < lo - F32(0.5)
            cols = np.flatnonzero(bad)
            c = True if cols.size > G // 256 else (cols if cols.size else None)
        clamps.append(c)
    # the trials run slice by slice: a slice's values, weights and quants stay in the L2 cache for all
    for a in range(0, G, _QX_SLICE):
        b = min(G, a + _QX_SLICE)
        xs = x[:, a:b]
        if qw is None:
            w = np.multiply(xs, xs, out=scratch("qx_w", xs.shape))
        else:
            w = scratch("qx_w", xs.shape)
            w[...] = qw[:, a:b]
        wx = np.multiply(w, xs, out=scratch("qx_wx", xs.shape))
        lv = scratch("qx_lv", xs.shape)
        for r, c in enumerate(clamps):
            np.multiply(xs, iscs[r, a:b], out=lv)
            if c is True:
                np.clip(lv, lo, hi, out=lv)
            np.rint(lv, out=lv)
            if c is not True and c is not None:
                cc = c[(c >= a) & (c < b)] - a
                if cc.size:
                    lv[:, cc] = np.clip(lv[:, cc], lo, hi)
            seqdot(wx, lv, out=SX[r, a:b])  # sumlx += w*x[i]*l; suml2 += w*l*l;
            seqdot(w, lv, lv, out=S2[r, a:b])
    sumlx, suml2 = SX[0], S2[0]
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(np.float32)
    best = scale * sumlx
    best_isc = iscs[0].copy()  # (iscs is scratch: the result must not be)
    for r in range(1, len(steps)):  # in ggml's order: keep a trial if sumlx^2/suml2 beats the best
        sx, s2 = SX[r], S2[r]
        b = np.flatnonzero((s2 > 0) & (sx * sx > best * s2))
        if b.size:
            scale[b] = sx[b] / s2[b]
            best[b] = scale[b] * sx[b]
            best_isc[b] = iscs[r, b]
    scale[zero] = 0
    return scale, best_isc, zero, xmin, xmax


def _qx_levels(x: np.ndarray, isc: np.ndarray, zero: np.ndarray, nmax: int) -> np.ndarray:
    """make_qx_quants' L (0..2*nmax-1) for columns of x [n, k]: nmax + clamp(nearest_int(isc*x))."""
    t = np.clip(x * isc, F32(-nmax), F32(nmax - 1))
    L = (np.rint(t) + F32(nmax)).astype(np.uint8)
    L[:, zero] = 0
    return L


# -- Q4_K / Q5_K ---------------------------------------------------------------------------------------

def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of Q4_K/Q5_K from 6-bit scales and mins [nsb, 8] (inverse of get_scale_min_k4)."""
    out = np.empty((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


_LOW6 = np.uint32(0x3F3F3F3F)
_TOP2 = np.uint32(0x03030303)


def _unpack_scales_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7 of every block: s [nb, 12] -> (sc, m) [nb, 8] uint8.

    Four scales at a time, as little-endian words: sc[0..3] = w0 & 63, m[0..3] = w1 & 63,
    sc[4..7] = (w2 & 0xF) | (w0 >> 6) << 4, m[4..7] = (w2 >> 4) | (w1 >> 6) << 4, bytewise."""
    w = _words(s, (s.shape[0], 3))
    w0, w1, w2 = w[:, 0], w[:, 1], w[:, 2]
    sc = np.empty((s.shape[0], 2), np.uint32)
    m = np.empty((s.shape[0], 2), np.uint32)
    np.bitwise_and(w0, _LOW6, out=sc[:, 0])
    np.bitwise_and(w1, _LOW6, out=m[:, 0])
    sc[:, 1] = (w2 & _NIB) | (((w0 >> np.uint32(6)) & _TOP2) << np.uint32(4))
    m[:, 1] = ((w2 >> np.uint32(4)) & _NIB) | (((w1 >> np.uint32(6)) & _TOP2) << np.uint32(4))
    return sc.view(np.uint8), m.view(np.uint8)


# values per call: 3072 groups of 32, whose [32, 3072] search arrays stay in the L2 cache through the
# search's 21-37 trials (at 2^18 values, 1 MB each, the whole quantizer ran 8% (Q4_K) and 4% (Q5_K) slower)
_Q45K_CHUNK = 3 << 15


@_quiet
def _quantize_q45k(x: np.ndarray, imatrix: np.ndarray | None, nmax: int):
    """quantize_row_q4_K_ref / _impl (nmax=15) and quantize_row_q5_K_ref / _impl (nmax=31) up to the
    final quants.  Returns (d, dmin bits [nsb] uint16, scale bytes [nsb, 12], L [nsb, 8, 32] uint8)."""
    rows, n = x.shape
    nsb = rows * n // QK_K
    G = nsb * 8
    xn = x.reshape(G, 32)
    xt = scratch("q45_xt", (32, G))  # [32, G], group g = 8 * superblock + j
    xt[...] = xn.T
    x2 = np.multiply(xt, xt, out=scratch("q45_x2", (32, G)))
    if imatrix is None:  # quantize_row_q*_K_ref: weights av_x + |x|, av_x = sqrt(sum x^2 / 32)
        av_x = np.sqrt(_rsum(x2) / F32(32))
        w = np.abs(xt, out=x2)
        w += av_x
        if nmax == 15:
            res = _qkx(xt, w, 15, -1.0, 0.1, 20, False)
        else:
            res = _qkx(xt, w, 31, -0.5, 0.1, 15, False)
        scales = res.scale.reshape(nsb, 8)
        mins = res.the_min.reshape(nsb, 8)
        max_scale = _cmax(scales, axis=1)
        max_min = _cmax(mins, axis=1)
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(np.float32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(np.float32)
        ls = np.minimum(63, _nint(inv_scale[:, None] * scales) & 0xFF).astype(np.uint8)
        lm = np.minimum(63, _nint(inv_min[:, None] * mins) & 0xFF).astype(np.uint8)
        d_bits = fp16_bits(max_scale / F32(63))
        m_bits = fp16_bits(max_min / F32(63))
    else:  # quantize_row_q*_K_impl: weights qw * sqrt(sigma2 + x^2), sigma2 = 2 * sum(x^2) / 256
        sum_x2 = _rsum(x2.reshape(32, nsb, 8).transpose(2, 0, 1).reshape(QK_K, nsb))  # in row order
        sigma2 = (F32(2) * sum_x2) / F32(QK_K)
        w = x2  # qw * sqrtf(sigma2 + x*x)
        w.reshape(32, nsb, 8)[...] += sigma2[None, :, None]
        np.sqrt(w, out=w)
        w *= _imatrix_cols(imatrix, rows, 32)
        sw = _rsum(w)
        if nmax == 15:
            res = _qkx(xt, w, 15, -0.9, 0.05, 36, True)
        else:
            res = _qkx(xt, w, 31, -0.9, 0.05, 36, True)
        # make_qp_quants of the scales and of the mins, both in one call (they are independent)
        sm = np.concatenate([res.scale.reshape(nsb, 8).T, res.the_min.reshape(nsb, 8).T], axis=1)
        swt = sw.reshape(nsb, 8).T
        blk_scale, Lsm = _qp(sm, 63, np.concatenate([swt, swt], axis=1))
        d_block, m_block = blk_scale[:nsb], blk_scale[nsb:]
        ls, lm = Lsm[:, :nsb].T, Lsm[:, nsb:].T
        if nmax == 31:  # only quantize_row_q5_K_impl has `ls = MIN(63, ls); lm = MIN(63, lm);`
            ls, lm = np.minimum(63, ls), np.minimum(63, lm)
        d_bits = fp16_bits(d_block)
        m_bits = fp16_bits(m_block)
    # the final quants from the stored fp16 super-block scales and the stored 6-bit sub-block scales
    packed = _pack_scales_k4(ls, lm)
    sc, m = _unpack_scales_k4(packed)  # get_scale_min_k4
    d = (fp16_value(d_bits)[:, None] * sc.astype(np.float32)).reshape(G)
    dm = (fp16_value(m_bits)[:, None] * m.astype(np.float32)).reshape(G)
    t = np.add(xn, dm[:, None], out=scratch("q45_t", xn.shape))
    t /= d[:, None]  # nearest_int((x + dm)/d)
    safe = (np.abs((res.xmax + dm) / d) < _SAFE) & (np.abs((res.xmin + dm) / d) < _SAFE)
    np.clip(t, F32(0), F32(nmax), out=t)
    L = np.rint(t, out=t).astype(np.uint8)
    bad = np.flatnonzero(~safe & (d != 0))
    if bad.size:
        L[bad] = np.clip(_nint((xn[bad] + dm[bad, None]) / d[bad, None]), 0, nmax)
    keep = np.flatnonzero(d == 0)  # `if (!d) continue;`: the search's quants stay
    if keep.size:
        L[keep] = res.levels(keep)
    return d_bits, m_bits, packed, L.reshape(nsb, 8, 32)


def _imatrix_cols(imatrix: np.ndarray, rows: int, size: int) -> np.ndarray:
    """The importance of every value in the position-major layout [size, G] (G = rows * n / size)."""
    cols = imatrix.reshape(-1, size).T  # [size, n/size]
    return np.tile(cols, (1, rows))


def _q45k_header(type_size: int, d_bits, m_bits, scales) -> np.ndarray:
    """Q4_K/Q5_K blocks with d, dmin and the 12 packed scale bytes written (the quants still to fill)."""
    nsb = scales.shape[0]
    out = np.empty((nsb, type_size), np.uint8)
    out[:, 0:2] = d_bits.view(np.uint8).reshape(nsb, 2)
    out[:, 2:4] = m_bits.view(np.uint8).reshape(nsb, 2)
    out[:, 4:16] = scales
    return out


class Q4_K(Kernel, qtype=T.Q4_K):
    gil_bound = True
    uses_imatrix = True
    checks_finite = True  # from the group extremes in _qkx_core
    chunk_elements = _Q45K_CHUNK

    @classmethod
    def quantize_rows(cls, x, imatrix):  # quantize_q4_K
        rows, n = x.shape
        d_bits, m_bits, scales, L = _quantize_q45k(x, imatrix, 15)
        nsb = L.shape[0]
        out = _q45k_header(cls.type_size, d_bits, m_bits, scales)
        qs = out[:, 16:].reshape(nsb, 4, 32)  # q[l] = L[j+l] | L[j+l+32] << 4
        np.left_shift(L[:, 1::2], 4, out=qs)
        qs |= L[:, 0::2]
        return out.reshape(rows, -1)

    @classmethod
    @_quiet
    def dequantize_into(cls, q, n, out):  # dequantize_row_q4_K
        blk = q.reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d, dmin = block_f16(blk, 0)[:, None], block_f16(blk, 1)[:, None]
        sc, m = _unpack_scales_k4(blk[:, 4:16])
        qs = _words(blk[:, 16:], (nb, 4, 8))  # 4 groups of 32 bytes, as 8 little-endian words
        iv = scratch("dq_iv", (nb, 4, 2, 8), np.uint32)  # low nibbles: sub-block 2k, high nibbles: 2k+1
        np.right_shift(qs[:, :, None, :], _SH_NIB, out=iv)
        iv &= _NIB
        scale_codes(iv.view(np.uint8), d * sc.astype(np.float32), out, minus=dmin * m.astype(np.float32))


class Q5_K(Kernel, qtype=T.Q5_K):
    gil_bound = True
    uses_imatrix = True
    checks_finite = True  # from the group extremes in _qkx_core
    chunk_elements = _Q45K_CHUNK

    @classmethod
    def quantize_rows(cls, x, imatrix):  # quantize_q5_K
        rows, n = x.shape
        d_bits, m_bits, scales, L = _quantize_q45k(x, imatrix, 31)
        nsb = L.shape[0]
        out = _q45k_header(cls.type_size, d_bits, m_bits, scales)
        hb = L >> 4  # [nsb, 8, 32], 0 or 1: qh[l] bit j is the fifth bit of sub-block j's value l
        qh = out[:, 16:48]
        qh[:] = hb[:, 0]
        for j in range(1, 8):
            qh |= hb[:, j] << j
        qs = out[:, 48:].reshape(nsb, 4, 32)
        np.left_shift(L[:, 1::2], 4, out=qs)
        qs |= L[:, 0::2] & 0xF
        return out.reshape(rows, -1)

    @classmethod
    @_quiet
    def dequantize_into(cls, q, n, out):  # dequantize_row_q5_K
        blk = q.reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d, dmin = block_f16(blk, 0)[:, None], block_f16(blk, 1)[:, None]
        sc, m = _unpack_scales_k4(blk[:, 4:16])
        qs = _words(blk[:, 48:], (nb, 32))  # 4 groups of 32 bytes, 8 words each
        qh = _words(blk[:, 16:48], (nb, 1, 1, 8))  # bit j of qh[l]: fifth bit of value l of sub-block j
        iv = scratch("dq_iv", (nb, 4, 2, 8), np.uint32)  # low nibbles: sub-block 2k, high nibbles: 2k+1
        np.right_shift(qs.reshape(nb, 4, 1, 8), _SH_NIB, out=iv)
        iv &= _NIB
        hb = np.right_shift(qh, _SH_Q5, out=scratch("dq_hb", (nb, 4, 2, 8), np.uint32))  # bit 2k + half
        hb &= _BIT
        hb <<= np.uint32(4)
        iv |= hb
        scale_codes(iv.view(np.uint8), d * sc.astype(np.float32), out, minus=dmin * m.astype(np.float32))


# -- Q6_K ----------------------------------------------------------------------------------------------

class Q6_K(Kernel, qtype=T.Q6_K):
    gil_bound = True
    uses_imatrix = True
    checks_finite = True  # from the group extremes in _qx

    @classmethod
    @_quiet
    def quantize_rows(cls, x, imatrix):  # quantize_q6_K: quantize_row_q6_K_ref / quantize_row_q6_K_impl
        rows, n = x.shape
        nsb = rows * n // QK_K
        G = nsb * 16
        xn = x.reshape(G, 16)
        xt = scratch("q6_xt", (16, G))  # [16, G], group g = 16 * superblock + ib
        xt[...] = xn.T
        qw = None if imatrix is None else _imatrix_cols(imatrix, rows, 16)
        scales, best_isc, zero, xmin, xmax = _qx(xt, 32, qw)
        sc2 = scales.reshape(nsb, 16)
        smax = np.fmax.reduce(sc2, axis=1)  # C skips NaN scales (`fabsf(scale) > max_abs_scale`)
        smin = np.fmin.reduce(sc2, axis=1)
        smax[np.isnan(smax)] = 0
        smin[np.isnan(smin)] = 0
        max_abs, max_scale = _first_by_abs(sc2.T, smax, smin)
        blk0 = max_abs < _EPS  # memset(&y[i], 0, sizeof(block_q6_K))
        iscale = F32(-128) / np.where(blk0, F32(1), max_scale)
        d_bits = fp16_bits(F32(1) / iscale)
        sc = np.minimum(127, _nint(iscale[:, None] * sc2)).astype(np.int8)  # [nsb, 16]
        d = (fp16_value(d_bits)[:, None] * sc.astype(np.float32)).reshape(G)
        t = np.divide(xn, d[:, None], out=scratch("q6_t", xn.shape))  # nearest_int(x/d)
        # the quants + 32 (columns whose quotients reach _I8_SAFE are redone just below)
        L = round_int8(t, scratch("q6_l", xn.shape, np.int8), 0, 63, 32).view(np.uint8)
        bad = np.flatnonzero(~((np.abs(xmax / d) < _I8_SAFE) & (np.abs(xmin / d) < _I8_SAFE)) & (d != 0))
        if bad.size:
            L[bad] = np.clip(_nint(xn[bad] / d[bad, None]), -32, 31) + 32
        keep = np.flatnonzero(d == 0)  # `if (!d) continue;`: make_qx_quants' quants stay
        if keep.size:
            L[keep] = _qx_levels(_take_cols(xt, keep), best_isc[keep], zero[keep], 32).T
        Ls = L.reshape(nsb, 2, 4, 32)  # [s, half, m, l]: value 128*half + 32*m + l
        out = np.empty((nsb, cls.type_size), np.uint8)
        ql = out[:, 0:128].reshape(nsb, 2, 2, 32)
        np.left_shift(Ls[:, :, 2:4], 4, out=ql)
        ql |= Ls[:, :, 0:2] & 0xF
        hi = Ls >> 4
        qh = out[:, 128:192].reshape(nsb, 2, 32)
        qh[:] = hi[:, :, 0]
        qh |= hi[:, :, 1] << 2
        qh |= hi[:, :, 2] << 4
        qh |= hi[:, :, 3] << 6
        out[:, 192:208] = sc.view(np.uint8)
        out[:, 208:210] = d_bits.view(np.uint8).reshape(nsb, 2)
        if blk0.any():
            out[blk0] = 0
        return out.reshape(rows, -1)

    @classmethod
    @_quiet
    def dequantize_into(cls, q, n, out):  # dequantize_row_q6_K
        blk = q.reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d = block_f16(blk, 104)[:, None]
        sc = blk[:, 192:208].view(np.int8).astype(np.float32)
        ql = _words(blk[:, 0:128], (nb, 2, 2, 8))  # [half, m & 1, word]
        qh = _words(blk[:, 128:192], (nb, 2, 1, 8))  # bits 2m, 2m+1 of qh[l]: top of value 32*m + l
        iv = scratch("dq_iv", (nb, 2, 4, 8), np.uint32)  # [half, m, word]: m = 0, 1 low nibbles, 2, 3 high
        np.right_shift(ql.reshape(nb, 2, 1, 2, 8), _SH_NIB.reshape(2, 1, 1), out=iv.reshape(nb, 2, 2, 2, 8))
        iv &= _NIB
        hb = np.right_shift(qh, _SH4, out=scratch("dq_hb", (nb, 2, 4, 8), np.uint32))
        hb &= _TWO
        hb <<= np.uint32(4)
        iv |= hb
        b = iv.view(np.uint8)
        b -= 32  # (int8_t)(q) - 32, as uint8 arithmetic
        scale_codes(b.view(np.int8), d * sc, out)  # d * sc[is] * q
