"""Safe output: write beside the target, fsync, rename; nothing left behind on failure."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import WorkbenchError


@contextlib.contextmanager
def atomic_write_path(path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success fsync it and rename it to ``path``.

    On any exception (including cancel) the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise WorkbenchError("the output already exists", path=target, hint="Choose another name or allow overwriting.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable too
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
