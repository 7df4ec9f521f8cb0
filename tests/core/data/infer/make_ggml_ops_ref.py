"""Dev script (not run by the tests): record what ggml's CPU backend computes for the ops our "llama-cpu"
evaluation must round exactly as it does: rms_norm (and the norm weight's multiply), rope, and the
quantization of a matrix product's activations to Q8_0.

Needs the ggml libraries of a llama.cpp build (libggml-base.so, libggml-cpu.so; the anchor build of the
README: ``cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON``):

    .venv/bin/python tests/core/data/infer/make_ggml_ops_ref.py --bin /tmp/lcp/build/bin

It builds a small ggml graph through ctypes (ggml_rms_norm + ggml_mul, ggml_rope_ext in llama's pair mode at
SmolLM2's frequency base) on seeded inputs, calls ggml-cpu's quantize_row_q8_0 (the AVX2 row quantizer a
matrix product runs on its activations), and saves inputs and outputs to ggml_ops_ref.npz beside this script.
tests/core/test_llama_cpu_ops.py checks our functions against it bit for bit.
"""
from __future__ import annotations

import argparse
import ctypes
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "ggml_ops_ref.npz"
F32_T, I32_T = 0, 26  # enum ggml_type
ROPE_BASE = 100000.0  # SmolLM2's rope.freq_base
EPS = 1e-5
POSITIONS = np.array([0, 1, 2, 3, 7, 64, 243, 511, 1000, 2047, 4095, 8191], np.int32)


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def load(bin_dir: Path):
    base = ctypes.CDLL(str(bin_dir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(bin_dir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    P = ctypes.c_void_p
    sig = {
        (base, "ggml_init"): (P, [InitParams]),
        (base, "ggml_free"): (None, [P]),
        (base, "ggml_new_tensor_1d"): (P, [P, ctypes.c_int, ctypes.c_int64]),
        (base, "ggml_new_tensor_2d"): (P, [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
        (base, "ggml_new_tensor_3d"): (P, [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]),
        (base, "ggml_get_data"): (P, [P]),
        (base, "ggml_rms_norm"): (P, [P, P, ctypes.c_float]),
        (base, "ggml_mul"): (P, [P, P, P]),
        (base, "ggml_rope_ext"): (P, [P, P, P, P, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [ctypes.c_float] * 6),
        (base, "ggml_new_graph"): (P, [P]),
        (base, "ggml_build_forward_expand"): (None, [P, P]),
        (cpu, "ggml_cpu_init"): (None, []),
        (cpu, "ggml_graph_compute_with_ctx"): (ctypes.c_int, [P, P, ctypes.c_int]),
        (cpu, "quantize_row_q8_0"): (None, [P, P, ctypes.c_int64]),
    }
    fns = {}
    for (lib, name), (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
        fns[name] = f
    fns["ggml_cpu_init"]()
    return fns


def put(g, t, a: np.ndarray) -> None:
    ctypes.memmove(g["ggml_get_data"](t), np.ascontiguousarray(a).ctypes.data, a.nbytes)


def get(g, t, shape, dtype=np.float32) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(g["ggml_get_data"](t), n), dtype).reshape(shape).copy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", type=Path, required=True, help="folder with libggml-base.so and libggml-cpu.so")
    args = ap.parse_args()
    g = load(args.bin)
    rng = np.random.default_rng(2026)
    ctx = g["ggml_init"](InitParams(64 << 20, None, False))
    # rms_norm rows of very different magnitudes (hidden states grow along the layers), times a norm weight
    norm_x = (rng.standard_normal((16, 576)) * np.logspace(-2, 2, 16)[:, None]).astype(np.float32)
    norm_w = (1 + 0.3 * rng.standard_normal(576)).astype(np.float32)
    x = g["ggml_new_tensor_2d"](ctx, F32_T, 576, 16)
    w = g["ggml_new_tensor_1d"](ctx, F32_T, 576)
    put(g, x, norm_x)
    put(g, w, norm_w)
    y = g["ggml_mul"](ctx, g["ggml_rms_norm"](ctx, x, EPS), w)
    # rope, llama's mode 0 (adjacent pairs), 64 rotated dims, at positions up to 8191
    rope_x = rng.standard_normal((POSITIONS.size, 3, 64)).astype(np.float32) * 4
    q = g["ggml_new_tensor_3d"](ctx, F32_T, 64, 3, POSITIONS.size)
    pos = g["ggml_new_tensor_1d"](ctx, I32_T, POSITIONS.size)
    put(g, q, rope_x)
    put(g, pos, POSITIONS)
    r = g["ggml_rope_ext"](ctx, q, pos, None, 64, 0, 0, ROPE_BASE, 1.0, 0.0, 1.0, 0.0, 0.0)
    graph = g["ggml_new_graph"](ctx)
    g["ggml_build_forward_expand"](graph, y)
    g["ggml_build_forward_expand"](graph, r)
    assert g["ggml_graph_compute_with_ctx"](ctx, graph, 1) == 0
    norm_y = get(g, y, norm_x.shape)
    rope_y = get(g, r, rope_x.shape)
    g["ggml_free"](ctx)
    # Q8_0 activations: random rows, and rows whose values sit exactly on a rounding tie (a block holding
    # 127.0 has scale 1, so k + 0.5 stays a tie) where round-half-even and roundf disagree
    q8_x = (rng.standard_normal((24, 576)) * rng.random((24, 1)) * 5).astype(np.float32)
    ties = rng.integers(-126, 126, (8, 576)).astype(np.float32) + np.float32(0.5)
    ties[:, ::32] = 127.0
    q8_x = np.concatenate([q8_x, ties])
    q8_bytes = np.zeros((q8_x.shape[0], 576 // 32 * 34), np.uint8)
    for i, row in enumerate(q8_x):
        g["quantize_row_q8_0"](row.ctypes.data, q8_bytes[i].ctypes.data, 576)
    np.savez_compressed(OUT, norm_x=norm_x, norm_w=norm_w, norm_y=norm_y, eps=np.float32(EPS), rope_x=rope_x,
                        rope_pos=POSITIONS, rope_y=rope_y, rope_base=np.float64(ROPE_BASE), q8_x=q8_x,
                        q8_bytes=q8_bytes)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
