"""kernels.quantize_stream and the worker processes: the same bytes as quantize(), whatever the route."""
from __future__ import annotations

import os

import numpy as np
import pytest

from workbench import kernels
from workbench.errors import WorkbenchError
from workbench.kernels import procpool

TYPES = ["Q8_0", "Q4_0", "Q4_K", "Q6_K", "IQ4_XS"]


def blocks_of(x: np.ndarray, rows: int):
    for a in range(0, x.shape[0], rows):
        yield x[a:a + rows]


def shm_names() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm")}
    except OSError:
        return set()


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_stream_equals_quantize_per_block(qtype, threads):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((48, 512), dtype=np.float32)
    x[5, :32] = 0.0  # an all-zero block
    want = kernels.quantize(x, qtype, threads=1)
    # process_min=0 sends every block of a GIL-bound type through the worker processes
    got = list(kernels.quantize_stream(blocks_of(x, 10), qtype, threads=threads, process_min=0))
    assert [g.shape[0] for g in got] == [10, 10, 10, 10, 8]
    assert np.array_equal(np.concatenate(got), want)


def test_stream_with_importance_matrix_in_processes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 256), dtype=np.float32)
    im = rng.random(256, dtype=np.float32) + 0.1
    want = kernels.quantize(x, "Q4_K", imatrix=im, threads=1)
    got = np.concatenate(list(kernels.quantize_stream(blocks_of(x, 4), "Q4_K", im, threads=2, process_min=0)))
    assert np.array_equal(got, want)
    assert not np.array_equal(got, kernels.quantize(x, "Q4_K", threads=1))  # the imatrix mattered


@pytest.mark.parametrize("qtype", ["Q4_0", "Q6_K"])
def test_nan_error_counts_rows_of_the_whole_stream(qtype):
    x = np.ones((30, 256), np.float32)
    x[23, 7] = np.nan
    with pytest.raises(WorkbenchError, match=r"blk\.3\.ffn_up\.weight: row 123 "):
        list(kernels.quantize_stream(blocks_of(x, 8), qtype, threads=2, name="blk.3.ffn_up.weight", row0=100,
                                     process_min=0))


def test_blocks_read_by_workers_from_a_mapped_file(tmp_path):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 512), dtype=np.float32)
    path = tmp_path / "weights.f32"
    header = 96  # the tensor data does not start at the beginning of the file
    with open(path, "wb") as f:
        f.write(b"\0" * header)
        f.write(x.tobytes())
    mm = np.memmap(path, np.float32, mode="r", offset=header, shape=x.shape)
    blocks = [mm[a:a + 16] for a in range(0, 64, 16)]
    if procpool.available():
        assert procpool._file_source(blocks[1]) == (str(path), header + 16 * 512 * 4)
    got = np.concatenate(list(kernels.quantize_stream(iter(blocks), "Q6_K", threads=2, process_min=0)))
    assert np.array_equal(got, kernels.quantize(x, "Q6_K", threads=1))


def test_abandoned_stream_leaves_no_shared_memory():
    if not procpool.available():
        pytest.skip("worker processes are not available on this platform")
    before = {n for n in shm_names() if n.startswith("psm_")}
    kernels.start_workers(["Q4_K"], threads=2)
    x = np.random.default_rng(5).standard_normal((64, 256), dtype=np.float32)
    stream = kernels.quantize_stream(blocks_of(x, 8), "Q4_K", threads=2, process_min=0)
    first = next(stream)
    assert np.array_equal(first, kernels.quantize(x[:8], "Q4_K", threads=1))
    stream.close()  # a cancelled conversion stops consuming mid-tensor
    again = np.concatenate(list(kernels.quantize_stream(blocks_of(x, 8), "Q4_K", threads=2, process_min=0)))
    assert np.array_equal(again, kernels.quantize(x, "Q4_K", threads=1))
    procpool._SEGMENTS.clear()  # what the idle reaper does after a few seconds
    assert {n for n in shm_names() if n.startswith("psm_")} - before == set()


@pytest.mark.parametrize("qtype,threads", [("Q4_0", 2), ("Q6_K", 2), ("Q6_K", 1)])
def test_submit_handle_gives_the_bytes_of_quantize(qtype, threads):
    x = np.random.default_rng(21).standard_normal((12, 512), dtype=np.float32)
    handle = kernels.submit(x, qtype, threads=threads, process_min=0)
    assert np.array_equal(handle.result(), kernels.quantize(x, qtype, threads=1))
    assert handle.ready()
    # the route: K types go to the worker processes only with more than one thread
    assert kernels.in_processes(qtype, threads=threads) == (threads > 1 and qtype == "Q6_K" and procpool.available())
    assert not kernels.in_processes("F16") and not kernels.in_processes("NOT_A_TYPE")


