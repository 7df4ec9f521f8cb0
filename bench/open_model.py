#!/usr/bin/env python3
"""Open-time benchmark: ``workbench.open_model`` beside safetensors' and gguf-py's own readers.

Builds (once, cached) a ~500 MB safetensors file and a ~500 MB GGUF with a 32k-token vocabulary, then
opens each in a fresh process and reports wall time in ms (best of 5) and resident-memory growth.
Target (issue 2): under 1 s and under 50 MB growth for a 500 MB model.

    python bench/open_model.py [--size-mb 500]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.paths import cache_dir  # noqa: E402


def build(folder: Path, size_mb: int) -> tuple[Path, Path]:
    import gguf

    from workbench.formats.safetensors import write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    st_path, gg_path = folder / f"bench-{size_mb}mb.safetensors", folder / f"bench-{size_mb}mb.gguf"
    width, ffn = 1024, 2816
    per_layer = (4 * width * width + 3 * width * ffn) * 2  # F16 bytes
    layers = max(1, size_mb * 2**20 // per_layer)
    rng = np.random.default_rng(0)
    block = rng.standard_normal(width * ffn).astype(np.float16)  # reused data: content is irrelevant here

    def tensors():
        for i in range(layers):
            for n, shape in (("q", (width, width)), ("k", (width, width)), ("v", (width, width)), ("o", (width, width)),
                             ("gate", (ffn, width)), ("up", (ffn, width)), ("down", (width, ffn))):
                yield f"model.layers.{i}.{n}.weight", block[: shape[0] * shape[1]].reshape(shape)
            yield f"model.layers.{i}.norm.weight", np.ones(width, np.float16)

    if not st_path.is_file():
        write_safetensors(st_path, {n: ("F16", a) for n, a in tensors()})
    if not gg_path.is_file():
        w = gguf.GGUFWriter(gg_path, "llama")
        w.add_tokenizer_model("llama")
        w.add_token_list([f"tok{i}" for i in range(32000)])
        w.add_token_scores([float(-i) for i in range(32000)])
        w.add_token_types([1] * 32000)
        for n, a in tensors():
            w.add_tensor(n.replace("model.layers.", "blk."), a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return st_path, gg_path


PROBE = r"""
import json, sys, time
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
kind, path = sys.argv[1], sys.argv[2]
if kind == 'workbench':
    import workbench
    opener = lambda: len(workbench.open_model(path).tensors)
elif kind == 'safetensors':
    from safetensors import safe_open
    def opener():
        with safe_open(path, framework='numpy') as f:
            return len([f.get_slice(k).get_shape() for k in f.keys()])
else:
    import gguf
    opener = lambda: len(gguf.GGUFReader(path).tensors)
before = rss()
t = time.perf_counter(); n = opener(); dt = time.perf_counter() - t
print(json.dumps({'seconds': dt, 'rss_mb': (rss() - before) / 2**20, 'tensors': n}))
"""


def measure(kind: str, path: Path, repeat: int = 5) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", PROBE, kind, str(path)], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        runs.append(json.loads(out.stdout))
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds": best["seconds"], "rss_mb": max(r["rss_mb"] for r in runs), "tensors": best["tensors"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500)
    args = ap.parse_args()
    st_path, gg_path = build(cache_dir() / "bench", args.size_mb)
    print(f"{'file':<28} {'reader':<22} {'open ms':>8} {'RSS +MB':>8} {'tensors':>8}")
    for path, anchor in ((st_path, "safetensors"), (gg_path, "gguf-py GGUFReader")):
        size = f"{path.suffix[1:]} {path.stat().st_size / 2**20:.0f} MiB"
        for kind, label in (("workbench", "workbench.open_model"), ("safetensors" if path == st_path else "ggufpy", anchor)):
            r = measure(kind, path)
            print(f"{size:<28} {label:<22} {r['seconds'] * 1000:>8.1f} {r['rss_mb']:>8.1f} {r['tensors']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
