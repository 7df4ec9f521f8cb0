"""The interface every inference engine offers, so generation and comparison work on any architecture.

Engines hold float32 weights (dequantized once, optionally after a quantize/dequantize round trip through a
:class:`~workbench.plan.Plan`) under Hugging Face tensor names, and the model's config as a config.json dict.

* Decoder-only models (every architecture of :mod:`workbench.infer.specs`: llama, mistral, qwen2, qwen3,
  qwen3moe, gemma2, gemma3, phi3): :meth:`Engine.start` runs the prompt and returns the logits of the next
  token; :meth:`Engine.step` appends one token and returns the next logits; :meth:`Engine.score` returns the
  logits of every position of a sequence in one pass (for perplexity / KL divergence).
* Encoder-decoder models (t5): ``start(prompt_ids)`` encodes the prompt and feeds the decoder start token;
  ``step`` appends a decoder token; ``score(ids, decoder_ids)`` is the teacher-forced decoder logits.
* Encoders (bert): :meth:`Encoder.embed` returns one pooled, normalized sentence embedding per input.

``use_cache=False`` makes ``start``/``step`` recompute everything from the full sequence each step; cached
and uncached decoding must give the same tokens.

Optional extras an engine may offer (callers check with ``getattr``): ``max_positions`` (the longest sequence
it can hold; :func:`~workbench.infer.generate.generate` stops there), ``cache_nbytes()`` (bytes of its KV
cache), and ``iter_score(ids, chunk)`` (the logits of :meth:`Engine.score` as consecutive chunks of
positions, so long texts are scored in bounded memory).  Engines are built by
:func:`workbench.infer.engines.load_engine` from :class:`~workbench.infer.weights.Weights`.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    config: dict[str, Any]
    vocab_size: int
    is_encoder_decoder: bool

    def start(self, prompt_ids: Sequence[int], *, use_cache: bool = True) -> np.ndarray:
        """Reset the state, run the prompt; float32 logits [vocab] for the next token."""

    def step(self, token_id: int) -> np.ndarray:
        """Append ``token_id`` to the sequence; float32 logits [vocab] for the token after it."""

    def score(self, ids: Sequence[int], decoder_ids: Sequence[int] | None = None) -> np.ndarray:
        """Logits float32 [len, vocab] for every position (decoder positions for encoder-decoders)."""

    def nbytes(self) -> int:
        """Bytes of weights this engine holds in memory."""


@runtime_checkable
class Encoder(Protocol):
    config: dict[str, Any]

    def embed(self, batch_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [batch, hidden] sentence embeddings (mean pooling over tokens, L2-normalized)."""

    def nbytes(self) -> int:
        """Bytes of weights this engine holds in memory."""
