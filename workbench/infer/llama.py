"""The llama family (llama, mistral, SmolLM2, qwen2) under its historical name.

Every decoder now runs on :class:`~workbench.infer.decoder.DecoderEngine`, driven by the architecture's
entry in :mod:`workbench.infer.specs`; :class:`LlamaEngine` is that engine (the spec chosen from the weights'
config), and the numeric helpers stay importable from here.
"""
from __future__ import annotations

from .decoder import (NUMERICS, DecoderEngine, _f32, _matmul, linear_weight, rms_norm, rope_inv_freq,  # noqa: F401
                      rope_parameters, silu_mul, softmax_)

__all__ = ["LlamaEngine", "NUMERICS", "linear_weight", "rms_norm", "rope_inv_freq", "rope_parameters", "silu_mul",
           "softmax_"]


class LlamaEngine(DecoderEngine):
    """:class:`~workbench.infer.decoder.DecoderEngine` (kept for existing callers)."""
