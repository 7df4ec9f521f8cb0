#!/usr/bin/env python3
"""Dev script: record which type llama-quantize chooses for every tensor of the PLAN_MODELS, per preset.

Needs a llama-quantize binary (built from llama.cpp; not a test dependency):

    python tests/core/data/make_plan_fixtures.py /path/to/llama-quantize

Writes tests/core/data/llama_quantize_plans.json, which tests/core/test_plan.py compares our presets with.
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

from builders import PLAN_MODELS, write_llama_gguf  # noqa: E402

from workbench.plan import PRESETS  # noqa: E402

LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*?\], type =\s+(\S+),.*?(?:\((\w+)\))?\s*$")


def dry_run(binary: str, gguf: Path, preset: str) -> dict[str, str]:
    out = subprocess.run([binary, "--dry-run", str(gguf), preset], capture_output=True, text=True, check=True)
    types = {}
    for line in (out.stdout + out.stderr).splitlines():
        m = LINE.match(line.strip())
        if m:
            name, src, new = m.groups()
            types[name] = (new or src).upper()
    return types


def main() -> int:
    binary = sys.argv[1]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in PLAN_MODELS:
            path = Path(tmp) / f"{spec[0]}.gguf"
            write_llama_gguf(path, spec)
            result[spec[0]] = {preset: dry_run(binary, path, preset) for preset in PRESETS}
            print(spec[0], {p: len(t) for p, t in result[spec[0]].items()})
    (HERE / "llama_quantize_plans.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
