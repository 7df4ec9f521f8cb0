"""Models already in the user's Hugging Face cache, ready to open.

The hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) keeps each
repository as ``models--<org>--<name>/snapshots/<revision>/`` whose files are symlinks into ``blobs/``.
A snapshot is listed when it holds ``config.json`` or ``*.safetensors`` (opened as a folder); each GGUF
in it is listed on its own (a split set once, by its first part), since one repository often holds
several quantizations.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import Cancelled
from .progress import Job, Progress

_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class CachedModel:
    """One openable model in the hub cache.  ``path`` is a snapshot folder or a ``.gguf`` file."""

    repo_id: str        # "org/name"
    revision: str       # the snapshot's commit hash
    path: Path
    kind: str           # "folder" or "gguf"
    size: int           # bytes of the files it opens (the blobs the snapshot links to)
    mtime: float        # newest file time: the most recently downloaded sort first

    @property
    def label(self) -> str:
        return self.repo_id if self.kind == "folder" else f"{self.repo_id} · {self.path.name}"


def hub_cache_dir(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def repo_id_from_dir(name: str) -> str | None:
    """``models--org--name`` -> ``org/name`` (``models--name`` -> ``name``); other folders -> None."""
    if not name.startswith("models--"):
        return None
    parts = name[len("models--"):].split("--")
    return "/".join(parts) if all(parts) else None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()  # follows the snapshot's symlink to the blob
    except OSError:  # a dangling link (blob deleted) or no permission
        return None


def _ref_revision(repo: Path) -> str | None:
    try:
        return (repo / "refs" / "main").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def scan_snapshot(repo_id: str, snapshot: Path) -> list[CachedModel]:
    """The openable models of one snapshot folder (none when it holds no model files)."""
    files: list[tuple[Path, os.stat_result]] = []
    for dirpath, _dirs, names in os.walk(snapshot):
        for n in names:
            p = Path(dirpath) / n
            st = _stat(p)
            if st is not None:
                files.append((p, st))
    names = {p.relative_to(snapshot).as_posix() for p, _ in files}
    out: list[CachedModel] = []
    rev = snapshot.name
    top_level = [(p, st) for p, st in files if p.parent == snapshot]
    if "config.json" in names or any(p.suffix == ".safetensors" for p, _ in top_level):
        weights = [(p, st) for p, st in files if p.suffix != ".gguf"]
        out.append(CachedModel(repo_id, rev, snapshot, "folder", sum(st.st_size for _, st in weights),
                               max((st.st_mtime for _, st in weights), default=0.0)))
    ggufs = sorted((p, st) for p, st in files if p.suffix.lower() == ".gguf")
    for p, st in ggufs:
        m = _SPLIT_PART.search(p.name)
        if m and int(m.group(1)) != 1:
            continue  # listed by its first part, which opens the whole set
        size, mtime = st.st_size, st.st_mtime
        if m:
            stem = p.name[:m.start()]
            parts = [(q, s) for q, s in ggufs if q.parent == p.parent and q.name.startswith(stem + "-")
                     and _SPLIT_PART.search(q.name)]
            size = sum(s.st_size for _, s in parts)
            mtime = max(s.st_mtime for _, s in parts)
        out.append(CachedModel(repo_id, rev, p, "gguf", size, mtime))
    return out


def scan_hub_cache(cache: str | os.PathLike | None = None, all_revisions: bool = False,
                   cancel: Callable[[], bool] | None = None) -> Job[list[CachedModel]]:
    """Job: every openable model in the hub cache, most recently downloaded first.

    Per repository only the snapshot ``refs/main`` points at is listed (else the newest), unless
    ``all_revisions``.  A missing cache gives an empty list; unreadable entries are skipped."""
    root = Path(cache) if cache is not None else hub_cache_dir()
    try:
        repos_paths = sorted((repo_id_from_dir(e.name), Path(e.path)) for e in os.scandir(root)
                             if repo_id_from_dir(e.name) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    found: list[CachedModel] = []
    for i, (repo_id, repo) in enumerate(repos_paths):
        if cancel is not None and cancel():
            raise Cancelled("scanning the Hugging Face cache was cancelled")
        yield Progress(i, len(repos_paths), f"Hugging Face cache: {repo_id}")
        try:
            snapshots = [Path(e.path) for e in os.scandir(repo / "snapshots") if e.is_dir()]
        except OSError:
            continue
        per_snapshot = [m for s in snapshots for m in [scan_snapshot(repo_id, s)] if m]
        if not per_snapshot:
            continue
        if not all_revisions:
            ref = _ref_revision(repo)
            chosen = [m for m in per_snapshot if m[0].revision == ref]
            per_snapshot = chosen or [max(per_snapshot, key=lambda ms: max(m.mtime for m in ms))]
        for models in per_snapshot:
            found.extend(models)
    yield Progress(len(repos_paths), len(repos_paths), "Hugging Face cache scanned")
    found.sort(key=lambda m: (-m.mtime, m.repo_id, str(m.path)))
    return found


def find_cached_folder(repo_id: str, cache: str | os.PathLike | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` ("org/name") in the hub cache when it holds a model folder (the one
    ``refs/main`` names, else the newest), or None.  Looks at that repository only."""
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id) or ".." in repo_id:
        return None
    repo = (Path(cache) if cache is not None else hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    try:
        snapshots = [Path(e.path) for e in os.scandir(repo / "snapshots") if e.is_dir()]
    except OSError:
        return None
    ref = _ref_revision(repo)
    snapshots.sort(key=lambda s: (s.name != ref, -(_stat(s).st_mtime if _stat(s) else 0.0)))
    for snap in snapshots:
        if any(m.kind == "folder" for m in scan_snapshot(repo_id, snap)):
            return snap
    return None
