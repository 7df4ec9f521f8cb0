#!/usr/bin/env python3
"""Paired A/B of one quantizer between a git revision and the working tree, on one thread.

    python bench/kernel_ab.py --type Q3_K --rev 60785bc [--rounds 20] [--shape 4096x4096]

Loads the type's kernel module (``workbench/kernels/<module>.py``) as it is at ``--rev`` beside the
working tree's, checks that both write the same bytes, then times them in ``--rounds`` rounds of one run
each, in an order shuffled per round (the run right after another kernel's finds its scratch arrays out of
the caches), in CPU time.  Prints each side's best and median and the per-round ratio new / old (its mean,
standard error and median): pairing the runs of a round cancels the shared machine's slow drifts, which
move both sides alike, so a few percent show through its noise.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import kernels  # noqa: E402
from kernels import paired_times  # noqa: E402  (bench/kernels.py, beside this file)
from workbench.kernels.base import Kernel  # noqa: E402


def _load(path: Path, name: str, qtype: str):
    spec = importlib.util.spec_from_file_location(f"workbench.kernels.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, qtype)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", required=True, help="a quantization type, e.g. Q3_K")
    ap.add_argument("--rev", required=True, help="the git revision to compare against")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--shape", default="4096x4096")
    args = ap.parse_args()
    qtype = args.type.upper()
    new = Kernel.registry[qtype]
    rel = Path(inspect.getfile(new)).resolve().relative_to(ROOT).as_posix()
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.rev}:{rel}"], check=True,
                         capture_output=True, text=True).stdout
    saved = dict(Kernel.registry)  # (loading the old module registers its kernels again)
    with tempfile.TemporaryDirectory() as tmp:
        old_path = Path(tmp) / "old.py"
        old_path.write_text(src)
        old = _load(old_path, "_ab_old", qtype)
    Kernel.registry.clear()
    Kernel.registry.update(saved)
    rows, cols = (int(v) for v in args.shape.split("x"))
    x = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    sides = {"old": old, "new": new}

    def run(kernel):
        Kernel.registry[qtype] = kernel
        return kernels.quantize(x, qtype, threads=1)

    try:
        ref = run(old)
        if not np.array_equal(run(new), ref):
            print(f"{qtype}: {args.rev} and the working tree write different bytes")
            return 1
        times = paired_times({k: (lambda kernel=kernel: run(kernel)) for k, kernel in sides.items()}, args.rounds,
                             time.process_time)
    finally:
        Kernel.registry[qtype] = new
    t_old, t_new = times["old"] * 1e3, times["new"] * 1e3
    ratio = t_new / t_old
    print(f"{qtype} {args.shape}, {args.rounds} rounds, CPU ms")
    for k, t in (("old " + args.rev, t_old), ("new (working tree)", t_new)):
        print(f"  {k:22} best {t.min():7.1f}  median {np.median(t):7.1f}")
    print(f"  new / old per round: mean {ratio.mean():.3f} (standard error {ratio.std(ddof=1) / np.sqrt(len(ratio)):.3f}),"
          f" median {np.median(ratio):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
