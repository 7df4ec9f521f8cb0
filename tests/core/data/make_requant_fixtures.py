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
imatrix_values) for Q4_0 and Q4_K_M.
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

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[2])]

PRESETS = ("Q8_0", "Q4_0", "Q4_K_M", "Q6_K")
BUILT = {"exact-llama": {"file_type": True}, "exact-llama-no-ftype-row": {"file_type": False, "row_tensor": True}}
REAL = {"tinycoder": "tinycoder", "smollm2": "smollm2"}
# exact-llama quantized with an importance matrix (a legacy imatrix file, ncall 1, so llama-quantize uses the
# values as written): these presets, and the quantize.imatrix.* keys llama-quantize adds
IMATRIX_INPUT, IMATRIX_PRESETS = "exact-llama", ("Q4_0", "Q4_K_M")
IMATRIX_META = {"file": "imatrix.dat", "datasets": ["calibration.txt"], "chunks": 7}
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


def imatrix_values() -> dict:
    """Importance per weight matrix of exact-llama (positive, exact in float32), one value per column."""
    import numpy as np
    from builders import exact_values, llama_gguf_tensors

    out = {}
    for i, (name, shape) in enumerate(llama_gguf_tensors(2, 256, 512, 4, 2, 64, False)):
        if len(shape) == 2 and name != "token_embd.weight":  # llama-imatrix sees the matrix multiplications
            out[name] = np.abs(exact_values((shape[1],), 5000 + i)) + np.float32(0.25)
    return out


def imatrix_meta() -> dict:
    """``requantize_gguf``'s imatrix_meta for the file written by write_legacy_imatrix."""
    return {**IMATRIX_META, "entries": len(imatrix_values())}


def write_legacy_imatrix(path: Path) -> Path:
    """llama-imatrix's legacy format: entries (name, ncall, values), then the chunk count and the dataset."""
    import struct

    with open(path, "wb") as f:
        values = imatrix_values()
        f.write(struct.pack("<i", len(values)))
        for name, v in values.items():
            f.write(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 1, v.size) + v.tobytes())
        dataset = IMATRIX_META["datasets"][0].encode()
        f.write(struct.pack("<ii", IMATRIX_META["chunks"], len(dataset)) + dataset)
    return path


def build_input(name: str, folder: Path) -> Path:
    from builders import write_random_llama_gguf

    return write_random_llama_gguf(folder / f"{name}.gguf", **BUILT[name])


def write(obj: dict, path: Path = FIXTURE) -> None:
    text = json.dumps(obj, indent=1)
    one_line = (lambda m: "[" + re.sub(r",\s+", ", ", m.group(1).strip()) + "]")  # lists of strings on one line
    text = re.sub(r"\[((?:\s*\"[^\"]*\",?)+)\s*\]", one_line, text)
    path.write_text(text + "\n", encoding="utf-8")


def main() -> int:
    from fetch_models import ensure

    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, default=Path("/tmp/lcp/build/bin"))
    args = ap.parse_args()
    out: dict = {"command": "llama-quantize --allow-requantize IN OUT PRESET 2", "inputs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = {name: build_input(name, tmp) for name in BUILT}
        inputs.update({name: ensure(key) for name, key in REAL.items()})
        for name, src in inputs.items():
            cases, keys, names = {}, None, None
            for preset in PRESETS:
                dst = tmp / f"{name}-{preset}.gguf"
                subprocess.run([str(args.bin / "llama-quantize"), "--allow-requantize", str(src), str(dst), preset,
                                "2"], check=True, capture_output=True)
                s = summary(dst)
                cases[preset] = {k: s[k] for k in ("sha256", "size", "types", "digests")}
                assert keys is None or (keys, names) == (s["keys"], s["tensors"]), (name, preset)  # one order per input
                keys, names = s["keys"], s["tensors"]
                dst.unlink()
                print(f"{name} {preset}: {s['sha256'][:16]} {s['size']} bytes")
            out["inputs"][name] = {"keys": keys, "tensors": names, "presets": cases}
        write_legacy_imatrix(tmp / IMATRIX_META["file"])
        cases, keys, names = {}, None, None
        for preset in IMATRIX_PRESETS:
            dst = tmp / f"imatrix-{preset}.gguf"
            subprocess.run([str(args.bin / "llama-quantize"), "--allow-requantize", "--imatrix", IMATRIX_META["file"],
                            str(inputs[IMATRIX_INPUT]), str(dst), preset, "2"],
                           check=True, capture_output=True, cwd=tmp)  # the file name as given is recorded
            s = summary(dst)
            cases[preset] = {k: s[k] for k in ("sha256", "size", "types", "digests")}
            keys, names = s["keys"], s["tensors"]
            print(f"{IMATRIX_INPUT} --imatrix {preset}: {s['sha256'][:16]} {s['size']} bytes")
        out["inputs"][IMATRIX_INPUT + "-imatrix"] = {"keys": keys, "tensors": names, "presets": cases}
    write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
