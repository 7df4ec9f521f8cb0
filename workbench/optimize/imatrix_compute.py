"""Computing an importance matrix with our engine, as llama-imatrix does.

The text is tokenized once (with the model's BOS; control tokens written in the text are matched only for
chat-rendered text, as ``llama-imatrix --parse-special``), cut into consecutive chunks of ``n_ctx`` tokens
whose first token becomes BOS when the model adds one, and each chunk runs through the engine from an empty
cache.  For every matrix product of the layers (and of the output head with ``process_output``) the engine
hands us its input activations (:attr:`~workbench.infer.decoder.DecoderEngine.observer`); we add, per input
column, the squares of ALL the chunk's tokens (unlike perplexity, which scores half a window) and count the
tokens.  Matrices sharing one input (q/k/v, gate/up) get the same sums each; MoE experts (``ffn_*_exps``)
get per-expert sums and counts over the tokens routed to them.  The result is an
:class:`~workbench.optimize.imatrix.Imatrix` under GGUF tensor names (``in_sum2`` / ``counts``).

Calibration text: :func:`calibration_units` reads a text file (paragraphs) or a chat set (JSON list or JSONL
of ``{"messages": [...]}``, rendered through the model's chat template); :func:`split_calibration` keeps a
deterministic held-out part apart, never used to compute the matrix.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from ..errors import Cancelled, FormatError, UnsupportedError, WorkbenchError
from ..model import Model
from ..progress import Progress
from .imatrix import Imatrix, ImatrixEntry

MIN_CTX = 16  # llama-imatrix ignores dense products of fewer than 16 tokens


# -- calibration text ----------------------------------------------------------------------------------------

def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs (lines when the text has fewer than 5 paragraphs)."""
    paras = [p for p in (s.strip("\n") for s in text.replace("\r\n", "\n").split("\n\n")) if p.strip()]
    if len(paras) < 5:
        paras = [ln for ln in text.splitlines() if ln.strip()]
    return paras


def _n_held_out(n: int, held_out: float) -> int:
    return 0 if held_out <= 0 or n < 2 else min(n - 1, max(1, int(round(n * float(held_out)))))


def split_calibration(text_or_records: str | Sequence[Any], held_out: float = 0.2, seed: int = 0):
    """(train, held_out): a deterministic split of a text (by paragraphs; both parts are texts, paragraphs in
    their original order) or of a list of records (e.g. chat conversations; both parts are lists).

    ``held_out`` is the fraction kept apart (at least one unit when it is > 0 and there are two or more);
    the same input, fraction and ``seed`` always give the same split."""
    if not 0.0 <= float(held_out) < 1.0:
        raise WorkbenchError(f"the held-out fraction {held_out} should be at least 0 and below 1")
    is_text = isinstance(text_or_records, str)
    units = _paragraphs(text_or_records) if is_text else list(text_or_records)
    n = len(units)
    k = _n_held_out(n, held_out)
    chosen = set(random.Random(int(seed)).sample(range(n), k)) if k else set()
    train = [u for i, u in enumerate(units) if i not in chosen]
    held = [u for i, u in enumerate(units) if i in chosen]
    if is_text:
        return "\n\n".join(train), "\n\n".join(held)
    return train, held


def read_chat_records(path: Path) -> list[dict] | None:
    """The conversations of a chat-formatted file (.json: a list of {"messages": [...]}; .jsonl: one per
    line), or None when the file is not one (then it is plain text)."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return None
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkbenchError(f"cannot read the calibration set: {exc.strerror or exc}", path=path) from None
    try:
        if path.suffix.lower() == ".jsonl":
            records = [json.loads(ln) for ln in raw.splitlines() if ln.strip()]
        else:
            records = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FormatError(f"the calibration set is not valid JSON (line {exc.lineno}: {exc.msg})", path=path,
                          hint='Give a list of {"messages": [...]} (.json) or one per line (.jsonl).') from None
    if isinstance(records, dict) and "messages" in records:
        records = [records]
    if not isinstance(records, list) or not records:
        raise FormatError("the calibration set should be a non-empty list of conversations", path=path,
                          hint='Give a list of {"messages": [{"role": ..., "content": ...}]}.')
    for i, r in enumerate(records):
        msgs = r.get("messages") if isinstance(r, dict) else r if isinstance(r, list) else None
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise FormatError(f"conversation #{i + 1} has no \"messages\" list of {{role, content}}", path=path)
    return records


def render_chat(records: Sequence[Any], tokenizer) -> str:
    """The conversations rendered through the model's chat template, one after the other."""
    out = []
    for r in records:
        msgs = r["messages"] if isinstance(r, dict) else r
        out.append(tokenizer.apply_chat_template(msgs, add_generation_prompt=False))
    return "".join(out)


