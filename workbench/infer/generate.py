"""Text generation as a generator of tokens, on any :class:`~workbench.infer.base.Engine`.

    for tok in generate(engine, tokenizer, "The capital of France is", max_tokens=16, chat=False):
        print(tok.text, end="", flush=True)

The prompt goes through the model's chat template when it has one (``chat=True``), generation stops at
an end-of-generation token (the tokenizer's EOS/EOT ids, the config's ``eos_token_id``, ``stop_ids``) or
after ``max_tokens``; the generator's return value says which (``"eos"``, ``"length"``, ``"context"``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator, Iterable, Sequence

import numpy as np

from ..errors import WorkbenchError
from .sampling import check_params, log_softmax, sample


@dataclass(frozen=True)
class Token:
    """One generated token: its id, the text that became final with it ('' while a multi-byte character is
    incomplete; the pieces joined are the decoded text) and its log-probability under the model (before
    temperature and filtering)."""

    id: int
    text: str
    logprob: float


def _eos_ids(engine: Any, tokenizer: Any, stop_ids: Iterable[int] | None) -> set[int]:
    ids = {int(i) for i in (getattr(tokenizer, "eos_ids", None) or ())}
    eos = getattr(engine, "config", {}).get("eos_token_id")
    for i in (eos if isinstance(eos, list) else [eos]):
        if isinstance(i, int):
            ids.add(i)
    ids.update(int(i) for i in (stop_ids or ()))
    return ids


def prompt_ids(tokenizer: Any, prompt: str | Sequence[int], chat: bool = True) -> list[int]:
    """Token ids of the prompt: as given (ids), or the text through the chat template when ``chat`` and the
    model has one (then tokenized without adding specials: the template writes them), else tokenized as is."""
    if not isinstance(prompt, str):
        return [int(i) for i in prompt]
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special=False))
    return list(tokenizer.encode(prompt))


def generate(engine: Any, tokenizer: Any, prompt: str | Sequence[int], *, max_tokens: int = 128,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             chat: bool = True, use_cache: bool = True,
             stop_ids: Iterable[int] | None = None) -> Generator[Token, None, str]:
    """Yield generated tokens one by one; return why generation stopped ("eos", "length" or "context").

    ``temperature`` 0 is greedy; otherwise tokens are drawn (after ``top_k`` / ``top_p`` filtering) with a
    generator seeded by ``seed``.  ``use_cache=False`` recomputes the whole sequence every step (same
    tokens, slower; a check of the KV cache).
    """
    from .tokenizer import IncrementalDecoder

    check_params(temperature, top_k, top_p)
    if max_tokens < 0:
        raise WorkbenchError(f"max_tokens must not be negative, not {max_tokens}")
    ids = prompt_ids(tokenizer, prompt, chat)
    if not ids:
        raise WorkbenchError("the prompt is empty: there is nothing to continue")
    if max_tokens == 0:
        return "length"
    stops = _eos_ids(engine, tokenizer, stop_ids)
    rng = np.random.default_rng(seed)
    limit = getattr(engine, "max_positions", None)
    decoder = IncrementalDecoder(tokenizer, context=ids)  # the prompt as context: '▁Paris' reads ' Paris'
    logits = engine.start(ids, use_cache=use_cache)
    n = len(ids)
    for i in range(max_tokens):
        tid = sample(logits, rng, temperature, top_k, top_p)
        if tid in stops:
            return "eos"
        logprob = float(log_softmax(logits)[tid])
        text = decoder.push(tid)
        last = i == max_tokens - 1 or (limit is not None and n + 1 >= limit)  # prompt + output fill the context
        if last:
            text += decoder.flush()
        yield Token(tid, text, logprob)
        if last:
            return "length" if i == max_tokens - 1 else "context"
        logits = engine.step(tid)
        n += 1
    return "length"  # pragma: no cover - the loop returns on its last token


def generate_text(engine: Any, tokenizer: Any, prompt: str | Sequence[int], **kw) -> str:
    """The whole generated text (a convenience over :func:`generate`)."""
    return "".join(t.text for t in generate(engine, tokenizer, prompt, **kw))


def detect_repetition(ids: Sequence[int], max_period: int = 32, min_length: int = 12) -> bool:
    """Whether the sequence ends in a loop: its last ``max(3 * p, min_length)`` tokens repeat with some period
    p <= ``max_period`` (one token 12 times, a pair 6 times, a 10-token phrase 3 times...)."""
    a = np.asarray(ids, dtype=np.int64)
    for p in range(1, max_period + 1):
        span = max(3 * p, min_length)
        if a.shape[0] < span:
            break
        tail = a[-span:]
        if np.array_equal(tail[p:], tail[:-p]):
            return True
    return False
