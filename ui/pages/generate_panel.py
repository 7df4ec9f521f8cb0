"""The Generate tab: a completion from the opened model at any quantization level, streamed token by token.

The job (on the worker) loads the engine for the chosen level, unless the panel already holds it, and runs
:func:`workbench.infer.generate.generate`; each token is reported as a progress step whose message carries the
whole text so far (progress signals are rate-limited: a message is never a delta that could be lost).  The
engines stay cached per (model, level), at most :data:`CACHED_ENGINES`, so generating again does not reload
the weights; a model change drops them.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase, QKeySequence, QShortcut, QTextCursor
from PySide6.QtWidgets import (QCheckBox, QDoubleSpinBox, QHBoxLayout, QLabel, QPlainTextEdit,
                               QProgressBar, QPushButton, QSizePolicy, QSpinBox, QVBoxLayout, QWidget)

from workbench import Cancelled, Model, Progress, WorkbenchError
from workbench.plan import Plan

from .compare_view import DEFAULT_PROMPT, Level, LevelPicker
from ..widgets.flow_layout import FlowLayout

CACHED_ENGINES = 2  # engines kept (each holds the model's weights in float32)
TEXT_MARK = "\x02"  # starts the progress messages that carry the generated text (loading messages never do)


@dataclass
class GenerateResult:
    text: str
    ids: list[int]
    stop: str  # "eos", "length" or "context"
    seconds: float  # from the start of generation (prompt processing included) to the last token
    tokens_per_s: float
    repetition: bool
    loaded: bool  # whether the weights were loaded for this run (False: the cached engine was used)


class EngineCache:
    """Engines of one model keyed by level, least recently used dropped first; thread-safe.  ``run_lock``
    makes sure only one generation uses an engine at a time (a stopped job finishes its step first)."""

    def __init__(self, size: int = CACHED_ENGINES):
        self.size = size
        self.model: Model | None = None
        self.run_lock = threading.Lock()
        self._lock = threading.Lock()
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def reset(self, model: Model | None) -> None:
        with self._lock:
            self.model = model
            self._items.clear()

    def get(self, key) -> Any:
        with self._lock:
            engine = self._items.get(key)
            if engine is not None:
                self._items.move_to_end(key)
            return engine

    def put(self, model: Model, key, engine) -> None:
        with self._lock:
            if model is not self.model:  # loaded for a model that is no longer open
                return
            self._items[key] = engine
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def keys(self) -> list:
        with self._lock:
            return list(self._items)


def level_key(level: Level, plan: Plan | None) -> tuple:
    """What identifies a level's weights: the preset, or the plan's whole editable state."""
    if level.kind == "current" and plan is not None:
        return ("plan", plan.preset, tuple(plan.rules), tuple(sorted(plan.overrides.items())))
    return (level.kind, level.value)


def model_info_job(model: Model):
    """Worker job: ``(tokenizer or None, message or None)`` — what the panel needs to know of the model."""
    from workbench.infer.tokenizer import load_tokenizer
    from workbench.infer.weights import model_arch

    try:
        model_arch(model, generate=True)  # an encoder or unknown architecture: what it is and what can generate
        return load_tokenizer(model), None
    except WorkbenchError as exc:
        return None, str(exc)


def generate_job(model: Model, level, key, cache: EngineCache, tokenizer, prompt: str, *, max_tokens: int,
                 temperature: float, top_k: int, top_p: float, seed: int | None, chat: bool,
                 cancel: Callable[[], bool], memory_budget: int | None = None):
    """Worker job: stream a completion; yields ``Progress(n, max_tokens, TEXT_MARK + text so far)``.

    ``level``: None (the stored weights), a preset name, a plan file path or a :class:`Plan`; ``key`` names it
    in ``cache``; ``memory_budget``: bytes of dequantized layers the engine may keep (None: all, float32)."""
    from workbench.infer.compare import resolve_level
    from workbench.infer.generate import detect_repetition, generate
    from workbench.infer.tokenizer import load_tokenizer
    from workbench.infer.engines import load_engine
    from workbench.infer.weights import GENERATE_HINT

    with cache.run_lock:
        if cancel():
            raise Cancelled("generation was stopped")
        engine = cache.get(key)
        loaded = engine is None
        if loaded:
            yield Progress(0, 1, "Loading the weights…")
            plan = None if level is None else resolve_level(model, level)[1]  # a plan file is read here
            engine = yield from load_engine(model, plan, cancel=cancel, memory_budget=memory_budget)
            cache.put(model, key, engine)
        if tokenizer is None:
            tokenizer = load_tokenizer(model)
        if not hasattr(engine, "start"):
            raise WorkbenchError("this model is an encoder: it makes sentence embeddings, not text",
                                 hint=GENERATE_HINT)
        yield Progress(0, max_tokens, TEXT_MARK)
        ids: list[int] = []
        text = ""
        t0 = time.perf_counter()
        tokens = generate(engine, tokenizer, prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=seed, chat=chat)
        while True:
            if cancel():
                raise Cancelled("generation was stopped")
            try:
                tok = next(tokens)
            except StopIteration as stop:
                reason = stop.value
                break
            ids.append(tok.id)
            text += tok.text
            yield Progress(len(ids), max_tokens, TEXT_MARK + text)
        seconds = time.perf_counter() - t0
    return GenerateResult(text, ids, reason, seconds, len(ids) / seconds if seconds > 0 else 0.0,
                          bool(detect_repetition(ids)), loaded)


class GeneratePanel(QWidget):
    """``generated(GenerateResult)`` when a generation ends; ``text_changed(str)`` as the text streams."""

    generated = Signal(object)
    text_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        from ..worker import Worker

        self.job = generate_job  # the job factory (injectable: tests)
        self.memory_budget: Callable[[], int | None] = lambda: None  # the window sets it from the preferences
        self.worker = Worker(self, name="generate")
        self.worker.progress.connect(self._on_progress)
        self.worker.result.connect(self._on_result)
        self.worker.error.connect(self._on_error)
        self.worker.cancelled.connect(self._on_cancelled)
        self.info_worker = Worker(self, name="generate-info")
        self.info_worker.result.connect(self._on_info)
        self.cache = EngineCache()
        self.model: Model | None = None
        self.plan: Plan | None = None
        self._tokenizer = None
        self._info_pending = False
        self.result: GenerateResult | None = None
        self._cancel = threading.Event()
        self._text = ""

        self.level = LevelPicker(self, allow_stored=True)
        self.level.setToolTip("The weights to generate with: as stored in the file, a preset or the current plan "
                              "applied in memory (the file is not changed)")
        self.chat_box = QCheckBox("Chat template", self)
        self.chat_box.setToolTip("Wrap the prompt in the model's chat template as a user message "
                                 "(available when the model has one)")
        self.tokens_spin = QSpinBox(self)
        self.tokens_spin.setRange(1, 8192)
        self.tokens_spin.setValue(64)
        self.tokens_spin.setToolTip("Generate at most this many tokens (less when the model ends its answer)")
        self.temp_spin = QDoubleSpinBox(self)
        self.temp_spin.setRange(0.0, 5.0)
        self.temp_spin.setSingleStep(0.1)
        self.temp_spin.setDecimals(2)
        self.temp_spin.setSpecialValueText("greedy")
        self.temp_spin.setToolTip("Sampling temperature; 0 (greedy) always takes the most likely token")
        self.topk_spin = QSpinBox(self)
        self.topk_spin.setRange(0, 100000)
        self.topk_spin.setSpecialValueText("off")
        self.topk_spin.setToolTip("Sample only among the k most likely tokens (off: all)")
        self.topp_spin = QDoubleSpinBox(self)
        self.topp_spin.setRange(0.01, 1.0)
        self.topp_spin.setSingleStep(0.05)
        self.topp_spin.setValue(1.0)
        self.topp_spin.setToolTip("Nucleus sampling: the smallest set of tokens whose probability reaches p")
        self.seed_spin = QSpinBox(self)
        self.seed_spin.setRange(-1, 2**31 - 1)
        self.seed_spin.setValue(0)
        self.seed_spin.setSpecialValueText("random")
        self.seed_spin.setToolTip("Seed of the sampler: the same seed gives the same text "
                                  "(random: a new one each time)")
        self.temp_spin.valueChanged.connect(self._sampling_enabled)

        # the settings wrap to more lines when the pane is narrow (nothing is cut off)
        self.settings_box = QWidget(self)
        flow = FlowLayout(self.settings_box, spacing=10)
        for text, w in (("&Level", self.level), ("&Max tokens", self.tokens_spin), (None, self.chat_box),
                        ("&Temperature", self.temp_spin), ("Top-&k", self.topk_spin), ("Top-&p", self.topp_spin),
                        ("&Seed", self.seed_spin)):
            cell = QWidget(self.settings_box)
            row = QHBoxLayout(cell)
            row.setContentsMargins(0, 0, 0, 0)
            if text:
                lab = QLabel(text, cell)
                lab.setBuddy(w)
                # the size hint can fall a pixel or two short of the rendered text ("Temperatur" clipped)
                lab.setMinimumWidth(lab.fontMetrics().horizontalAdvance(text.replace("&", "")) + 4)
                row.addWidget(lab)
            w.setParent(cell)
            row.addWidget(w)
            flow.addWidget(cell)

        self.prompt_edit = QPlainTextEdit(DEFAULT_PROMPT, self)
        self.prompt_edit.setToolTip("The prompt (Ctrl+Enter generates)")
        self.prompt_edit.setMaximumHeight(self.fontMetrics().lineSpacing() * 4 + 12)
        self.generate_button = QPushButton("Generate", self)
        self.generate_button.setToolTip("Generate a completion of the prompt (Ctrl+Enter)")
        self.generate_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop", self)
        self.stop_button.setToolTip("Stop generating (Esc; the text so far stays)")
        self.stop_button.clicked.connect(self.stop)
        for seq in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(seq), self.prompt_edit, self.start,
                      context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.progress = QProgressBar(self)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.status = QLabel(self)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        run_row = QHBoxLayout()
        run_row.addWidget(self.generate_button)
        run_row.addWidget(self.stop_button)
        run_row.addWidget(self.progress, 1)
        run_row.addWidget(self.status, 2)

        self.output = QPlainTextEdit(self)
        self.output.setReadOnly(True)
        self.output.setPlaceholderText("The generated text appears here as it is written.")
        self.output.setToolTip("The generated text (the prompt is not repeated)")
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.GeneralFont)
        font.setPointSizeF(font.pointSizeF() * 1.05)
        self.output.setFont(font)
        self.stats = QLabel(self)
        self.stats.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.warning = QLabel("⚠ The output ends in a repeating loop: try sampling (a temperature above 0) or a "
                              "higher-precision level.", self)
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("QLabel { color: #c9301f; font-weight: bold; }")
        self.warning.setVisible(False)
        self.hint = QLabel("Open a model to generate text with it.", self)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)

        self.body = QWidget(self)
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addWidget(self.settings_box)
        prompt_label = QLabel("&Prompt", self)
        prompt_label.setBuddy(self.prompt_edit)
        body.addWidget(prompt_label)
        body.addWidget(self.prompt_edit)
        body.addLayout(run_row)
        body.addWidget(self.output, 1)
        body.addWidget(self.stats)
        body.addWidget(self.warning)
        lay = QVBoxLayout(self)
        lay.addWidget(self.body, 1)
        lay.addWidget(self.hint, 1)
        self._sampling_enabled()
        self.set_model(None)

    # -- input --------------------------------------------------------------------------------------------
    def set_model(self, model: Model | None, sizes: dict[str, tuple[int, float]] | None = None) -> None:
        """Another model: the running job is stopped, the cached engines and the text dropped."""
        self.stop()
        self.info_worker.cancel()
        self.model = model
        self.cache.reset(model)
        self._tokenizer = None
        self.result = None
        self._text = ""
        self.output.clear()
        self.stats.setText("")
        self.warning.setVisible(False)
        if model is not None and sizes is None:
            from ..widgets.plan_bar import preset_sizes

            sizes = preset_sizes(model)
        self.level.set_sizes(sizes or {})
        self.body.setVisible(model is not None)
        self.hint.setVisible(model is None)
        self.chat_box.setChecked(False)
        self.chat_box.setEnabled(False)
        self._set_running(False)
        self.generate_button.setEnabled(False)
        self.status.setText("")
        # The tokenizer is read on demand (the panel shown, or :attr:`tokenizer` asked for), not on every open:
        # its parsing holds the interpreter lock in C calls of ~20 ms, which on a busy machine froze the window
        # for up to ~130 ms right after the model opened
        self._info_pending = model is not None
        if model is not None:
            self.status.setText("Reading the tokenizer…")
            if self.isVisible():
                self._read_info()

    @property
    def tokenizer(self):
        """The model's tokenizer, None until it has been read (asking starts reading it when it is due)."""
        if self._info_pending:
            self._read_info()
        return self._tokenizer

    def _read_info(self) -> None:
        self._info_pending = False
        self.info_worker.start(model_info_job, self.model)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self._info_pending:
            self._read_info()

    def set_plan(self, plan: Plan | None) -> None:
        """The window's current plan (the "Current plan" level; a copy is taken when a generation starts)."""
        self.plan = plan

    def _on_info(self, info) -> None:
        tokenizer, message = info
        self._tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat_box.setEnabled(has_template)
        self.chat_box.setChecked(has_template)
        if not has_template:
            self.chat_box.setToolTip("This model has no chat template: the prompt is used as is")
        self.generate_button.setEnabled(tokenizer is not None and not self.worker.is_busy())
        self.status.setText(message or "")

    def _sampling_enabled(self) -> None:
        on = self.temp_spin.value() > 0
        for w in (self.topk_spin, self.topp_spin, self.seed_spin):
            w.setEnabled(on)

    # -- running ----------------------------------------------------------------------------------------
    def _level_arg(self, level: Level):
        if level.kind == "stored":
            return None
        if level.kind in ("preset", "file"):
            return str(level.value)
        if level.kind == "current":
            if self.plan is None:
                raise WorkbenchError("there is no current plan for this model")
            return self.plan.copy()
        raise WorkbenchError(f"cannot generate with the level {level.label!r}")

    def settings(self) -> dict[str, Any]:
        """The generation settings as :func:`workbench.infer.generate.generate` takes them."""
        temp = self.temp_spin.value()
        seed = self.seed_spin.value()
        return dict(max_tokens=self.tokens_spin.value(), temperature=temp,
                    top_k=self.topk_spin.value() if temp > 0 else 0, top_p=self.topp_spin.value() if temp > 0 else 1.0,
                    seed=None if seed < 0 else seed, chat=self.chat_box.isEnabled() and self.chat_box.isChecked())

    def start(self) -> int | None:
        """Generate from the prompt with the chosen level; returns the job id (None when nothing can run)."""
        if self.model is None or self._tokenizer is None or self.worker.is_busy():
            return None
        prompt = self.prompt_edit.toPlainText()
        if not prompt.strip():
            self.status.setText("Write a prompt first.")
            return None
        level = self.level.level()
        try:
            arg = self._level_arg(level)
        except WorkbenchError as exc:
            self.status.setText(str(exc))
            return None
        key = level_key(level, self.plan)
        self._cancel = threading.Event()
        self.result = None
        self._text = ""
        self.output.clear()
        self.stats.setText("")
        self.warning.setVisible(False)
        self._set_running(True)
        self.status.setToolTip("")
        self.status.setText("Starting…")
        budget = self.memory_budget()
        extra = {} if budget is None else {"memory_budget": budget}
        return self.worker.start(self.job, self.model, arg, key, self.cache, self._tokenizer, prompt,
                                 cancel=self._cancel.is_set, **self.settings(), **extra)

    def stop(self) -> None:
        self._cancel.set()
        if self.worker.is_busy():
            self.worker.cancel()

    def is_running(self) -> bool:
        return self.worker.is_busy()

    def _set_running(self, running: bool) -> None:
        self.generate_button.setEnabled(not running and self._tokenizer is not None)
        self.stop_button.setEnabled(running)
        for w in (self.level, self.tokens_spin, self.temp_spin, self.prompt_edit):
            w.setEnabled(not running)
        if running:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self._sampling_enabled()

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        if message.startswith(TEXT_MARK):
            self.status.setText(f"{done} token{'s' if done != 1 else ''}")
            self._show_text(message[len(TEXT_MARK):])  # last: a slot of text_changed may stop the job
        else:
            self.status.setText(message)

    def _show_text(self, text: str) -> None:
        if text == self._text:
            return
        if text.startswith(self._text):  # the usual case: append (keeps the view where it is)
            cur = QTextCursor(self.output.document())
            cur.movePosition(QTextCursor.MoveOperation.End)
            cur.insertText(text[len(self._text):])
        else:
            self.output.setPlainText(text)
        self._text = text
        self.output.verticalScrollBar().setValue(self.output.verticalScrollBar().maximum())
        self.text_changed.emit(text)

    def _on_result(self, result: GenerateResult) -> None:
        self._set_running(False)
        self._show_text(result.text)
        self.result = result
        why = {"eos": "the model ended its answer", "length": "the token limit",
               "context": "the context is full"}.get(result.stop, result.stop)
        self.stats.setText(f"{len(result.ids)} tokens in {result.seconds:.2f} s · {result.tokens_per_s:.1f} tokens/s"
                           f" · stopped by {why}" + ("" if result.loaded else " · weights already loaded"))
        self.warning.setVisible(result.repetition)
        self.status.setText("Done.")
        self.generated.emit(result)

    def _on_error(self, message: str) -> None:
        self._set_running(False)
        self.status.setText("Generation failed: " + message)
        self.status.setToolTip(message)  # the label shows one line

    def _on_cancelled(self) -> None:
        self._cancel.set()
        self._set_running(False)
        if self.model is not None:
            n = len(self._text)
            self.status.setText("Stopped." if n else "Stopped before the first token.")

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        self._cancel.set()
        ok = self.worker.shutdown(timeout_ms)
        return self.info_worker.shutdown(timeout_ms) and ok