# -- the computation ---------------------------------------------------------------------------------------

class _NameView:
    """The engine seen with the weights' names (``DecoderEngine._names`` reads ``_w`` for membership only)."""

    def __init__(self, engine, names: set[str]):
        self._e, self._w = engine, names

    def __getattr__(self, attr):
        return getattr(self._e, attr)


def _gguf_namer(model: Model, arch: str, n_layer: int) -> Callable[[str], str]:
    if model.format == "gguf":
        from ..convert import gguf_to_hf

        inv = {hf: g for g, hf in gguf_to_hf.hf_names(model).items() if hf}
        return lambda n: inv.get(n, n)
    from ..archs import to_gguf_name

    return lambda n: to_gguf_name(n, arch, n_layer)


def role_names(engine, weight_names: set[str], to_gguf: Callable[[str], str], layer: int, role: str) -> list[str]:
    """GGUF names of the weights multiplied with the input of (layer, role)."""
    if role == "out":
        return [] if engine.tied else [to_gguf(engine._head_name)]  # llama-imatrix: output.weight only
    if role.startswith("experts_"):
        kinds = ("gate", "up") if role == "experts_gate_up" else ("down",)
        return [f"blk.{layer}.ffn_{k}_exps.weight" for k in kinds]
    names = type(engine)._names(_NameView(engine, weight_names), layer)
    return [to_gguf(n) for n in names[role]]


def check_decoder(model: Model) -> None:
    """Refuse, from the metadata alone, a model the imatrix cannot be computed for (encoders, t5)."""
    from ..infer.weights import model_arch

    arch = model_arch(model)
    if arch in ("bert", "t5"):
        raise UnsupportedError(f"this {arch} model is not a decoder: an importance matrix is computed for decoder "
                               "models (llama, qwen, gemma, phi3...)", path=model.path)


