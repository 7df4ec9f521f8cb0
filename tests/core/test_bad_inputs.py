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


# -- values of the wrong type, out of range, nested too deep: the reporter's classes ------------------------

def one_line_error(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and len("error: " + text) < 300, text
    return text


def st_entry(**kw):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    entry.update(kw)
    return {"w": entry}


@pytest.mark.parametrize("entry, words", [
    (st_entry(dtype=["F32"]), ("tensor w", "dtype should be a string", "['F32']")),
    (st_entry(dtype={"a": 1}), ("tensor w", "dtype should be a string")),
    (st_entry(shape=[2**70]), ("tensor w", "int64")),
    (st_entry(shape=[0, 2**63]), ("tensor w", "int64")),
    (st_entry(shape=[2**40, 2**40]), ("tensor w", "int64")),
    (st_entry(shape=[True, 2]), ("tensor w", "shape")),
    (st_entry(shape="2"), ("tensor w", "shape")),
    (st_entry(data_offsets=[0.0, 8.0]), ("tensor w", "data_offsets")),
    (st_entry(data_offsets=["0", "8"]), ("tensor w", "data_offsets")),
    (st_entry(data_offsets=[0, 2**70]), ("tensor w", "outside the data section")),
    ({"w": [1, 2]}, ("tensor w", "needs dtype, shape and data_offsets")),
    ({"__metadata__": [1], **st_entry()}, ("__metadata__",)),
])
def test_safetensors_values_of_the_wrong_type(tmp_path, entry, words):
    p = tmp_path / "t.safetensors"
    p.write_bytes(st_bytes(entry, b"\0" * 8))
    with pytest.raises(WorkbenchError) as info:
        workbench.open_model(p)
    text = one_line_error(info)
    assert str(p) in text and all(w in text for w in words), text


def test_safetensors_metadata_values_that_are_not_strings_are_shown_as_json(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes(st_bytes({"__metadata__": {"format": "pt", "n": 3, "x": [1, 2]}, **st_entry()}, b"\0" * 8))
    m = workbench.open_model(p)
    assert m.meta("n", group="safetensors") == "3" and m.meta("x", group="safetensors") == "[1, 2]"


@pytest.mark.parametrize("raw, words", [
    (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", ("nested more than 64 levels",)),
    (b'{"a":' + b"[" * 65 + b"]" * 65 + b"}", ("nested more than 64 levels",)),
    (b'{"a":' + b"9" * 5000 + b"}", ("not valid JSON", "4300 digits")),
    (b'{"a": 1, "a": ' + b'"\xff"}', ("not valid UTF-8",)),
])
def test_safetensors_header_json_limits(tmp_path, raw, words):
    p = tmp_path / "deep.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(FormatError) as info:  # never a RecursionError or ValueError
        workbench.open_model(p)
    text = one_line_error(info)
    assert all(w in text for w in words), text


def test_json_item_limit_is_checked_before_parsing(tmp_path, monkeypatch):
    from workbench.formats import hf

    monkeypatch.setattr(hf, "MAX_JSON_ITEMS", 100)
    build_hf_folder(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"x": [[]] * 102}))
    expect(tmp_path / "m", FormatError, "config.json", "101 items")


def test_gguf_nested_arrays_are_depth_capped(tmp_path):
    # 10 levels of arrays of arrays: a recursive reader would follow them (100 000 levels raise RecursionError)
    for depth in (10, 100_000):
        kv = gguf_string("deep") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 4, 0)
        p = tmp_path / f"nest{depth}.gguf"
        p.write_bytes(raw_gguf(kv=kv, n_kv=1))
        msg = expect(p, UnsupportedError, "deep", "nests arrays more than 4 levels")
        assert len(msg) < 300


def test_gguf_nested_arrays_within_the_cap_open(tmp_path):
    kv = gguf_string("ok") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 2) + (struct.pack("<IQ", 4, 1) + b"\1\0\0\0") * 2
    p = tmp_path / "n.gguf"
    p.write_bytes(raw_gguf(kv=kv, n_kv=1))
    assert [a.tolist() for a in workbench.open_model(p).meta("ok")] == [[1], [1]]


