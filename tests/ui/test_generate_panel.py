"""The Generate tab: text streams in as it is generated and ends equal to the core's generate(); engines are
cached per (model, level); Stop; the chat template toggle; the repetition warning (on the demo model)."""
from __future__ import annotations

from pathlib import Path

import pytest

from workbench import open_model
from workbench.infer.generate import detect_repetition, generate_text
from workbench.infer.tokenizer import load_tokenizer
from workbench.infer.engines import load_engine
from workbench.plan import Plan
from workbench.progress import run
from ui.pages.generate_panel import GeneratePanel

TINY = Path(__file__).resolve().parents[1] / "core" / "data" / "infer" / "llama"
TIMEOUT = 30_000
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny():
    return open_model(TINY)


@pytest.fixture
def make_panel(qtbot):
    panels = []

    def make(model):
        p = GeneratePanel()
        qtbot.addWidget(p)
        p.resize(900, 600)
        p.show()
        with qtbot.waitSignal(p.info_worker.result, timeout=TIMEOUT):
            p.set_model(model)
        panels.append(p)
        return p

    yield make
    for p in panels:
        p.shutdown()


def generate_in(qtbot, panel):
    with qtbot.waitSignal(panel.generated, timeout=TIMEOUT) as blocker:
        assert panel.start() is not None
    return blocker.args[0]


def test_output_streams_and_ends_equal_to_the_core(qtbot, make_panel, tiny, monkeypatch):
    monkeypatch.setattr("ui.worker._PROGRESS_INTERVAL", 0.0)  # every token's update reaches the panel
    panel = make_panel(tiny)
    assert panel.chat_box.isEnabled() and panel.chat_box.isChecked()  # the folder has a chat template
    panel.chat_box.setChecked(False)
    panel.prompt_edit.setPlainText(PROMPT)
    panel.tokens_spin.setValue(24)
    shown = []
    panel.text_changed.connect(lambda _t: shown.append(panel.output.toPlainText()))
    result = generate_in(qtbot, panel)

    engine, tok = run(load_engine(tiny, None)), load_tokenizer(tiny)
    want = generate_text(engine, tok, PROMPT, max_tokens=24, chat=False)
    assert result.text == want and panel.output.toPlainText() == want
    assert len(result.ids) == 24 and result.stop == "length"
    # the output grew token by token, each state a prefix of the final text
    assert len(shown) >= 10 and len(set(shown)) >= 10
    assert all(want.startswith(s) for s in shown)
    assert [len(s) for s in shown] == sorted(len(s) for s in shown)
    assert "24 tokens" in panel.stats.text() and "tokens/s" in panel.stats.text()
    assert panel.warning.isVisible() == detect_repetition(result.ids)
    assert panel.generate_button.isEnabled() and not panel.stop_button.isEnabled()

    # sampling, chat template and a preset level: still the core's text for the same settings
    panel.chat_box.setChecked(True)
    panel.level.set_level("Q8_0")
    panel.temp_spin.setValue(0.8)
    panel.topk_spin.setValue(20)
    panel.topp_spin.setValue(0.9)
    panel.seed_spin.setValue(7)
    result = generate_in(qtbot, panel)
    engine = run(load_engine(tiny, "Q8_0"))
    want = generate_text(engine, tok, PROMPT, max_tokens=24, temperature=0.8, top_k=20, top_p=0.9, seed=7, chat=True)
    assert result.text == want and panel.output.toPlainText() == want


def test_the_engine_is_cached_per_level_and_dropped_with_the_model(qtbot, make_panel, tiny, st_folder, monkeypatch):
    import workbench.infer.engines as weights

    loads = []
    real = weights.load_engine

    def counting(model, plan=None, **kw):
        loads.append(plan if plan is None or isinstance(plan, str) else plan.preset)
        return real(model, plan, **kw)

    monkeypatch.setattr(weights, "load_engine", counting)
    panel = make_panel(tiny)
    panel.tokens_spin.setValue(4)
    first = generate_in(qtbot, panel)
    second = generate_in(qtbot, panel)
    assert loads == [None] and first.loaded and not second.loaded and first.text == second.text
    assert "weights already loaded" in panel.stats.text()
    panel.level.set_level("Q4_0")
    generate_in(qtbot, panel)
    generate_in(qtbot, panel)
    assert len(loads) == 2 and loads[1] == "Q4_0"
    # the current plan is keyed by its content: an edit loads again, the same state does not
    plan = Plan(tiny, "Q8_0")
    panel.set_plan(plan)
    panel.level.set_level("current")
    generate_in(qtbot, panel)
    generate_in(qtbot, panel)
    plan.set_state("Q8_0", [], {"model.layers.0.mlp.up_proj.weight": "Q4_0"})
    generate_in(qtbot, panel)
    assert len(loads) == 4
    assert len(panel.cache.keys()) == 2  # at most CACHED_ENGINES kept
    # another model: the engines are dropped
    with qtbot.waitSignal(panel.info_worker.result, timeout=TIMEOUT):
        panel.set_model(open_model(st_folder))
    assert panel.cache.keys() == [] and panel.output.toPlainText() == ""


