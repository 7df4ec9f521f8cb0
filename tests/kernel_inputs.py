"""Kernel test inputs built from integer hashing only, so they are the same bytes on every platform and numpy
version (no RNG stream, no libm): the recorded ggml digests (tests/core/data/ggml_kernel_digests.json)
stay valid wherever the tests run."""
from __future__ import annotations

import numpy as np

ROWS, N = 8, 512  # N: a multiple of every block size (32 and 256)
QUANT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
FLOAT_TYPES = ["F16", "BF16"]


def _hash(n: int, seed: int) -> np.ndarray:
    """splitmix64 of 0..n-1 (uint64 arithmetic wraps, exactly as in C)."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(seed: int) -> np.ndarray:
    """Multiples of 2**-23 in [-1, 1), exact in float32."""
    h = _hash(ROWS * N, seed)
    return (((h >> np.uint64(40)).astype(np.int64) - 2**23) * 2.0**-23).astype(np.float32).reshape(ROWS, N)


def cases() -> dict[str, np.ndarray]:
    out = {"uniform": _uniform(1)}
    h = _hash(ROWS * N, 2)
    out["ties"] = (((h % np.uint64(65)).astype(np.int64) - 32) / 2).astype(np.float32).reshape(ROWS, N)
    h = _hash(ROWS * N, 3)  # sign, exponent 2**-16..2**7, mantissa: straight from the bits
    bits = ((h >> np.uint64(63)) << np.uint64(31)) | (((h >> np.uint64(32)) % np.uint64(24) + np.uint64(111))
                                                       << np.uint64(23)) | (h & np.uint64(0x7FFFFF))
    out["dynamic"] = bits.astype(np.uint32).view(np.float32).reshape(ROWS, N)
    z = _uniform(4)
    z[::2] = 0
    z[1::4, 256:] = 0  # a zero super-block beside a non-zero one
    z[3::4, :32] = 0
    out["zeros"] = z
    o = _uniform(5)
    o[np.arange(ROWS), (_hash(ROWS, 6) % np.uint64(N)).astype(np.int64)] = 1e4
    o[np.arange(ROWS), (_hash(ROWS, 7) % np.uint64(N)).astype(np.int64)] = -3e3
    out["outliers"] = o
    e = _uniform(8)
    blocks = e.reshape(ROWS, -1, 32)
    blocks[:, :, 0] = 127.0  # Q8_0 scale 1: the next values are rounded as they are
    below = np.float32(0.5) - np.float32(2.0**-25)
    blocks[:, :, 1:9] = np.array([below, -below, 0.5, -0.5, 1.5, -2.5, 0.5 + 2.0**-24, -126.5], np.float32)
    out["round_edges"] = e
    return out


def imatrices() -> dict[str, np.ndarray | None]:
    h = _hash(N, 9)
    return {"none": None, "imatrix": (((h >> np.uint64(40)) % np.uint64(1000)).astype(np.float32) + 1) / 100}