def test_gguf_string_and_array_budgets(tmp_path, monkeypatch):
    from workbench.formats import gguf as gguf_fmt

    monkeypatch.setattr(gguf_fmt, "MAX_STRINGS", 10)
    kv = gguf_string("many") + struct.pack("<IIQ", 9, 8, 11) + gguf_string("t") * 11
    p = tmp_path / "s.gguf"
    p.write_bytes(raw_gguf(kv=kv, n_kv=1))
    expect(p, UnsupportedError, "many", "more than 10 strings")
    monkeypatch.setattr(gguf_fmt, "MAX_NESTED", 3)
    kv = gguf_string("arrs") + struct.pack("<IIQ", 9, 9, 4) + struct.pack("<IQ", 4, 0) * 4
    p.write_bytes(raw_gguf(kv=kv, n_kv=1))
    expect(p, UnsupportedError, "arrs", "more than 3 nested arrays")


def test_gguf_flipped_length_gives_a_short_message(tmp_path):
    # a key of 1 MB (as a flipped bit in a length field makes of the bytes after it): the message quotes it cut short
    key = "k" * (1 << 20)
    p = tmp_path / "long.gguf"
    p.write_bytes(raw_gguf(kv=gguf_string(key) + struct.pack("<I", 99), n_kv=1))
    msg = expect(p, FormatError, "unknown value type 99", "kkk...")
    assert len(msg) < 300 and "\n" not in msg


def test_gguf_tensor_shape_beyond_int64(tmp_path):
    p = tmp_path / "big.gguf"
    p.write_bytes(raw_gguf(tensors=[("w", (2**62, 2**62), 0, 0)], data=b"\0" * 64))
    expect(p, FormatError, "tensor w", "int64")


def test_gguf_architecture_of_the_wrong_type(tmp_path):
    kv = gguf_string("general.architecture") + struct.pack("<IIQ", 9, 4, 2) + b"\1\0\0\0\2\0\0\0"
    p = tmp_path / "a.gguf"
    p.write_bytes(raw_gguf(kv=kv, n_kv=1))
    expect(p, FormatError, "general.architecture should be a string", "array[uint32]")


ARCH = kv_str("general.architecture", "llama")
MODEL = kv_str("tokenizer.ggml.model", "llama")
TOKENS = gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + b"".join(
    gguf_string(t) for t in ("<unk>", "<s>", "</s>"))


@pytest.mark.parametrize("kvs, words", [
    ([ARCH, MODEL, gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 4, 2) + b"\0" * 8],
     ("tokenizer.ggml.tokens", "array[uint32]")),  # token ids as integers where the texts should be
    ([ARCH, gguf_string("tokenizer.ggml.model") + struct.pack("<IIQ", 9, 8, 1) + gguf_string("llama"), TOKENS],
     ("tokenizer.ggml.model", "array[string]")),
    ([ARCH, MODEL, TOKENS, kv_str("tokenizer.ggml.bos_token_id", "1")], ("tokenizer.ggml.bos_token_id", "string")),
    ([ARCH, MODEL, TOKENS, kv_u32("tokenizer.ggml.add_bos_token", 1)], ("tokenizer.ggml.add_bos_token", "uint32")),
    ([ARCH, MODEL, TOKENS, kv_str("llama.context_length", "x")], ("llama.context_length", "string")),
])
def test_gguf_tokenizer_keys_of_the_wrong_type(tmp_path, kvs, words):
    from workbench.infer.tokenizer import load_tokenizer

    p = tmp_path / "tok.gguf"
    p.write_bytes(raw_gguf(kv=b"".join(kvs), n_kv=len(kvs)))
    model = workbench.open_model(p)  # opening shows what is there; loading the tokenizer names the bad key
    with pytest.raises(FormatError) as info:
        load_tokenizer(model)
    text = one_line_error(info)
    assert str(p) in text and all(w in text for w in words), text


