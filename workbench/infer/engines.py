"""Building an inference engine for a model: the one place that knows which engine runs which architecture.

:mod:`workbench.infer.weights` loads tensors and knows nothing of engines; the engines take
:class:`~workbench.infer.weights.Weights` and know nothing of files.  This module joins the two.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Generator

from ..errors import UnsupportedError
from ..model import Model
from ..plan import Plan
from ..progress import Progress
from .weights import Weights, load_weights


def load_engine(model: Model | str | Path, plan: Plan | str | None = None, *,
                cancel: Callable[[], bool] | None = None, **engine_options) -> Generator[Progress, None, Any]:
    """Load the weights and build the engine for the model's architecture (a job generator): a
    :class:`~workbench.infer.llama.LlamaEngine`, :class:`~workbench.infer.bert.BertEncoder` or
    ``workbench.infer.t5.T5Engine``."""
    weights = yield from load_weights(model, plan, cancel=cancel)
    yield Progress(1, 1, "Preparing the engine")
    return engine_for(weights, consume=True, **engine_options)


def engine_for(weights: Weights, *, consume: bool = False, **options) -> Any:
    """The engine class for ``weights.arch``, built on ``weights``.  ``consume``: the engine may take the
    tensors out of ``weights`` as it repacks them (the caller gives the weights up; peak memory stays ~1x).
    ``numerics="llama-cpu"`` (llama family only) computes as llama.cpp's CPU backend rounds
    (see :class:`~workbench.infer.llama.LlamaEngine`)."""
    if weights.arch in ("llama", "qwen2"):
        from .llama import LlamaEngine

        return LlamaEngine(weights, consume=consume, **options)
    numerics = options.pop("numerics", "exact")
    if numerics != "exact":
        raise UnsupportedError(f"the {weights.arch} engine computes exactly only (numerics {numerics!r} is for the "
                               "llama family)")
    if weights.arch == "bert":
        from .bert import BertEncoder

        return BertEncoder(weights, **options)
    if weights.arch == "t5":
        from .t5 import T5Engine

        return T5Engine(weights, **options)
    raise UnsupportedError(f"no engine for architecture {weights.arch!r}")
