#!/usr/bin/env python3
"""Make the README's screenshots from the real app (offscreen), into docs/.

    python packaging/make_screenshots.py [--out docs] [--only welcome,tensors,error,compare,dark]

Uses the real models of the test cache (tests/fetch_models.py: SmolLM2-135M GGUF, all-MiniLM-L6-v2,
tinycoder), fetched on first use.  The welcome page lists them as recent models and, through a
Hugging Face hub cache laid out in a temporary folder (symlinks to those files), as cached models.
Each shot runs packaging/screenshot.py in its own process.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOT = ROOT / "packaging" / "screenshot.py"
sys.path.insert(0, str(ROOT / "tests"))


def fake_hub(root: Path, models: dict[str, Path]) -> Path:
    """A hub cache (``models--org--name/snapshots/<rev>/...`` -> ``blobs/``) whose blobs link to real files."""
    hub = root / "hub"
    for i, (repo_id, src) in enumerate(models.items()):
        repo = hub / ("models--" + repo_id.replace("/", "--"))
        rev = f"{i + 1:x}" * 40
        snap = repo / "snapshots" / rev[:40]
        files = [p for p in sorted(src.rglob("*")) if p.is_file()] if src.is_dir() else [src]
        for f in files:
            rel = f.relative_to(src) if src.is_dir() else Path(f.name)
            blob = repo / "blobs" / f"{abs(hash(str(f))):x}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                os.symlink(f, blob)
            link = snap / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(rev[:40])
    return hub


def shot(out: Path, *args: str) -> bool:
    cmd = [sys.executable, str(SHOT), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    return subprocess.call(cmd, env=env) == 0 and out.is_file()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs"), help="output folder (default docs/)")
    p.add_argument("--only", help="comma-separated subset: welcome,tensors,error,compare,dark")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else {"welcome", "tensors", "error", "compare", "dark"}

    from fetch_models import ensure

    smollm2, minilm, tiny = ensure("smollm2"), ensure("minilm"), ensure("tinycoder")
    tmp = Path(tempfile.mkdtemp(prefix="wb-shots-"))
    hub = fake_hub(tmp, {"HuggingFaceTB/SmolLM2-135M-Instruct-GGUF": smollm2,
                         "sentence-transformers/all-MiniLM-L6-v2": minilm, "tinycoder/tiny-llama-gguf": tiny})
    recent = [str(smollm2), str(minilm), str(tmp / "moved" / "Llama-3.2-1B-Instruct-Q4_K_M.gguf")]
    welcome = ["--welcome", "--hf-cache", str(hub), *(a for r in recent for a in ("--recent", r))]
    failed = []

    def run(name: str, first: str, *rest: str) -> None:
        """``first`` is the model path (or --welcome); the output file follows it."""
        target = out / name
        if not shot(target, first, str(target), *rest):
            failed.append(name)

    if "welcome" in only:
        run("screenshot-welcome.png", *welcome, "--size", "1100x720")
    if "dark" in only:
        run("screenshot-welcome-dark.png", *welcome, "--size", "1100x720", "--theme", "dark")
        run("screenshot-dark.png", str(smollm2), "--tensor", "blk.0.ffn_down.weight", "--tab", "error",
            "--types", "Q8_0,Q4_K,Q2_K", "--theme", "dark")
    if "tensors" in only:
        run("screenshot-smollm2.png", str(smollm2), "--tensor", "blk.0.attn_q.weight")
    if "error" in only:
        run("screenshot-error.png", str(smollm2), "--tensor", "blk.0.ffn_down.weight", "--tab", "error",
            "--types", "Q8_0,Q4_K,Q2_K")
    if "compare" in only:  # the Compare tab: four levels of SmolLM2 against its F32 base, 2 windows of 512
        run("screenshot-compare.png", str(smollm2), "--compare", "F16,Q8_0,Q4_K_M,Q4_0", "--compare-windows", "2",
            "--compare-ctx", "512", "--size", "1440x900", "--tree-width", "400", "--timeout", "1200")
    print(f"screenshots in {out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
