#!/usr/bin/env python3
"""Build the one-folder app with PyInstaller and smoke-test the frozen binary.

    python packaging/build_bundle.py [--smoke] [--skip-build] [--dist build/dist]

Builds ``build/dist/model-workbench/`` from packaging/model-workbench.spec (work files in
``build/pyinstaller``).  With ``--smoke`` it then runs the frozen binary offscreen:

1. ``model-workbench --self-test tiny.gguf --screenshot shot.png`` with an empty cache, twice: the demo
   model is generated and opened, then a tiny GGUF written here, a tensor histogram is computed for
   each, and the window is rendered.  Checks exit code 0 and that the PNG is the window's size and not
   blank.  The start-up time is the wall time from launching the process to the window being shown
   (first run: cold file cache; second: warm).
2. A second launch with a file while an instance runs: it must hand the file over and exit 0.
3. ``--install-desktop`` into a temporary XDG data dir: the entry's Exec must be the bundle.

It prints the bundle size, the build time and the start-up times.  Exit code 0 when all passed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "model-workbench.spec"
NAME = "model-workbench"
RUN_TIMEOUT_S = 180


def build(dist: Path, work: Path) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--workpath", str(work), "--distpath", str(dist), str(SPEC)]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0


def folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files), len(files)


def write_tiny_gguf(path: Path) -> Path:
    """A small llama-style GGUF (F32 and F16 tensors) written with gguf-py."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("Smoke Test Tiny")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_tensor("token_embd.weight", rng.standard_normal((48, 32)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", (rng.standard_normal((32, 32)) * 0.1).astype(np.float16))
    w.add_tensor("blk.0.ffn_up.weight", (rng.standard_normal((64, 32)) * 0.1).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def png_problem(path: Path, size: tuple[int, int]) -> str | None:
    """None when ``path`` is a PNG of ``size`` with real content (many colours), else what is wrong."""
    from PySide6.QtGui import QImage

    if not path.is_file():
        return f"no screenshot at {path}"
    image = QImage(str(path))
    if image.isNull():
        return f"{path} is not a readable PNG"
    if (image.width(), image.height()) != size:
        return f"screenshot is {image.width()}x{image.height()}, expected {size[0]}x{size[1]}"
    colors = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    if len(colors) < 16:
        return f"screenshot looks blank ({len(colors)} colours)"
    return None


def run_timed(cmd: list[str], env: dict, marker: str) -> tuple[int, str, str, float | None]:
    """Run ``cmd``; returns (exit code, stdout, stderr, seconds until ``marker`` appeared on stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    seen: dict[str, float] = {}
    out_lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            if marker in line and "t" not in seen:
                seen["t"] = time.perf_counter() - t0
            out_lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        err = proc.stderr.read()
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        err = "timed out"
    reader.join(5)
    return proc.returncode, "".join(out_lines), err, seen.get("t")


def smoke(exe: Path, report: dict) -> list[str]:
    failures: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="wb-bundle-smoke-"))
    gguf_path = write_tiny_gguf(tmp / "smoke-tiny.gguf")
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    base_env.update(QT_QPA_PLATFORM="offscreen", WORKBENCH_CACHE_DIR=str(tmp / "cache"),
                    WORKBENCH_INSTANCE_NAME=f"wb-smoke-{uuid.uuid4().hex[:10]}",
                    XDG_DATA_HOME=str(tmp / "data"), XDG_CONFIG_HOME=str(tmp / "config"))

    # 1. self-test, cold then warm
    for run in ("first", "second"):
        shot = tmp / f"shot-{run}.png"
        code, out, err, t_shown = run_timed([str(exe), "--self-test", str(gguf_path), "--screenshot", str(shot)],
                                            base_env, "self-test: window shown")
        print(out.strip())
        if code != 0 or "self-test: ok" not in out:
            failures.append(f"self-test ({run} run) exited {code}: {err.strip()[-2000:]}")
            break
        problem = png_problem(shot, (1200, 760))
        if problem:
            failures.append(problem)
        report[f"startup_{run}_s"] = t_shown
        if "Smoke Test Tiny" not in out:
            failures.append(f"the self-test did not end on the tiny GGUF: {out.strip()}")
    if (tmp / "shot-first.png").is_file():
        shutil.copy(tmp / "shot-first.png", exe.parent.parent / "smoke-screenshot.png")

    # 2. a second launch hands its file to the running instance
    first = subprocess.Popen([str(exe)], env=base_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    try:
        sys.path.insert(0, str(ROOT))
        from ui.single_instance import instance_running

        deadline = time.monotonic() + 60
        while first.poll() is None and time.monotonic() < deadline \
                and not instance_running(base_env["WORKBENCH_INSTANCE_NAME"]):
            time.sleep(0.2)
        if first.poll() is not None:
            failures.append(f"the app exited on its own ({first.returncode}): {first.stderr.read().strip()[-2000:]}")
        else:
            try:  # handed over: it exits at once; not handed over: it would open its own window and stay
                proc = subprocess.run([str(exe), str(gguf_path)], env=base_env, capture_output=True, text=True,
                                      timeout=60)
                if proc.returncode != 0 or "in the running" not in proc.stdout:
                    failures.append(f"second launch: exit {proc.returncode} {proc.stdout.strip()} {proc.stderr.strip()}")
            except subprocess.TimeoutExpired:
                failures.append("the second launch was not handed to the running instance (it kept running)")
    finally:
        first.terminate()
        try:
            first.wait(10)
        except subprocess.TimeoutExpired:
            first.kill()

    # 3. desktop entry from the bundle
    proc = subprocess.run([str(exe), "--install-desktop"], env=base_env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    entry = tmp / "data" / "applications" / f"{NAME}.desktop"
    if proc.returncode != 0 or not entry.is_file():
        failures.append(f"--install-desktop failed: exit {proc.returncode} {proc.stderr.strip()}")
    elif f"Exec={exe}" not in entry.read_text() and f'Exec="{exe}"' not in entry.read_text():
        failures.append(f"the desktop entry does not run the bundle:\n{entry.read_text()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="smoke-test the built bundle")
    p.add_argument("--skip-build", action="store_true", help="test the existing bundle without rebuilding")
    p.add_argument("--dist", default=str(ROOT / "build" / "dist"), help="output folder (default build/dist)")
    p.add_argument("--work", default=str(ROOT / "build" / "pyinstaller"), help="PyInstaller's work folder")
    args = p.parse_args(argv)
    dist = Path(args.dist)
    report: dict[str, float | None] = {}
    if not args.skip_build:
        report["build_s"] = build(dist, Path(args.work))
    folder = dist / NAME
    exe = folder / (NAME + (".exe" if os.name == "nt" else ""))
    if not exe.is_file():
        print(f"error: no bundle at {exe}", file=sys.stderr)
        return 1
    size, n_files = folder_size(folder)
    failures = smoke(exe, report) if args.smoke else []
    print(f"bundle: {folder} — {size / 1e6:.0f} MB in {n_files} files")
    if "build_s" in report:
        print(f"build time: {report['build_s']:.0f} s")
    for run in ("first", "second"):
        t = report.get(f"startup_{run}_s")
        if t is not None:
            print(f"start-up to window shown ({run} run): {t:.2f} s")
    if args.smoke:
        print("smoke test: " + ("PASSED" if not failures else "FAILED"))
    for f in failures:
        print(f"  - {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
