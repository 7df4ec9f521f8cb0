"""Safe output: write beside the target, fsync, rename; nothing left behind on failure.

Every output (file or folder) is written under a hidden *partial* name beside it,
``.NAME.w<pid>-<start>-<host><boot>-<random>.partial``, which names the process writing it: its pid, its
start time (so a reused pid is told apart), a hash of the host name and the boot id.  While it writes, the
run holds ``.NAME.lock`` (``flock``, released by the kernel when the process dies, even by ``kill -9``), so a
second run writing the same target is refused ("busy") instead of the last one winning.  Files get the
user's umask (0644 under umask 022).  A run that is killed cannot remove its partial; the next write into
the same folder removes the partials (and locks) of runs that are no longer alive (by the tag, and only if
the target's lock is not held), never those of a live one.  Operating-system errors while writing become a one-line :class:`WorkbenchError` with the reason
(disk full, read-only, no permission, folder removed).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import WorkbenchError

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
LEGACY_AGE = 3600.0  # seconds untouched after which a partial without an owner (older versions) is dead
_LOCK_TRIES = 20  # removing a stale lock holds it for an instant: retry this often, 25 ms apart, before "busy"
_OWNED = re.compile(r"^\.(?P<name>.+)\.w(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{6})(?P<boot>[0-9a-f]{6})"
                    r"-[0-9a-f]{6}\.partial$")
_LEGACY = re.compile(r"^\..+\.partial$")
_LOCK = re.compile(r"^\..+\.lock$")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows (untested): no flock, so no busy check
    fcntl = None  # type: ignore[assignment]


# -- who is writing --------------------------------------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks after boot, Linux), "0" where unknown, None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None
    except OSError:
        return "0"
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    if fields and fields[0] in ("Z", "X"):
        return None  # a zombie writes nothing more
    return fields[19] if len(fields) > 19 else "0"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip().replace("-", "")[:6].lower().ljust(6, "0")
    except OSError:
        return "000000"


_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_BOOT = _boot_id()
_HAS_PROC = os.path.exists(f"/proc/{os.getpid()}/stat")


def owner_tag() -> str:
    """This process as written into partial names: ``w<pid>-<start>-<host><boot>``."""
    pid = os.getpid()
    start = (_proc_start(pid) or "0") if _HAS_PROC else "0"
    return f"w{pid}-{start}-{_HOST}{_BOOT}"


def partial_name(target_name: str) -> str:
    return f".{target_name}.{owner_tag()}-{secrets.token_hex(3)}{PARTIAL_SUFFIX}"


def _alive(pid: int, start: str, host: str, boot: str) -> bool:
    """Whether the run that named a partial may still be writing it (when in doubt: yes)."""
    if host != _HOST:
        return True  # another machine on a shared folder: we cannot tell
    if boot != "000000" and _BOOT != "000000" and boot != _BOOT:
        return False  # written before this machine last started
    if _HAS_PROC:
        now = _proc_start(pid)
        return now is not None and (start == "0" or now == "0" or now == start)
    if os.name != "posix":
        return True  # pragma: no cover - no safe liveness test without /proc or signals
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# -- leftovers of dead runs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leftover:
    path: Path
    nbytes: int


def _size(p: Path) -> int:
    try:
        if p.is_dir() and not p.is_symlink():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        return p.lstat().st_size
    except OSError:
        return 0


def _newest_mtime(p: Path) -> float:
    t = p.lstat().st_mtime
    if p.is_dir() and not p.is_symlink():
        with contextlib.suppress(OSError):
            for c in p.iterdir():
                t = max(t, c.lstat().st_mtime)
    return t


def _lock_owner_dead(p: Path) -> bool:
    """A lock file is stale when the run named in it is gone (it is never flock-tested here: a scan must not
    make a starting writer see "busy")."""
    try:
        with open(p, encoding="ascii", errors="replace") as f:
            tag = f.read(64).strip()
    except OSError:
        return False
    m = re.fullmatch(r"w(\d+)-(\d+)-([0-9a-f]{6})([0-9a-f]{6})", tag)
    if m is None:  # another program's file (or a crash before the tag was written): never ours to remove
        return False
    return not _alive(int(m[1]), m[2], m[3], m[4])


def _lock_held(lock: Path) -> bool:
    """Whether some process holds ``lock`` (a shared lock is tried and released at once)."""
    if fcntl is None:
        return False  # pragma: no cover
    if str(lock) in _ours:
        return False  # held by this process for a new write of that target: says nothing of the partial's run
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def dead_partials(folder) -> list[Leftover]:
    """The partial outputs (and their lock files) that runs no longer alive left in ``folder``."""
    folder = Path(folder)
    found: list[Leftover] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now = time.time()
    for e in entries:
        p = Path(e.path)
        try:
            if e.name.endswith(PARTIAL_SUFFIX):
                m = _OWNED.match(e.name)
                if m is not None:  # the tag, then the kernel's word: a held lock means a live run (e.g. in
                    # another container with the same host name, whose pids we cannot see)
                    dead = not _alive(int(m["pid"]), m["start"], m["host"], m["boot"]) \
                        and not _lock_held(folder / f".{m['name']}{LOCK_SUFFIX}")
                else:
                    dead = bool(_LEGACY.match(e.name)) and now - _newest_mtime(p) > LEGACY_AGE
            elif _LOCK.match(e.name) and e.is_file(follow_symlinks=False):
                dead = _lock_owner_dead(p)
            else:
                continue
        except OSError:
            continue
        if dead:
            found.append(Leftover(p, _size(p)))
    return sorted(found, key=lambda x: x.path.name)


def remove_leftovers(leftovers) -> tuple[int, int]:
    """Remove what :func:`dead_partials` found; return (entries removed, bytes freed)."""
    n = freed = 0
    for left in leftovers:
        p = left.path if isinstance(left, Leftover) else Path(left)
        size = left.nbytes if isinstance(left, Leftover) else _size(p)
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.name.endswith(LOCK_SUFFIX):
                if not _remove_stale_lock(p):
                    continue
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            continue
        n += 1
        freed += size
    return n, freed


def remove_dead_partials(folder) -> tuple[int, int]:
    """Remove the leftovers of dead runs in ``folder``; (entries, bytes)."""
    return remove_leftovers(dead_partials(folder))


def _remove_stale_lock(p: Path) -> bool:
    """Unlink a stale lock file only while holding it, and only if the path still is that file."""
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # someone holds it: not stale after all
        st = os.fstat(fd)
        try:
            cur = os.stat(p)
        except FileNotFoundError:
            return False
        if (cur.st_ino, cur.st_dev) != (st.st_ino, st.st_dev):
            return False
        os.unlink(p)
        return True
    finally:
        os.close(fd)


# -- errors ----------------------------------------------------------------------------------------------
_REASONS = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EROFS: "the folder is on a read-only file system; choose another folder",
    errno.EACCES: "no permission to write in the folder; choose another folder",
    errno.EPERM: "no permission to write in the folder; choose another folder",
    errno.EFBIG: "the file is larger than this file system (or the file-size limit) allows",
}
if hasattr(errno, "EDQUOT"):
    _REASONS[errno.EDQUOT] = "the disk quota is exhausted; free some space or choose another folder"


def write_error(exc: OSError, target) -> WorkbenchError:
    """A one-line WorkbenchError for an OSError raised while writing ``target``."""
    target = Path(target)
    if isinstance(exc, WorkbenchError):  # pragma: no cover - defensive
        return exc
    fname = getattr(exc, "filename", None)
    fpath = Path(os.fsdecode(fname)) if isinstance(fname, (str, bytes, os.PathLike)) else None
    if fpath is not None and fpath.parent != target.parent and fpath != target and fpath not in target.parents \
            and not any(part.endswith((PARTIAL_SUFFIX, LOCK_SUFFIX)) for part in fpath.parts):
        # not one of ours (e.g. a source file vanished while it was read)
        return WorkbenchError(f"cannot read this file while writing {target.name}: {exc.strerror or exc}",
                              path=os.fsdecode(fname))
    code = exc.errno
    if code is None and re.search(r"requested and \d+ written", str(exc)):  # numpy's tofile: no errno
        code = errno.ENOSPC if _nearly_full(target.parent) else errno.EFBIG if _size_limited() else None
    if code == errno.ENOENT and not target.parent.exists():
        reason = "the output folder was removed while writing"
    elif code in (errno.EEXIST, errno.ENOTDIR) and fpath is not None and fpath in target.parents:
        blocker = next((p for p in reversed(target.parents) if p.exists() and not p.is_dir()), fpath)
        reason = f"{blocker.name} is a file, not a folder; choose another folder"
    else:
        reason = _REASONS.get(code, exc.strerror or str(exc))
    return WorkbenchError(f"cannot write {target.name}: {reason}", path=target.parent)


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < (1 << 16)


def _size_limited() -> bool:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def os_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except WorkbenchError:
        raise
    except OSError as exc:
        raise write_error(exc, target) from None


def check_writable(folder) -> None:
    """Refuse a folder that cannot take a new file, with the reason, before any long work: a real probe file
    is created, written (one byte, fsynced) and removed."""
    folder = Path(folder)
    probe = folder / partial_name("write-probe")
    with os_errors(probe):
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)


# -- the lock --------------------------------------------------------------------------------------------
def lock_path(target) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def target_lock(target) -> Iterator[Path]:
    """Hold ``.NAME.lock`` beside ``target`` for the block; refuse if another run (any process, or another
    job of this one) holds it.  The lock file holds the owner's tag and is removed on release."""
    target = Path(target)
    path = lock_path(target)
    with os_errors(target):
        fd = _acquire(path, target)
    _ours.add(str(path))
    try:
        yield path
    finally:
        _ours.discard(str(path))
        with contextlib.suppress(OSError):
            st, cur = os.fstat(fd), os.stat(path)
            if (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(path)  # while still holding it: a waiting run re-checks the inode and retries
        os.close(fd)


_ours: set[str] = set()  # the lock files this process holds


def _acquire(path: Path, target: Path) -> int:
    busy_tries = 0
    for _ in range(_LOCK_TRIES * 5):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            st = os.fstat(fd)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    busy_tries += 1
                    if busy_tries >= _LOCK_TRIES:
                        raise _busy(path, target) from None
                    time.sleep(0.025)  # a scan may hold it for a moment
                    continue
            try:
                cur = os.stat(path)
            except FileNotFoundError:
                cur = None
            if cur is None or (cur.st_ino, cur.st_dev) != (st.st_ino, st.st_dev):
                continue  # the holder removed it as we opened it: take the new one
            try:
                os.ftruncate(fd, 0)
                os.write(fd, owner_tag().encode("ascii"))
            except OSError:  # a full disk: leave no empty lock file behind (we hold it, it is ours)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            fd, held = -1, fd
            return held
        finally:
            if fd >= 0:
                os.close(fd)
    raise _busy(path, target)  # pragma: no cover - the lock kept changing under us


def _busy(path: Path, target: Path) -> WorkbenchError:
    who = ""
    with contextlib.suppress(OSError):
        m = re.fullmatch(r"w(\d+)-.*", path.read_text("ascii", "replace").strip())
        if m is not None:
            who = f" (process {m[1]})"
    return WorkbenchError(f"the output is busy: another run is writing it{who}; wait for it to finish or "
                          "choose another name", path=target)


# -- the writers' context managers ------------------------------------------------------------------------
_FSYNC_FLAGS = os.O_RDWR if os.name == "nt" else os.O_RDONLY  # Windows commits only files open for writing


def fsync_dir(folder) -> None:
    """fsync a folder (its entries: a rename into it becomes durable)."""
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _new_partial_file(target: Path) -> Path:
    while True:
        tmp = target.parent / partial_name(target.name)
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # 0o666 & ~umask, not mkstemp's 0600
        except FileExistsError:  # pragma: no cover - 24 random bits
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_write_path(path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success fsync it and rename it to ``path``.

    The target is locked for the block (a second writer is refused as busy), leftovers of dead runs in the
    folder are removed first, and an OSError becomes a one-line WorkbenchError.  On any exception (including
    cancel) the temporary file is removed and an existing ``path`` is untouched.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise WorkbenchError("the output already exists", path=target, hint="Choose another name or allow overwriting.")
    with os_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(target):
        remove_dead_partials(target.parent)
        with os_errors(target):
            tmp = _new_partial_file(target)
        try:
            with os_errors(target):
                yield tmp
                fd = os.open(tmp, _FSYNC_FLAGS)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(target.parent)  # make the rename durable too


@contextlib.contextmanager
def partial_dir(out_dir) -> Iterator[Path]:
    """A new folder beside ``out_dir`` (hidden, owner-tagged, with the umask's permissions) to write a folder
    output into; the caller renames its content into place.  Like :func:`atomic_write_path`: ``out_dir`` is
    locked, leftovers of dead runs are removed, the folder is probed for writing, OSErrors become one-line
    WorkbenchErrors, and on any exception the partial folder is removed."""
    out_dir = Path(out_dir)
    with os_errors(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(out_dir):
        remove_dead_partials(out_dir.parent)
        with os_errors(out_dir):
            while True:
                tmp = out_dir.parent / partial_name(out_dir.name)
                try:
                    os.mkdir(tmp)  # 0o777 & ~umask (mkdtemp's 0700 would stay on the renamed output)
                    break
                except FileExistsError:  # pragma: no cover
                    continue
        try:
            with os_errors(out_dir):
                check_writable(tmp)
                yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # emptied by the caller's renames (or whatever it left)


def fsync_tree(folder) -> None:
    """fsync every file in ``folder`` (recursively) and the folders themselves."""
    folder = Path(folder)
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), _FSYNC_FLAGS)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)
