"""Faults lose nothing and leave nothing behind (issue 13 §2).

Outputs get the user's umask; a run killed with SIGKILL leaves an owner-tagged partial that the next write
into the folder removes (never a live run's); a read-only folder, a full disk or an output folder removed
mid-write give one ``error:`` line with the reason, exit 1, no partial and an untouched old target; a second
run writing the same target is refused as busy; the file and its folder are fsynced before and after the
rename.  Real mechanisms where possible: SIGKILLed subprocesses, a tiny tmpfs (full, and remounted
read-only) when ``mount`` works (root, as here and in CI), else RLIMIT_FSIZE or chmod.  Expected values are
hand-computed (modes from the umask) or read back with gguf-py.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest

from workbench import cli, fsutil
from workbench.convert.export import export_hf
from workbench.convert.gguf_stream import StreamTensor, new_writer, write_gguf_stream
from workbench.errors import WorkbenchError
from workbench.progress import run

ROWS, COLS = 64, 64


# -- helpers ------------------------------------------------------------------------------------------------
def tensors(n: int = 3) -> list[StreamTensor]:
    def make(i: int) -> StreamTensor:
        data = np.full((ROWS, COLS), float(i + 1), np.float32)

        def chunks():
            for r in range(0, ROWS, 16):
                yield data[r:r + 16], 16 * COLS

        return StreamTensor(f"t{i}", (ROWS, COLS), "F32", chunks)

    return [make(i) for i in range(n)]


def write_gguf(target: Path, *, split_max_tensors: int = 0, overwrite: bool = False):
    return write_gguf_stream(new_writer("llama", split_max_tensors=split_max_tensors), target, tensors(),
                             overwrite=overwrite)


def big_gguf(path: Path, nbytes: int = 1 << 20) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("Big")
    w.add_tensor("big.weight", np.arange(nbytes // 4, dtype=np.float32).reshape(-1, 256))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".lock")))


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` at ``folder`` (None when mounting is not possible here)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not can_mount() or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                                          str(folder)], capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# -- permissions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_files_and_folders_get_the_umask(tmp_path, hf_folder, mask):
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask  # what open()/mkdir() give: hand-computed
    with umask(mask):
        with fsutil.atomic_write_path(tmp_path / "plain.json") as tmp:
            tmp.write_text("{}")
        parts = run(write_gguf(tmp_path / "split" / "m.gguf", split_max_tensors=1))
        out = run(export_hf(hf_folder[0], tmp_path / "hf", dtype="F16"))
    assert mode(tmp_path / "plain.json") == file_mode
    assert len(parts) == 3 and [mode(p) for p in parts] == [file_mode] * 3
    assert mode(tmp_path / "split") == dir_mode
    assert mode(tmp_path / "hf") == dir_mode  # the renamed partial folder
    assert {p.name: mode(p) for p in out} == {p.name: file_mode for p in out}
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "split") == []


# -- fsync ----------------------------------------------------------------------------------------------------
@pytest.fixture
def fsyncs(monkeypatch):
    """Every os.fsync call as (device, inode, is a folder)."""
    seen: list[tuple[int, int, bool]] = []
    real = os.fsync

    def record(fd):
        st = os.fstat(fd)
        seen.append((st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode)))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def key(p: Path, is_dir: bool) -> tuple[int, int, bool]:
    st = p.stat()
    return st.st_dev, st.st_ino, is_dir


def test_the_written_file_and_its_folder_are_fsynced(tmp_path, fsyncs):
    target = tmp_path / "out.txt"
    with fsutil.atomic_write_path(target) as tmp:
        tmp.write_bytes(b"x" * 1000)
        assert key(tmp, False) not in fsyncs
    assert target.read_bytes() == b"x" * 1000
    assert key(target, False) in fsyncs  # the renamed file is the inode that was fsynced
    assert key(tmp_path, True) in fsyncs  # and the rename made durable
    assert fsyncs.index(key(target, False)) < fsyncs.index(key(tmp_path, True))


def test_a_gguf_set_and_an_exported_folder_are_fsynced(tmp_path, hf_folder, fsyncs):
    parts = run(write_gguf(tmp_path / "m.gguf", split_max_tensors=2))
    assert all(key(p, False) in fsyncs for p in parts)
    assert key(tmp_path, True) in fsyncs
    fsyncs.clear()
    out = run(export_hf(hf_folder[0], tmp_path / "hf", dtype="F32"))
    assert [p.name for p in out if key(p, False) not in fsyncs] == []  # side files (copied) too
    assert key(tmp_path / "hf", True) in fsyncs and key(tmp_path, True) in fsyncs


# -- failures keep the old target -----------------------------------------------------------------------------
def test_a_failed_overwrite_keeps_the_old_target_byte_identical(tmp_path):
    target = tmp_path / "m.gguf"
    run(write_gguf(target))
    before = target.read_bytes()

    def boom_after_a_tensor():
        job = write_gguf(target, overwrite=True)
        next(job)
        next(job)  # a chunk is written into the partial
        assert len(leftovers(tmp_path)) == 2  # the partial and the lock exist now
        job.throw(OSError(errno.EIO, "Input/output error"))

    with pytest.raises(WorkbenchError, match="Input/output error"):
        boom_after_a_tensor()
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]


def test_a_failed_folder_overwrite_keeps_the_old_folder(tmp_path, hf_folder, monkeypatch):
    from workbench.convert import export as export_mod

    out = tmp_path / "hf"
    run(export_hf(hf_folder[0], out, dtype="F32"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export_mod, "_commit", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(WorkbenchError, match="disk is full"):
        run(export_hf(hf_folder[0], out, dtype="F16", overwrite=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["hf"]


# -- killed runs: their partials are removed by the next write, a live run's never ----------------------------
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from pathlib import Path
    from workbench.convert.gguf_stream import StreamTensor, new_writer, write_gguf_stream
    from workbench.progress import run

    def block():
        print("ready", flush=True)
        sys.stdin.readline()  # written a tensor, holding the lock: wait until told (or killed)

    def chunks(i):
        data = np.full((64, 64), float(i + 1), np.float32)
        return lambda: iter([(data, data.size)])

    ts = [StreamTensor(f"t{i}", (64, 64), "F32", chunks(i), done=block if i == 0 else None) for i in range(2)]
    run(write_gguf_stream(new_writer("llama"), Path(sys.argv[1]), ts))
    print("done", flush=True)
""")