def compute_imatrix(model: Model | str | Path, text: str, n_ctx: int = 512, chunks: int | None = None,
                    cancel: Callable[[], bool] | None = None, *, process_output: bool = False,
                    parse_special: bool = False, dataset: str = "", numerics: str = "exact",
                    memory_budget: int | None = None) -> Generator[Progress, None, Imatrix]:
    """The importance matrix of ``model`` over ``text`` (a job generator; see the module docstring).

    ``chunks``: at most this many chunks of ``n_ctx`` tokens (default: all that fit); ``process_output``:
    also the output head (``output.weight``, as ``llama-imatrix --process-output``); ``dataset``: the name
    recorded in ``imatrix.datasets`` (default "text"); ``memory_budget``: keep the weights in their stored bytes and at most
    this many bytes of prepared layers (see :func:`~workbench.infer.engines.load_engine`)."""
    from ..infer import metrics as M
    from ..infer.engines import engine_for
    from ..infer.tokenizer import load_tokenizer
    from ..infer.weights import load_weights

    if not isinstance(model, Model):
        from ..formats import open_model

        model = open_model(model)
    check_decoder(model)
    n_ctx = int(n_ctx)
    if n_ctx < MIN_CTX:
        raise WorkbenchError(f"the context of {n_ctx} tokens is too small: use at least {MIN_CTX}",
                             hint="llama-imatrix ignores products of fewer than 16 tokens; use --ctx 512.")
    if chunks is not None and chunks < 1:
        raise WorkbenchError(f"{chunks} chunks: compute over at least 1")
    tok = load_tokenizer(model)
    ids = tok.encode(text, parse_special=parse_special)
    if len(ids) < n_ctx:
        raise WorkbenchError(f"the calibration text is too short: {len(ids)} tokens, one chunk needs {n_ctx}",
                             hint="Use a longer text or a smaller --ctx.")
    add_bos = tok.bos_id is not None and ids[0] == tok.bos_id
    windows = M.windows(ids, n_ctx, tok.bos_id if add_bos else None)
    if chunks:
        windows = windows[:chunks]
    weights = yield from load_weights(model, cancel=cancel, keep_quantized=memory_budget is not None)
    names = set(weights.tensors)
    arch, n_layer = weights.arch, int(weights.config.get("num_hidden_layers") or 0)
    options: dict[str, Any] = {"numerics": numerics}
    if memory_budget is not None:
        options["memory_budget"] = int(memory_budget)
    engine = engine_for(weights, consume=True, **options)
    del weights
    if not hasattr(type(engine), "observer"):
        raise UnsupportedError(f"an importance matrix is computed for decoder models; this one is {arch}",
                               path=model.path)
    to_gguf = _gguf_namer(model, arch, n_layer)
    sums: dict[tuple[int, str], np.ndarray] = {}  # (layer, role) -> float64 [n_mat, cols]
    counts: dict[tuple[int, str], np.ndarray] = {}  # int64 [n_mat]

    def observe(layer: int, role: str, x: np.ndarray, expert: int | None = None) -> None:
        if role == "out" and not process_output:
            return
        key = (layer, role)
        acc = sums.get(key)
        if acc is None:
            n_mat = engine.n_experts if expert is not None else 1
            acc = sums[key] = np.zeros((n_mat, x.shape[-1]), np.float64)
            counts[key] = np.zeros(n_mat, np.int64)
        m = 0 if expert is None else expert
        acc[m] += np.einsum("ti,ti->i", x, x, dtype=np.float64)
        counts[key][m] += x.shape[0]

    total = len(windows)
    engine.observer = observe
    try:
        for c, w in enumerate(windows):
            if cancel is not None and cancel():
                raise Cancelled("computing the importance matrix was cancelled")
            yield Progress(c, total, f"Chunk {c + 1}/{total} ({n_ctx} tokens)")
            if process_output:
                for _ in engine.iter_score(w, chunk=n_ctx):  # the output head over every position
                    pass
            else:
                engine.start(w)
    finally:
        engine.observer = None
    yield Progress(total, total, "Importance matrix computed")
    entries: dict[str, ImatrixEntry] = {}
    for key in sorted(sums):
        for g in role_names(engine, names, to_gguf, *key):
            entries[g] = ImatrixEntry(sums[key].astype(np.float32), counts[key].copy())
    # a dataset name always (gguf-py cannot write an empty array, and readers need the key)
    return Imatrix(entries, chunk_count=total, chunk_size=n_ctx, datasets=[dataset or "text"])


@dataclass
class Calibration:
    """The text an importance matrix is computed on: ``train`` (the part used), ``held_out`` (kept apart: a
    text, or the conversations for a chat set), and what they are made of."""

    train: str
    held_out: Any
    n_train: int
    n_held_out: int
    unit: str  # "paragraphs" | "conversations"
    chat: bool
    label: str  # the dataset name recorded in the file

    def describe(self) -> str:
        return (f"computed on the train part of {self.label}: {self.n_train} {self.unit}, {self.n_held_out} "
                f"held out (never used)")


def load_calibration(path: str | Path | None, tokenizer, *, held_out: float = 0.2, seed: int = 0) -> Calibration:
    """The calibration text of ``path`` (None: the bundled text; a .json / .jsonl chat set is rendered through
    the model's chat template) split by :func:`split_calibration`."""
    if path is None:
        from ..infer.compare import default_calibration_text

        text, records, label = default_calibration_text(), None, "calibration.txt (bundled)"
    else:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WorkbenchError("the calibration file does not exist", path=path)
        records = read_chat_records(path)
        label = str(path)
        if records is None:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise WorkbenchError(f"cannot read the calibration text: {exc.strerror or exc}", path=path) from None
    if records is not None:
        train, held = split_calibration(records, held_out, seed)
        return Calibration(render_chat(train, tokenizer), held, len(train), len(held), "conversations", True, label)
    n_all = len(_paragraphs(text))
    train, held = split_calibration(text, held_out, seed)
    n_held = _n_held_out(n_all, held_out)
    return Calibration(train, held, n_all - n_held, n_held, "paragraphs", False, label)
