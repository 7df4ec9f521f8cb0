#!/usr/bin/env python3
"""Conversion benchmark: a ~1.2 GB F32 llama-shaped HF folder -> GGUF at Q8_0, Q4_0, Q4_K_M and Q6_K.

    python bench/convert.py [--llama-quantize PATH] [--presets Q8_0,Q4_0,Q4_K_M,Q6_K]
    python bench/convert.py --smollm2 --llama-quantize PATH [--runs 3]

``--smollm2``: GGUF -> GGUF requantization of the real SmolLM2-135M-Instruct (its F32 GGUF, made once from
the Q4_1 test model as bench/infer.py makes it), ours (``requantize_gguf``, default threads) against
``llama-quantize IN OUT PRESET 2`` on the same file, alternating, ``--runs`` times per preset: MB/s of the
F32 source for each run, the medians and the ratio of the medians.

Prints MB/s of F32 source and peak memory of each conversion (each in a fresh process, its kernel
worker processes included): total RSS (which counts the memory-mapped source pages) and the
anonymous part the processes really hold.  With
``--llama-quantize`` it also times llama.cpp's llama-quantize (2 threads) on the same weights as an F32
GGUF, the anchor of the issue; without it the anchor column stays empty.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from workbench.paths import cache_dir  # noqa: E402

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
          "intermediate_size": 5632, "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 16,
          "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
          "tie_word_embeddings": False, "torch_dtype": "float32"}


def build(folder: Path) -> Path:
    from convert_fixtures import bpe_tokenizer

    from workbench.formats.safetensors import write_safetensors

    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, f, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]

    def w(*shape):
        return ("F32", (rng.standard_normal(shape, dtype=np.float32) * 0.02))

    tensors = {"model.embed_tokens.weight": w(v, h)}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({p + "input_layernorm.weight": ("F32", np.ones(h, np.float32)),
                        p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(h, h),
                        p + "self_attn.v_proj.weight": w(h, h), p + "self_attn.o_proj.weight": w(h, h),
                        p + "post_attention_layernorm.weight": ("F32", np.ones(h, np.float32)),
                        p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
                        p + "mlp.down_proj.weight": w(h, f)})
    tensors["model.norm.weight"] = ("F32", np.ones(h, np.float32))
    tensors["lm_head.weight"] = w(v, h)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    bpe_tokenizer(folder)
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


RUN_OURS = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from workbench.convert import convert_hf_to_gguf
from workbench.progress import run
t = time.perf_counter()
paths = run(convert_hf_to_gguf(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True))
print(json.dumps({"seconds": time.perf_counter() - t, "out_mb": sum(__import__("os").path.getsize(p) for p in paths) / 1e6,
                  "paths": [str(p) for p in paths]}))
"""


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the kernel worker processes of a conversion)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def watch(cmd: list[str]) -> tuple[str, float, float, float]:
    """Run ``cmd``; return (stdout, peak RSS MB, peak anonymous RSS MB, CPU seconds): memory sampled from
    /proc every 20 ms, summed over the process and its worker processes; CPU (user + system) of the process
    and the worker processes it waited for.

    Peak RSS counts the memory-mapped source pages the kernel may drop at any time (pages mapped by
    several processes count once per process); the anonymous peak is the memory really held (proportional
    set size: a page a forked worker shares with its parent counts once)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = peak_anon = 0.0
    while proc.poll() is None:
        rss = anon = 0.0
        for pid in _tree(proc.pid):
            try:
                text = Path(f"/proc/{pid}/status").read_text()
                fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
                rss += int(fields["VmRSS"].split()[0]) / 1024
                try:  # forked workers share their parent's pages: the proportional share counts them once
                    roll = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    pss = dict(line.split(":", 1) for line in roll.splitlines() if ":" in line)
                    anon += int(pss["Pss_Anon"].split()[0]) / 1024
                except (OSError, KeyError):
                    anon += int(fields.get("RssAnon", "0 kB").split()[0]) / 1024
            except (OSError, KeyError, ValueError):
                pass
        peak, peak_anon = max(peak, rss), max(peak_anon, anon)
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, peak, peak_anon, cpu


def ours(src: Path, out: Path, preset: str) -> dict:
    stdout, peak, anon, _ = watch([sys.executable, "-c", RUN_OURS, str(src), str(out), preset, str(ROOT)])
    return {**json.loads(stdout.strip().splitlines()[-1]), "rss_mb": peak, "anon_mb": anon}


RUN_REQUANT = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[4])
from workbench.convert.requantize import requantize_gguf
from workbench.progress import run
t = time.perf_counter()
paths = run(requantize_gguf(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True))
print(json.dumps({"seconds": time.perf_counter() - t, "out_mb": sum(os.path.getsize(p) for p in paths) / 1e6,
                  "paths": [str(p) for p in paths]}))
"""


