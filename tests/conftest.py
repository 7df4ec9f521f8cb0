"""Shared test fixtures: model builders and the real-model cache (no Qt here)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from fetch_models import real_model  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    from builders import build_hf_folder

    expected = build_hf_folder(folder)
    return folder, expected


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory):
    from builders import write_gguf_model

    path = tmp_path_factory.mktemp("gguf") / "fixture.gguf"
    return path, write_gguf_model(path)


@pytest.fixture()
def demo_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pytest_terminal_summary(terminalreporter):
    """Say it loudly when tests skipped for a missing real model or oracle: a green run without them has
    not checked byte parity with ggml (under CI they fail instead, see tests/fetch_models.py)."""
    missing: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        reason = str(rep.longrepr[2]) if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if "real model '" in reason:
            key = reason.split("real model '", 1)[1].split("'", 1)[0]
            missing[key] = missing.get(key, 0) + 1
    if missing:
        terminalreporter.write_sep("!", "real models / ggml oracle missing", yellow=True)
        for key, n in sorted(missing.items()):
            terminalreporter.write_line(f"{n} tests skipped: {key!r} could not be fetched")
        terminalreporter.write_line("These results do not cover them; `python tests/fetch_models.py --retry` "
                                    "fetches them again.")
