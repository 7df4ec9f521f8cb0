"""Element types across formats, and decoding raw bytes to float32.

Type names are shared across formats: the plain element types use safetensors' names (F32, F16,
BF16, I8, ...), which are also ggml's names for the same types; quantized tensors use ggml's type
names (Q4_K, Q8_0, IQ4_XS, ...).  Shapes are always in numpy (row-major) order: the last axis is
contiguous, which is ggml's ``ne[0]``.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import UnsupportedError

# name -> (numpy dtype used to hold the raw elements, bytes per element)
PLAIN_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # numpy has no bfloat16: keep the bits, widen on decode
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(np.uint8),
    "F8_E5M2": np.dtype(np.uint8),
}


def is_quantized(dtype: str) -> bool:
    return dtype not in PLAIN_DTYPES


def ggml_type(dtype: str) -> GGMLQuantizationType | None:
    try:
        return GGMLQuantizationType[dtype]
    except KeyError:
        return None


def block_info(dtype: str) -> tuple[int, int]:
    """(elements per block, bytes per block) for any type; plain types have blocks of 1."""
    if dtype in PLAIN_DTYPES:
        return 1, PLAIN_DTYPES[dtype].itemsize
    qt = ggml_type(dtype)
    if qt is None or qt not in GGML_QUANT_SIZES:
        raise UnsupportedError(f"unknown tensor type {dtype!r}")
    return GGML_QUANT_SIZES[qt]


def nbytes_for(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of this type and shape occupies.  Raises if the row length does not fit the block."""
    block, size = block_info(dtype)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    row = shape[-1] if shape else 1
    if row % block:
        raise UnsupportedError(f"row length {row} is not a multiple of the {dtype} block size {block}")
    return n // block * size


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _f8_table(exp_bits: int, man_bits: int, bias: int, ocp_e4m3: bool) -> np.ndarray:
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    normal = (1.0 + man / (1 << man_bits)) * np.exp2(exp.astype(np.float64) - bias)
    sub = (man / (1 << man_bits)) * np.exp2(1.0 - bias)
    val = sign * np.where(exp == 0, sub, normal)
    max_exp = (1 << exp_bits) - 1
    if ocp_e4m3:  # E4M3FN: no infinities, only S.1111.111 is NaN
        val = np.where((exp == max_exp) & (man == (1 << man_bits) - 1), np.nan, val)
    else:  # E5M2: IEEE-like
        val = np.where((exp == max_exp) & (man == 0), sign * np.inf, val)
        val = np.where((exp == max_exp) & (man != 0), np.nan, val)
    return val.astype(np.float32)


_F8_E4M3 = _f8_table(4, 3, 7, True)
_F8_E5M2 = _f8_table(5, 2, 15, False)


def decode(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode raw data (a uint8 byte array, or elements already viewed as the plain dtype) to float32 of ``shape``."""
    if dtype in PLAIN_DTYPES:
        arr = np.asarray(raw)
        if arr.dtype == np.uint8 and dtype not in ("U8", "F8_E4M3", "F8_E5M2"):
            arr = arr.view(PLAIN_DTYPES[dtype])
        if dtype == "BF16":
            out = bf16_to_f32(arr)
        elif dtype == "F8_E4M3":
            out = _F8_E4M3[arr.view(np.uint8)]
        elif dtype == "F8_E5M2":
            out = _F8_E5M2[arr.view(np.uint8)]
        elif arr.dtype == np.float32:
            out = arr  # already float32 (e.g. a read-only view of a mapped file): no copy
        else:
            out = arr.astype(np.float32)
        return out.reshape(shape)
    qt = ggml_type(dtype)
    if qt is None:
        raise UnsupportedError(f"cannot decode tensor type {dtype!r}")
    from gguf import quants  # local: keeps import time low

    block, size = block_info(dtype)
    data = np.ascontiguousarray(np.asarray(raw, dtype=np.uint8)).reshape(-1, shape[-1] // block * size)
    try:
        out = quants.dequantize(data, qt)
    except NotImplementedError as exc:
        raise UnsupportedError(f"dequantizing {dtype} is not supported yet") from exc
    return np.asarray(out, dtype=np.float32).reshape(shape)
