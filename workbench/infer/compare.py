"""Compare quantization levels of one model against its base: quality statistics, speed, memory and the
text each level generates for the same prompt.

``compare(model, ["F16", "Q8_0", "Q4_K_M"])`` is a job generator.  It loads the base (by default the stored
weights in float32, i.e. the F32 plan), scores the calibration text window by window (see
:mod:`workbench.infer.metrics`), keeps the base's logits of the scored positions, releases the base and then
loads one level at a time (so memory holds one engine plus the base logits), scoring the same windows and
generating from the same prompt.  Decoder-only and encoder-decoder models get perplexity and KL-divergence
statistics; sentence encoders (bert) get the cosine similarity of their embeddings to the base's.

Two evaluations (``eval_mode``): ``"llama-cpu"`` (the default, "as llama.cpp CPU runs it") reproduces the
numbers ``llama-perplexity --kl-divergence`` prints on a CPU: every matrix product rounds its activations to
the weight type's dot-product partner (Q8_0, Q8_1, Q8_K, F16), keys and values are cached as F16, and the
base's log-probabilities are kept in llama.cpp's 16-bit fixed point; ``"exact"`` measures what the weights
alone cost (float32 activations, float32 cache and base).  llama-family models only; the others are always
evaluated exactly.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .. import gcpolicy
from ..errors import Cancelled, WorkbenchError
from ..model import Model
from ..plan import PRESETS, Plan
from ..progress import Progress, relay
from ..units import human_bytes
from . import metrics as M

DEFAULT_N_CTX = 512
MIN_N_CTX = 16
EVAL_MODES = {"llama-cpu": "as llama.cpp CPU runs it", "exact": "exactly (the weights alone)"}
DEFAULT_EVAL = "llama-cpu"
MAX_LEVELS = 8
# progress of compare(): step i (0 = the base, then one per level) covers [i * STEPS, (i + 1) * STEPS)
PROGRESS_STEPS = 1000
TOP_K = 5  # next-token candidates kept per position for the token view
TOKEN_VIEW_MAX = 256  # scored tokens of the first window kept for the token view


def default_calibration_text() -> str:
    """The bundled calibration text (original prose, code and dialogue; about 3,500 tokens)."""
    return resources.files(__package__).joinpath("calibration.txt").read_text(encoding="utf-8")


@dataclass
class LevelResult:
    label: str
    plan: str  # the plan's description ("Q4_K_M", "Q4_K_M + 2 rules", "stored")
    nbytes: int  # size of a file of this level (tensor data)
    bits_per_weight: float
    memory: int  # bytes of weights the engine held
    load_seconds: float = 0.0
    stats: dict[str, Any] | None = None  # metrics.KldAccumulator.summary(); None for the base itself
    ppl: float | None = None
    prompt_tokens_per_s: float | None = None  # scoring throughput (prompt processing)
    gen_tokens_per_s: float | None = None
    generated_ids: list[int] = field(default_factory=list)
    generated_text: str = ""
    generated_pieces: list[str] = field(default_factory=list)  # the text each generated token adds
    divergence: int | None = None  # index of the first generated token that differs from the base's
    divergence_char: int | None = None  # where that token starts in generated_text
    repetition: bool = False
    kld_values: list[float] = field(default_factory=list)  # sorted per-token KLD (for plots)
    # the token view (the scored tokens of the first window, see CompareResult.view_ids): this level's top
    # TOP_K next-token ids and probabilities at each of them, and (levels) each token's KLD from the base
    top_ids: list[list[int]] = field(default_factory=list)
    top_probs: list[list[float]] = field(default_factory=list)
    top_texts: list[list[str]] = field(default_factory=list)  # each candidate's text
    token_kld: list[float] = field(default_factory=list)
    embedding_cosine: dict[str, float] | None = None  # encoders: mean/min/max cosine to the base


@dataclass
class CompareResult:
    model: str
    architecture: str
    kind: str  # "causal", "seq2seq" or "embedding"
    n_ctx: int
    n_windows: int
    n_tokens_scored: int
    prompt: str | None
    base: LevelResult
    levels: list[LevelResult]
    eval_mode: str = "exact"  # a key of EVAL_MODES
    # the token view: the scored target tokens of the first window (at most TOKEN_VIEW_MAX), the text each
    # stands for, and the tokens before them in the window (context, decoded)
    view_ids: list[int] = field(default_factory=list)
    view_pieces: list[str] = field(default_factory=list)
    view_context: str = ""

    @property
    def eval_label(self) -> str:
        return EVAL_MODES.get(self.eval_mode, self.eval_mode)

    # -- export ------------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One flat row per level (base first) with the table's columns."""
        out = []
        for r in [self.base, *self.levels]:
            s = r.stats or {}
            row = {"level": r.label, "plan": r.plan, "size_bytes": r.nbytes, "bpw": round(r.bits_per_weight, 4),
                   "memory_bytes": r.memory, "ppl": r.ppl,
                   "ln_ppl_ratio": s.get("ln_ppl_ratio"), "kld_mean": s.get("kld_mean"),
                   "kld_median": s.get("kld_median"), "kld_p99": s.get("kld_p99"), "kld_max": s.get("kld_max"),
                   "dp_rms": s.get("dp_rms"), "same_top": s.get("same_top"),
                   "prompt_tok_s": r.prompt_tokens_per_s, "gen_tok_s": r.gen_tokens_per_s,
                   "divergence": r.divergence, "repetition": r.repetition}
            if r.embedding_cosine is not None:
                row.update({f"cos_{k}": v for k, v in r.embedding_cosine.items()})
            out.append(row)
        return out

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, indent=2, default=_json_default)

    def to_csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_csv(v) for k, v in r.items()})
        return buf.getvalue()

    def to_markdown(self) -> str:
        head = ["level", "size", "bpw"]
        if self.kind == "embedding":
            head += ["cos mean", "cos min"]
        else:
            head += ["PPL", "ln(PPL/base)", "KLD mean", "KLD p99", "same top", "Δp RMS"]
        head += ["prompt tok/s", "gen tok/s"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in [self.base, *self.levels]:
            s = r.stats or {}
            cells = [r.label, human_bytes(r.nbytes), f"{r.bits_per_weight:.2f}"]
            if self.kind == "embedding":
                c = r.embedding_cosine or {}
                cells += [_num(c.get("mean"), 6), _num(c.get("min"), 6)]
            else:
                cells += [_num(r.ppl, 4), _num(s.get("ln_ppl_ratio"), 5), _num(s.get("kld_mean"), 6),
                          _num(s.get("kld_p99"), 5),
                          "" if s.get("same_top") is None else f"{100 * s['same_top']:.2f} %",
                          "" if s.get("dp_rms") is None else f"{100 * s['dp_rms']:.3f} %"]
            cells += [_num(r.prompt_tokens_per_s, 1), _num(r.gen_tokens_per_s, 1)]
            lines.append("| " + " | ".join(cells) + " |")
        text = "\n".join(lines) + "\n"
        if self.kind != "embedding":
            text += f"\nEvaluated {self.eval_label}.\n"
        if self.prompt is not None and self.kind != "embedding":
            text += f"\nPrompt: {self.prompt!r}\n\n"
            for r in [self.base, *self.levels]:
                mark = "" if r.divergence is None else f" (differs from the base at token {r.divergence})"
                rep = " — repeats itself" if r.repetition else ""
                text += f"- **{r.label}**{mark}{rep}: {r.generated_text!r}\n"
        return text


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _fmt_csv(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _num(v, digits):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{round(v, digits) + 0.0:.{digits}f}"  # never "-0.000"


# -- levels -----------------------------------------------------------------------------------------------

def resolve_level(model: Model, level: str | Plan) -> tuple[str, Plan]:
    """(label, plan) for a preset name, a saved plan JSON path or a Plan."""
    if isinstance(level, Plan):
        from .weights import plan_label

        return plan_label(level), level
    text = str(level).strip()
    if text.upper() in PRESETS:
        return text.upper(), Plan(model, preset=text.upper())
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json" and path.is_file():
        return path.stem, Plan.load(model, path)
    raise WorkbenchError(f"unknown level {text!r}",
                         hint="Use a preset (" + ", ".join(PRESETS) + ") or the path of a saved plan (.json).")


def _check(cancel):
    if cancel is not None and cancel():
        raise Cancelled("the comparison was cancelled")


def _kind(engine) -> str:
    if not hasattr(engine, "start"):  # sentence encoders (bert) only embed
        return "embedding"
    return "seq2seq" if getattr(engine, "is_encoder_decoder", False) else "causal"


def _sentences(text: str, limit: int = 64) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
    out = [p.strip() for p in parts if len(p.split()) >= 4]
    return out[:limit]


# -- the job ------------------------------------------------------------------------------------------------

def compare(model: Model | str | Path, levels: Sequence[str | Plan], *, base: str | Plan = "F32",
            text: str | None = None, prompt: str | None = "The capital of France is", n_ctx: int = DEFAULT_N_CTX,
            max_windows: int | None = None, max_tokens: int = 32, chat: bool = False,
            eval_mode: str = DEFAULT_EVAL, memory_budget: int | None = None, imatrix=None,
            cancel: Callable[[], bool] | None = None) -> Generator[Progress, None, CompareResult]:
    """Compare ``levels`` (presets or plans) of ``model`` against ``base`` (a job generator).

    ``text``: the calibration text (default: the bundled one); ``n_ctx``: the window (the second half of
    each window is scored, as llama-perplexity does); ``max_windows`` limits the work; ``prompt``: greedy
    generation of ``max_tokens`` tokens by every level (None: no generation); ``eval_mode``: ``"llama-cpu"``
    (as llama.cpp CPU runs it) or ``"exact"`` (see the module's docstring); ``memory_budget`` (bytes): each
    level's weights stay in their level's bytes and the engine caches at most this much float32 (None: float32).
    ``imatrix`` (an :class:`~workbench.optimize.imatrix.Imatrix`): the levels (not the base) are planned and
    quantized with it, as ``convert --imatrix`` makes them.
    """
    from ..formats import open_model
    from .tokenizer import load_tokenizer
    from .engines import load_engine
    from .weights import model_arch

    if eval_mode not in EVAL_MODES:
        raise WorkbenchError(f"unknown evaluation {eval_mode!r}", hint="Use one of: " + ", ".join(EVAL_MODES))
    if int(n_ctx) < MIN_N_CTX:
        raise WorkbenchError(f"a context window of {int(n_ctx)} tokens is too small: it needs at least {MIN_N_CTX} "
                             "tokens (the second half of each window is scored)")
    if not isinstance(model, Model):
        model = open_model(model)
    if model_arch(model) not in ("llama", "qwen2"):
        eval_mode = "exact"  # only the llama-family engine emulates llama.cpp's rounding
    llama_cpu = eval_mode == "llama-cpu"
    engine_options: dict[str, Any] = {"numerics": eval_mode} if llama_cpu else {}
    if memory_budget is not None:
        engine_options["memory_budget"] = int(memory_budget)
    if not levels:
        raise WorkbenchError("choose at least one level to compare")
    if len(levels) > MAX_LEVELS:
        raise WorkbenchError(f"at most {MAX_LEVELS} levels can be compared at once")
    specs = [resolve_level(model, lv) for lv in levels]
    base_label, base_plan = resolve_level(model, base)
    text = default_calibration_text() if text is None else text
    tok = load_tokenizer(model)
    warning = base_warning(model) if isinstance(base, str) and base.upper() in ("F32", "F16") else None
    if warning:
        yield Progress(0, 1, "Comparing levels", warnings=(warning,))
    n_steps = 1 + len(specs)
    step_size = PROGRESS_STEPS
    total = n_steps * step_size

    def sub(i: int, done: int, tot: int, msg: str) -> Progress:
        frac = 0.0 if tot <= 0 else min(1.0, done / tot)
        return Progress(i * step_size + int(frac * step_size), total, msg)

    # the base ---------------------------------------------------------------------------------------------
    yield Progress(0, total, f"Loading the base ({base_label})")
    engine, load_s = yield from _load(load_engine, model, base_plan, cancel, lambda d, t, m: sub(0, d, 2 * t, m),
                                      engine_options)
    kind = _kind(engine)
    arch = getattr(engine, "config", {}).get("model_type", model.architecture or "")
    base_res = _level_result(base_label, base_plan, engine, load_s)
    if kind == "embedding":
        sentences = _sentences(text)
        if len(sentences) < 2:
            raise WorkbenchError("the calibration text has too few sentences to compare embeddings")
        batches = [tok.encode(s) for s in sentences]
        t0 = time.perf_counter()
        base_emb = _embed(engine, batches)
        base_res.prompt_tokens_per_s = sum(map(len, batches)) / max(time.perf_counter() - t0, 1e-9)
        base_res.embedding_cosine = {"mean": 1.0, "min": 1.0, "max": 1.0}
        windows: list[np.ndarray] = []
        scored = 0
    view_ids: list[int] = []
    view_pieces: list[str] = []
    view_context = ""
    if kind != "embedding":
        # as llama-perplexity: the text tokenized with the model's specials, then every window starts with
        # BOS when the model adds one
        ids = tok.encode(text)
        if len(ids) < MIN_N_CTX:
            raise WorkbenchError(f"the calibration text is too short: {len(ids)} tokens, it needs at least "
                                 f"{MIN_N_CTX}")
        n_ctx = min(int(n_ctx), len(ids)) // 2 * 2
        add_bos = tok.bos_id is not None and bool(ids) and ids[0] == tok.bos_id
        windows = M.windows(ids, n_ctx, tok.bos_id if add_bos and kind == "causal" else None)
        if max_windows:
            windows = windows[:max_windows]
        base_logits: list[Any] = []  # per window: float32 logits, or llama.cpp's 16-bit log-probs
        base_nll: list[np.ndarray] = []
        t0 = time.perf_counter()
        for wi, w in enumerate(windows):
            _check(cancel)
            lg, tg = _score_window(engine, w, kind)
            if wi == 0:
                view_n = min(len(tg), TOKEN_VIEW_MAX)
                base_res.top_ids, base_res.top_probs = _top(lg[:view_n])
                base_res.top_texts = _texts(tok, base_res.top_ids)
                view_ids = [int(t) for t in tg[:view_n]]
                view_pieces = _pieces(tok, view_ids)
                view_context = tok.decode([int(t) for t in w[:len(w) - len(tg)]]) if kind == "causal" else ""
            base_logits.append(M.fixed_log_probs(lg) if llama_cpu else lg)
            base_nll.append(M.nll_only(lg, tg))
            del lg
            yield sub(0, len(windows) + wi + 1, 2 * len(windows) + 1, f"Scoring the base: window {wi + 1}/{len(windows)}")
        elapsed = time.perf_counter() - t0
        scored = sum(len(x) for x in base_nll)
        base_res.prompt_tokens_per_s = len(windows) * n_ctx / max(elapsed, 1e-9)
        base_res.ppl = M.perplexity(np.concatenate(base_nll))[0]
    if prompt is not None and kind != "embedding":
        yield sub(0, 2 * len(windows) + 1, 2 * len(windows) + 1, "Generating with the base")
        _generate(engine, tok, prompt, max_tokens, chat, base_res, cancel)
    del engine
    gcpolicy.collect()

    # the levels -------------------------------------------------------------------------------------------
    results = []
    for li, (label, plan) in enumerate(specs, start=1):
        _check(cancel)
        yield sub(li, 0, 1, f"Loading {label}")
        if imatrix is not None and not plan.has_imatrix:  # llama-quantize's rules with an imatrix
            plan = plan.copy()
            plan.has_imatrix = True
        engine, load_s = yield from _load(load_engine, model, plan, cancel,
                                          lambda d, t, m, li=li: sub(li, d, 2 * t, f"Loading {label}: {m}"),
                                          dict(engine_options, imatrix=imatrix) if imatrix is not None
                                          else engine_options)
        res = _level_result(label, plan, engine, load_s)
        if kind == "embedding":
            t0 = time.perf_counter()
            emb = _embed(engine, batches)
            res.prompt_tokens_per_s = sum(map(len, batches)) / max(time.perf_counter() - t0, 1e-9)
            cos = np.einsum("ij,ij->i", emb, base_emb) / (
                np.linalg.norm(emb, axis=1) * np.linalg.norm(base_emb, axis=1))
            res.embedding_cosine = {"mean": float(cos.mean()), "min": float(cos.min()), "max": float(cos.max())}
        else:
            acc = M.KldAccumulator()
            t0 = time.perf_counter()
            for wi, w in enumerate(windows):
                _check(cancel)
                lg, tg = _score_window(engine, w, kind)
                if wi == 0:
                    res.top_ids, res.top_probs = _top(lg[:len(view_ids)])
                    res.top_texts = _texts(tok, res.top_ids)
                stats = M.token_stats_fixed if llama_cpu else M.token_stats
                acc.add(stats(lg, base_logits[wi], tg))
                yield sub(li, len(windows) + wi + 1, 2 * len(windows) + 1,
                          f"Scoring {label}: window {wi + 1}/{len(windows)}")
            res.prompt_tokens_per_s = len(windows) * n_ctx / max(time.perf_counter() - t0, 1e-9)
            res.stats = acc.summary()
            res.ppl = res.stats["ppl"]
            per_token = acc.kld_values()
            res.token_kld = per_token[:len(view_ids)].astype(float).tolist()  # the first window's, in order
            res.kld_values = np.sort(per_token).astype(float).tolist()
            if prompt is not None:
                _generate(engine, tok, prompt, max_tokens, chat, res, cancel)
                res.divergence = M.first_divergence(base_res.generated_ids, res.generated_ids)
                res.divergence_char = _char_offset(tok, res.generated_ids, res.divergence)
        results.append(res)
        del engine
        gcpolicy.collect()
        yield sub(li, 1, 1, f"{label} done")
    return CompareResult(model=str(model.path), architecture=str(arch), kind=kind, n_ctx=n_ctx if windows else 0,
                         n_windows=len(windows), n_tokens_scored=scored, prompt=prompt if kind != "embedding" else None,
                         base=base_res, levels=results, eval_mode=eval_mode, view_ids=view_ids,
                         view_pieces=view_pieces, view_context=view_context)


def _load(load_engine, model, plan, cancel, progress, options):
    """Load one level's engine, its progress mapped by ``progress(done, total, message)``; (engine, seconds)."""
    t0 = time.perf_counter()
    engine = yield from relay(load_engine(model, plan, cancel=cancel, **options),
                              lambda p: progress(p.done, p.total, p.message))
    return engine, time.perf_counter() - t0


def _level_result(label: str, plan: Plan, engine, load_s: float) -> LevelResult:
    from .weights import plan_label

    return LevelResult(label=label, plan=plan_label(plan), nbytes=int(plan.nbytes),
                       bits_per_weight=float(plan.bits_per_weight), memory=int(engine.nbytes()),
                       load_seconds=load_s)


def _score_window(engine, w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(logits of the scored positions, their target tokens) for one window."""
    if kind == "seq2seq":
        half = len(w) // 2
        start = int(engine.config.get("decoder_start_token_id") or 0)
        targets = w[half:]
        dec = np.concatenate([[start], targets[:-1]])
        return np.asarray(engine.score(w[:half].tolist(), dec.tolist()), np.float32), targets
    sl = M.scored_positions(len(w))
    logits = np.asarray(engine.score(w.tolist(), first=sl.start), np.float32)  # positions sl.start..
    return logits[:sl.stop - sl.start], w[sl.start + 1:sl.stop + 1]


def _embed(engine, batches: list[list[int]], batch_size: int = 16) -> np.ndarray:
    parts = [np.asarray(engine.embed(batches[i:i + batch_size]), np.float64)
             for i in range(0, len(batches), batch_size)]
    return np.concatenate(parts)


def _generate(engine, tok, prompt: str, max_tokens: int, chat: bool, res: LevelResult, cancel) -> None:
    from .generate import detect_repetition, generate

    ids: list[int] = []
    t0 = time.perf_counter()
    first_t = None
    for t in generate(engine, tok, prompt, max_tokens=max_tokens, temperature=0.0, chat=chat):
        _check(cancel)
        if first_t is None:
            first_t = time.perf_counter()
        ids.append(int(t.id if hasattr(t, "id") else t[0]))
    end = time.perf_counter()
    res.generated_ids = ids
    res.generated_text = tok.decode(ids)
    res.generated_pieces = _pieces(tok, ids)
    if len(ids) > 1 and first_t is not None:
        res.gen_tokens_per_s = (len(ids) - 1) / max(end - first_t, 1e-9)
    res.repetition = bool(detect_repetition(ids))
    del t0


def _top(logits: np.ndarray, k: int = TOP_K) -> tuple[list[list[int]], list[list[float]]]:
    """The ``k`` most likely next tokens at each position [n, vocab] -> (ids, probabilities), most likely first."""
    if not len(logits):
        return [], []
    lg = np.asarray(logits, np.float64)
    k = min(k, lg.shape[1])
    idx = np.argpartition(-lg, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(lg, idx, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, order, axis=1), np.take_along_axis(top, order, axis=1)
    mx = lg.max(axis=1, keepdims=True)
    log_z = mx + np.log(np.exp(lg - mx).sum(axis=1, keepdims=True))
    return idx.astype(int).tolist(), np.exp(top - log_z).tolist()


def _texts(tok, rows: list[list[int]]) -> list[list[str]]:
    """The text of each candidate token (decoded alone; specials as their text)."""
    cache: dict[int, str] = {}
    for row in rows:
        for t in row:
            if t not in cache:
                cache[t] = tok.decode([t], False)  # specials shown as their text
    return [[cache[t] for t in row] for row in rows]


def _pieces(tok, ids: list[int]) -> list[str]:
    """The text each token adds (decoding the growing prefix, so multi-byte characters split over tokens land
    on the token that completes them)."""
    out, prev = [], ""
    for i in range(len(ids)):
        text = tok.decode(ids[:i + 1])
        out.append(text[len(prev):] if text.startswith(prev) else text)
        prev = text
    return out


def _char_offset(tok, ids: list[int], index: int | None) -> int | None:
    if index is None:
        return None
    return len(tok.decode(ids[:index]))


def base_warning(model: Model) -> str | None:
    """A warning when the base is itself a quantized file's weights, dequantized (e.g. a Q4_1 GGUF): the levels
    are then re-quantized from those values and measured against them, so one can score better than the base."""
    from .. import dtypes

    params: dict[str, int] = {}
    for t in model.tensors:
        params[t.dtype] = params.get(t.dtype, 0) + t.n_params
    quantized = {k: v for k, v in params.items() if dtypes.is_quantized(k)}
    if 2 * sum(quantized.values()) <= sum(params.values()):
        return None  # mostly float weights: the base is the model itself
    main = max(quantized, key=quantized.get)
    return (f"the base is this file's {main} weights, dequantized: levels are re-quantized from them and measured "
            "against them, not against the original model, so a level can score better than the base")


_FLOPS: list[float] = []


def machine_flops() -> float:
    """Float32 matrix-multiply rate of this machine (flop/s): the best of three 1 GFLOP products, measured once
    per process (~30 ms on a laptop)."""
    if not _FLOPS:
        a = np.ones((512, 1024), np.float32)
        b = np.ones((1024, 1024), np.float32)
        a @ b  # warm up the BLAS threads
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        _FLOPS.append(2 * a.shape[0] * a.shape[1] * b.shape[1] / max(best, 1e-6))
    return _FLOPS[0]


def estimate_seconds(model: Model, n_levels: int, *, n_tokens: int, max_tokens: int = 0,
                     flops: float | None = None) -> float:
    """A rough duration of :func:`compare` (the base plus ``n_levels`` levels) before it runs: per level, the
    weights are quantized (~25 M values/s), ``n_tokens`` calibration tokens scored (2 flops per parameter and
    token at 70% of the measured matmul rate) and ``max_tokens`` generated (one weight read each)."""
    n_params = max(1, model.n_params)
    flops = flops or machine_flops()
    quantize = n_params / 25e6
    score = n_tokens * 2.0 * n_params / (0.7 * flops)
    generate = max_tokens * (4.0 * n_params / 8e9 + 0.002)  # float32 weights streamed at ~8 GB/s, call overhead
    return (1 + n_levels) * (score + generate) + n_levels * quantize
