"""Bad input gets a WorkbenchError naming the file and the problem: never a crash, hang or huge allocation."""
from __future__ import annotations

import json
import os
import struct
import time

import numpy as np
import pytest
from builders import build_hf_folder, gguf_string, kv_str, kv_u32, raw_gguf, write_gguf_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench
from workbench import FormatError, MissingFileError, UnsupportedError, WorkbenchError


def st_bytes(header: dict, data: bytes = b"", hlen: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data


def expect(path, exc, *words):
    with pytest.raises(exc) as info:
        workbench.open_model(path)
    msg = str(info.value)
    assert str(path) in msg or path.name in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# -- safetensors -----------------------------------------------------------------------------

def test_truncated_safetensors(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"\x10\x00")
    expect(p, FormatError, "truncated")


def test_safetensors_header_length_past_eof(tmp_path):
    p = tmp_path / "h.safetensors"
    p.write_bytes(st_bytes({}, hlen=1 << 40))  # would be a 1 TB allocation if believed
    expect(p, FormatError, "header length", "past the end")


def test_safetensors_header_not_json(tmp_path):
    p = tmp_path / "j.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{abc}")
    expect(p, FormatError, "not valid JSON")


def test_safetensors_offsets_out_of_range(tmp_path):
    p = tmp_path / "o.safetensors"
    p.write_bytes(st_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8))
    expect(p, FormatError, "tensor w", "outside the data section")


def test_safetensors_overlapping_offsets(tmp_path):
    p = tmp_path / "ov.safetensors"
    hdr = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    p.write_bytes(st_bytes(hdr, b"\0" * 24))
    expect(p, FormatError, "overlap")


