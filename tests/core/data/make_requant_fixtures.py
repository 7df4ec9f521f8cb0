#!/usr/bin/env python3
"""Dev script: record what llama-quantize writes when it requantizes a few small GGUFs (run once by hand).

Needs a llama-quantize binary (built from llama.cpp; not a test dependency):

    python tests/core/data/make_requant_fixtures.py [--bin /tmp/lcp/build/bin]

Writes tests/core/data/llama_quantize_requant.json, which tests/core/test_requantize.py compares our
requantization with: per input its output's metadata keys and tensor names in order (the same for every
preset), and per preset (``llama-quantize --allow-requantize IN OUT PRESET 2``) the sha256 and size of the
output file, the tensor types and the first 8 hex digits of each tensor's data sha256 (so a mismatch can name
the first key or tensor that differs).
Inputs: the tinycoder GGUF (F16, rows of 16, general.file_type in the middle and no
general.quantization_version), tests/builders.py's ``write_random_llama_gguf`` with general.file_type, and without it
but with a [1, 256] tensor stored with two dimensions (F32, rows of 256), and SmolLM2-135M-Instruct Q4_1;
and ``exact-llama-imatrix``: exact-llama with ``--imatrix`` (a legacy imatrix file written here, see
imatrix_values) for Q4_0 and Q4_K_M; ``qwen3moe-8x``: a qwen3moe GGUF in the converter's layout
(tests/plan_arch_cases.py: 3-D ``ffn_*_exps`` [8 experts, rows, cols], an F32 router) with exact non-zero F32
weights, for Q8_0 and Q4_K_M, and ``qwen3moe-8x-imatrix`` with an importance matrix that differs per expert.
``--only NAME ...`` re-records those inputs and keeps the others.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[2])]

PRESETS = ("Q8_0", "Q4_0", "Q4_K_M", "Q6_K")
BUILT = {"exact-llama": {"file_type": True}, "exact-llama-no-ftype-row": {"file_type": False, "row_tensor": True},
         "qwen3moe-8x": {}}  # (built by plan_arch_cases.write_case_gguf)
REAL = {"tinycoder": "tinycoder", "smollm2": "smollm2"}
# exact-llama quantized with an importance matrix (a legacy imatrix file, ncall 1, so llama-quantize uses the
# values as written): these presets, and the quantize.imatrix.* keys llama-quantize adds
IMATRIX_INPUT, IMATRIX_PRESETS = "exact-llama", ("Q4_0", "Q4_K_M")
IMATRIX_META = {"file": "imatrix.dat", "datasets": ["calibration.txt"], "chunks": 7}
# a qwen3moe model with exactly 8 experts (llama-quantize's 8-expert rules apply), rows of 256 and 128
MOE, MOE_PRESETS = "qwen3moe-8x", ("Q8_0", "Q4_K_M")
MOE_SPEC = {"arch": "qwen3moe", "n_layer": 2, "n_embd": 256, "n_ff": 128, "n_head": 4, "n_head_kv": 1, "head_dim": 64,
            "n_expert": 8, "n_expert_used": 2, "n_vocab": 64, "tied": False, "dtype": "F32"}
FIXTURE = HERE / "llama_quantize_requant.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def summary(path: Path) -> dict:
    """What the fixture records of one GGUF, read with gguf-py (not our reader)."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    return {"sha256": sha256_file(path), "size": Path(path).stat().st_size,
            "keys": [k for k in r.fields if not k.startswith("GGUF.")],
            "tensors": [t.name for t in r.tensors],
            "types": " ".join(t.tensor_type.name for t in r.tensors),
            "digests": "".join(hashlib.sha256(t.data.tobytes()).hexdigest()[:8] for t in r.tensors)}


def first_difference(expected: dict, got: dict) -> str:
    """The first metadata key or tensor where two summaries differ, in words."""
    ek, gk = expected["keys"], got["keys"]
    for i, (a, b) in enumerate(zip(ek, gk)):
        if a != b:
            return f"metadata key #{i}: llama-quantize has {a!r}, ours {b!r}"
    if len(ek) != len(gk):
        return f"{len(ek)} metadata keys in llama-quantize's file, {len(gk)} in ours"
    et, gt = expected["tensors"], got["tensors"]
    etypes, gtypes = expected["types"].split(), got["types"].split()
    for i, (a, b) in enumerate(zip(et, gt)):
        if a != b:
            return f"tensor #{i}: llama-quantize has {a}, ours {b}"
        if etypes[i] != gtypes[i]:
            return f"tensor {a}: llama-quantize wrote {etypes[i]}, ours {gtypes[i]}"
        if expected["digests"][8 * i:8 * i + 8] != got["digests"][8 * i:8 * i + 8]:
            return f"tensor {a} ({etypes[i]}): the data differs"
    if len(et) != len(gt):
        return f"{len(et)} tensors in llama-quantize's file, {len(gt)} in ours"
    return "same keys, tensors and tensor data: a metadata value, a tensor shape, the alignment or the padding differs"


