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
  for every level) and the process's resident memory after loading;
* ``--budget-level Q4_K_M`` (default): the engine holding that level's bytes with a memory budget of a tenth
  of the F32 weights (``--budget-fraction``), pp/tg and peak RSS beside the same level fully cached and (with
  ``--llama-bench``) beside llama-bench on llama.cpp's own file of that level (made once with the
  ``llama-quantize`` found beside llama-bench; its peak RSS through ``/usr/bin/time`` when present);
* ``--synthetic-8b``: a llama-3-8B-shaped GGUF (32 layers, hidden 4096, ff 14336, 32/8 heads, vocab
  128256) with random but valid blocks in the types llama-quantize's Q4_K_M preset gives (chosen with
  workbench.plan), made once in the cache (~4.9 GB, never committed), then ``workbench compare`` of the
  stored level against ``--synthetic-levels`` with ``--ctx 64 --chunks 1`` under ``--synthetic-budget``:
  time and peak RSS (VmHWM) of the child process, whose address space is capped at ``--max-gb``, the time
  per compare chunk of each level, and (``--synthetic-pp``) the engine's prompt processing of that many
  tokens under the same budget, with its peak RSS.

Measured commands and numbers: see the README's "Memory and speed" notes and the bench's own output.
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


SYNTH_NAME = "synthetic-llama3-8B-Q4_K_M.gguf"
VOCAB_GGUF = "ggml-vocab-llama-bpe.gguf"  # llama 3's tokenizer (128256 tokens), from llama.cpp's test vocabs
# llama-3-8B's shapes
SYNTH = dict(n_layer=32, hidden=4096, ff=14336, n_head=32, n_kv=8, vocab=128256)
# random blocks stay valid and the values small (std ~0.02) when the f16 scales are set: for each type
# the byte offsets of its f16 scale fields within a block and the value they get
_SCALES = {"Q4_K": ((0, 1e-4), (2, 7.5e-4)), "Q5_K": ((0, 5e-5), (2, 7.5e-4)), "Q6_K": ((208, 2e-5),),
           "Q8_0": ((0, 3e-4),), "Q4_0": ((0, 2.5e-3),), "Q5_0": ((0, 1.2e-3),)}


def _synthetic_tensors() -> list[tuple[str, tuple[int, ...]]]:
    c = SYNTH
    h, kv = c["hidden"], c["hidden"] // c["n_head"] * c["n_kv"]
    out = [("token_embd.weight", (c["vocab"], h))]
    for i in range(c["n_layer"]):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (h,)), (p + "attn_q.weight", (h, h)), (p + "attn_k.weight", (kv, h)),
                (p + "attn_v.weight", (kv, h)), (p + "attn_output.weight", (h, h)), (p + "ffn_norm.weight", (h,)),
                (p + "ffn_gate.weight", (c["ff"], h)), (p + "ffn_up.weight", (c["ff"], h)),
                (p + "ffn_down.weight", (h, c["ff"]))]
    return out + [("output_norm.weight", (h,)), ("output.weight", (c["vocab"], h))]