def smollm2(binary: str, presets: list[str], runs: int) -> int:
    """Requantize SmolLM2's F32 GGUF with ours and with llama-quantize (2 threads), alternating."""
    sys.path.insert(0, str(ROOT / "bench"))
    from infer import f32_gguf

    src = f32_gguf()
    src_mb = src.stat().st_size / 1e6
    print(f"source: {src.name}, {src_mb:.0f} MB; {runs} alternating runs per preset; MB/s of source (wall time,\n"
          f"ours timed inside its process as in the main mode); CPU s: user + system of all processes, Python\n"
          f"start-up and imports included for ours; medians and their ratio (ours / llama-quantize)")
    print(f"{'preset':<8} {'ours MB/s (runs)':>22} {'llama-quantize (runs)':>22} | {'ours':>5} {'l-q':>5} {'ratio':>5}"
          f" | {'CPU s ours':>10} {'l-q':>5} {'ratio':>5}")
    with tempfile.TemporaryDirectory(dir=cache_dir() / "bench") as tmp:
        for preset in presets:
            mine, theirs, cpu_mine, cpu_theirs = [], [], [], []
            for _ in range(runs):
                out = Path(tmp) / f"ours-{preset}.gguf"
                stdout, _, _, cpu = watch([sys.executable, "-c", RUN_REQUANT, str(src), str(out), preset, str(ROOT)])
                r = json.loads(stdout.strip().splitlines()[-1])
                mine.append(src_mb / r["seconds"])
                cpu_mine.append(cpu)
                for p in r["paths"]:
                    os.remove(p)
                sec, _, _, cpu = anchor(binary, src, Path(tmp) / f"ref-{preset}.gguf", preset)
                theirs.append(src_mb / sec)
                cpu_theirs.append(cpu)
                os.remove(Path(tmp) / f"ref-{preset}.gguf")
            a, b = float(np.median(mine)), float(np.median(theirs))
            ca, cb = float(np.median(cpu_mine)), float(np.median(cpu_theirs))
            print(f"{preset:<8} {' '.join(f'{v:.0f}' for v in mine):>22} {' '.join(f'{v:.0f}' for v in theirs):>22} | "
                  f"{a:>5.0f} {b:>5.0f} {a / b:>5.2f} | {ca:>10.2f} {cb:>5.2f} {cb / ca:>5.2f}", flush=True)
    return 0


def anchor(binary: str, f32_gguf: Path, out: Path, preset: str) -> tuple[float, float, float, float]:
    """llama-quantize on 2 threads: (seconds, peak RSS MB, peak anonymous MB, CPU seconds)."""
    t = time.perf_counter()
    _, peak, anon, cpu = watch([binary, str(f32_gguf), str(out), preset, "2"])
    return time.perf_counter() - t, peak, anon, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-quantize", help="path of a llama-quantize binary (the anchor)")
    ap.add_argument("--presets", default="Q8_0,Q4_0,Q4_K_M,Q6_K")
    ap.add_argument("--smollm2", action="store_true",
                    help="requantize SmolLM2-135M's F32 GGUF instead, beside llama-quantize (needs --llama-quantize)")
    ap.add_argument("--runs", type=int, default=3, help="alternating runs per preset with --smollm2")
    args = ap.parse_args()
    if args.smollm2:
        if not args.llama_quantize:
            ap.error("--smollm2 needs --llama-quantize PATH")
        return smollm2(args.llama_quantize, args.presets.split(","), args.runs)
    src = build(cache_dir() / "bench" / "llama-1.2g-f32")
    src_mb = (src / "model.safetensors").stat().st_size / 1e6
    print(f"source: {src_mb:.0f} MB F32 safetensors (4 layers, width 2048, ffn 5632, vocab 32000)")
    print(f"{'preset':<8} {'ours MB/s':>10} {'RSS/anon MB':>12} {'out MB':>8} | {'llama-quantize MB/s':>20} {'RSS/anon MB':>12}")
    with tempfile.TemporaryDirectory(dir=cache_dir() / "bench") as tmp:
        f32_gguf = None
        if args.llama_quantize:
            f32_gguf = Path(ours(src, Path(tmp) / "f32", "F32")["paths"][0])
        for preset in args.presets.split(","):
            r = ours(src, Path(tmp) / preset, preset)
            line = f"{preset:<8} {src_mb / r['seconds']:>10.0f} {r['rss_mb']:>6.0f}/{r['anon_mb']:<5.0f} {r['out_mb']:>8.0f} |"
            if f32_gguf is not None:
                sec, rss, anon, _ = anchor(args.llama_quantize, f32_gguf, Path(tmp) / f"ref-{preset}.gguf", preset)
                line += f" {src_mb / sec:>20.0f} {rss:>6.0f}/{anon:<5.0f}"
            else:
                line += f" {'-':>20} {'-':>12}"
            print(line, flush=True)
            for p in r["paths"]:
                os.remove(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
