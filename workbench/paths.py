"""Where Model Workbench keeps its caches."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$WORKBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/model-workbench``, else ``~/.cache/model-workbench``."""
    env = os.environ.get("WORKBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "model-workbench"
