"""Model Workbench core: open, inspect, quantize and convert language-model weights.

Pure Python + numpy; never imports Qt.
"""
from .errors import (Cancelled, FormatError, MissingFileError, UnsafeFileError, UnsupportedError,
                     WorkbenchError)
from .formats import iter_open_model, open_model
from .model import MetaEntry, Model, Tensor, TensorInfo
from .progress import Progress

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "FormatError", "MetaEntry", "MissingFileError", "Model", "Progress", "Tensor", "TensorInfo",
    "UnsafeFileError", "UnsupportedError", "WorkbenchError", "iter_open_model", "open_model", "__version__",
]