def test_hf_json_files_of_the_wrong_shape(tmp_path):
    from workbench.infer.tokenizer import load_tokenizer
    from workbench.plan import Plan

    build_hf_folder(tmp_path / "m")
    m = tmp_path / "m"
    # values of the wrong type or out of range in config files are ignored where a default exists ...
    cfg = json.loads((m / "config.json").read_text())
    cfg.update(num_hidden_layers="2", num_attention_heads=1e308, num_key_value_heads=2**70, architectures=[5],
               model_type=["llama"], bos_token_id=2**70, eos_token_id=[2**70, "x", 2])
    (m / "config.json").write_text(json.dumps(cfg))
    (m / "generation_config.json").write_text(json.dumps({"eos_token_id": {"a": 1}}))
    (m / "tokenizer_config.json").write_text(json.dumps({"bos_token": 1, "eos_token": ["</s>"]}))
    model = workbench.open_model(m)
    assert model.architecture is None
    plan = Plan(model, "Q4_K_M")
    assert plan.nbytes > 0 and (plan.facts.n_layer, plan.facts.n_head, plan.facts.n_head_kv) == (2, 0, 0)
    tok = load_tokenizer(model)
    assert tok.eos_ids == {2}
    # ... and a file that is not an object at all is named
    (m / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(FormatError) as info:
        load_tokenizer(model)
    assert "tokenizer_config.json" in one_line_error(info) and "expected a JSON object" in str(info.value)
    (m / "config.json").write_text('{"a":' + "[" * 5000 + "]" * 5000 + "}")
    expect(m, FormatError, "config.json", "nested more than 64 levels")


def test_block_count_far_too_big_does_not_hang_the_plan(tmp_path):
    from workbench.plan import Plan

    p = tmp_path / "b.gguf"
    data = np.zeros(32, np.float32).tobytes()
    p.write_bytes(raw_gguf(kv=kv_str("general.architecture", "llama") + kv_u32("llama.block_count", 1 << 20), n_kv=2,
                           tensors=[("blk.0.attn_q.weight", (32,), 0, 0)], data=data))
    # a name map for 2^20 layers would take minutes: the layer count comes from the tensors instead
    assert Plan(workbench.open_model(p), "Q4_K_M").facts.n_layer == 1


def test_zero_size_tensors_decode_to_empty_arrays(tmp_path):
    p = tmp_path / "z.gguf"
    p.write_bytes(raw_gguf(tensors=[("q", (0, 4), 8, 0), ("f", (32, 0), 0, 0), ("e", (0,), 0, 0)], data=b"\0" * 32))
    m = workbench.open_model(p)
    assert [m.tensor(n).to_float32().shape for n in ("q", "f", "e")] == [(4, 0), (0, 32), (0,)]
    assert [sum(c.size for c in m.tensor(n).iter_float32()) for n in ("q", "f")] == [0, 0]


def test_adapter_config_of_the_wrong_shape(tmp_path):
    from builders import build_peft_adapter

    build_peft_adapter(tmp_path / "a")
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(r=1, lora_alpha=10**400, peft_type=["LORA"], **{f"k{i}": 1 for i in range(100)})
    cfg_path.write_text(json.dumps(cfg))
    m = workbench.open_model(tmp_path / "a")
    assert m.meta("scale") is None and m.architecture == "LORA adapter"
    assert all(len(w) < 1000 for w in m.warnings)
    cfg_path.write_text('"just a string"')
    expect(tmp_path / "a", FormatError, "adapter_config.json is not a JSON object")


def test_index_weight_map_of_the_wrong_type(tmp_path):
    build_hf_folder(tmp_path / "m", shards=2)
    idx = tmp_path / "m" / "model.safetensors.index.json"
    for wmap in ({"a": 1}, [1, 2], {"a": ["model-00001-of-00002.safetensors"]}, {"a": "../../etc/passwd"}):
        idx.write_text(json.dumps({"weight_map": wmap}))
        with pytest.raises(FormatError) as info:
            workbench.open_model(idx)
        one_line_error(info)


@pytest.mark.parametrize("plan, words", [
    ({"rules": 5}, ('"rules"',)),
    ({"rules": [["a", 5]]}, ('"rules"',)),
    ({"rules": [["a"]]}, ('"rules"',)),
    ({"overrides": [1]}, ('"overrides"',)),
    ({"overrides": {"x": 1}}, ('"overrides"',)),
    ({"preset": ["Q4_K_M"]}, ('"preset"',)),
    ({"has_imatrix": "yes"}, ('"has_imatrix"',)),
    ({"version": True}, ("plan version True",)),
    ({"rules": [["a{99999999999}", "Q4_K"]]}, ("not a valid regular expression",)),
])
def test_plan_json_of_the_wrong_shape(tmp_path, hf_folder, plan, words):
    from workbench.plan import Plan

    folder, _ = hf_folder
    model = workbench.open_model(folder)
    data = {"format": "model-workbench-plan", "version": 1, "preset": "Q4_K_M", "rules": [], "overrides": {}}
    data.update(plan)
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(data))
    with pytest.raises(WorkbenchError) as info:
        Plan.load(model, p)
    text = one_line_error(info)
    assert str(p) in text and all(w in text for w in words), text


