"""compare(): levels of one model against its base, on the tiny transformers fixtures."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from workbench.errors import Cancelled, WorkbenchError
from workbench.formats import open_model
from workbench.infer import metrics as M
from workbench.infer.compare import compare, default_calibration_text, resolve_level
from workbench.infer.tokenizer import load_tokenizer
from workbench.infer.weights import load_engine
from workbench.plan import Plan
from workbench.progress import run

DATA = Path(__file__).parent / "data" / "infer"
TEXT = default_calibration_text()[:6000]


@pytest.fixture(scope="module")
def llama_result():
    progress = []
    res = run(compare(DATA / "llama", ["F32", "Q8_0", "Q4_0"], text=TEXT, n_ctx=64, max_windows=3,
                      prompt="The river", max_tokens=6), progress.append)
    return res, progress


def test_bundled_calibration_text_is_a_few_thousand_tokens():
    text = default_calibration_text()
    assert len(text.split()) > 2000
    assert "lighthouse" in text


def test_base_perplexity_is_the_mean_nll_of_the_scored_halves(llama_result):
    res, _ = llama_result
    model = open_model(DATA / "llama")
    tok = load_tokenizer(model)
    ids = tok.encode(TEXT)
    eng = run(load_engine(model, "F32"))
    nll = []
    for w in M.windows(ids, 64, tok.bos_id if tok.bos_id is not None and ids[0] == tok.bos_id else None)[:3]:
        logits = eng.score(w.tolist())
        for pos, target in M.iter_scored(w):
            lp = M.log_softmax(logits[pos:pos + 1])[0]
            nll.append(-lp[target])
    assert res.n_windows == 3 and res.n_ctx == 64
    assert res.n_tokens_scored == len(nll) == 3 * (64 - 1 - 32)
    assert res.base.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-6)
    assert res.kind == "causal" and res.base.stats is None


def test_a_level_equal_to_the_base_has_no_divergence(llama_result):
    res, _ = llama_result
    f32 = res.levels[0]
    assert f32.label == "F32"
    assert f32.stats["kld_max"] == pytest.approx(0.0, abs=1e-9)
    assert f32.stats["same_top"] == 1.0
    assert f32.ppl == pytest.approx(res.base.ppl, rel=1e-9)
    assert f32.generated_ids == res.base.generated_ids and len(f32.generated_ids) > 0
    assert f32.divergence is None


def test_fewer_bits_diverge_more(llama_result):
    res, _ = llama_result
    q8, q4 = res.levels[1], res.levels[2]
    assert 0 < q8.stats["kld_mean"] < q4.stats["kld_mean"]
    assert q8.nbytes > q4.nbytes and q8.bits_per_weight > q4.bits_per_weight
    assert q4.kld_values == sorted(q4.kld_values) and len(q4.kld_values) == res.n_tokens_scored
    assert q4.stats["tokens"] == res.n_tokens_scored
    assert q4.memory > 0 and q4.prompt_tokens_per_s > 0


def test_progress_is_monotonic_and_complete(llama_result):
    _, progress = llama_result
    done = [p.done for p in progress]
    assert done == sorted(done)
    assert progress[-1].done == progress[-1].total
    assert any("Scoring Q4_0" in p.message for p in progress)


def test_exports(llama_result):
    res, _ = llama_result
    rows = list(csv.DictReader(io.StringIO(res.to_csv())))
    assert [r["level"] for r in rows] == ["F32", "F32", "Q8_0", "Q4_0"]
    assert float(rows[3]["kld_mean"]) == pytest.approx(res.levels[2].stats["kld_mean"], rel=1e-5)
    data = json.loads(res.to_json())
    assert data["levels"][2]["label"] == "Q4_0" and data["n_windows"] == 3
    md = res.to_markdown()
    assert md.splitlines()[0].startswith("| level | size | bpw | PPL")
    assert "| Q8_0 |" in md and "Prompt: 'The river'" in md


def test_levels_resolve_presets_and_plan_files(tmp_path):
    model = open_model(DATA / "llama")
    plan = Plan(model, preset="Q8_0")
    plan.save(tmp_path / "mine.json")
    label, p = resolve_level(model, str(tmp_path / "mine.json"))
    assert label == "mine" and p.preset == "Q8_0"
    assert resolve_level(model, "q4_k_m")[0] == "Q4_K_M"
    with pytest.raises(WorkbenchError, match="unknown level"):
        resolve_level(model, "Q9_9")


def test_errors_and_cancel():
    with pytest.raises(WorkbenchError, match="too short"):
        run(compare(DATA / "llama", ["Q8_0"], text="a b", prompt=None))
    with pytest.raises(WorkbenchError, match="at least one level"):
        run(compare(DATA / "llama", [], text=TEXT))
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        run(compare(DATA / "llama", ["Q8_0"], text=TEXT, n_ctx=64, max_windows=2, prompt=None, cancel=cancel))


def test_sentence_encoder_compares_embeddings(tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(DATA / "bert", folder)
    shutil.copy(DATA / "llama" / "tokenizer.json", folder)  # same 128-token vocabulary size
    res = run(compare(folder, ["F32", "Q4_0"], text=TEXT))
    assert res.kind == "embedding" and res.prompt is None and res.n_windows == 0
    assert res.levels[0].embedding_cosine["min"] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < res.levels[1].embedding_cosine["mean"] < 1.0
    assert "cos mean" in res.to_markdown()


def test_cli_compare_prints_the_table_and_json(capsys, tmp_path):
    from workbench.cli import main

    text = tmp_path / "calib.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["compare", str(DATA / "llama"), "--levels", "Q8_0,Q4_0", "--text", str(text), "--ctx", "64",
                 "--chunks", "2", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| level |")
    assert "| Q4_0 |" in out and "62 tokens scored in 2 windows of 64" in out
    assert main(["compare", str(DATA / "llama"), "--levels", "Q8_0", "--text", str(text), "--ctx", "64",
                 "--chunks", "1", "--no-generate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["levels"][0]["label"] == "Q8_0" and data["prompt"] is None and data["n_tokens_scored"] == 31
    assert main(["compare", str(DATA / "llama"), "--levels", "Q9"]) == 1
    assert "unknown level 'Q9'" in capsys.readouterr().err
