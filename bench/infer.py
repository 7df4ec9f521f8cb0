#!/usr/bin/env python3
"""Inference benchmark: SmolLM2-135M-Instruct with F32 weights, our numpy engine beside llama.cpp.

    python bench/infer.py [--llama-bench PATH] [-p 512] [-n 128] [-r 3] [--levels stored,Q8_0,Q4_K_M,Q4_0]
                          [--speed-level stored] [--numerics exact|llama-cpu]

Makes an F32 GGUF of the real SmolLM2 model once (the Q4_1 file of tests/fetch_models.py dequantized by
our GGUF -> HF export, then converted back with preset F32; cached under ``$WORKBENCH_CACHE_DIR/bench``),
then measures, each in a fresh process:

* prompt processing (``-p`` tokens in one pass) and generation (``-n`` tokens one by one from a one-token
  context) in tokens/s, best of ``-r`` runs, as llama-bench measures pp and tg, of the ``--speed-level`` weights
  computed with ``--numerics`` (``llama-cpu``: activations rounded as llama.cpp's CPU backend rounds them,
  F16 cache; the cost of the Compare tab's default evaluation);
* with ``--llama-bench``: llama.cpp's llama-bench on the same file with 2 threads, beside ours;
* for each quantization level: the file size that level gives, the time to load the weights through it
  (quantize + dequantize with our kernels) and the memory the engine holds (float32 weights, so the same
  for every level) and the process's resident memory after loading.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from workbench.paths import cache_dir  # noqa: E402

F32_NAME = "SmolLM2-135M-Instruct-F32.gguf"


def f32_gguf() -> Path:
    """The F32 GGUF of SmolLM2-135M-Instruct (made once from the Q4_1 test model)."""
    from fetch_models import ensure

    from workbench.convert.export import export_hf
    from workbench.convert.hf_to_gguf import convert_hf_to_gguf
    from workbench.progress import run

    target = cache_dir() / "bench" / F32_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    src = ensure("smollm2")
    print(f"making {target.name} from {src.name} ...", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        folder = Path(tmp) / "hf"
        run(export_hf(src, folder, dtype="F32"))
        run(convert_hf_to_gguf(folder, target, "F32"))
    return target


def _status() -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "VmHWM") if k in fields}


def worker(args) -> None:
    """One measurement in this process; prints a JSON line."""
    import numpy as np

    from workbench.formats import open_model
    from workbench.infer.engines import load_engine
    from workbench.plan import Plan
    from workbench.progress import run

    model = open_model(args.model)
    level = args.worker
    plan = None if level == "stored" else Plan(model, level)
    t = time.perf_counter()
    eng = run(load_engine(model, plan, numerics=args.numerics if args.speed else "exact"))
    out = {"level": level, "load_s": time.perf_counter() - t, "weights_mb": eng.nbytes() / 1e6,
           "file_mb": (plan.nbytes if plan else model.nbytes) / 1e6,
           "bpw": plan.bits_per_weight if plan else model.bits_per_weight}
    out.update({k.lower() + "_mb": v for k, v in _status().items()})
    if args.speed:
        rng = np.random.default_rng(0)
        prompt = rng.integers(100, eng.vocab_size, args.p).tolist()
        eng.start(prompt[:8])  # warm up (first touch of the weights, cache allocation)
        pp = []
        for _ in range(args.r):
            t = time.perf_counter()
            eng.start(prompt)
            pp.append(args.p / (time.perf_counter() - t))
        tg = []
        for _ in range(args.r):
            eng.start(prompt[:1])
            t = time.perf_counter()
            for tok in prompt[1:args.n + 1] if args.n < args.p else rng.integers(100, 1000, args.n).tolist():
                eng.step(tok)
            tg.append(args.n / (time.perf_counter() - t))
        out.update(pp=max(pp), tg=max(tg), cache_mb=eng.cache_nbytes() / 1e6)
    print(json.dumps(out), flush=True)


def in_process(model: Path, level: str, args, speed: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", level, "--model", str(model), "-p", str(args.p), "-n", str(args.n),
           "-r", str(args.r), "--numerics", args.numerics] + (["--speed"] if speed else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"measuring {level} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llama_bench(binary: str, model: Path, args) -> dict[str, float]:
    proc = subprocess.run([binary, "-m", str(model), "-t", "2", "-p", str(args.p), "-n", str(args.n), "-r", str(args.r),
                           "-o", "json"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"llama-bench failed:\n{proc.stderr[-2000:]}")
    out = {}
    for row in json.loads(proc.stdout):
        out["pp" if row["n_prompt"] else "tg"] = float(row["avg_ts"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", help="path of llama.cpp's llama-bench binary (the anchor)")
    ap.add_argument("-p", type=int, default=512, help="prompt tokens (default 512, as llama-bench)")
    ap.add_argument("-n", type=int, default=128, help="generated tokens (default 128, as llama-bench)")
    ap.add_argument("-r", type=int, default=3, help="repetitions (best is reported)")
    ap.add_argument("--levels", default="stored,Q8_0,Q4_K_M,Q4_0", help="plans to load for the memory table")
    ap.add_argument("--speed-level", default="stored", help="the level whose speed is measured (default: stored)")
    ap.add_argument("--numerics", choices=("exact", "llama-cpu"), default="exact",
                    help="how the speed run computes (default exact)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--speed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    model = f32_gguf()
    print(f"model: {model.name} ({model.stat().st_size / 1e6:.0f} MB); numpy BLAS on all cores, llama.cpp -t 2")
    ours = in_process(model, args.speed_level, args, speed=True)
    print(f"speed of {args.speed_level}, numerics {args.numerics}")
    ref = llama_bench(args.llama_bench, model, args) if args.llama_bench else {}
    print(f"\n{'test':<8} {'ours tok/s':>11} {'llama.cpp tok/s':>16} {'ours/llama.cpp':>15} {'target':>7}")
    for key, label, target in (("pp", f"pp{args.p}", 0.5), ("tg", f"tg{args.n}", 0.6)):
        anchor = ref.get(key)
        ratio = f"{ours[key] / anchor:.2f}" if anchor else "-"
        anchor_s = f"{anchor:.1f}" if anchor else "-"
        print(f"{label:<8} {ours[key]:>11.1f} {anchor_s:>16} {ratio:>15} {'>= ' + str(target):>7}")
    print(f"KV cache after the runs: {ours['cache_mb']:.1f} MB")
    print(f"\n{'level':<8} {'file MB':>8} {'bpw':>6} {'load s':>7} {'weights MB':>11} {'RSS MB':>7} {'anon MB':>8}")
    for level in args.levels.split(","):
        r = ours if level == args.speed_level else in_process(model, level, args, speed=False)
        print(f"{level:<8} {r['file_mb']:>8.0f} {r['bpw']:>6.2f} {r['load_s']:>7.1f} {r['weights_mb']:>11.0f} "
              f"{r.get('vmrss_mb', 0):>7.0f} {r.get('rssanon_mb', 0):>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