def imatrix_values(name: str = IMATRIX_INPUT) -> dict:
    """Importance per weight matrix of exact-llama or qwen3moe-8x (positive, exact in float32), one value per
    column (per expert and column for a 3-D expert tensor, each expert's different)."""
    import numpy as np
    from builders import exact_values, llama_gguf_tensors
    from plan_arch_cases import arch_tensors

    if name == MOE:
        shapes = [(n, s) for n, s, _ in arch_tensors(MOE_SPEC) if "ffn_gate_inp" not in n]
    else:
        shapes = llama_gguf_tensors(2, 256, 512, 4, 2, 64, False)
    out = {}
    for i, (tname, shape) in enumerate(shapes):
        if len(shape) >= 2 and tname != "token_embd.weight":  # llama-imatrix sees the matrix multiplications
            n = shape[-1] * (shape[0] if len(shape) == 3 else 1)
            out[tname] = np.abs(exact_values((n,), 5000 + i)) + np.float32(0.25)
    return out


def imatrix_meta(name: str = IMATRIX_INPUT) -> dict:
    """``requantize_gguf``'s imatrix_meta for the file written by write_legacy_imatrix."""
    return {**IMATRIX_META, "entries": len(imatrix_values(name))}


def write_legacy_imatrix(path: Path, name: str = IMATRIX_INPUT) -> Path:
    """llama-imatrix's legacy format: entries (name, ncall, values), then the chunk count and the dataset."""
    import struct

    with open(path, "wb") as f:
        values = imatrix_values(name)
        f.write(struct.pack("<i", len(values)))
        for name, v in values.items():
            f.write(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 1, v.size) + v.tobytes())
        dataset = IMATRIX_META["datasets"][0].encode()
        f.write(struct.pack("<ii", IMATRIX_META["chunks"], len(dataset)) + dataset)
    return path


def moe_values(name: str, shape: tuple[int, ...], index: int):
    """qwen3moe-8x's weights: exact_values with per-row scales over every expert's rows."""
    from builders import exact_values

    return exact_values((int(np.prod(shape[:-1])), shape[-1]) if len(shape) > 1 else shape, 100 + index).reshape(shape)


def build_input(name: str, folder: Path) -> Path:
    from builders import write_random_llama_gguf

    if name == MOE:
        from plan_arch_cases import write_case_gguf

        return write_case_gguf(folder / f"{name}.gguf", MOE_SPEC, values=moe_values)
    return write_random_llama_gguf(folder / f"{name}.gguf", **BUILT[name])


def write(obj: dict, path: Path = FIXTURE) -> None:
    text = json.dumps(obj, indent=1)
    one_line = (lambda m: "[" + re.sub(r",\s+", ", ", m.group(1).strip()) + "]")  # lists of strings on one line
    text = re.sub(r"\[((?:\s*\"[^\"]*\",?)+)\s*\]", one_line, text)
    path.write_text(text + "\n", encoding="utf-8")


def record(binary: Path, src: Path, dst: Path, preset: str, imatrix: Path | None = None) -> dict:
    """Run llama-quantize (with the imatrix file name as given, from its folder) and summarize its output."""
    extra = ["--imatrix", imatrix.name] if imatrix is not None else []
    subprocess.run([str(binary), "--allow-requantize", *extra, str(src), str(dst), preset, "2"], check=True,
                   capture_output=True, cwd=imatrix.parent if imatrix is not None else None)
    s = summary(dst)
    dst.unlink()
    print(f"{src.stem}{' --imatrix' if imatrix else ''} {preset}: {s['sha256'][:16]} {s['size']} bytes")
    return s


def main() -> int:
    from fetch_models import ensure

    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, default=Path("/tmp/lcp/build/bin"))
    ap.add_argument("--only", nargs="+", help="re-record these inputs only (e.g. qwen3moe-8x qwen3moe-8x-imatrix)")
    args = ap.parse_args()
    binary = args.bin / "llama-quantize"
    out: dict = {"command": "llama-quantize --allow-requantize IN OUT PRESET 2", "inputs": {}}
    if args.only:
        out = json.loads(FIXTURE.read_text(encoding="utf-8"))
    wanted = (lambda name: not args.only or name in args.only)
    runs = {name: (name, PRESETS, None) for name in [*BUILT, *REAL] if name != MOE}
    runs[MOE] = (MOE, MOE_PRESETS, None)
    runs[IMATRIX_INPUT + "-imatrix"] = (IMATRIX_INPUT, IMATRIX_PRESETS, IMATRIX_INPUT)
    runs[MOE + "-imatrix"] = (MOE, IMATRIX_PRESETS, MOE)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources: dict[str, Path] = {}
        for name, (src_name, presets, imatrix_of) in runs.items():
            if not wanted(name):
                continue
            if src_name not in sources:
                sources[src_name] = build_input(src_name, tmp) if src_name in BUILT else ensure(REAL[src_name])
            imatrix = None
            if imatrix_of is not None:  # one folder per imatrix: llama-quantize records the file name as given
                (tmp / imatrix_of).mkdir(exist_ok=True)
                imatrix = write_legacy_imatrix(tmp / imatrix_of / IMATRIX_META["file"], imatrix_of)
            cases, keys, names = {}, None, None
            for preset in presets:
                s = record(binary, sources[src_name], tmp / f"{name}-{preset}.gguf", preset, imatrix)
                cases[preset] = {k: s[k] for k in ("sha256", "size", "types", "digests")}
                assert keys is None or (keys, names) == (s["keys"], s["tensors"]), (name, preset)  # one order per input
                keys, names = s["keys"], s["tensors"]
            out["inputs"][name] = {"keys": keys, "tensors": names, "presets": cases}
    write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
