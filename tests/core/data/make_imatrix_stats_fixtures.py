#!/usr/bin/env python3
"""Dev script: record what ``llama-imatrix --in-file F --show-statistics`` prints for the committed imatrix files
(run once by hand; needs llama.cpp binaries and a C compiler, which are not test dependencies):

    python tests/core/data/make_imatrix_stats_fixtures.py [--bin /tmp/lcp/build/bin]

Files: ``imatrix/tiny.imatrix.gguf`` and ``imatrix/tiny.imatrix.dat`` (make_imatrix_fixtures.py) and
``imatrix_stats/moe.imatrix.gguf``, written here (:func:`build_moe`: 3-D expert entries with an expert that saw no
token, an entry no expert saw, zero columns, a tensor outside the blocks).  The printed tables (cells as text, as
printed) go to ``imatrix_stats/llama_imatrix_stats.json``.

llama.cpp's logger drops what is still queued when ``main`` returns, so the tool runs with a tiny preloaded
library whose destructor waits 0.3 s for the log thread to write the tables out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2])]

OUT = HERE / "imatrix_stats"
FIXTURE = OUT / "llama_imatrix_stats.json"
FILES = ("imatrix/tiny.imatrix.gguf", "imatrix/tiny.imatrix.dat", "imatrix_stats/moe.imatrix.gguf")
SHIM = "#include <unistd.h>\n__attribute__((destructor)) static void wait_for_log(void) { usleep(300000); }\n"


def build_moe(path: Path) -> Path:
    from workbench.optimize.imatrix import Imatrix, ImatrixEntry

    rng = np.random.default_rng(1234)

    def sums(n_mat, n_cols, scale):
        return (rng.gamma(0.7, scale, size=(n_mat, n_cols))).astype(np.float32)

    e = {}
    for b in range(3):
        s = sums(4, 32, 3.0 + b)
        s[:, :3] = 0  # inactive columns
        e[f"blk.{b}.ffn_up_exps.weight"] = ImatrixEntry(s, np.array([9, 0, 4, 17], dtype=np.int64))
        e[f"blk.{b}.ffn_down_exps.weight"] = ImatrixEntry(sums(4, 48, 50.0 * (b + 1)),
                                                          np.array([9, 3, 4, 17], dtype=np.int64))
        e[f"blk.{b}.attn_q.weight"] = ImatrixEntry(sums(1, 64, 1.0 + b), np.array([30], dtype=np.int64))
    e["blk.1.ffn_gate_exps.weight"] = ImatrixEntry(sums(4, 32, 1.0), np.zeros(4, dtype=np.int64))  # no row
    e["output.weight"] = ImatrixEntry(sums(1, 64, 2.0), np.array([30], dtype=np.int64))
    return Imatrix(e, chunk_count=2, chunk_size=16, datasets=["synthetic"]).save(path)


def parse(text: str) -> dict:
    """The two tables of the printed statistics: rows of cells (text, as printed)."""
    lines = [ln.split(" I ", 1)[1] if " I " in ln[:20] else ln for ln in text.splitlines()]
    tensors, layers, part = [], [], None
    for ln in lines:
        if ln.startswith("====="):
            part = tensors if part is None else layers
            continue
        if not ln.strip():
            if part is layers and layers:
                break
            continue
        if part is not None and "\t" in ln and not ln.startswith("Computing"):
            cells = [c.strip() for c in ln.split("\t")]
            if part is tensors and len(cells) == 13:
                tensors.append(cells)
            elif part is layers and len(cells) == 4:
                layers.append(cells)
    return {"tensors": tensors, "layers": layers}


def _dump(out: dict) -> str:
    """JSON with one printed row per line."""
    parts = []
    for rel, tables in out.items():
        body = ",\n".join(f'  {json.dumps(k)}: [\n'
                           + ",\n".join("   " + json.dumps(r, ensure_ascii=False) for r in rows) + "\n  ]"
                           for k, rows in tables.items())
        parts.append(f" {json.dumps(rel)}: {{\n{body}\n }}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="/tmp/lcp/build/bin")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    build_moe(OUT / "moe.imatrix.gguf")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp) / "wait_for_log.so"
        (Path(tmp) / "w.c").write_text(SHIM)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(Path(tmp) / "w.c")], check=True)
        for rel in FILES:
            r = subprocess.run([str(Path(args.bin) / "llama-imatrix"), "-m", "/dev/null", "--in-file", rel,
                                "--show-statistics"], cwd=HERE, capture_output=True, text=True,
                               env={**os.environ, "LD_PRELOAD": str(shim)}, check=True)
            out[rel] = parse(r.stdout + r.stderr)
            if not out[rel]["tensors"]:
                raise SystemExit(f"no table parsed from llama-imatrix's output for {rel}:\n{r.stdout}{r.stderr}")
            print(f"{rel}: {len(out[rel]['tensors'])} tensors, {len(out[rel]['layers'])} layers")
    FIXTURE.write_text(_dump(out))
    print(f"wrote {FIXTURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