def test_stop_keeps_the_text_so_far(qtbot, make_panel, tiny, monkeypatch, drained):
    monkeypatch.setattr("ui.worker._PROGRESS_INTERVAL", 0.0)
    panel = make_panel(tiny)
    panel.tokens_spin.setValue(200)
    stopped = []

    def stop_after_some(text):
        if len(text) >= 5 and not stopped:
            stopped.append(text)
            panel.stop_button.click()

    panel.text_changed.connect(stop_after_some)
    with qtbot.waitSignal(panel.worker.cancelled, timeout=TIMEOUT):
        panel.start()
    assert panel.worker.wait(10_000)
    drained(panel.worker)  # every token the stopped job still sent has been delivered (and dropped)
    assert panel.result is None and panel.output.toPlainText() == stopped[0]
    assert panel.status.text() == "Stopped." and panel.generate_button.isEnabled()
    assert panel._cancel.is_set()


def test_a_model_without_a_tokenizer_cannot_generate(qtbot, make_panel, st_folder):
    panel = make_panel(open_model(st_folder))
    assert panel.tokenizer is None and not panel.generate_button.isEnabled() and not panel.chat_box.isEnabled()
    assert "tokenizer" in panel.status.text()
    assert panel.start() is None


def test_the_demo_model_generates_and_warns_when_it_loops(qtbot, make_panel, demo_path):
    demo = open_model(demo_path)
    panel = make_panel(demo)
    assert panel.chat_box.isEnabled() and panel.chat_box.isChecked()  # the demo has a chat template
    panel.tokens_spin.setValue(72)  # its greedy chat answer loops from about the 68th token
    result = generate_in(qtbot, panel)
    engine = run(load_engine(demo, None))
    assert result.text == generate_text(engine, load_tokenizer(demo), PROMPT, max_tokens=72, chat=True)
    assert result.repetition and panel.warning.isVisible()
    panel.tokens_spin.setValue(40)
    result = generate_in(qtbot, panel)
    assert not result.repetition and not panel.warning.isVisible()


def test_a_saved_plan_file_as_the_level(qtbot, make_panel, tiny, tmp_path):
    plan = Plan(tiny, "Q4_0", rules=[("ffn_down", "Q8_0")])
    path = tmp_path / "mine.json"
    plan.save(path)
    panel = make_panel(tiny)
    panel.chat_box.setChecked(False)
    panel.tokens_spin.setValue(12)
    panel.level.set_level(str(path))
    assert panel.level.currentText() == "mine.json (plan file)"
    result = generate_in(qtbot, panel)
    engine = run(load_engine(tiny, Plan.load(tiny, path)))
    assert result.text == generate_text(engine, load_tokenizer(tiny), PROMPT, max_tokens=12, chat=False)
    assert panel.cache.keys() == [("file", str(path))]


def test_escape_in_the_window_stops_generation(qtbot, window, load, monkeypatch, drained):
    monkeypatch.setattr("ui.worker._PROGRESS_INTERVAL", 0.0)
    load(window, TINY)
    panel = window.generate_panel
    qtbot.waitUntil(lambda: panel.tokenizer is not None, timeout=TIMEOUT)
    window.tabs.setCurrentWidget(window.generate_page)
    panel.tokens_spin.setValue(200)
    stopped = []

    def escape_after_some(text):
        if len(text) >= 5 and not stopped:
            stopped.append(text)
            window.act_cancel.trigger()  # Esc

    panel.text_changed.connect(escape_after_some)
    with qtbot.waitSignal(panel.worker.cancelled, timeout=TIMEOUT):
        panel.start()
    assert panel.worker.wait(10_000)
    drained(panel.worker)  # every token the stopped job still sent has been delivered (and dropped)
    assert panel.result is None and panel.output.toPlainText() == stopped[0]
