"""Dev script (not run by the tests): llama-quantize's tensor types for the GGUFs our converter writes from the
tiny architecture fixtures, the reference of tests/core/test_arch_steps.py's plan step.

    .venv/bin/python tests/core/data/infer/make_arch_steps_ref.py [/path/to/llama-quantize]

For each fixture folder: `workbench convert FOLDER --type F32` (our HF -> GGUF), then llama-quantize (default
/tmp/lcp/build/bin/llama-quantize, built from the llama-cpp-python 0.3.36 sources) at each preset of PRESETS;
the output's tensor types are read with gguf-py and written to arch_steps_llama_quantize.json as
{arch: {preset: {gguf tensor name: type}}}.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf

HERE = Path(__file__).resolve().parent
ARCHS = ("gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral", "llama", "qwen2")
PRESETS = ("Q4_K_M", "Q3_K_M")


def main() -> None:
    from workbench.cli import main as cli

    quantize = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lcp/build/bin/llama-quantize"
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            src = Path(tmp) / f"{arch}.gguf"
            assert cli(["convert", str(HERE / arch), "-o", str(src), "--type", "F32", "-q"]) == 0  # prints the path
            out[arch] = {}
            for preset in PRESETS:
                dst = Path(tmp) / f"{arch}-{preset}.gguf"
                subprocess.run([quantize, str(src), str(dst), preset, "1"], check=True, capture_output=True)
                r = gguf.GGUFReader(dst)
                out[arch][preset] = {t.name: t.tensor_type.name for t in r.tensors}
    def compact(types: dict) -> str:
        return json.dumps(types, sort_keys=True, separators=(",", ":"))

    lines = [f" {json.dumps(a)}: {{" + ", ".join(f"{json.dumps(p)}: {compact(t)}" for p, t in out[a].items()) + "}"
             for a in ARCHS]
    (HERE / "arch_steps_llama_quantize.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
