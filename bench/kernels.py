#!/usr/bin/env python3
"""Kernel benchmark: MB/s of float32 input, ours beside gguf-py's and ggml's, in one run.

    python bench/kernels.py [--types Q4_0,Q4_K] [--shapes 4096x4096,2048x5632] [--repeat 2] [--clock cpu] [--warm]
                            [--rounds 15]

Columns: quantize and dequantize throughput for our kernels on one thread and on all cores, for
gguf-py's ``gguf.quants`` (it cannot quantize K or IQ types: "-") and for ggml's reference
``ggml_quantize_chunk`` / ``dequantize_row_*`` (one thread) through ctypes.  ``exact`` says whether our
bytes equal ggml's on that array.  ``--clock cpu`` times the one-thread columns (ours, gguf-py, ggml) in
CPU time of this process (``time.process_time``) instead of wall time: steadier on a machine shared with
other work, where waiting for a core would count against whichever side was waiting; the all-cores
column stays wall time.  Each figure is the best of ``--repeat`` runs, ours and ggml's taken alternately.
``--warm`` times each one-thread quantize run right after an untimed run of the same side, as when a model's
tensors are quantized one after another: alternating alone starts every run of ours just after ggml's pass
over the whole array has taken the caches (ggml's loop keeps a block's work in registers and L1 and does not
notice; the searches' scratch arrays do, by 2-5 %).
``--rounds N`` adds a line under each row: the one-thread quantize ratio (ggml's time / ours) of N more
rounds, each timing both sides once in a shuffled order, as its median, quartiles and range.  Best-of figures take
each side's quietest moment, which on a shared machine need not be the same spell; a round's two runs share
one, so the spread of its ratio shows how far the host's state moves the figure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import gguf  # noqa: E402
from gguf import quants as gq  # noqa: E402

from workbench import kernels  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


def best(fn, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def best_pair(fa, fb, repeat: int, clock, warm: bool = False) -> tuple[float, float]:
    """Best times of ``fa`` and ``fb`` run alternately (both see the same spells of a busy machine); with
    ``warm``, each timed run follows an untimed one of the same function."""
    ta, tb = [], []
    for _ in range(repeat):
        for fn, acc in ((fa, ta), (fb, tb)):
            if warm:
                fn()
            t = clock()
            fn()
            acc.append(clock() - t)
    return min(ta), min(tb)


def paired_times(fns: dict, rounds: int, clock, warm: bool = False) -> dict:
    """Times of each function of ``fns`` (name -> callable) over ``rounds`` rounds that run every one once, in
    an order shuffled per round (seeded by the round: a run right after another side's starts with its
    caches taken); ``warm`` as in ``best_pair``.  Returns name -> array of times, one per round."""
    times = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns)
        np.random.default_rng(r).shuffle(order)
        for k in order:
            if warm:
                fns[k]()
            t = clock()
            fns[k]()
            times[k].append(clock() - t)
    return {k: np.asarray(v) for k, v in times.items()}


def load_ggml():
    from fetch_models import ensure
    from ggml_oracle import GGML

    try:
        return GGML(ensure("ggml"))
    except Exception as exc:  # noqa: BLE001 - a benchmark without the anchor still prints ours
        print(f"(ggml anchor unavailable: {exc})")
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--shapes", default="4096x4096,2048x5632")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--warm", action="store_true", help="time each run after an untimed one of the same side")
    ap.add_argument("--rounds", type=int, default=0,
                    help="also print the median and quartiles of this many paired quantize rounds against ggml")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="time the one-thread columns in wall time or in this process's CPU time")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ggml = load_ggml()
    threads = os.cpu_count() or 1
    hdr = (f"{'shape':<10} {'type':<7} | {'quantize MB/s':^43} | {'dequantize MB/s':^43} | exact\n"
           f"{'':<10} {'':<7} | {'ours 1t':>9} {f'ours {threads}t':>9} {'gguf-py':>9} {'ggml':>9} {'x ggml':>6}"
           f" | {'ours 1t':>9} {f'ours {threads}t':>9} {'gguf-py':>9} {'ggml':>9} {'x ggml':>6} |")
    print(hdr)
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        x = rng.standard_normal((rows, cols), dtype=np.float32)
        mb = x.nbytes / 1e6
        for t in args.types.split(","):
            if t not in kernels.supported_types():
                print(f"{shape:<10} {t:<7} | (no kernel)")
                continue
            qt = gguf.GGMLQuantizationType[t]
            q1 = kernels.quantize(x, t, threads=1)
            tqn = best(lambda: kernels.quantize(x, t, threads=threads), args.repeat)
            tdn = best(lambda: kernels.dequantize(q1, t, threads=threads), args.repeat)
            try:
                gq.quantize(x[:64], qt)
                tgq = best(lambda: gq.quantize(x, qt), 1, clock)
            except (NotImplementedError, ValueError):
                tgq = None
            tgd = best(lambda: gq.dequantize(q1, qt), 1, clock)
            tlq = tld = None
            exact = "?"
            if ggml is not None:
                ref = ggml.quantize(x, t)
                exact = "yes" if np.array_equal(ref, q1) else f"NO ({int((ref != q1).any(axis=1).sum())} rows)"
                tq1, tlq = best_pair(lambda: kernels.quantize(x, t, threads=1), lambda: ggml.quantize(x, t),
                                     args.repeat, clock, args.warm)
                td1, tld = best_pair(lambda: kernels.dequantize(q1, t, threads=1),
                                     lambda: ggml.dequantize(q1, t, cols), args.repeat, clock)
            else:
                tq1 = best(lambda: kernels.quantize(x, t, threads=1), args.repeat, clock)
                td1 = best(lambda: kernels.dequantize(q1, t, threads=1), args.repeat, clock)

            def f(sec):
                return f"{mb / sec:9.0f}" if sec else f"{'-':>9}"

            ratio_q = f"{tlq / tq1:6.2f}" if tlq else f"{'-':>6}"
            ratio_d = f"{tld / td1:6.2f}" if tld else f"{'-':>6}"
            print(f"{shape:<10} {t:<7} | {f(tq1)} {f(tqn)} {f(tgq)} {f(tlq)} {ratio_q} | {f(td1)} {f(tdn)} {f(tgd)} "
                  f"{f(tld)} {ratio_d} | {exact}", flush=True)
            if args.rounds > 0 and ggml is not None:
                pt = paired_times({"ours": lambda: kernels.quantize(x, t, threads=1),
                                   "ggml": lambda: ggml.quantize(x, t)}, args.rounds, clock, args.warm)
                r = pt["ggml"] / pt["ours"]
                lo, med, hi = np.percentile(r, [25, 50, 75])  # (q1 holds the quantized bytes)
                print(f"{'':<10} {t:<7} | x ggml in {r.size} paired rounds: median {med:.2f}, quartiles "
                      f"{lo:.2f}-{hi:.2f}, range {r.min():.2f}-{r.max():.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
