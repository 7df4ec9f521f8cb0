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
from .weights import StoredTensor, Weights, load_weights


def load_engine(model: Model | str | Path, plan: Plan | str | None = None, *,
                cancel: Callable[[], bool] | None = None, memory_budget: int | None = None, imatrix=None,
                **engine_options) -> Generator[Progress, None, Any]:
    """Load the weights and build the engine for the model's architecture (a job generator): a
    :class:`~workbench.infer.decoder.DecoderEngine` (every architecture of :mod:`~workbench.infer.specs`),
    :class:`~workbench.infer.bert.BertEncoder` or
    ``workbench.infer.t5.T5Engine``.  ``memory_budget`` (bytes): the weights stay in their level's bytes
    (``keep_quantized``) and an engine that takes a ``memory_budget`` keeps at most that many bytes of
    prepared float32 layers; None: every weight is loaded as float32 (as before).  ``imatrix``: the plan's
    types are quantized with these importance weights (see :func:`~workbench.infer.weights.load_weights`)."""
    weights = yield from load_weights(model, plan, cancel=cancel, keep_quantized=memory_budget is not None,
                                      imatrix=imatrix)
    yield Progress(1, 1, "Preparing the engine")
    if memory_budget is not None:
        engine_options["memory_budget"] = int(memory_budget)
    return engine_for(weights, consume=True, **engine_options)


def engine_for(weights: Weights, *, consume: bool = False, **options) -> Any:
    """The engine class for ``weights.arch``, built on ``weights``.  ``consume``: the engine may take the
    tensors out of ``weights`` as it repacks them (the caller gives the weights up; peak memory stays ~1x).
    ``numerics="llama-cpu"`` (decoders only) computes as llama.cpp's CPU backend rounds
    (see :class:`~workbench.infer.decoder.DecoderEngine`)."""
    budget = options.pop("memory_budget", None)
    from .specs import spec_for

    spec = spec_for(weights.config, weights.arch)
    if spec is not None:  # every decoder-only architecture: one engine driven by its spec
        from .decoder import DecoderEngine

        return DecoderEngine(weights, consume=consume, memory_budget=budget, spec=spec, **options)
    for name, a in list(weights.tensors.items()):  # bert and t5 hold float32 weights (small models)
        if isinstance(a, StoredTensor):
            weights.tensors[name] = a.to_float32()
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
