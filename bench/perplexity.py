#!/usr/bin/env python3
"""Perplexity beside llama-perplexity: ours, and how far llama.cpp's own CPU settings move its figure.

    python bench/perplexity.py --bin PATH [--levels Q8_0,Q6_K,Q4_K_M,Q4_0] [--chunks 4] [--text FILE|python-docs]

SmolLM2-135M-Instruct's F32 GGUF (made once, as bench/infer.py makes it) is quantized by ``llama-quantize``
(found in ``--bin``) to each level; ``llama-perplexity -c 512 --chunks N -t 2`` scores the text with flash
attention on (its default here) and off, and ours (``compare``, the default "as llama.cpp CPU runs it"
evaluation, the same windows) scores the same text.  The text is the bundled calibration text, a file, or
``python-docs``: the reference topics of the running Python's documentation (``pydoc_data``, ~113k tokens
of prose and code: 220 windows of 512).  Printed per level: the three PPLs, how far flash attention off
moves llama.cpp's PPL, how far ours is from llama.cpp's default run, and that difference's standard error
from the windows (the spread of the per-window differences over the square root of their number).

With F32 weights the evaluations agree to a few parts in 1e5.  Once the activations are rounded to the
weights' dot-product partner (Q8_0, Q8_K), any last-bit difference in a float sum (flash attention on or
off, a BLAS block size) flips a few roundings, and the flips grow through the layers into another draw of
the rounding noise: a window's PPL moves by 0.5-0.9%, so a short text's PPL does too, while the mean KL
divergence (a mean of positive terms) stays put.  Over N windows that noise shrinks as 1/sqrt(N): it takes
a few hundred windows to compare PPLs to 0.1% (220: a standard error of ~0.04%).
"""
from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]


def python_docs() -> str:
    """The reference topics of this Python's documentation, in key order, one blank line apart."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def llama_ppl(binary: Path, model: Path, text: Path, chunks: int, *extra: str) -> tuple[float, list[float]]:
    """llama-perplexity's final PPL and each window's mean NLL (from the running PPLs [1]..[N] it prints)."""
    res = subprocess.run([str(binary), "-m", str(model), "-f", str(text), "-c", "512", "--chunks", str(chunks),
                          "-t", "2", *extra], capture_output=True, text=True)
    out = res.stdout + res.stderr
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if res.returncode or not m:
        raise SystemExit(f"llama-perplexity failed ({res.returncode}):\n{out[-1500:]}")
    running = [math.log(float(v)) for v in re.findall(r"\[(?:\d+)\]([0-9.]+)", out)]
    windows = [i * r - (i - 1) * p for i, (p, r) in enumerate(zip([0.0] + running, running), 1)]
    return float(m.group(1)), windows


def difference_se(ours: list[float], theirs: list[float]) -> float:
    """The standard error of ln(our PPL / theirs) (~ the relative difference) from per-window mean NLLs of
    equal token counts: the per-window differences' spread over the square root of their number."""
    d = [a - b for a, b in zip(ours, theirs)]
    n = len(d)
    mean = sum(d) / n
    return math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n) if n > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="folder with llama-quantize and llama-perplexity")
    ap.add_argument("--levels", default="Q8_0,Q6_K,Q4_K_M,Q4_0")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--text", help="a text file, or python-docs (default: the bundled calibration text)")
    args = ap.parse_args()
    from infer import f32_gguf

    from workbench import open_model
    from workbench.infer.compare import compare, default_calibration_text
    from workbench.progress import run

    bin_dir, levels = Path(args.bin), args.levels.split(",")
    if args.text == "python-docs":
        body, name = python_docs(), f"Python {sys.version.split()[0]}'s documentation topics"
    elif args.text:
        body, name = Path(args.text).read_text(encoding="utf-8"), Path(args.text).name
    else:
        body, name = default_calibration_text(), "bundled calibration text"
    src = f32_gguf()
    ours = run(compare(open_model(src), levels, text=body, n_ctx=512, max_windows=args.chunks, prompt=None))
    n = len(ours.levels[0].stats["window_nll"])
    print(f"SmolLM2-135M-Instruct, {name}, -c 512, {n} chunks, 2 threads")
    print(f"{'level':<8} {'llama fa on':>11} {'fa off':>9} {'fa off Δ':>9} | {'ours':>9} {'ours Δ':>8} {'± se':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(body, encoding="utf-8")
        rows = [("F32", src, ours.base.ppl, ours.levels[0].stats["window_nll_base"])]
        for lv in ours.levels:
            out = Path(tmp) / f"{lv.label}.gguf"
            subprocess.run([str(bin_dir / "llama-quantize"), str(src), str(out), lv.label, "2"], check=True,
                           capture_output=True)
            rows.append((lv.label, out, lv.stats["ppl"], lv.stats["window_nll"]))
        for label, path, mine, mine_windows in rows:
            on, on_windows = llama_ppl(bin_dir / "llama-perplexity", path, text, args.chunks, "-fa", "on")
            off, _ = llama_ppl(bin_dir / "llama-perplexity", path, text, args.chunks, "-fa", "off")
            se = difference_se(mine_windows, on_windows)
            print(f"{label:<8} {on:>11.4f} {off:>9.4f} {100 * (off / on - 1):>+8.3f}% | {mine:>9.4f} "
                  f"{100 * (mine / on - 1):>+7.3f}% {100 * se:>6.3f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
