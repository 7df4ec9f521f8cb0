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
