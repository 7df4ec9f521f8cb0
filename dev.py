#!/usr/bin/env python3
"""One-command setup for Model Workbench (standard library only).

    python3 dev.py app [PATH]     create .venv if needed, install, launch the app (demo model without PATH)
    python3 dev.py test [ARGS]    create .venv if needed, install with test extras, run all tests
    python3 dev.py bundle [--smoke]   build the one-folder app with PyInstaller into build/dist (and smoke-test it)

The environment is rebuilt only when pyproject.toml changes.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_env() -> None:
    stamp = VENV / ".workbench-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == want and PY.exists():
        return
    if sys.version_info < (3, 10):
        sys.exit(f"Model Workbench needs Python 3.10 or newer (this is {sys.version.split()[0]}).")
    if not PY.exists():
        print(f"Creating the environment in {VENV} …", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing Model Workbench and its dependencies (first run only) …", flush=True)
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.check_call([*pip, "install", "--upgrade", "pip"])
    subprocess.check_call([*pip, "install", "-e", f"{ROOT}[test]"])
    stamp.write_text(want)


def ensure_pyinstaller() -> None:
    if subprocess.call([str(PY), "-c", "import PyInstaller"], stderr=subprocess.DEVNULL) == 0:
        return
    print("Installing PyInstaller (first bundle only) …", flush=True)
    subprocess.check_call([str(PY), "-m", "pip", "--disable-pip-version-check", "-q", "install", "-e",
                           f"{ROOT}[test,package]"])


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("app", "test", "bundle"):
        print(__doc__)
        return 2
    ensure_env()
    cmd, rest = argv[0], argv[1:]
    if cmd == "app":
        paths = [a for a in rest if not a.startswith("-")]
        return subprocess.call([str(PY), "-m", "ui", *rest, *([] if paths else ["--demo"])])
    if cmd == "bundle":
        ensure_pyinstaller()
        return subprocess.call([str(PY), str(ROOT / "packaging" / "build_bundle.py"), *rest], cwd=ROOT)
    subprocess.call([str(PY), str(ROOT / "tests" / "fetch_models.py")])
    return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
