"""ggml's own quantizer, loaded with ctypes: the oracle our kernels must match byte for byte.

``ggml_quantize_chunk`` is the function llama-quantize calls.  The library comes from the
pywhispercpp==1.5.1 wheel (ggml 0.13.1), fetched into the test cache by tests/fetch_models.py.
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np
from gguf import GGMLQuantizationType

from fetch_models import real_model


class GGML:
    def __init__(self, path):
        self.lib = lib = ctypes.CDLL(str(path))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

    def row_size(self, qtype: str, n: int) -> int:
        return self.lib.ggml_row_size(int(GGMLQuantizationType[qtype]), n)

    def quantize(self, x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        out = np.zeros((rows, self.row_size(qtype, n)), np.uint8)
        imat = None
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            assert imatrix.shape == (n,)
            imat = imatrix.ctypes.data
        size = self.lib.ggml_quantize_chunk(int(GGMLQuantizationType[qtype]), x.ctypes.data, out.ctypes.data, 0, rows, n, imat)
        assert size == out.nbytes
        return out

    def dequantize(self, q: np.ndarray, qtype: str, n: int) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.uint8)
        rows = q.shape[0]
        out = np.zeros((rows, n), np.float32)
        if qtype == "F32":
            return q.view("<f4").astype(np.float32).reshape(rows, n)
        if qtype == "F16":
            fn = self.lib.ggml_fp16_to_fp32_row
        elif qtype == "BF16":
            fn = self.lib.ggml_bf16_to_fp32_row
        else:
            name = qtype.lower().replace("_k", "_K")
            fn = getattr(self.lib, f"dequantize_row_{name}")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn(q.ctypes.data, out.ctypes.data, rows * n)
        return out


@lru_cache(maxsize=1)
def _load(path: str) -> GGML:
    return GGML(path)


def ggml() -> GGML:
    """The oracle (skips the calling test, with the reason, if the library cannot be fetched)."""
    return _load(str(real_model("ggml")))


@lru_cache(maxsize=1)
def cpu_lib() -> ctypes.CDLL:
    """The oracle wheel's ggml-cpu library (built with AVX2): the row quantizers a CPU matrix product runs on
    its activations (``quantize_row_q8_0`` and ``quantize_row_q8_1`` are SIMD code, not the ``_ref`` ones)."""
    libs = real_model("ggml").parent / "pywhispercpp.libs"
    base = next(libs.glob("libggml-base-*.so*"))
    ctypes.CDLL(str(base), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(next(libs.glob("libggml-cpu-*.so*"))))
    assert lib.ggml_cpu_has_avx2() == 1
    return lib