def test_submit_reports_bad_rows_through_the_handle():
    x = np.ones((8, 256), np.float32)
    x[6, 3] = np.inf
    handle = kernels.submit(x, "Q4_K", threads=2, name="output.weight", row0=40, process_min=0)
    with pytest.raises(WorkbenchError, match=r"output\.weight: row 46 "):
        handle.result()


def test_forked_workers_keep_no_descriptor_of_this_process(tmp_path, monkeypatch):
    """A forked worker must not hold this process's files: an inherited lock or output would outlive it."""
    monkeypatch.setattr(procpool, "FORK_MAX_ANON", 1 << 62)  # however big the test process has grown
    if not procpool.available() or not procpool._use_fork():
        pytest.skip("workers are forked on Linux only")
    held = open(tmp_path / "out.gguf.lock", "w")  # as a conversion's lock is open when a worker (re)starts
    try:
        procpool._shutdown()  # the next call forks fresh workers while the file is open
        x = np.random.default_rng(9).standard_normal((8, 256), dtype=np.float32)
        got = kernels.submit(x, "Q4_K", threads=2, process_min=0).result()
        assert np.array_equal(got, kernels.quantize(x, "Q4_K", threads=1))
        assert procpool._children and all(isinstance(c.proc, procpool._Forked) for c in procpool._children)
        for c in procpool._children:  # stdin and stdout are its pipes, stderr is shared
            assert sorted(os.listdir(f"/proc/{c.proc.pid}/fd")) == ["0", "1", "2"]
    finally:
        held.close()


def test_a_big_process_spawns_its_workers(monkeypatch):
    """Forked workers would keep the memory a big process (an app with models loaded) frees later: above
    FORK_MAX_ANON of anonymous memory fresh interpreters are started, and give the same bytes."""
    if not procpool.available():
        pytest.skip("worker processes are not available on this platform")
    monkeypatch.setattr(procpool, "FORK_MAX_ANON", 0)
    procpool._shutdown()
    try:
        x = np.random.default_rng(4).standard_normal((8, 256), dtype=np.float32)
        got = kernels.submit(x, "Q6_K", threads=2, process_min=0).result()
        assert np.array_equal(got, kernels.quantize(x, "Q6_K", threads=1))
        assert procpool._children and not any(isinstance(c.proc, procpool._Forked) for c in procpool._children)
    finally:
        procpool._shutdown()  # the next test forks small workers again


@pytest.mark.parametrize("on", [False, True])
def test_interactive_process_sends_small_k_tensors_to_the_workers(on, monkeypatch):
    """keep_interpreter_free (the GUI's setting): a K-type tensor of 1536x576 values is quantized by the
    worker processes instead of threads of this process, with the same bytes as one thread gives."""
    from workbench.kernels import base

    if not procpool.available():
        pytest.skip("no worker processes in a frozen app")
    calls = []
    real = base.quantize_stream
    monkeypatch.setattr(base, "quantize_stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = np.random.default_rng(5).standard_normal((576, 1536)).astype(np.float32)
    want = kernels.quantize(x, "Q4_K", threads=1)
    kernels.keep_interpreter_free(on)
    try:
        got = kernels.quantize(x, "Q4_K", threads=2)
    finally:
        kernels.keep_interpreter_free(False)
    assert bool(calls) == on and got.tobytes() == want.tobytes()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no process priorities here")
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_interactive_process_starts_its_workers_at_the_lowest_priority(start, monkeypatch):
    """Workers started after keep_interpreter_free run at nice 19 (forked or fresh interpreters); before, as
    their starter."""
    monkeypatch.setattr(procpool, "FORK_MAX_ANON", 1 << 62)  # however big the test process has grown
    if not procpool.available() or (start == "fork" and not procpool._use_fork()):
        pytest.skip("no worker processes of that kind here (forked workers are for Linux)")
    monkeypatch.setattr(procpool, "_use_fork", lambda: start == "fork")
    x = np.random.default_rng(6).standard_normal((2048, 1024)).astype(np.float32)  # workers either way
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        for on, want in ((False, mine), (True, 19)):
            procpool._shutdown()
            kernels.keep_interpreter_free(on)
            kernels.quantize(x, "Q4_K", threads=2)
            assert procpool._children and all(os.getpriority(os.PRIO_PROCESS, c.proc.pid) == want
                                              for c in procpool._children)
    finally:
        kernels.keep_interpreter_free(False)
        procpool._shutdown()
