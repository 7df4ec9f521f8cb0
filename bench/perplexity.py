#!/usr/bin/env python3
"""Perplexity beside llama-perplexity: ours, and how far llama.cpp's own CPU settings move its figure.

    python bench/perplexity.py --bin PATH [--levels Q8_0,Q6_K,Q4_K_M,Q4_0] [--chunks 4]

SmolLM2-135M-Instruct's F32 GGUF (made once, as bench/infer.py makes it) is quantized by ``llama-quantize``
(found in ``--bin``) to each level; ``llama-perplexity -c 512 --chunks N -t 2`` scores the bundled
calibration text with flash attention on (its default here) and off, and ours (``compare``, the default
"as llama.cpp CPU runs it" evaluation, the same windows) scores the same text.  Printed per level: the
three PPLs, how far flash attention off moves llama.cpp's PPL, and how far ours is from llama.cpp's
default run.

With F32 weights the two attention paths agree to ~0.004%; once the activations are rounded to the
weights' dot-product partner (Q8_0, Q8_K), the rounding turns the attention path's last-bit differences
into another draw of the rounding noise and the PPL moves by ~0.4%, while the mean KL divergence (a mean
of positive terms) stays put.  That spread is the floor for any other implementation's PPL.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]


def llama_ppl(binary: Path, model: Path, text: Path, chunks: int, *extra: str) -> float:
    res = subprocess.run([str(binary), "-m", str(model), "-f", str(text), "-c", "512", "--chunks", str(chunks),
                          "-t", "2", *extra], capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", res.stdout + res.stderr)
    if res.returncode or not m:
        raise SystemExit(f"llama-perplexity failed ({res.returncode}):\n{(res.stdout + res.stderr)[-1500:]}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="folder with llama-quantize and llama-perplexity")
    ap.add_argument("--levels", default="Q8_0,Q6_K,Q4_K_M,Q4_0")
    ap.add_argument("--chunks", type=int, default=4)
    args = ap.parse_args()
    from infer import f32_gguf

    from workbench import open_model
    from workbench.infer.compare import compare, default_calibration_text
    from workbench.progress import run

    bin_dir, levels = Path(args.bin), args.levels.split(",")
    src = f32_gguf()
    ours = run(compare(open_model(src), levels, n_ctx=512, max_windows=args.chunks, prompt=None))
    print(f"SmolLM2-135M-Instruct, bundled calibration text, -c 512, {args.chunks} chunks, 2 threads")
    print(f"{'level':<8} {'llama fa on':>11} {'fa off':>9} {'fa off Δ':>9} | {'ours':>9} {'ours Δ':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "calibration.txt"
        text.write_text(default_calibration_text(), encoding="utf-8")
        rows = [("F32", src, ours.base.ppl)]
        for lv in ours.levels:
            out = Path(tmp) / f"{lv.label}.gguf"
            subprocess.run([str(bin_dir / "llama-quantize"), str(src), str(out), lv.label, "2"], check=True,
                           capture_output=True)
            rows.append((lv.label, out, lv.stats["ppl"]))
        for label, path, mine in rows:
            on = llama_ppl(bin_dir / "llama-perplexity", path, text, args.chunks, "-fa", "on")
            off = llama_ppl(bin_dir / "llama-perplexity", path, text, args.chunks, "-fa", "off")
            print(f"{label:<8} {on:>11.4f} {off:>9.4f} {100 * (off / on - 1):>+8.3f}% | {mine:>9.4f} "
                  f"{100 * (mine / on - 1):>+6.2f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
