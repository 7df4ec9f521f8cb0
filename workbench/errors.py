"""The one exception family of Model Workbench.

Every message names the file or tensor, says what is wrong and, where possible, what to do.
The GUI shows ``str(err)`` in a dialog; the CLI prints it and exits non-zero.
"""
from __future__ import annotations

import os


class WorkbenchError(Exception):
    """Base class: a problem the user can act on."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, hint: str | None = None):
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f"\n{self.hint}"
        return text


class FormatError(WorkbenchError):
    """The file is damaged, truncated or not what its name says."""


class UnsupportedError(WorkbenchError):
    """The file is valid but uses something Model Workbench does not support."""


class MissingFileError(WorkbenchError):
    """A file the model needs (a shard, a config) is not there."""


class UnsafeFileError(WorkbenchError):
    """The file asks to run code (a pickle referencing a callable we do not allow)."""


class Cancelled(WorkbenchError):
    """The user cancelled the operation."""

    def __init__(self, message: str = "cancelled", **kw):
        super().__init__(message, **kw)
