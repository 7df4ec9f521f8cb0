#!/usr/bin/env python3
"""Dev script: record which type llama-quantize chooses for every tensor of the plan parity cases, per preset.

Needs a llama-quantize binary (built from llama.cpp; not a test dependency):

    python tests/core/data/make_plan_fixtures.py /path/to/llama-quantize

Each case (CASES below) is written as a GGUF with zero weights (and, for ``imatrix`` cases, an importance
matrix in llama-imatrix's GGUF format) and run through ``llama-quantize --dry-run`` once per preset; the
per-tensor types it prints are stored in tests/core/data/llama_quantize_plans.json, which
tests/core/test_plan.py compares our presets with.  To keep the 80-layer cases small, a case's types for
one preset are a string with one character per tensor (``CODES``), in the order of
``plan_arch_cases.case_tensors(spec)`` (tests/builders.py's ``plan_case_tensors`` for llama/qwen2/qwen2moe,
tests/plan_arch_cases.py's converter layouts for gemma3, gemma2, qwen3, qwen3moe and phi3).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[2])]

from builders import PLAN_MODELS, write_imatrix_gguf  # noqa: E402
from plan_arch_cases import case_tensors, write_case_gguf, write_expert_imatrix_gguf  # noqa: E402

from workbench.plan import PRESETS  # noqa: E402

LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*?\], type =\s+(\S+),.*?(?:\((\w+)\))?\s*$")
BUILD = re.compile(r"^version: (.+)$", re.M)


def _llama(name, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied):
    return {"arch": "llama", "n_layer": n_layer, "n_embd": n_embd, "n_ff": n_ff, "n_head": n_head,
            "n_head_kv": n_head_kv, "n_vocab": n_vocab, "tied": tied, "dtype": "F32"}


# rows of 256 everywhere in the new cases, so no block-size fallback hides a rule
_SMALL = {"n_embd": 256, "n_ff": 256, "n_vocab": 256, "tied": False, "dtype": "F16"}
CASES: dict[str, dict] = {
    **{spec[0]: _llama(*spec) for spec in PLAN_MODELS},
    # imatrix: Q4_0/Q5_0 raise the first eighth of ffn_down to Q4_1/Q5_1; IQ4_* stop raising it to Q5_K
    "llama16-gqa4-imatrix": {**_llama(*PLAN_MODELS[0]), "imatrix": True},
    # LLM_TYPE_70B: an 80-layer llama with n_head != n_head_kv (attn_v Q3_K/Q4_K -> Q5_K) ...
    "llama80-gqa4-70b": {"arch": "llama", "n_layer": 80, "n_head": 8, "n_head_kv": 2, **_SMALL},
    # ... but not one whose heads are all KV heads (65B), while any 80-layer qwen2 is "70B"
    "llama80-mha-65b": {"arch": "llama", "n_layer": 80, "n_head": 4, "n_head_kv": 4, **_SMALL},
    "qwen2-80-mha-70b": {"arch": "qwen2", "n_layer": 80, "n_head": 4, "n_head_kv": 4, **_SMALL},
    # 8 experts: attn_v/attn_k -> Q8_0, attn_output -> Q5_K; expert tensors ffn_*_exps of 3 dims
    "mixtral16-8x": {"arch": "llama", "n_layer": 16, "n_head": 8, "n_head_kv": 2, "n_expert": 8, "n_expert_used": 2,
                     **_SMALL},
    # experts plus a shared expert: two ffn_down per layer, so the layer comes from the name, not a counter
    "qwen2moe16-4x-shexp": {"arch": "qwen2moe", "n_layer": 16, "n_head": 4, "n_head_kv": 4, "n_expert": 4,
                            "n_expert_used": 2, "shared_expert": True, **_SMALL},
    "qwen2moe16-4x-shexp-imatrix": {"arch": "qwen2moe", "n_layer": 16, "n_head": 4, "n_head_kv": 4, "n_expert": 4,
                                    "n_expert_used": 2, "shared_expert": True, "imatrix": True, **_SMALL},
    # the architectures of issue 14, in the layouts llama.cpp's converter writes (tests/plan_arch_cases.py), with
    # their real head/GQA/tied/depth choices and smaller widths.  gemma3 270M: rows of 640 (K-quants fall back),
    # 4 query heads per KV head, tied embeddings (token_embd gets the output rule: Q8_0 as 640 % 256 != 0)
    "gemma3-270m": {"arch": "gemma3", "n_layer": 18, "n_embd": 640, "n_ff": 512, "n_head": 4, "n_head_kv": 1,
                    "head_dim": 256, "n_vocab": 512, "tied": True, "dtype": "F16"},
    # gemma3 4B: 34 layers, GQA 2, rows of 256 (tied token_embd -> Q6_K)
    "gemma3-4b": {"arch": "gemma3", "n_layer": 34, "n_embd": 256, "n_ff": 512, "n_head": 2, "n_head_kv": 1,
                  "head_dim": 128, "n_vocab": 512, "tied": True, "dtype": "F16"},
    "gemma2-2b": {"arch": "gemma2", "n_layer": 26, "n_embd": 256, "n_ff": 512, "n_head": 2, "n_head_kv": 1,
                  "head_dim": 128, "n_vocab": 512, "tied": True, "dtype": "F16"},
    "qwen3-0.6b": {"arch": "qwen3", "n_layer": 28, "n_embd": 256, "n_ff": 512, "n_head": 4, "n_head_kv": 2,
                   "head_dim": 128, "n_vocab": 512, "tied": True, "dtype": "F16"},
    "qwen3-8b": {"arch": "qwen3", "n_layer": 36, "n_embd": 256, "n_ff": 512, "n_head": 4, "n_head_kv": 1,
                 "head_dim": 128, "n_vocab": 512, "tied": False, "dtype": "F16"},
    # qwen3moe with exactly 8 experts: llama-quantize's 8-expert rules (attn_k/attn_v Q8_0, attn_output Q5_K)
    "qwen3moe-8x": {"arch": "qwen3moe", "n_layer": 16, "n_embd": 256, "n_ff": 256, "n_head": 4, "n_head_kv": 1,
                    "head_dim": 128, "n_expert": 8, "n_expert_used": 2, "n_vocab": 512, "tied": False,
                    "dtype": "F16"},
    # 16 experts (those rules are for == 8 only) and an imatrix: ffn_down_exps' layer comes from its name
    "qwen3moe-16x-imatrix": {"arch": "qwen3moe", "n_layer": 16, "n_embd": 256, "n_ff": 256, "n_head": 4,
                             "n_head_kv": 1, "head_dim": 128, "n_expert": 16, "n_expert_used": 4, "n_vocab": 512,
                             "tied": False, "dtype": "F16", "imatrix": True},
    # phi3 mini 128k: fused attn_qkv (MHA), ffn_up of 2 * n_ff rows, longrope factors, untied
    "phi3-mini-128k": {"arch": "phi3", "n_layer": 32, "n_embd": 256, "n_ff": 512, "n_head": 4, "n_head_kv": 4,
                       "head_dim": 64, "n_rot": 64, "n_vocab": 512, "tied": False, "dtype": "F16"},
    # phi4 mini: GQA 3, partial rotary (n_rot 48), tied
    "phi4-mini": {"arch": "phi3", "n_layer": 32, "n_embd": 256, "n_ff": 512, "n_head": 12, "n_head_kv": 4,
                  "head_dim": 64, "n_rot": 48, "n_vocab": 512, "tied": True, "dtype": "F16"},
}


def dry_run(binary: str, gguf: Path, preset: str, imatrix: Path | None) -> tuple[dict[str, str], str]:
    args = [binary, "--dry-run", *(["--imatrix", str(imatrix)] if imatrix else []), str(gguf), preset]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    if imatrix and "importance matrix entries" not in text:
        raise RuntimeError(f"llama-quantize did not load the imatrix for {gguf.name}")
    types = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            name, src, new = m.groups()
            types[name] = (new or src).upper()
    build = BUILD.search(text)
    return types, build.group(1) if build else "unknown"


# one character per ggml type in the recorded strings
CODES = {"F32": "f", "F16": "h", "BF16": "b", "Q8_0": "8", "Q6_K": "6", "Q5_K": "5", "Q5_1": "R", "Q5_0": "r",
         "Q4_K": "4", "Q4_1": "Q", "Q4_0": "q", "IQ4_NL": "n", "IQ4_XS": "x", "Q3_K": "3", "Q2_K": "2"}


def encode(spec: dict, types: dict[str, str]) -> str:
    names = [n for n, _s, _d in case_tensors(spec)]
    if set(names) != set(types):
        raise RuntimeError(f"llama-quantize listed other tensors: {sorted(set(names) ^ set(types))[:5]}")
    return "".join(CODES[types[n]] for n in names)


def main() -> int:
    binary = sys.argv[1]
    cases, build = {}, "unknown"
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in CASES.items():
            path = Path(tmp) / f"{name}.gguf"
            write_case_gguf(path, spec)
            imatrix = None
            if spec.get("imatrix"):
                imatrix = Path(tmp) / f"{name}.imatrix.gguf"
                downs = {n: s for n, s, _ in case_tensors(spec) if "ffn_down" in n}
                if any(len(s) == 3 for s in downs.values()):  # per-expert rows
                    write_expert_imatrix_gguf(imatrix, downs)
                else:
                    write_imatrix_gguf(imatrix, {n: s[-1] for n, s in downs.items()})
            recorded = {}
            for preset in PRESETS:
                types, build = dry_run(binary, path, preset, imatrix)
                recorded[preset] = encode(spec, types)
            cases[name] = {"spec": spec, "types": recorded}
            path.unlink()
            print(name, {p: len(set(t)) for p, t in recorded.items()})
    out = {"llama.cpp build": build, "codes": CODES, "cases": cases}
    (HERE / "llama_quantize_plans.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