def test_safetensors_byte_count_mismatch(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes(st_bytes({"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 8]}}, b"\0" * 8))
    expect(p, FormatError, "tensor w", "8 bytes stored", "needs 12")


def test_safetensors_unknown_dtype(tmp_path):
    p = tmp_path / "d.safetensors"
    p.write_bytes(st_bytes({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4))
    expect(p, UnsupportedError, "unknown dtype 'F12'")


def test_safetensors_bad_shape(tmp_path):
    p = tmp_path / "s.safetensors"
    p.write_bytes(st_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4))
    expect(p, FormatError, "shape")


def test_missing_shard_named_by_index(tmp_path):
    build_hf_folder(tmp_path / "m", shards=2)
    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    msg = expect(tmp_path / "m" / "model.safetensors.index.json", MissingFileError, "model-00002-of-00002.safetensors")
    assert "missing" in msg
    with pytest.raises(MissingFileError):
        workbench.open_model(tmp_path / "m")


def test_index_names_tensor_in_no_shard(tmp_path):
    build_hf_folder(tmp_path / "m", shards=2)
    idx = tmp_path / "m" / "model.safetensors.index.json"
    data = json.loads(idx.read_text())
    data["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    idx.write_text(json.dumps(data))
    expect(idx, FormatError, "ghost.weight")


# -- GGUF ---------------------------------------------------------------------------------

def test_gguf_bad_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGML" + b"\0" * 60)
    expect(p, FormatError, "bad magic")


def test_gguf_unknown_version(tmp_path):
    p = tmp_path / "v.gguf"
    p.write_bytes(raw_gguf(version=99))
    expect(p, UnsupportedError, "version 99")


def test_gguf_truncated_header(gguf_file, tmp_path):
    src, _ = gguf_file
    from workbench.formats.gguf import read_header

    p = tmp_path / "cut.gguf"
    p.write_bytes(src.read_bytes()[:read_header(src).data_offset - 40])  # inside the tensor table
    expect(p, FormatError, "past the end of the file")


def test_gguf_truncated_data(gguf_file, tmp_path):
    src, _ = gguf_file
    p = tmp_path / "short.gguf"
    p.write_bytes(src.read_bytes()[:-100])
    expect(p, FormatError, "past the end of the file", "truncated")


def test_gguf_huge_counts_rejected_fast(tmp_path):
    p = tmp_path / "count.gguf"
    p.write_bytes(raw_gguf(n_kv=1 << 60))
    expect(p, FormatError, "more than fit")


def test_gguf_huge_array_rejected_without_looping(tmp_path):
    # a uint8 array claiming 2^62 items: gguf-py's reader would iterate it element by element
    kv = gguf_string("evil.array") + struct.pack("<IIQ", 9, 0, 1 << 62)
    p = tmp_path / "arr.gguf"
    p.write_bytes(raw_gguf(kv=kv, n_kv=1))
    start = time.monotonic()
    expect(p, FormatError, "evil.array")
    assert time.monotonic() - start < 1.0


def test_gguf_huge_string_array(tmp_path):
    kv = gguf_string("evil.strings") + struct.pack("<IIQ", 9, 8, 1 << 40)
    p = tmp_path / "s.gguf"
    p.write_bytes(raw_gguf(kv=kv, n_kv=1))
    expect(p, FormatError, "evil.strings")


def test_gguf_unknown_tensor_type(tmp_path):
    p = tmp_path / "t.gguf"
    p.write_bytes(raw_gguf(tensors=[("w", (32,), 250, 0)], data=b"\0" * 128))
    expect(p, FormatError, "tensor w", "unknown ggml type 250")


def test_gguf_tensor_out_of_range(tmp_path):
    p = tmp_path / "r.gguf"
    p.write_bytes(raw_gguf(tensors=[("w", (64,), 0, 0)], data=b"\0" * 128))  # F32 x64 needs 256 bytes
    expect(p, FormatError, "tensor w", "past the end")


def test_gguf_overlapping_tensors(tmp_path):
    p = tmp_path / "ov.gguf"
    p.write_bytes(raw_gguf(tensors=[("a", (32,), 0, 0), ("b", (32,), 0, 64)], data=b"\0" * 256))
    expect(p, FormatError, "overlap")


def test_gguf_misaligned_offset(tmp_path):
    p = tmp_path / "al.gguf"
    p.write_bytes(raw_gguf(tensors=[("a", (4,), 0, 4)], data=b"\0" * 64))
    expect(p, FormatError, "not aligned")


def test_gguf_row_not_multiple_of_block(tmp_path):
    p = tmp_path / "b.gguf"
    p.write_bytes(raw_gguf(tensors=[("q", (33,), 8, 0)], data=b"\0" * 128))  # Q8_0 blocks of 32
    expect(p, FormatError, "tensor q", "block size 32")


def test_gguf_duplicate_key(tmp_path):
    p = tmp_path / "dup.gguf"
    p.write_bytes(raw_gguf(kv=kv_u32("a.b", 1) + kv_u32("a.b", 2), n_kv=2))
    expect(p, FormatError, "appears twice")


def test_gguf_alignment_not_power_of_two(tmp_path):
    p = tmp_path / "a.gguf"
    p.write_bytes(raw_gguf(kv=kv_u32("general.alignment", 24), n_kv=1))
    expect(p, FormatError, "power of two")


def test_gguf_minimal_valid(tmp_path):
    p = tmp_path / "ok.gguf"
    data = np.arange(32, dtype=np.float32).tobytes()
    p.write_bytes(raw_gguf(kv=kv_str("general.architecture", "llama"), n_kv=1, tensors=[("w", (8, 4), 0, 0)], data=data))
    m = workbench.open_model(p)
    assert m.info("w").shape == (4, 8)
    np.testing.assert_array_equal(m.tensor("w").to_float32().ravel(), np.arange(32))


def test_missing_split_part(tmp_path):
    write_gguf_model(tmp_path / "s.gguf", split_max_tensors=5)
    (tmp_path / "s-00003-of-00004.gguf").unlink()
    expect(tmp_path / "s-00001-of-00004.gguf", MissingFileError, "s-00003-of-00004.gguf")


# -- folders and files ------------------------------------------------------------------------

def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    expect(tmp_path / "empty", WorkbenchError, "empty")


def test_folder_with_no_model(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("hello")
    expect(tmp_path / "docs", WorkbenchError, "no model files")


def test_missing_path(tmp_path):
    expect(tmp_path / "nope.gguf", MissingFileError, "no such file")


def test_unknown_file_kind(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("just text")
    expect(p, UnsupportedError, "not a model file")


def test_folder_with_two_gguf_models(tmp_path, gguf_file):
    src, _ = gguf_file
    for n in ("a.gguf", "b.gguf"):
        (tmp_path / n).write_bytes(src.read_bytes())
    expect(tmp_path, WorkbenchError, "2 different GGUF models")


def test_bad_config_json(tmp_path):
    build_hf_folder(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    expect(tmp_path / "m" / "config.json", FormatError, "not valid JSON")


# -- fuzzing: any damage gives a WorkbenchError or a model, nothing else -----------------------

@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzsrc")
    write_gguf_model(d / "m.gguf")
    build_hf_folder(d / "hf")
    return {"gguf": (d / "m.gguf").read_bytes()[:4096 + 512],
            "safetensors": (d / "hf" / "model.safetensors").read_bytes()[:6000]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["gguf", "safetensors"]), data=st.data())
def test_fuzzed_headers_never_crash(small_files, tmp_path, kind, data):
    blob = bytearray(small_files[kind])
    n = data.draw(st.integers(1, 8))
    for _ in range(n):
        pos = data.draw(st.integers(0, min(len(blob), 1500) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(16, len(blob)))
    p = tmp_path / f"fuzz.{kind}"
    p.write_bytes(bytes(blob[:cut]))
    start = time.monotonic()
    try:
        m = workbench.open_model(p)
        for t in m.tensors[:4]:
            m.tensor(t.name).to_float32()
    except WorkbenchError:
        pass
    assert time.monotonic() - start < 5
    os.remove(p)
