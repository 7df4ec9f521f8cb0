"""gguf_stream's look-ahead: chunks of later tensors start early (worker-process types out of file order),
the writer still gets every tensor's chunks in file order, and closing drops what is in flight."""
from __future__ import annotations

import numpy as np
import pytest

from workbench import kernels
from workbench.convert import gguf_stream
from workbench.convert.gguf_stream import StreamTensor, _Ahead


class Handle:
    """A fake kernels.submit handle: finishes when the test says so; records what was asked of it."""

    def __init__(self, log, name, data):
        self.log, self.name, self.data = log, name, data
        self.finished = False
        self.discarded = False
        log.append(("start", name))

    def ready(self):
        return self.finished

    def result(self):
        self.finished = True
        return self.data

    def discard(self):
        self.discarded = True


def tensor(log, name, qtype, n_chunks, handles):
    """A tensor whose chunk k holds the bytes of "name/k" (padded to 8 bytes)."""
    def chunks():
        for k in range(n_chunks):
            h = Handle(log, f"{name}/{k}", np.frombuffer(f"{name}/{k}".encode().ljust(8), np.uint8))
            handles.append(h)
            yield h, 4
    return StreamTensor(name, (n_chunks, 4), qtype, chunks)


def label(q) -> str | None:
    return None if q is None else q.tobytes().decode().strip()


@pytest.fixture
def early_types(monkeypatch):
    monkeypatch.setattr(kernels, "in_processes", lambda qtype, threads=None: qtype == "Q6_K")


def test_chunks_come_in_file_order_and_the_process_tensor_starts_first(early_types):
    log, handles = [], []
    tensors = [tensor(log, "a", "Q4_0", 5, handles), tensor(log, "b", "F32", 1, handles),
               tensor(log, "out", "Q6_K", 6, handles)]
    out = list(_Ahead(tensors, depth=2, early=3))
    # the writer sees every chunk of every tensor in order, each tensor closed by (i, None, 0)
    assert [(i, label(q)) for i, q, _n in out] == (
        [(0, f"a/{k}") for k in range(5)] + [(0, None), (1, "b/0"), (1, None)]
        + [(2, f"out/{k}") for k in range(6)] + [(2, None)])
    # the Q6_K tensor (worker processes) was started before the writer left the first tensor...
    first_out = log.index(("start", "out/0"))
    assert first_out < log.index(("start", "a/2"))
    # ...three chunks at a time while none of them had finished
    assert [e for e in log[:first_out + 3] if e[1].startswith("out/")] == [("start", "out/0"), ("start", "out/1"),
                                                                          ("start", "out/2")]


def test_finished_early_chunks_are_kept_up_to_the_buffer_limit(early_types):
    log, handles = [], []
    tensors = [tensor(log, "a", "Q4_0", 8, handles), tensor(log, "out", "Q6_K", 8, handles)]
    ahead = _Ahead(tensors, depth=1, early=2, buffer=16)  # room for two finished 8-byte chunks
    it = iter(ahead)
    next(it)  # a/0 written; out/0 and out/1 started
    started = [h.name for h in handles if h.name.startswith("out/")]
    assert started == ["out/0", "out/1"]
    for h in handles:
        h.finished = True
    next(it)  # out/0 and out/1 are collected: 16 bytes kept, the buffer is full, nothing more starts
    assert ahead.buffered == 16
    assert [h.name for h in handles if h.name.startswith("out/")] == ["out/0", "out/1"]
    rest = [label(q) for _i, q, _n in it]
    assert [r for r in rest if r] == [f"a/{k}" for k in range(2, 8)] + [f"out/{k}" for k in range(8)]
    assert ahead.buffered == 0


def test_closing_discards_everything_in_flight(early_types):
    log, handles = [], []
    closed = []

    def chunks():
        try:
            for k in range(10):
                h = Handle(log, f"out/{k}", np.zeros(4, np.uint8))
                handles.append(h)
                yield h, 4
        finally:
            closed.append(True)

    tensors = [tensor(log, "a", "Q4_0", 3, handles), StreamTensor("out", (10, 4), "Q6_K", chunks)]
    it = iter(_Ahead(tensors, depth=2, early=3))
    next(it)
    it.close()  # a cancelled job
    assert closed == [True]  # the generators were closed
    unwritten = [h for h in handles if not h.finished]
    assert unwritten and all(h.discarded for h in unwritten)


def test_conversion_bytes_do_not_depend_on_the_look_ahead(tmp_path, monkeypatch):
    """A real HF -> GGUF conversion with a K-type output matrix: the same file with and without look-ahead."""
    from convert_fixtures import build_llama

    from workbench.convert import convert_hf_to_gguf
    from workbench.formats import open_model
    from workbench.progress import run

    src = tmp_path / "src"
    build_llama(src, config={"hidden_size": 256, "intermediate_size": 512})
    monkeypatch.setattr("workbench.convert.hf_to_gguf.CHUNK_ELEMENTS", 1 << 12)  # many chunks per tensor
    a = run(convert_hf_to_gguf(src, tmp_path / "a.gguf", "Q4_0"))[0]
    types = {t.name: t.dtype for t in open_model(a).tensors}
    assert types["output.weight"] == "Q6_K" and types["blk.0.ffn_up.weight"] == "Q4_0"  # both lanes in use
    monkeypatch.setattr(gguf_stream, "AHEAD", 1)
    monkeypatch.setattr(gguf_stream, "EARLY", 0)
    b = run(convert_hf_to_gguf(src, tmp_path / "b.gguf", "Q4_0"))[0]
    assert a.read_bytes() == b.read_bytes()
