#!/usr/bin/env python3
"""Dev script: record llama-imatrix's output for `workbench imatrix`'s test, and check our engine's importance
matrix against llama-imatrix on SmolLM2 (run by hand; needs llama.cpp binaries, never run by the tests):

    python tests/core/data/imatrix/make_engine_imatrix_ref.py [--bin /tmp/lcp/build/bin] [--smollm2 [--chunks 3]]

The fixture: the tiny llama of tests/core/data/infer/llama converted to an F32 GGUF with our converter,
``llama-imatrix -c 64 --chunks 2 -b 64 --process-output`` over :data:`TEXT_FILE` (the opening of the bundled
calibration text) writes ``tiny_llama.imatrix.gguf`` beside this script (~4 KB, llama-imatrix's own file).
``-b`` equal to ``-c``: llama-imatrix's default batch (2048) packs several chunks into one batch, whose uneven
micro-batch split drops a few tokens per chunk (pieces under 16 tokens are ignored); one chunk per batch
counts every token, as `workbench imatrix` does.

``--smollm2``: the same on SmolLM2-135M at F32 (bench/infer.py's F32 GGUF) over the bundled calibration text,
``-c 512 --chunks N -b 512``, and prints the per-tensor relative L2 of our in_sum2/counts against llama-imatrix's
(the issue's check: every tensor < 1%).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

TINY_HF = ROOT / "tests" / "core" / "data" / "infer" / "llama"
TEXT_FILE = HERE / "tiny_llama_text.txt"
REF_FILE = HERE / "tiny_llama.imatrix.gguf"
TINY_CTX, TINY_CHUNKS = 64, 2


def tiny_gguf(folder: Path) -> Path:
    """The tiny llama as an F32 GGUF written by our converter (what the test computes on)."""
    from workbench.convert.hf_to_gguf import convert_hf_to_gguf
    from workbench.progress import run

    out = folder / "tiny-llama-F32.gguf"
    run(convert_hf_to_gguf(TINY_HF, out, "F32"))
    return out


def llama_imatrix(binary: Path, model: Path, text: Path, out: Path, n_ctx: int, chunks: int, *extra: str) -> None:
    subprocess.run([str(binary / "llama-imatrix"), "-m", str(model), "-f", text.name, "-c", str(n_ctx), "-b",
                    str(n_ctx), "--chunks", str(chunks), "-t", "2", "-o", str(out), *extra],
                   check=True, capture_output=True, cwd=text.parent)


def relative_l2(ref, ours) -> dict[str, float]:
    import numpy as np

    out = {}
    for name in sorted(ref.entries):
        a, b = ref.weights_for(name), ours.weights_for(name)
        out[name] = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, default=Path("/tmp/lcp/build/bin"))
    ap.add_argument("--smollm2", action="store_true", help="check against llama-imatrix on SmolLM2 F32")
    ap.add_argument("--chunks", type=int, default=3)
    args = ap.parse_args()
    from workbench.infer.compare import default_calibration_text
    from workbench.optimize.imatrix import Imatrix
    from workbench.optimize.imatrix_compute import compute_imatrix
    from workbench.progress import run

    if not args.smollm2:
        TEXT_FILE.write_text(default_calibration_text()[:1200], encoding="utf-8")
        with tempfile.TemporaryDirectory() as tmp:
            model = tiny_gguf(Path(tmp))
            llama_imatrix(args.bin, model, TEXT_FILE, Path(tmp) / "ref.gguf", TINY_CTX, TINY_CHUNKS,
                          "--process-output", "--no-ppl")
            shutil.copyfile(Path(tmp) / "ref.gguf", REF_FILE)
            ref = Imatrix.load(REF_FILE)
            ours = run(compute_imatrix(model, TEXT_FILE.read_text(encoding="utf-8"), TINY_CTX, TINY_CHUNKS,
                                       process_output=True))
        r = relative_l2(ref, ours)
        print(f"{REF_FILE.name}: {len(ref.entries)} entries, {REF_FILE.stat().st_size} bytes; max relative L2 of "
              f"ours {max(r.values()):.2e} ({max(r, key=r.get)})")
        return 0
    from infer import f32_gguf

    model = f32_gguf()
    text = default_calibration_text()
    with tempfile.TemporaryDirectory() as tmp:
        tfile = Path(tmp) / "calibration.txt"
        tfile.write_text(text, encoding="utf-8")
        t0 = time.perf_counter()
        llama_imatrix(args.bin, model, tfile, Path(tmp) / "ref.gguf", 512, args.chunks)
        t1 = time.perf_counter()
        ref = Imatrix.load(Path(tmp) / "ref.gguf")
    ours = run(compute_imatrix(model, text, 512, args.chunks))
    t2 = time.perf_counter()
    r = relative_l2(ref, ours)
    same_counts = all((ref.entries[n].counts == ours.entries[n].counts).all() for n in ref.entries)
    print(f"SmolLM2-135M F32, {args.chunks} chunks of 512: {len(r)} tensors (ours {len(ours.entries)}), counts "
          f"equal: {same_counts}; llama-imatrix {t1 - t0:.1f} s, ours {t2 - t1:.1f} s")
    worst = sorted(r, key=r.get, reverse=True)[:5]
    print("max relative L2 per tensor: " + ", ".join(f"{n} {r[n]:.2e}" for n in worst))
    return 0 if max(r.values()) < 0.01 and same_counts else 1


if __name__ == "__main__":
    sys.exit(main())
