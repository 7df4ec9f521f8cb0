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
from workbench.infer.compare import compare, default_calibration_text, resolve_level
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


class StubEngine:
    """Logits known by hand: at even positions the token that follows gets logit ln 3 (p = 3 / (V + 2)), at odd
    positions every logit is 0 (p = 1 / V)."""

    config = {"model_type": "llama"}

    def __init__(self, vocab: int):
        self.vocab = vocab

    def nbytes(self) -> int:
        return 1

    def start(self, ids):  # marks a causal model; generation is off in these tests
        raise AssertionError("no generation expected")

    def score(self, ids, first=0):
        out = np.zeros((len(ids), self.vocab), np.float32)
        for p in range(0, len(ids) - 1, 2):
            out[p, ids[p + 1]] = math.log(3.0)
        return out[first:]


@pytest.mark.parametrize("mode", ["exact", "llama-cpu"])
def test_perplexity_of_hand_made_logits(monkeypatch, mode):
    """Windows of 64: positions 32..62 are scored (16 even, 15 odd), each against the token after it."""
    import workbench.infer.engines as W
    from workbench.progress import Progress

    v = 128

    def fake_load_engine(model, plan, *, cancel=None, **options):
        yield Progress(1, 1, "stub")
        return StubEngine(v)

    monkeypatch.setattr(W, "load_engine", fake_load_engine)
    res = run(compare(DATA / "llama", ["Q8_0"], text=TEXT, n_ctx=64, max_windows=3, prompt=None, eval_mode=mode))
    expect = math.exp((16 * math.log((v + 2) / 3) + 15 * math.log(v)) / 31)
    assert res.n_windows == 3 and res.n_ctx == 64 and res.n_tokens_scored == 3 * 31
    assert res.base.ppl == pytest.approx(expect, rel=1e-6)  # logits are float32
    s = res.levels[0].stats
    assert s["ppl"] == pytest.approx(expect, rel=1e-6) and s["tokens"] == 93
    assert res.eval_mode == mode
    if mode == "exact":
        assert s["kld_max"] == 0.0 and s["ppl_base"] == pytest.approx(expect, rel=1e-6)
    else:  # the base is stored in 16-bit fixed point: off by up to half a step (16 / 65535 / 2) per token
        assert 0 < abs(s["kld_mean"]) < 1e-5 and s["ppl_base"] == pytest.approx(expect, rel=2e-4)


def test_a_level_equal_to_the_base_has_no_divergence(llama_result):
    res, _ = llama_result
    f32 = res.levels[0]
    assert f32.label == "F32" and res.eval_mode == "llama-cpu"
    assert abs(f32.stats["kld_max"]) < 1e-4  # only the 16-bit base log-probabilities differ
    assert f32.stats["same_top"] == 1.0
    assert f32.ppl == pytest.approx(res.base.ppl, rel=1e-9)
    assert f32.generated_ids == res.base.generated_ids and len(f32.generated_ids) > 0
    assert f32.divergence is None
    exact = run(compare(DATA / "llama", ["F32"], text=TEXT, n_ctx=64, max_windows=1, prompt=None, eval_mode="exact"))
    assert exact.levels[0].stats["kld_max"] == 0.0 and exact.eval_mode == "exact"


def test_llama_cpu_mode_rounds_activations_and_the_cache():
    """The same Q8_0 level scores differently when its activations go through Q8_0 and its cache through F16;
    the base (F32 weights: float32 activations) differs only by its F16 cache."""
    kw = dict(text=TEXT, n_ctx=64, max_windows=2, prompt=None)
    cpu = run(compare(DATA / "llama", ["Q8_0"], eval_mode="llama-cpu", **kw))
    exact = run(compare(DATA / "llama", ["Q8_0"], eval_mode="exact", **kw))
    assert cpu.base.ppl == pytest.approx(exact.base.ppl, rel=1e-3) and cpu.base.ppl != exact.base.ppl
    assert cpu.levels[0].stats["kld_mean"] > 1.2 * exact.levels[0].stats["kld_mean"]
    assert "as llama.cpp CPU runs it" in cpu.to_markdown() and "exact" in exact.to_markdown()
    with pytest.raises(WorkbenchError, match="unknown evaluation"):
        run(compare(DATA / "llama", ["Q8_0"], eval_mode="gpu", **kw))


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
    with pytest.raises(WorkbenchError, match="too short: 3 tokens"):
        run(compare(DATA / "llama", ["Q8_0"], text="a b", prompt=None))
    with pytest.raises(WorkbenchError, match="window of 8 tokens is too small: it needs at least 16"):
        run(compare(DATA / "llama", ["Q8_0"], text=TEXT, n_ctx=8, prompt=None))
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
    assert main(["compare", str(DATA / "llama"), "--levels", "Q8_0", "--ctx", "8"]) == 1
    assert "--ctx 8 is too small: needs at least 16 tokens" in capsys.readouterr().err