def test_plan_json_nested_too_deep(tmp_path, hf_folder):
    from workbench.plan import Plan

    p = tmp_path / "plan.json"
    p.write_text('{"format": "model-workbench-plan", "rules": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(FormatError) as info:
        Plan.load(workbench.open_model(hf_folder[0]), p)
    assert "nested more than 64 levels" in one_line_error(info)


def test_hostile_counts_allocate_nothing_big(tmp_path):
    # counts and lengths are checked against the bytes that remain before anything is allocated
    import tracemalloc

    files = {
        "strings.gguf": raw_gguf(kv=gguf_string("s") + struct.pack("<IIQ", 9, 8, 2**31), n_kv=1),
        "arrays.gguf": raw_gguf(kv=gguf_string("a") + struct.pack("<IIQ", 9, 9, 2**31), n_kv=1),
        "floats.gguf": raw_gguf(kv=gguf_string("f") + struct.pack("<IIQ", 9, 6, 2**40), n_kv=1),
        "string.gguf": raw_gguf(kv=gguf_string("s") + struct.pack("<IQ", 8, 2**62), n_kv=1),
        "tensors.gguf": raw_gguf(n_tensors=2**31),
        "dims.gguf": raw_gguf(tensors=[("w", (2**31,) * 4, 0, 0)], data=b"\0" * 64),
        "hlen.safetensors": struct.pack("<Q", 2**63) + b"{}",
        "shape.safetensors": st_bytes({"w": {"dtype": "F32", "shape": [2**31] * 8, "data_offsets": [0, 4]}}, b"\0" * 4),
    }
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        tracemalloc.start()
        try:
            with pytest.raises(WorkbenchError) as info:
                workbench.open_model(p)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        one_line_error(info)
        assert peak < 4 << 20, f"{name}: {peak} bytes allocated"


def test_error_text_is_one_line_with_the_hint():
    err = FormatError("bad\nthing " + "x" * 1000, path="/m/model.gguf", hint="Do this.")
    text = str(err)
    assert text.startswith("/m/model.gguf: bad thing xxx") and "\n" not in text and len(text) <= 290
    assert str(FormatError("short", path="p", hint="Fix it.")) == "p: short; Fix it."


def test_cli_prints_one_short_line(tmp_path, capsys):
    from workbench.cli import main

    p = tmp_path / "evil.gguf"
    p.write_bytes(raw_gguf(kv=gguf_string("k\n" * 100_000) + struct.pack("<I", 77), n_kv=1))
    assert main(["inspect", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 300 and "evil.gguf" in err, err


def test_bpe_prefix_longer_than_a_merge_is_refused_before_the_tokenizers_library_panics(tmp_path, capfd):
    from workbench.infer.tokenizer import load_tokenizer

    build_hf_folder(tmp_path / "m")
    tj = tmp_path / "m" / "tokenizer.json"
    doc = json.loads(tj.read_text())
    doc["model"]["continuing_subword_prefix"] = "é😀"  # 5 bytes; the merge "a b" has a 1-byte second part
    tj.write_text(json.dumps(doc))
    with pytest.raises(FormatError) as info:
        load_tokenizer(workbench.open_model(tmp_path / "m"))
    assert "merge 0 'a b' is too short for the continuing_subword_prefix" in one_line_error(info)
    assert "panicked" not in capfd.readouterr().err  # the Rust panic would print its message and a backtrace