@pytest.fixture
def writer(tmp_path):
    """Start a real writer process on a target; it stops mid-write (lock held, partial on disk)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs: list[subprocess.Popen] = []

    def start(target: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, str(script), str(target)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_killed_run_leaves_a_partial_that_the_next_write_removes(tmp_path, writer):
    out = tmp_path / "out"
    out.mkdir()
    dead = writer(out / "dead.gguf")
    live = writer(out / "live.gguf")
    dead_files = leftovers(out)
    assert any(f".w{dead.pid}-" in n and n.startswith(".dead.gguf.") for n in dead_files)
    dead.send_signal(signal.SIGKILL)
    assert dead.wait() == -signal.SIGKILL
    assert leftovers(out) == dead_files  # SIGKILL: nothing cleaned up
    found = fsutil.dead_partials(out)
    assert sorted(x.path.name for x in found) == [n for n in dead_files if n.startswith(".dead.gguf.")]
    assert sum(x.nbytes for x in found) > 0

    with fsutil.atomic_write_path(out / "other.txt") as tmp:  # the next write into the folder
        tmp.write_text("x")
    names = leftovers(out)
    assert not any(n.startswith(".dead.gguf.") for n in names)  # the dead run's partial and lock are gone
    assert sum(n.startswith(".live.gguf.") for n in names) == 2  # the live run's are kept

    live.stdin.write("\n")
    live.stdin.flush()
    assert live.stdout.readline().strip() == "done" and live.wait() == 0
    r = gguf.GGUFReader(out / "live.gguf")  # the live run finished its file
    assert [float(t.data.reshape(-1)[0]) for t in r.tensors] == [1.0, 2.0]
    assert leftovers(out) == []


def test_owner_tags_tell_dead_runs_from_live_ones(tmp_path):
    tag = fsutil.owner_tag()  # this (live) process: w<pid>-<start>-<host><boot>
    pid, start, hb = tag[1:].split("-")
    host, boot = hb[:6], hb[6:]
    other_boot = format((int(boot, 16) + 1) % (1 << 24), "06x")
    other_host = format((int(host, 16) + 1) % (1 << 24), "06x")
    names = {
        "live": f".a.gguf.{tag}-000001.partial",
        "reused_pid": f".b.gguf.w{pid}-{int(start) + 1}-{host}{boot}-000002.partial",  # same pid, other start
        "rebooted": f".c.gguf.w{pid}-{start}-{host}{other_boot}-000003.partial",
        "other_host": f".d.gguf.w1-1-{other_host}{boot}-000004.partial",  # cannot be told: kept
        "legacy_old": ".e.gguf.abcd1234.partial",
        "legacy_new": ".f.gguf.abcd1234.partial",
        "not_ours": ".g.lock",  # a lock file without our tag
        "locked": f".h.gguf.w{pid}-{int(start) + 1}-{host}{boot}-000005.partial",  # dead tag, but its lock is held
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"12345")
    import fcntl

    held = open(tmp_path / ".h.gguf.lock", "w")  # as a writer in another pid namespace would hold it
    fcntl.flock(held, fcntl.LOCK_EX)
    old = (tmp_path / names["legacy_old"]).stat().st_mtime - 2 * fsutil.LEGACY_AGE
    os.utime(tmp_path / names["legacy_old"], (old, old))
    dead = sorted(x.path.name for x in fsutil.dead_partials(tmp_path))
    assert dead == sorted([names["reused_pid"], names["rebooted"], names["legacy_old"]])
    assert fsutil.remove_dead_partials(tmp_path) == (3, 15)
    held.close()
    assert sorted(os.listdir(tmp_path)) == sorted([".h.gguf.lock"] + [n for k, n in names.items() if k in (
        "live", "other_host", "legacy_new", "not_ours", "locked")])


# -- busy: a second run on the same target is refused -----------------------------------------------------------
def test_a_second_run_on_the_same_target_is_busy_until_the_first_ends(tmp_path, writer, capsys):
    src = big_gguf(tmp_path / "src.gguf", 1 << 14)
    target = tmp_path / "out" / "m.gguf"
    target.parent.mkdir()
    first = writer(target)
    argv = ["set-metadata", str(src), "-o", str(target), "--force", "general.name=second"]
    assert cli.main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "busy" in line and f"process {first.pid}" in line and str(target) in line
    assert len(line) < 300

    first.send_signal(signal.SIGKILL)  # a crash releases the lock by itself
    first.wait()
    assert cli.main(argv) == 0
    assert gguf.GGUFReader(target).fields["general.name"].contents() == "second"
    assert leftovers(target.parent) == []  # the killed run's partial and lock went with this write


def test_two_jobs_of_one_process_on_the_same_target(tmp_path):
    with fsutil.atomic_write_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("first")
        with pytest.raises(WorkbenchError, match="busy"):
            with fsutil.atomic_write_path(tmp_path / "x.txt"):
                pass
    assert (tmp_path / "x.txt").read_text() == "first" and leftovers(tmp_path) == []


def test_a_lock_held_for_a_moment_by_a_cleanup_is_waited_for(tmp_path, monkeypatch):
    import fcntl

    real, refused = fcntl.flock, []

    def briefly_held(fd, op):  # another run removing stale leftovers holds the lock for an instant
        if op & fcntl.LOCK_EX and len(refused) < 3:
            refused.append(fd)
            raise BlockingIOError(errno.EWOULDBLOCK, "busy")
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", briefly_held)
    with fsutil.atomic_write_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("x")
    assert len(refused) == 3 and (tmp_path / "x.txt").read_text() == "x" and leftovers(tmp_path) == []


# -- read-only, full, removed ---------------------------------------------------------------------------------
def test_disk_full_is_one_error_line_and_keeps_the_old_target(tmp_path, capsys):
    src = big_gguf(tmp_path / "src.gguf")  # 1 MiB of tensor data
    with tmpfs(tmp_path / "small", "256k") as fs:
        folder = tmp_path / "small"
        target = folder / "out.gguf"
        target.write_bytes(b"old target " * 100)
        before = target.read_bytes()
        argv = ["set-metadata", str(src), "-o", str(target), "--force", "general.name=x"]
        if fs is not None:
            assert cli.main(argv) == 1
            line = one_error_line(capsys.readouterr().err)
            assert "the disk is full" in line and "out.gguf" in line
        else:  # no mount here: a file-size limit gives the same kind of fault (EFBIG)
            import resource

            def limit():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

            r = subprocess.run([sys.executable, "-m", "workbench", *argv], preexec_fn=limit, capture_output=True,
                               text=True)
            assert r.returncode == 1
            assert "larger than this file system" in one_error_line(r.stderr)
        assert sorted(os.listdir(folder)) == ["out.gguf"]  # no partial, no lock
        assert target.read_bytes() == before


def test_a_read_only_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    src = big_gguf(tmp_path / "src.gguf", 1 << 14)
    with tmpfs(tmp_path / "ro", "1m") as fs:
        folder = tmp_path / "ro"
        target = folder / "out.gguf"
        target.write_bytes(b"old")
        if fs is not None:
            assert subprocess.run(["mount", "-o", "remount,ro", str(folder)]).returncode == 0
            reason = "read-only file system"
        elif os.geteuid() != 0:
            folder.chmod(0o555)
            reason = "no permission"
        else:  # root without mount: the kernel's answer, simulated where files are created
            real = os.open

            def ro_open(path, flags, *a, **kw):
                if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
                return real(path, flags, *a, **kw)

            monkeypatch.setattr(os, "open", ro_open)
            reason = "read-only file system"
        with pytest.raises(WorkbenchError, match=reason):
            fsutil.check_writable(folder)
        assert cli.main(["set-metadata", str(src), "-o", str(target), "--force", "general.name=x"]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert reason in line
        with pytest.raises(WorkbenchError, match=reason):  # the writer itself refuses before writing
            run(write_gguf(folder / "new.gguf"))
        assert sorted(os.listdir(folder)) == ["out.gguf"] and target.read_bytes() == b"old"
        folder.chmod(0o755) if fs is None and os.geteuid() != 0 else None


def test_the_output_folder_removed_mid_write(tmp_path):
    folder = tmp_path / "sub"
    job = write_gguf(folder / "m.gguf")
    next(job)
    next(job)  # writing tensor data now
    shutil.rmtree(folder)
    with pytest.raises(WorkbenchError, match="the output folder was removed while writing") as info:
        while True:
            next(job)
    assert "\n" not in str(info.value)
    assert not folder.exists()


def test_the_export_folder_removed_mid_write_via_the_cli(tmp_path, hf_folder, monkeypatch, capsys):
    from workbench.convert import export as export_mod

    parent = tmp_path / "exports"
    real = export_mod._write_stream
    calls = []

    def remove_then_write(f, *a, **kw):
        if not calls:
            shutil.rmtree(parent)  # someone removes the output's folder while the first tensor is written
        calls.append(1)
        return real(f, *a, **kw)

    monkeypatch.setattr(export_mod, "_write_stream", remove_then_write)
    assert cli.main(["export", str(hf_folder[0]), "-o", str(parent / "hf"), "--type", "F16"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "removed while writing" in line and calls
    assert not parent.exists()


def test_a_full_disk_is_refused_before_any_tensor_is_converted(tmp_path, hf_folder, monkeypatch):
    from workbench.convert import export as export_mod

    written = []
    real = export_mod._write_stream
    monkeypatch.setattr(export_mod, "_write_stream", lambda *a, **kw: (written.append(1), real(*a, **kw))[1])
    with tmpfs(tmp_path / "full", "64k") as fs:
        folder = tmp_path / "full"
        if fs is not None:
            with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
                while True:  # fill every block
                    f.write(b"\0" * 4096)
                    f.flush()
            size = (folder / "filler").stat().st_size
            os.truncate(folder / "filler", size - size % 4096 - 4096)  # one page free: the lock file takes it
        else:  # no mount here: the probe's write gets the kernel's answer, simulated
            (folder / "filler").write_bytes(b"")
            real_write = os.write
            monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
                                if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".write-probe.")
                                else real_write(fd, data))
        with pytest.raises(WorkbenchError, match="the disk is full"):
            run(export_hf(hf_folder[0], folder / "hf", dtype="F32"))
        assert written == []  # refused by the probe, before the first tensor
        assert sorted(os.listdir(folder)) == ["filler"]


def test_a_file_where_the_output_folder_should_be(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(WorkbenchError, match=r"cannot write x\.gguf: taken is a file, not a folder"):
        run(write_gguf(tmp_path / "taken" / "sub" / "x.gguf"))
    assert sorted(os.listdir(tmp_path)) == ["taken"]
