"""Vectorized numpy quantization kernels, byte-identical to ggml's reference quantizers.

    quantize(x, "Q4_K", imatrix=None) -> uint8 [rows, row_bytes]
    quantize_stream(blocks, "Q4_K", imatrix=None) -> iterator of uint8 [rows, row_bytes] (pipelined)
    submit(x, "Q4_K", imatrix=None) -> handle; handle.result() -> uint8 [rows, row_bytes] (in the background)
    dequantize(q, "Q4_K", n) -> float32 [rows, n]
"""
from . import legacy, plain  # noqa: F401  (register the types)
from .base import (CHUNK_ELEMENTS, Kernel, dequantize, get_kernel, in_processes, keep_interpreter_free, quantize,
                   quantize_stream, start_workers, submit)

try:  # types added by later modules register themselves on import
    from . import kquants  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from . import iquants  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from . import kquants_low  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def supported_types() -> list[str]:
    return list(Kernel.registry)


__all__ = ["CHUNK_ELEMENTS", "Kernel", "dequantize", "get_kernel", "in_processes", "keep_interpreter_free", "quantize",
           "quantize_stream", "start_workers",
           "submit", "supported_types"]
