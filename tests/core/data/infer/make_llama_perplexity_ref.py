"""Dev script (not run by the tests): record what llama-perplexity reports for SmolLM2 levels.

Needs a llama.cpp build (llama-quantize, llama-perplexity) and the cached SmolLM2-135M-Instruct Q4_1 GGUF:

    .venv/bin/python tests/core/data/infer/make_llama_perplexity_ref.py --bin /tmp/lcp/build/bin --work /tmp/kld

1. the Q4_1 GGUF, dequantized, becomes an F32 GGUF (``workbench convert --type F32``): the base;
2. ``llama-quantize base.gguf LEVEL.gguf LEVEL`` for Q8_0, Q6_K, Q4_K_M and Q4_0;
3. ``llama-perplexity -m base.gguf -f calibration.txt -c 512 --chunks N --kl-divergence-base base.kld`` and
   ``llama-perplexity -m LEVEL.gguf ... --kl-divergence-base base.kld --kl-divergence`` for N = 1 and 4, with
   llama.cpp's defaults otherwise (F16 KV cache, flash attention auto, batch 2048);
4. the numbers it prints go to llama_perplexity_smollm2.json beside this script, with the commands.

tests/core/test_infer_compare.py compares ``compare(..., eval_mode="llama-cpu")`` on the same text, window and
chunks with these numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
OUT = HERE / "llama_perplexity_smollm2.json"
LEVELS = ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0")
N_CTX = 512
CHUNKS = (1, 4)
NUM = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)"

# llama-perplexity --kl-divergence summary lines -> JSON keys (values as printed; percentages as fractions)
PATTERNS = {
    "ppl": rf"Mean PPL\(Q\)\s*:\s*{NUM}",
    "ppl_base": rf"Mean PPL\(base\)\s*:\s*{NUM}",
    "ln_ppl_ratio": rf"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{NUM}\s*±\s*{NUM}",
    "kld_mean": rf"Mean\s+KLD:\s*{NUM}\s*±\s*{NUM}",
    "kld_max": rf"Maximum KLD:\s*{NUM}",
    "kld_p99": rf"99\.0%\s+KLD:\s*{NUM}",
    "kld_median": rf"Median\s+KLD:\s*{NUM}",
    "dp_rms": rf"RMS Δp\s*:\s*{NUM}\s*±\s*{NUM}\s*%",
    "same_top": rf"Same top p:\s*{NUM}\s*±\s*{NUM}\s*%",
}


def sh(cmd: list[str], log: Path) -> str:
    print("+", " ".join(cmd), file=sys.stderr)
    res = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(res.stdout + res.stderr)
    if res.returncode:
        raise SystemExit(f"{cmd[0]} failed ({res.returncode}), see {log}")
    return res.stdout + res.stderr


def parse_kld(text: str) -> dict:
    out = {}
    for key, pat in PATTERNS.items():
        m = re.search(pat, text)
        if not m:
            raise SystemExit(f"no {key!r} in llama-perplexity's output")
        scale = 0.01 if key in ("dp_rms", "same_top") else 1.0
        out[key] = round(float(m.group(1)) * scale, 10)
        if m.lastindex and m.lastindex > 1:
            out[key + "_unc"] = round(float(m.group(2)) * scale, 10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, default=Path("/tmp/lcp/build/bin"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/kld"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from fetch_models import real_model

    src = Path(real_model("smollm2"))
    text = ROOT / "workbench" / "infer" / "calibration.txt"
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base-f32.gguf"
    sh([sys.executable, "-c", "import sys; from workbench.cli import main; sys.exit(main(sys.argv[1:]))", "convert",
        str(src), "-o", str(base), "--type", "F32", "--force", "-q"], work / "convert.log")
    for lv in LEVELS:
        sh([str(args.bin / "llama-quantize"), str(base), str(work / f"{lv}.gguf"), lv, str(args.threads)],
           work / f"quantize_{lv}.log")
    common = ["-f", str(text), "-c", str(N_CTX), "-t", str(args.threads)]
    runs = {}
    commands = []
    for chunks in CHUNKS:
        kld_file = work / f"base-{chunks}.kld"
        cmd = [str(args.bin / "llama-perplexity"), "-m", str(base), *common, "--chunks", str(chunks),
               "--kl-divergence-base", str(kld_file)]
        log = sh(cmd, work / f"base-{chunks}.log")
        commands.append(cmd)
        m = re.search(rf"Final estimate: PPL = {NUM} \+/- {NUM}", log)
        run = {"base_ppl": float(m.group(1)), "base_ppl_unc": float(m.group(2)), "chunks": chunks,
               "tokens_scored": chunks * (N_CTX - 1 - N_CTX // 2), "levels": {}}
        for lv in LEVELS:
            cmd = [str(args.bin / "llama-perplexity"), "-m", str(work / f"{lv}.gguf"), *common, "--chunks",
                   str(chunks), "--kl-divergence-base", str(kld_file), "--kl-divergence"]
            run["levels"][lv] = parse_kld(sh(cmd, work / f"kld-{lv}-{chunks}.log"))
            commands.append(cmd)
        runs[str(chunks)] = run
    commit = subprocess.run(["git", "-C", str(args.bin.parents[1]), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    data = {
        "about": "llama-perplexity --kl-divergence on SmolLM2-135M-Instruct levels (base: the cached Q4_1 GGUF "
                 "dequantized to F32), made by make_llama_perplexity_ref.py",
        "llama_cpp_commit": commit,
        "text": "workbench/infer/calibration.txt",
        "text_sha256": hashlib.sha256(text.read_bytes()).hexdigest(),
        "n_ctx": N_CTX,
        "commands": [" ".join(Path(c[0]).name if i == 0 else (Path(a).name if "/" in a else a)
                              for i, a in enumerate(c)) for c in commands],
        "runs": runs,
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
