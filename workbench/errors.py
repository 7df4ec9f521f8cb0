"""The one exception family of Model Workbench.

Every message names the file or tensor, says what is wrong and, where possible, what to do.
The GUI shows ``str(err)`` in a dialog; the CLI prints it and exits non-zero.  ``str(err)`` is always one
line of at most :data:`MAX_TEXT` characters (``path: message; hint``), whatever the file put into it: quote
values read from a file with :func:`quote` so they are cut short.
"""
from __future__ import annotations

import os
from typing import Any

MAX_TEXT = 290  # the CLI prefixes "error: " and stays under 300 characters


def quote(value: Any, limit: int = 40) -> str:
    """A short, one-line ``repr`` of a value read from a file (strings, numbers, containers, arrays), cut to
    about ``limit`` characters.  Never builds the full text of a big value."""
    try:
        if isinstance(value, (str, bytes, bytearray)):
            text = repr(value[:limit + 1])
        elif isinstance(value, bool) or value is None or isinstance(value, float):
            text = repr(value)
        elif isinstance(value, int):
            text = repr(value) if value.bit_length() <= 128 else f"<{value.bit_length()}-bit integer>"
        elif isinstance(value, (list, tuple)):
            parts = [quote(v, limit) for v in value[:4]]
            more = ", ..." if len(value) > 4 else ""
            text = f"[{', '.join(parts)}{more}]" if len(value) <= 4 else f"[{', '.join(parts)}{more}] ({len(value)} items)"
        elif isinstance(value, dict):
            keys = [quote(k, 20) for k in list(value)[:3]]
            text = "{" + ", ".join(f"{k}: ..." for k in keys) + (", ..." if len(value) > 3 else "") + "}"
        elif hasattr(value, "dtype") and hasattr(value, "size"):  # numpy arrays and scalars
            text = f"<{value.size} x {value.dtype}>" if getattr(value, "ndim", 0) else repr(value.item())
        else:
            text = f"<{type(value).__name__}>"
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the real error
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[:max(limit - 3, 1)] + "..."


def short(name: Any, limit: int = 60) -> str:
    """A name read from a file (tensor, key, shard) as plain text for a message, cut to ``limit`` characters."""
    text = name if isinstance(name, str) else quote(name, limit)
    if not text[:limit + 1].isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
            text += f"; {self.hint}"
        return one_line(text)


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
