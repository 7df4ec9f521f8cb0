"""Seeded mutation fuzzing of every reader: each mutated file opens or is refused with a one-line WorkbenchError.

The engine is ``bench/fuzz.py`` (``python bench/fuzz.py --seconds 600`` for a long run).  Each case here is
deterministic (seed name + case number); a failure prints the mutation and the command that reproduces it.
Opening means what the app does: ``open_model``, every tensor's info, a few tensors decoded, the Q4_K_M plan,
the tokenizer where there is one, the plan file.  Anything but success or a WorkbenchError fails: another
exception, RecursionError, MemoryError, a case still running after its time limit (2 s, or 4x the unmutated
seed's own time), an error text of more than one line or 300 characters.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from fetch_models import real_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fuzz  # noqa: E402

# cases per seed: the builders' seeds are small and fast (~5 ms a case); real ones cost 50-500 ms a case
BUILDER_CASES = 40
REAL_CASES = 6
BUILDER_SEEDS = ["gguf", "gguf-split-1", "gguf-split-3", "safetensors", "hf-config.json", "hf-generation_config.json",
                 "hf-tokenizer.json", "hf-tokenizer_config.json", "hf-special_tokens_map.json", "plan", "index",
                 "index-open", "shard-2", "peft-config", "peft-weights"]
REAL_SEEDS = ["tinycoder", "vocab-llama-spm", "vocab-bert-bge", "smollm2", "minilm-weights", "minilm-config.json",
              "minilm-tokenizer.json", "t5-lora-weights", "t5-lora-config"]


@pytest.fixture(scope="module")
def builder_seeds(tmp_path_factory):
    seeds = fuzz.builder_seeds(tmp_path_factory.mktemp("fuzz"))
    fuzz.calibrate(seeds)
    return {s.name: s for s in seeds}


@pytest.fixture(scope="module")
def real_seed_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-real")


def run_cases(seed: fuzz.Seed, n: int) -> list[fuzz.Outcome]:
    outcomes = [fuzz.run_case(seed, case) for case in range(n)]
    failures = [f"{o.seed}:{o.case} {o.result} after {o.seconds:.2f} s [{o.desc[:150]}]: {o.detail}\n"
                f"    reproduce: {o.repro()}" for o in outcomes if o.failed]
    assert not failures, f"{len(failures)} of {n} mutated files crashed or hung:\n" + "\n".join(failures)
    return outcomes


def test_seeds_open_cleanly(builder_seeds):
    # calibrate() opened every unmutated seed: the fuzzer starts from valid files, and these seeds exist
    assert set(BUILDER_SEEDS) <= set(builder_seeds)


@pytest.mark.parametrize("name", BUILDER_SEEDS)
def test_mutated_builder_files_open_or_are_refused(builder_seeds, name):
    outcomes = run_cases(builder_seeds[name], BUILDER_CASES)
    results = {o.result for o in outcomes}
    assert "error" in results, "no mutation was refused: the mutations do not reach the reader"


@pytest.mark.parametrize("name", REAL_SEEDS)
def test_mutated_real_files_open_or_are_refused(real_seed_dir, name):
    group = next((g for g in ("minilm", "t5-lora") if name.startswith(g)), name)  # one real model, several seeds
    path = fuzz.model_path(group, real_model(fuzz.MODEL_KEYS[group]))
    work = real_seed_dir / name
    work.mkdir()
    seed = next(s for s in fuzz.real_seeds(work, {group: path}, tokenizers=False) if s.name == name)
    fuzz.calibrate([seed])
    run_cases(seed, REAL_CASES)


def test_the_property_catches_a_crash(builder_seeds, monkeypatch):
    # the harness itself: a reader that raises something other than a WorkbenchError is reported as a crash,
    # one that runs past the time limit as a hang, and an error text on two lines as a bad message
    import workbench
    from workbench.errors import FormatError

    seed = builder_seeds["gguf"]
    monkeypatch.setattr(workbench, "open_model", lambda path: {}["boom"])
    assert fuzz.run_case(seed, 0).result == "crash"

    def slow(path):
        while True:
            pass

    monkeypatch.setattr(workbench, "open_model", slow)
    assert fuzz.run_case(seed, 0, limit=0.2).result == "hang"

    class TwoLines(FormatError):
        def __str__(self):
            return "first line\nsecond line"

    def two_lines(path):
        raise TwoLines("x")

    monkeypatch.setattr(workbench, "open_model", two_lines)
    assert fuzz.run_case(seed, 0).result == "bad-message"

    def native_panic(path):  # a Rust library that panics prints to fd 2, then raises (caught as a FormatError)
        os.write(2, b"thread '<unnamed>' panicked at src/lib.rs:1:1:\nindex out of range\n")
        raise FormatError("not usable")

    monkeypatch.setattr(workbench, "open_model", native_panic)
    outcome = fuzz.run_case(seed, 0)
    assert outcome.result == "crash" and "index out of range" in outcome.detail