def _synthetic_meta() -> dict:
    c = SYNTH
    return {"general.architecture": "llama", "llama.block_count": c["n_layer"], "llama.context_length": 8192,
            "llama.embedding_length": c["hidden"], "llama.feed_forward_length": c["ff"],
            "llama.attention.head_count": c["n_head"], "llama.attention.head_count_kv": c["n_kv"],
            "llama.rope.freq_base": 500000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "llama.rope.dimension_count": c["hidden"] // c["n_head"], "llama.vocab_size": c["vocab"]}


def synthetic_types() -> dict[str, str]:
    """GGUF tensor name -> the type llama-quantize's Q4_K_M gives it (workbench.plan on an F32 description)."""
    from workbench.model import MetaEntry, Model, TensorInfo
    from workbench.plan import Plan

    infos = [TensorInfo(n, s, "F32", 4 * int(__import__("math").prod(s)), Path(SYNTH_NAME), 0)
             for n, s in _synthetic_tensors()]
    meta = {"gguf": [MetaEntry(k, "uint32" if isinstance(v, int) else ("float32" if isinstance(v, float) else "string"),
                               v) for k, v in _synthetic_meta().items()]}
    model = Model("gguf", Path(SYNTH_NAME), [], infos, meta, architecture="llama")
    plan = Plan(model, "Q4_K_M")
    return {n: plan.type_of(n) for n, _ in _synthetic_tensors()}


def synthetic_gguf(seed: int = 0) -> Path:
    """The llama-3-8B-shaped Q4_K_M GGUF with random valid blocks (made once in the cache, ~4.9 GB)."""
    import gguf
    import numpy as np

    from workbench import dtypes
    from workbench.fsutil import atomic_write_path

    target = cache_dir() / "bench" / SYNTH_NAME
    if target.is_file():
        return target
    vocab_path = _vocab_gguf()
    types = synthetic_types()
    reader = gguf.GGUFReader(vocab_path)
    rng = np.random.default_rng(seed)
    print(f"making {target} (~4.9 GB of random Q4_K_M blocks) ...", flush=True)
    t0 = time.perf_counter()
    with atomic_write_path(target) as tmp:
        w = gguf.GGUFWriter(tmp, "llama")
        for k, v in _synthetic_meta().items():
            if k == "general.architecture":
                continue
            (w.add_uint32 if isinstance(v, int) else w.add_float32 if isinstance(v, float) else w.add_string)(k, v)
        w.add_string("general.name", "synthetic llama-3-8B shapes (random weights)")
        w.add_uint32("general.file_type", int(gguf.LlamaFileType.MOSTLY_Q4_K_M))
        w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                vtype = field.types[0]
                sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
                w.add_key_value(key, field.contents(), vtype, sub)
        shapes = dict(_synthetic_tensors())
        for name, shape in shapes.items():
            t = types[name]
            if t == "F32":
                w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
            else:
                block, size = dtypes.block_info(t)
                byte_shape = (shape[0], shape[1] // block * size)
                w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                  raw_dtype=gguf.GGMLQuantizationType[t])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, shape in shapes.items():
            t = types[name]
            if t == "F32":
                w.write_tensor_data(np.ones(shape, np.float32))  # norm weights
                continue
            if t not in _SCALES:
                raise SystemExit(f"the synthetic model has no random-block recipe for {t} ({name})")
            block, size = dtypes.block_info(t)
            n_blocks = shape[0] * shape[1] // block
            data = np.frombuffer(bytearray(rng.bytes(n_blocks * size)), np.uint8).reshape(n_blocks, size)
            for off, scale in _SCALES[t]:  # finite small f16 scales, ±20 % around the value
                vals = (scale * rng.uniform(0.8, 1.2, n_blocks)).astype(np.float16)
                data[:, off:off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
            w.write_tensor_data(data.reshape(-1))
            del data
        w.close()
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"  {target.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s, types {counts}", flush=True)
    return target


def _vocab_gguf() -> Path:
    from fetch_models import ensure

    path = Path(ensure("llama-vocabs")) / VOCAB_GGUF
    if not path.is_file():
        raise SystemExit(f"{path} not found (tests/fetch_models.py fetches llama.cpp's test vocabularies)")
    return path


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
    options = {"memory_budget": args.budget} if args.budget else {}
    eng = run(load_engine(model, plan, numerics=args.numerics if args.speed else "exact", **options))
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
        for _ in range(args.r if args.n else 0):
            eng.start(prompt[:1])
            t = time.perf_counter()
            for tok in prompt[1:args.n + 1] if args.n < args.p else rng.integers(100, 1000, args.n).tolist():
                eng.step(tok)
            tg.append(args.n / (time.perf_counter() - t))
        out.update(pp=max(pp), tg=max(tg) if tg else 0.0, cache_mb=eng.cache_nbytes() / 1e6)
    out.update({k.lower() + "_mb": v for k, v in _status().items()})  # VmHWM: the peak, runs included
    print(json.dumps(out), flush=True)


def compare_worker(args) -> None:
    """``compare`` of the stored level against ``--synthetic-levels`` in this process; prints a JSON line."""
    from workbench.formats import open_model
    from workbench.infer.compare import compare
    from workbench.progress import run

    model = open_model(args.model)
    t = time.perf_counter()
    last = [""]

    def show(p) -> None:  # each new step on stderr (the parent's terminal), with the time and peak RSS so far
        if p.message != last[0] and ".weight" not in p.message:  # not every tensor loaded
            last[0] = p.message
            print(f"  [{time.perf_counter() - t:6.0f} s, peak {_status().get('VmHWM', 0):6.0f} MB] {p.message}",
                  file=sys.stderr, flush=True)

    res = run(compare(model, args.synthetic_levels.split(","), base="F32", n_ctx=args.ctx, max_windows=1, prompt=None,
                      eval_mode=args.numerics, memory_budget=args.budget), show)
    out = {"compare_s": time.perf_counter() - t, "n_ctx": res.n_ctx, "windows": res.n_windows,
           "levels": [{"label": r.label, "memory_mb": r.memory / 1e6, "load_s": r.load_seconds, "ppl": r.ppl,
                       "pp": r.prompt_tokens_per_s,
                       "chunk_s": res.n_ctx / r.prompt_tokens_per_s if r.prompt_tokens_per_s else None}
                      for r in [res.base, *res.levels]]}
    out.update({k.lower() + "_mb": v for k, v in _status().items()})
    print(json.dumps(out, default=str), flush=True)


def _cap_memory(gb: float):
    """preexec_fn: cap the child's address space (mapped files included) at ``gb`` GB."""
    def cap():
        import resource

        limit = int(gb * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return cap


def in_process(model: Path, level: str, args, speed: bool, budget: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", level, "--model", str(model), "-p", str(args.p), "-n", str(args.n),
           "-r", str(args.r), "--numerics", args.numerics] + (["--speed"] if speed else [])
    if budget:
        cmd += ["--budget", str(budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_cap_memory(args.max_gb))
    if proc.returncode:
        raise SystemExit(f"measuring {level} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def engine_has_budget() -> bool:
    """Whether the llama-family engine keeps a bounded cache (takes ``memory_budget``)."""
    import inspect

    try:
        from workbench.infer.decoder import DecoderEngine as Engine
    except ImportError:
        from workbench.infer.llama import LlamaEngine as Engine

    return "memory_budget" in inspect.signature(Engine).parameters


def synthetic_run(args) -> None:
    from workbench.units import parse_size

    path = synthetic_gguf()
    budget = parse_size(args.synthetic_budget, "--synthetic-budget")
    if not engine_has_budget() and not args.force:
        print("\nsynthetic 8B compare skipped: the llama engine takes no memory_budget yet (it would hold ~32 GB "
              "of float32); --force runs it anyway under --max-gb")
        return
    cmd = [sys.executable, __file__, "--compare-worker", "--model", str(path), "--budget", str(budget), "--ctx",
           str(args.ctx), "--synthetic-levels", args.synthetic_levels, "--numerics", args.numerics]
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_cap_memory(args.max_gb))
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"the synthetic compare failed after {wall:.0f} s (exit {proc.returncode})")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nsynthetic llama-3-8B shapes, {path.stat().st_size / 1e9:.2f} GB Q4_K_M: compare F32 (stored) vs "
          f"{args.synthetic_levels}, --ctx {args.ctx} --chunks 1, budget {budget / 1e9:.2f} GB, "
          f"numerics {args.numerics}")
    print(f"  time {r['compare_s']:.0f} s (process {wall:.0f} s), peak RSS {r.get('vmhwm_mb', 0):.0f} MB "
          "(target < 10000)")
    for x in r["levels"]:
        print(f"  {x['label']:<8} load {x['load_s']:.0f} s, held {x['memory_mb']:.0f} MB, "
              f"scoring {x['pp'] or 0:.1f} tok/s ({x.get('chunk_s') or 0:.0f} s per chunk), "
              f"ppl {x['ppl'] or float('nan'):.1f}")
    bound = path.stat().st_size + budget + 32 * 2 * max(args.ctx, 256) * 1024 * 4 + 400e6  # KV: >= 256 positions
    print(f"  bound: level bytes + budget + KV cache + 400 MB = {bound / 1e6:.0f} MB: "
          f"{'within' if r.get('vmhwm_mb', 0) * 1e6 <= bound else 'ABOVE'}", flush=True)
    if args.synthetic_pp:
        sp = argparse.Namespace(**{**vars(args), "p": args.synthetic_pp, "n": 0, "r": 1})
        x = in_process(path, "stored", sp, speed=True, budget=budget)
        print(f"  pp{args.synthetic_pp} of the stored level under the budget: {x['pp']:.2f} tok/s "
              f"({args.synthetic_pp / x['pp']:.0f} s), peak RSS {x.get('vmhwm_mb', 0):.0f} MB", flush=True)


def llama_bench(binary: str, model: Path, args) -> dict[str, float]:
    """llama-bench's pp and tg (tokens/s) and, through /usr/bin/time when present, its peak RSS (MB)."""
    timer = Path("/usr/bin/time")
    cmd = [binary, "-m", str(model), "-t", "2", "-p", str(args.p), "-n", str(args.n), "-r", str(args.r), "-o", "json"]
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        if timer.is_file():
            cmd = [str(timer), "-f", "%M", "-o", rss.name] + cmd
        proc = subprocess.run(cmd, capture_output=True, text=True)
        peak = rss.read().strip().splitlines()
    if proc.returncode:
        raise SystemExit(f"llama-bench failed:\n{proc.stderr[-2000:]}")
    out = {}
    for row in json.loads(proc.stdout):
        out["pp" if row["n_prompt"] else "tg"] = float(row["avg_ts"])
    if peak and peak[-1].isdigit():
        out["peak_mb"] = int(peak[-1]) / 1024
    return out


def llama_level_file(bench: str, f32: Path, level: str) -> Path | None:
    """llama.cpp's own ``level`` file of the F32 GGUF (made once with the llama-quantize beside llama-bench)."""
    target = f32.with_name(f32.name.replace("-F32.gguf", f"-{level}.llamacpp.gguf"))
    if target.is_file():
        return target
    quantize = Path(bench).with_name("llama-quantize")
    if not quantize.is_file():
        return None
    tmp = target.with_suffix(".tmp")
    proc = subprocess.run([str(quantize), str(f32), str(tmp), level], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"llama-quantize failed:\n{proc.stderr[-2000:]}")
    tmp.rename(target)
    return target


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
    ap.add_argument("--budget-level", default="Q4_K_M",
                    help="the level held in its bytes under a budget for the budget rows (empty: skip them)")
    ap.add_argument("--budget-fraction", type=float, default=0.1,
                    help="that budget as a fraction of the F32 weights (default 0.1)")
    ap.add_argument("--synthetic-8b", action="store_true",
                    help="also make the llama-3-8B-shaped Q4_K_M GGUF (~4.9 GB in the cache) and time a compare of it")
    ap.add_argument("--synthetic-only", action="store_true", help="only the synthetic 8B compare")
    ap.add_argument("--budget-only", action="store_true", help="only the budget rows (SmolLM2)")
    ap.add_argument("--synthetic-levels", default="Q4_K_M", help="levels compared with the stored one (default Q4_K_M)")
    ap.add_argument("--synthetic-budget", default="2GB", help="memory budget of the synthetic compare (default 2GB)")
    ap.add_argument("--ctx", type=int, default=64, help="the synthetic compare's window (default 64, one window)")
    ap.add_argument("--synthetic-pp", type=int, default=512,
                    help="prompt tokens of the synthetic model's speed run under the budget (default 512; 0: skip)")
    ap.add_argument("--max-gb", type=float, default=14.0,
                    help="address-space cap of every measuring process, mapped model included (default 14)")
    ap.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--compare-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--speed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.compare_worker:
        compare_worker(args)
        return 0
    if args.synthetic_only:
        synthetic_run(args)
        return 0
    if args.budget_only:
        budget_rows(f32_gguf(), args)
        return 0
    model = f32_gguf()
    print(f"model: {model.name} ({model.stat().st_size / 1e6:.0f} MB); numpy BLAS on all cores, llama.cpp -t 2")
    ours = in_process(model, args.speed_level, args, speed=True)
    print(f"speed of {args.speed_level}, numerics {args.numerics}")
    ref = llama_bench(args.llama_bench, model, args) if args.llama_bench else {}
    print(f"\n{'test':<8} {'ours tok/s':>11} {'llama.cpp tok/s':>16} {'ours/llama.cpp':>15} {'target':>7}")
    for key, label, target in (("pp", f"pp{args.p}", 1.0), ("tg", f"tg{args.n}", 0.9)):
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
    if args.budget_level:
        budget_rows(model, args)
    if args.synthetic_8b:
        synthetic_run(args)
    return 0


def budget_rows(model: Path, args) -> None:
    """The engine holding ``--budget-level``'s bytes under a tenth of the F32 weights, beside fully cached."""
    f32_bytes = model.stat().st_size
    budget = int(f32_bytes * args.budget_fraction)
    level = args.budget_level
    note = "" if engine_has_budget() else " (the engine takes no budget yet: both rows fully cached)"
    print(f"\n{level} bytes held, budget {budget / 1e6:.0f} MB ({args.budget_fraction:g} of the F32 weights){note}")
    print(f"{'engine':<14} {'pp' + str(args.p):>8} {'tg' + str(args.n):>8} {'weights MB':>11} {'peak RSS MB':>12}")
    rows = [("fully cached", in_process(model, level, args, speed=True)),
            ("budget", in_process(model, level, args, speed=True, budget=budget))]
    for label, r in rows:
        print(f"{label:<14} {r['pp']:>8.1f} {r['tg']:>8.1f} {r['weights_mb']:>11.0f} {r.get('vmhwm_mb', 0):>12.0f}",
              flush=True)
    if args.llama_bench:
        lfile = llama_level_file(args.llama_bench, model, level)
        if lfile is not None:
            ref = llama_bench(args.llama_bench, lfile, args)
            print(f"{'llama.cpp':<14} {ref['pp']:>8.1f} {ref['tg']:>8.1f} {lfile.stat().st_size / 1e6:>11.0f} "
                  f"{ref.get('peak_mb', 0):>12.0f}   ({lfile.name}, -t 2)", flush=True)
    print(f"pp ratio budget / fully cached: {rows[1][1]['pp'] / rows[0][1]['pp']:.2f} (target >= 0.6)")


if __name__ == "__main__":
    sys.exit(main())