@pytest.mark.realmodel
def test_llama_cpu_evaluation_matches_llama_perplexity():
    """SmolLM2 (its Q4_1 GGUF dequantized as the base), the bundled text, one window of 512: our llama-cpu
    evaluation against what llama-perplexity --kl-divergence printed (llama_perplexity_smollm2.json, recorded
    by make_llama_perplexity_ref.py).  Rounding activations makes the output chaotic: any float difference
    (BLAS vs ggml sum order) gives another draw of the rounding noise, so PPL agrees within that noise
    (0.5-0.9% in one window's PPL, measured over 220 windows by bench/perplexity.py, where the PPLs agree
    within 0.1%) while the mean KLD, a mean of positive terms, is stable."""
    import hashlib

    from fetch_models import real_model

    ref = json.loads((DATA / "llama_perplexity_smollm2.json").read_text(encoding="utf-8"))
    text = default_calibration_text()
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == ref["text_sha256"]
    want = ref["runs"]["1"]
    res = run(compare(open_model(real_model("smollm2")), list(want["levels"]), n_ctx=ref["n_ctx"], max_windows=1,
                      prompt=None))
    assert res.eval_mode == "llama-cpu" and res.n_tokens_scored == want["tokens_scored"] == 255
    assert res.base.ppl == pytest.approx(want["base_ppl"], rel=2e-4)  # F32 weights: no activation rounding
    for lv in res.levels:
        s, w = lv.stats, want["levels"][lv.label]
        assert s["kld_mean"] == pytest.approx(w["kld_mean"], rel=0.15), lv.label
        assert s["ppl"] == pytest.approx(w["ppl"], rel=0.03), lv.label  # over 3 sigma of that noise
        assert s["same_top"] == pytest.approx(w["same_top"], abs=0.05), lv.label


def test_table_numbers_never_show_negative_zero():
    # llama.cpp's KL is not clipped at 0, so a level equal to its base can average a tiny negative value
    from workbench.infer.compare import _num

    assert [_num(-1e-9, 6), _num(-0.004, 2), _num(-0.5, 2), _num(2.5e-7, 6), _num(None, 3)] == \
        ["0.000000", "0.00", "-0.50", "0.000000", ""]


@pytest.mark.realmodel
def test_a_quantized_base_is_named_in_a_warning_before_the_long_work(capsys, tmp_path):
    """SmolLM2's Q4_1 GGUF: the base is dequantized Q4_1 weights; the CLI says so (warnings reach the user)."""
    from fetch_models import real_model
    from workbench.cli import main
    from workbench.infer.compare import base_warning

    model = open_model(real_model("smollm2"))
    assert "Q4_1 weights, dequantized" in base_warning(model)
    assert base_warning(open_model(DATA / "llama")) is None  # F16 weights: the base is the model itself
    assert main(["compare", str(DATA / "llama"), "--levels", "Q8_0", "--ctx", "16", "--chunks", "1",
                 "--no-generate", "-q"]) == 0
    assert "dequantized" not in capsys.readouterr().err
    q8 = tmp_path / "tiny-q8.gguf"
    assert main(["convert", str(DATA / "llama"), "-o", str(q8), "--type", "Q8_0", "-q"]) == 0
    assert main(["compare", str(q8), "--levels", "Q4_0", "--ctx", "16", "--chunks", "1", "--no-generate", "-q"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warned == ["warning: the base is this file's Q8_0 weights, dequantized: levels are re-quantized from them "
                      "and measured against them, not against the original model, so a level can score better "
                      "than the base"]


def test_top_candidates_are_the_softmax_of_the_largest_logits():
    from workbench.infer.compare import _top

    logits = np.array([[0.0, 2.0, 1.0, -1.0, 3.0, 0.5], [5.0, 5.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    ids, probs = _top(logits, 3)
    assert ids == [[4, 1, 2], [0, 1, 2]]
    z0 = sum(math.exp(v) for v in logits[0])  # by hand
    assert probs[0] == pytest.approx([math.exp(3) / z0, math.exp(2) / z0, math.exp(1) / z0], rel=1e-9)
    z1 = 2 * math.exp(5) + 4
    assert probs[1] == pytest.approx([math.exp(5) / z1, math.exp(5) / z1, 1 / z1], rel=1e-9)


@pytest.mark.parametrize("eval_mode", ["exact", "llama-cpu"])
def test_the_token_view_holds_the_first_windows_tokens_their_kld_and_candidates(eval_mode):
    from workbench.infer.tokenizer import load_tokenizer

    model = open_model(DATA / "llama")
    res = run(compare(model, ["Q4_0"], n_ctx=64, max_windows=1, prompt=None, eval_mode=eval_mode))
    n = res.n_tokens_scored
    assert len(res.view_ids) == len(res.view_pieces) == n == 64 // 2 - 1  # as llama-perplexity scores
    tok = load_tokenizer(model)
    assert "".join(res.view_pieces) == tok.decode(res.view_ids)
    assert res.view_context and (res.view_context + "".join(res.view_pieces)) in tok.decode(tok.encode(
        default_calibration_text()))
    lv = res.levels[0]
    assert len(lv.token_kld) == n and np.mean(lv.token_kld) == pytest.approx(lv.stats["kld_mean"], rel=1e-6)
    assert sorted(lv.token_kld) == pytest.approx(lv.kld_values)
    for r in (res.base, lv):
        assert len(r.top_ids) == len(r.top_probs) == n and all(len(x) == 5 for x in r.top_ids)
        p = np.array(r.top_probs)
        assert np.all(np.diff(p, axis=1) <= 0) and np.all(p.sum(axis=1) <= 1 + 1e-9) and p.min() > 0
    # where the base is sure of its top token, the level mostly agrees: same first candidate often
    agree = np.mean([a[0] == b[0] for a, b in zip(res.base.top_ids, lv.top_ids)])
    assert agree == pytest.approx(lv.stats["same_top"], abs=1e-9)
