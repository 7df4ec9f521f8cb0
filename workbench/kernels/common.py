"""Exact float32 building blocks shared by the kernels.

ggml's reference quantizers are sequential C loops in float32.  To reproduce their bytes we keep every
intermediate in float32, round exactly like C (``nearest_int`` is round-half-even, ``roundf`` is
half-away-from-zero, casts truncate) and accumulate sums in the same order with ``cumsum`` (numpy's
plain ``sum`` is pairwise and would round differently).
"""
from __future__ import annotations

import threading

import numpy as np

F32 = np.float32


def f32(v) -> np.float32:
    return np.float32(v)


def nearest_int(a: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even (valid for |a| < 2^22, as in ggml)."""
    return np.rint(a).astype(np.int32)


MAGIC = F32(12582912.0)  # 1.5 * 2**23: ggml's nearest_int adds it and reads the low mantissa bits
# np.clip's ufunc itself (np.clip adds a Python wrapper's overhead to every call, and np.minimum / np.maximum
# with a scalar run twice as slow)
clip_ufunc = getattr(getattr(getattr(np, "_core", getattr(np, "core", None)), "umath", None), "clip", np.clip)


def round_int8(q: np.ndarray, out: np.ndarray, lo: int, hi: int, add: int = 0) -> np.ndarray:
    """``clip((int8_t)(nearest_int(q) + add), lo, hi)`` into the int8 array ``out`` (``q``, float32, is
    overwritten): the low byte of the bits of ``q + add + 1.5*2^23`` (rounded to even, as nearest_int),
    clipped in bytes, which is cheaper than a float clip and a float-to-int cast.  Exact for any q when
    ``add`` is 0 (the low byte of nearest_int's bits is C's int8 cast); with an ``add``, for |q| < 2^22.
    Callers that want the quant itself keep nearest_int(q) + add within an int8."""
    q += F32(MAGIC + F32(add))
    np.copyto(out, q.view(np.int32), casting="unsafe")
    return clip_ufunc(out, np.int8(lo), np.int8(hi), out=out)


_JUST_BELOW_HALF = np.float32(0.5) - np.float32(2.0 ** -25)
_SIGN = np.uint32(0x80000000)
_HALF_BITS = np.uint32(0x3F000000)  # 0.5f


def roundf(a: np.ndarray, dtype=np.int32, out: np.ndarray | None = None) -> np.ndarray:
    """C ``roundf`` (halves away from zero) of float32 ``a`` converted to ``dtype`` (a truncating cast, as
    C's), or written into ``out``; exact for |a| < 2**23.

    ``a + copysign(0.5, a)`` is exact in float32 over that range except for |a| = 0.5 - 2**-25, whose
    sum rounds up to 1.0: that one value is patched.  copysign is the sign bit of ``a`` on the bits of 0.5
    (an integer OR, far cheaper than np.copysign)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    h = np.bitwise_and(a.view(np.uint32), _SIGN, out=scratch("roundf_h", a.shape, np.uint32))
    h |= _HALF_BITS
    t = h.view(np.float32)
    t += a
    if out is None:
        out = np.empty(a.shape, dtype)
    np.copyto(out, t, casting="unsafe")
    if (a == _JUST_BELOW_HALF).any() or (a == -_JUST_BELOW_HALF).any():
        out[np.abs(a) == _JUST_BELOW_HALF] = 0
    return out


def seqsum(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Sum along ``axis`` strictly left to right in float32, like a C ``for`` loop."""
    return np.cumsum(a, axis=axis, dtype=np.float32).take(-1, axis=axis)


ALIGN = 64  # bytes: a cache line


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """``np.empty`` starting on a cache line.  numpy's big arrays start 16 bytes past a page boundary, and
    a ufunc writing such an array runs 30-40% slower than writing one that starts on a cache line."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    buf = np.empty(n * dtype.itemsize + ALIGN, np.uint8)
    start = -buf.ctypes.data % ALIGN
    return buf[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


class _Scratch(threading.local):
    """Per-thread scratch arrays reused across calls: a fresh multi-hundred-KB temporary costs page faults
    (glibc hands it back to the system when freed), often more than the arithmetic done in it."""

    def __init__(self):
        self.bufs = {}

    def get(self, name, shape, dtype=np.float32) -> np.ndarray:
        size = 1
        for d in shape:
            size *= d
        b = self.bufs.get(name)
        if b is None or b.dtype != dtype or b.size < size:
            b = self.bufs[name] = aligned_empty(max(size, 1), dtype)
        return b[:size].reshape(shape)


_SCRATCH = _Scratch()


def scratch(name: str, shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised array of ``shape`` kept for this thread under ``name``: valid until the next
    ``scratch`` call with the same name on this thread (never return one to a caller)."""
    return _SCRATCH.get(name, shape, dtype)


def _seqdot_loop(arrays, out=None):
    acc = np.zeros(arrays[0].shape[1:], np.float32)
    for i in range(arrays[0].shape[0]):
        term = arrays[0][i]
        for a in arrays[1:]:
            term = term * a[i]
        acc = acc + term
    if out is not None:
        out[...] = acc
        return out
    return acc


def _einsum_is_sequential() -> bool:
    """Whether ``np.einsum('ij,ij->j', ...)`` (and ``'ij,ij,ij->j'``) on C-contiguous float32 [n, k >= 2]
    arrays computes each product rounded to float32 and adds them row after row from zero, like a C loop
    ``s = 0; for (i...) s += a[i]*b[i];`` (it does with numpy's baseline SIMD; an FMA build or another loop
    order would not).  Checked once, on data where order and rounding show."""
    rng = np.random.default_rng(7)
    with np.errstate(all="ignore"):
        for k in (2, 3, 17, 300, 4099):
            arrays = [(rng.standard_normal((40, k)) * 10.0 ** rng.integers(-5, 9, (40, k))).astype(np.float32)
                      for _ in range(3)]
            arrays[0][:, :1] = -0.0  # an all -0.0 column sums to +0.0 from s = 0
            for m in (2, 3):
                got = np.einsum(_SPECS[m], *arrays[:m])
                if not np.array_equal(got.view(np.uint32), _seqdot_loop(arrays[:m]).view(np.uint32)):
                    return False
    return True


_SPECS = {2: "ij,ij->j", 3: "ij,ij,ij->j"}
_SEQ_EINSUM = _einsum_is_sequential()


def seqdot(*arrays: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """C's ``s = 0; for (i = 0; i < n; ++i) s += a[i]*b[i]`` (or ``a[i]*b[i]*c[i]``, multiplied left to
    right) for every column of float32 [n, k] arrays: products rounded to float32, added in row order.
    One fused pass through einsum where that is exact (C-contiguous float32 operands of one shape, k >= 2),
    else an explicit row loop."""
    if _einsum_applies(arrays):
        return np.einsum(_SPECS[len(arrays)], *arrays, out=out)
    return _seqdot_loop(arrays, out)


def _einsum_applies(arrays) -> bool:
    """Whether np.einsum adds like the C loop for these operands: C-contiguous float32 [n, k >= 2] of one shape."""
    a = arrays[0]
    return (_SEQ_EINSUM and a.ndim == 2 and a.shape[1] >= 2
            and all(o.flags.c_contiguous and o.dtype == np.float32 and o.shape == a.shape for o in arrays))


def seqdot_for(*operands: np.ndarray):
    """``seqdot`` for a loop that calls it many times on ``operands`` and on arrays laid out like them (the
    caller's promise): their layout is checked once here, and the returned ``dot(*arrays, out=...)`` skips the
    check per call."""
    if _einsum_applies(operands):
        einsum, specs = np.einsum, _SPECS

        def dot(*arrays, out):
            return einsum(specs[len(arrays)], *arrays, out=out)
        return dot
    return seqdot


def scale_codes(codes: np.ndarray, scale: np.ndarray, out: np.ndarray, *, plus: np.ndarray | None = None,
                minus: np.ndarray | None = None) -> None:
    """The last step of the dequantizers: ``out = scale * code`` (``+ plus`` or ``- minus``) in float32, for
    integer ``codes`` in value order with one scale (and offset) per run of out.size // scale.size values."""
    v = out.reshape(-1)
    np.copyto(v, codes.reshape(-1), casting="unsafe")  # the integer codes as float32, straight into out
    run = v.size // scale.size
    v *= np.repeat(scale.reshape(-1), run)  # np.repeat beats a broadcast over short runs
    if plus is not None:
        v += np.repeat(plus.reshape(-1), run)
    if minus is not None:
        v -= np.repeat(minus.reshape(-1), run)


def first_min(b: np.ndarray) -> np.ndarray:
    """Row minimum as a C loop ``if (x[i] < min) min = x[i]`` finds it: the first minimal element (-0.0 vs 0.0)."""
    return np.take_along_axis(b, np.argmin(b, axis=1)[:, None], axis=1)[:, 0]


def first_max(b: np.ndarray) -> np.ndarray:
    return np.take_along_axis(b, np.argmax(b, axis=1)[:, None], axis=1)[:, 0]


def safe_recip(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f``"""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(np.float32)


def fp16_bits(a: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even) as little-endian uint16 bits."""
    return np.asarray(a, dtype=np.float32).astype("<f2").view("<u2")


def fp16_value(bits: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32 of uint16 bits."""
    return np.asarray(bits).view("<f2").astype(np.float32)


def fp16_round(a: np.ndarray) -> np.ndarray:
    """float32 -> fp16 -> float32 (what a stored scale is worth when read back)."""
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even, NaN forced quiet."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, (u >> np.uint32(16)) | np.uint32(64), rounded).astype("<u2")


def pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo.astype(np.uint8) & 0x0F) | (hi.astype(np.uint8) << 4)


def pack_bits(bits: np.ndarray, width: int) -> np.ndarray:
    """Pack the last axis of small integers (each < 2**width) little-endian into bytes."""
    per = 8 // width
    b = bits.astype(np.uint8).reshape(*bits.shape[:-1], -1, per)
    out = np.zeros(b.shape[:-1], np.uint8)
    for k in range(per):
        out |= b[..., k] << (k * width)
    return out


# -- the searches ggml's quantizers share, vectorized over blocks --------------------------------

def make_qx_quants(x: np.ndarray, nmax: int, rmse_type: int, qw: np.ndarray | None = None):
    """ggml make_qx_quants for every row of ``x`` [nb, n]: returns (scale [nb], L [nb, n] uint8 in 0..2*nmax-1)."""
    nb, n = x.shape
    ax = np.abs(x)
    imax = np.argmax(ax, axis=1)  # first index of the largest |x| (C uses a strict >)
    amax = ax[np.arange(nb), imax]
    mx = x[np.arange(nb), imax]
    zero = amax < F32(1e-15)
    mx_safe = np.where(zero, F32(1), mx)
    iscale = (F32(-nmax) / mx_safe).astype(np.float32)
    if rmse_type == 0:
        lv = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        L = (lv + nmax).astype(np.uint8)
        L[zero] = 0
        return np.where(zero, F32(0), (F32(1) / iscale)).astype(np.float32), L
    return_early = rmse_type < 0
    rmse_type = abs(rmse_type)
    if qw is not None:
        w = qw
    elif rmse_type == 1:
        w = x * x
    elif rmse_type == 2:
        w = np.ones_like(x)
    elif rmse_type == 3:
        w = ax
    else:
        w = np.sqrt(ax)
    wx = w * x

    def trial(isc):
        lv = np.clip(nearest_int(isc[:, None] * x), -nmax, nmax - 1)
        lf = lv.astype(np.float32)
        sumlx = seqsum(wx * lf)
        suml2 = seqsum((w * lf) * lf)
        return lv, sumlx, suml2

    lv, sumlx, suml2 = trial(iscale)
    L = (lv + nmax).astype(np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F32(1)), F32(0)).astype(np.float32)
        if return_early:
            inv = (F32(1) / iscale).astype(np.float32)
            out = np.where(suml2 > 0, F32(0.5) * (scale + inv), inv).astype(np.float32)
            out[zero] = 0
            L[zero] = 0
            return out, L
        best = (scale * sumlx).astype(np.float32)
        for step in range(-9, 10):
            if step == 0:
                continue
            isc = (-(F32(nmax) + F32(0.1) * F32(step)) / mx_safe).astype(np.float32)
            lv2, sumlx2, suml22 = trial(isc)
            better = (suml22 > 0) & (sumlx2 * sumlx2 > best * suml22)
            if better.any():
                L = np.where(better[:, None], (lv2 + nmax).astype(np.uint8), L)
                new_scale = (sumlx2 / np.where(suml22 != 0, suml22, F32(1))).astype(np.float32)
                scale = np.where(better, new_scale, scale)
                best = np.where(better, scale * sumlx2, best).astype(np.float32)
    scale[zero] = 0
    L[zero] = 0
    return scale, L


def make_qkx_quants(x: np.ndarray, nmax: int, weights: np.ndarray, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, qkx3: bool = False):
    """ggml make_qkx2_quants / make_qkx3_quants over rows of ``x`` [nb, n] with ``weights`` [nb, n].

    Returns (scale [nb], the_min [nb] (= -min, >= 0), L [nb, n] uint8)."""
    nb, n = x.shape
    mn, mx = first_min(x), first_max(x)
    sum_w = seqsum(weights)
    sum_x = seqsum(weights * x)
    mn = np.where(mn > 0, F32(0), mn).astype(np.float32)  # C: if (min > 0) min = 0; keeps -0.0
    flat = (mx <= mn) if qkx3 else (mx == mn)
    rng = np.where(flat, F32(1), mx - mn).astype(np.float32)
    iscale = (F32(nmax) / rng).astype(np.float32)
    scale = (F32(1) / iscale).astype(np.float32)
    xm = x - mn[:, None]
    L = np.clip(nearest_int(iscale[:, None] * xm), 0, nmax)

    def err(sc, m, lv):
        diff = sc[:, None] * lv.astype(np.float32) + m[:, None] - x
        diff = np.abs(diff) if use_mad else diff * diff
        return seqsum(weights * diff)

    best = err(scale, mn, L)
    if nstep >= 1:
        for step in range(nstep + 1):
            # ggml reuses ``min`` as it improves: both the range and the offset follow the best fit so far
            rng = np.where(flat, F32(1), mx - mn).astype(np.float32)
            xm = x - mn[:, None]
            isc = ((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / rng).astype(np.float32)
            la = np.clip(nearest_int(isc[:, None] * xm), 0, nmax)
            lf = la.astype(np.float32)
            wl = weights * lf
            sum_l = seqsum(wl)
            sum_l2 = seqsum(wl * lf)
            sum_xl = seqsum(wl * x)
            D = (sum_w * sum_l2 - sum_l * sum_l).astype(np.float32)
            ok = D > 0
            Ds = np.where(ok, D, F32(1))
            this_scale = ((sum_w * sum_xl - sum_x * sum_l) / Ds).astype(np.float32)
            this_min = ((sum_l2 * sum_x - sum_l * sum_xl) / Ds).astype(np.float32)
            pos = this_min > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(np.float32)
            this_min = np.where(pos, F32(0), this_min).astype(np.float32)
            cur = err(this_scale, this_min, la)
            better = ok & (cur < best)
            if better.any():
                L = np.where(better[:, None], la, L)
                best = np.where(better, cur, best)
                scale = np.where(better, this_scale, scale)
                mn = np.where(better, this_min, mn)
    L = np.where(flat[:, None], 0, L).astype(np.uint8)
    scale = np.where(flat, F32(0), scale).astype(np.float32)
    return scale, (-mn).astype(np.float32), L
