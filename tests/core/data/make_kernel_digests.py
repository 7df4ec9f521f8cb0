#!/usr/bin/env python3
"""Dev script: record digests of ggml's own quantizer output on tests/kernel_inputs.py's inputs.

    python tests/core/data/make_kernel_digests.py     # needs the ggml oracle (tests/fetch_models.py "ggml")

Writes tests/core/data/ggml_kernel_digests.json: per type, input case and importance matrix the SHA-256 of
``ggml_quantize_chunk``'s bytes, and per type and case the SHA-256 of ggml's dequantized floats.
tests/core/test_kernel_digests.py checks our kernels against them, so a kernel that stops matching ggml
fails even where the oracle cannot be fetched (tests/core/test_kernels.py gives the per-block detail).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[2])]

from ggml_oracle import ggml  # noqa: E402
from kernel_inputs import FLOAT_TYPES, N, QUANT_TYPES, cases, imatrices  # noqa: E402


def digest(a) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:24]


def main() -> int:
    oracle = ggml()
    xs, ws = cases(), imatrices()
    out = {"inputs": {c: digest(x) for c, x in xs.items()}, "quantize": {}, "dequantize": {}}
    for qtype in FLOAT_TYPES + QUANT_TYPES:
        for c, x in xs.items():
            for wname, w in ws.items():
                if qtype in FLOAT_TYPES and w is not None:
                    continue
                out["quantize"][f"{qtype}/{c}/{wname}"] = digest(oracle.quantize(x, qtype, w))
            if qtype in QUANT_TYPES:
                out["dequantize"][f"{qtype}/{c}"] = digest(oracle.dequantize(oracle.quantize(x, qtype), qtype, N))
    (HERE / "ggml_kernel_digests.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(len(out["quantize"]), "quantize and", len(out["dequantize"]), "dequantize digests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
