"""The Generate tab's entry points for every architecture (issue 14 §1; the CLI: tests/core/test_arch_steps.py):
the job the panel runs gives transformers' greedy tokens (greedy.npy of the tiny fixtures) for the reference prompt,
and the panel's model check names an encoder and lists only what can generate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench import open_model
from ui.pages.generate_panel import EngineCache, generate_job, model_info_job

DATA = Path(__file__).resolve().parents[1] / "core" / "data" / "infer"
PROMPT_TEXT = '<s>,E~ Znd"s:</s>Q'  # make_infer_fixtures.PROMPT through the fixtures' tokenizer.json
ARCHS = ["gemma3", "gemma2", "qwen3", "qwen3moe", "phi3", "phi3_longrope", "mistral", "llama", "qwen2"]


def drain(job):
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_job_gives_transformers_greedy_tokens(arch):
    model = open_model(DATA / arch)
    tokenizer, message = model_info_job(model)
    assert message is None
    cache = EngineCache()
    cache.reset(model)
    greedy = np.load(DATA / arch / "greedy.npy").tolist()
    result = drain(generate_job(model, None, "stored", cache, tokenizer, PROMPT_TEXT, max_tokens=len(greedy),
                                temperature=0.0, top_k=0, top_p=1.0, seed=None, chat=False, cancel=lambda: False))
    assert result.ids == greedy


def test_the_panel_names_an_encoder_and_lists_only_generators():
    tokenizer, message = model_info_job(open_model(DATA / "bert"))
    assert tokenizer is None
    assert "BertModel" in message and "encoder" in message
    hint = message.split(";", 1)[1]
    assert "bert" not in hint.lower() and all(a in hint for a in ("qwen3moe", "gemma3", "phi3", "t5"))
