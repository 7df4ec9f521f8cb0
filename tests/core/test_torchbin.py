"""PyTorch zip checkpoints: reading without torch or pickle code execution, writing torch-loadable files.

No torch here: the torch-made fixtures in ``data/`` come from ``data/make_torch_fixtures.py`` (a dev
script), with the values torch itself saw in ``data/torch_expected.npz``.
"""
from __future__ import annotations

import json
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from workbench.dtypes import bf16_to_f32
from workbench.errors import FormatError, MissingFileError, UnsafeFileError, UnsupportedError, WorkbenchError
from workbench.formats import torchbin
from workbench.formats.torchbin import read_bin, read_bin_index, write_bin
from workbench.model import Model

DATA = Path(__file__).parent / "data"


def open_model(path: Path) -> Model:
    infos, _ = read_bin(path)
    return Model(format="pytorch", path=path, files=[path], tensors=infos)


def make_zip(path: Path, members: dict[str, bytes], compress: set[str] = frozenset()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED)
    return path


def state_pickle(tensors: list[tuple[str, str, str, int, tuple[int, ...]]], extra: bytes = b"") -> bytes:
    """A torch-style protocol-2 state dict: (name, storage type, key, numel, shape) per tensor, contiguous,
    plus raw opcodes ``extra`` (key/value pairs) inserted into the same SETITEMS."""
    out = torchbin._PickleOut()
    out.ordered_dict()
    out.buf += b"("
    for name, stype, key, numel, shape in tensors:
        out.text(name)
        out.glob("torch._utils", "_rebuild_tensor_v2")
        out.buf += b"(("
        out.text("storage")
        out.glob("torch", stype)
        out.text(key)
        out.text("cpu")
        out.integer(numel)
        out.buf += b"tQ"
        out.integer(0)
        out.int_tuple(shape)
        strides, acc = [], 1
        for n in reversed(shape):
            strides.append(acc)
            acc *= n
        out.int_tuple(tuple(reversed(strides)))
        out.buf += b"\x89"
        out.ordered_dict()
        out.buf += b"tR"
    out.buf += extra + b"u."
    return bytes(out.buf)


ALL_DTYPES = {
    "f32": (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5, "F32"),
    "f16": (np.array([1.5, -np.inf, np.nan, 65504, -0.0], np.float16), "F16"),
    "f64": (np.array([[1e30, -2.5], [np.pi, 1 / 3]]), "F64"),
    "bf16": (np.array([0x3F80, 0xC000, 0x7F80, 0x7FC0, 0x0001, 0x8000], np.uint16), "BF16"),
    "i64": (np.array([-(2**63), -1, 0, 2**63 - 1], np.int64), "I64"),
    "i32": (np.arange(-3, 3, dtype=np.int32).reshape(2, 3), "I32"),
    "i16": (np.array([-32768, 0, 32767], np.int16), "I16"),
    "i8": (np.array([-128, 0, 127], np.int8), "I8"),
    "u8": (np.array([0, 1, 255], np.uint8), "U8"),
    "flags": (np.array([[True, False], [False, True]]), "BOOL"),
    "scalar": (np.array(3.25, np.float32), "F32"),
    "empty": (np.zeros((0, 4), np.float32), "F32"),
    "transposed_input": (np.arange(6, dtype=np.float32).reshape(2, 3).T, "F32"),
    "big_endian": (np.arange(5, dtype=">f4"), "F32"),
    "wide": (np.linspace(-1, 1, 5000, dtype=np.float32).reshape(50, 100), "F32"),
}


# -- write_bin -> read_bin -------------------------------------------------------------------------

def test_round_trip_every_dtype(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    write_bin(path, {k: v for k, (v, _) in ALL_DTYPES.items()}, bf16_names={"bf16"})
    infos, extra = read_bin(path)
    assert [t.name for t in infos] == list(ALL_DTYPES)
    assert extra["archive_prefix"] == "pytorch_model"
    assert extra["pickle_protocol"] == 2 and extra["archive_version"] == 3 and extra["byteorder"] == "little"
    assert "values" not in extra
    model = Model(format="pytorch", path=path, files=[path], tensors=infos)
    for t in infos:
        arr, dtype = ALL_DTYPES[t.name]
        assert t.dtype == dtype and t.shape == arr.shape and t.strides is None, t
        assert t.offset % 64 == 0, t  # torch's storage alignment
        assert t.nbytes == arr.size * arr.dtype.itemsize
        raw = model.tensor(t.name).raw()
        np.testing.assert_array_equal(raw, arr, err_msg=t.name)
        expected = bf16_to_f32(arr) if dtype == "BF16" else arr.astype(np.float32)
        np.testing.assert_array_equal(model.tensor(t.name).to_float32(), expected, err_msg=t.name)
    model.close()


def test_written_file_has_torch_layout(tmp_path):
    path = tmp_path / "weights.pt"
    write_bin(path, {"a": np.ones(3, np.float32), "b": np.zeros(2, np.uint16), "c": np.ones(1, np.int64)},
              bf16_names={"b"})
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names == ["weights/data.pkl", "weights/byteorder", "weights/data/0", "weights/data/1",
                         "weights/data/2", "weights/version"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.read("weights/version") == b"3\n" and zf.read("weights/byteorder") == b"little"
        data = zf.read("weights/data.pkl")
    ops = list(pickletools.genops(data))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
                        "torch BFloat16Storage", "torch LongStorage"}
    assert sum(op.name == "BINPERSID" for op, _, _ in ops) == 3
    assert not list(tmp_path.glob(".*partial"))


def test_write_zip64_layout_stays_aligned(tmp_path, monkeypatch):
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)  # exercise the zip64 header path on small data
    arrays = {"x": np.arange(3000, dtype=np.float32), "y": np.arange(7, dtype=np.int64)}
    path = tmp_path / "big.bin"
    write_bin(path, arrays)
    model = open_model(path)
    for name, arr in arrays.items():
        assert model.info(name).offset % 64 == 0
        np.testing.assert_array_equal(model.tensor(name).raw(), arr)


def test_write_rejects_unsupported_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(UnsupportedError, match="complex64"):
        write_bin(path, {"ok": np.ones(2, np.float32), "bad": np.ones(2, np.complex64)})
    with pytest.raises(UnsupportedError, match="BF16"):
        write_bin(path, {"b": np.ones(2, np.float32)}, bf16_names={"b"})
    with pytest.raises(UnsupportedError, match="uint16"):
        write_bin(path, {"u": np.ones(2, np.uint16)})  # uint16 only as BF16 bits
    assert list(tmp_path.iterdir()) == []


def test_write_failure_midway_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    write_bin(path, {"old": np.ones(2, np.float32)})
    before = path.read_bytes()
    real = torchbin._write_member

    def failing(zf, f, name, data):
        if "/data/" in name:
            raise OSError("disk full")
        return real(zf, f, name, data)

    monkeypatch.setattr(torchbin, "_write_member", failing)
    from workbench.errors import WorkbenchError  # an OSError while writing becomes a one-line WorkbenchError

    with pytest.raises(WorkbenchError, match="disk full"):
        write_bin(path, {"new": np.zeros(4, np.float32)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


# -- torch-made fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "torch_expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("fixture", ["torch_state", "torch_proto4", "torch_legacy"])
def test_torch_fixture_matches_torch_values(fixture, expected):
    path = DATA / f"{fixture}.pt"
    infos, extra = read_bin(path)
    assert [t.name for t in infos] == expected[f"order/{fixture}"].tolist()
    if fixture == "torch_legacy":  # torch.save(..., _use_new_zipfile_serialization=False)
        assert extra["legacy"] is True and "archive_prefix" not in extra
        assert extra["values"] == {"epoch": 7, "config": {"lr": 0.001, "betas": (0.9, 0.999), "name": "tiny"},
                                   "dtype": "torch.bfloat16"}
    else:
        assert extra["archive_prefix"] == fixture
    assert extra["pickle_protocol"] == (4 if fixture == "torch_proto4" else 2)
    model = Model(format="pytorch", path=path, files=[path], tensors=infos)
    for t in infos:
        np.testing.assert_array_equal(model.tensor(t.name).raw(), expected[f"raw/{fixture}/{t.name}"], err_msg=t.name)
        np.testing.assert_array_equal(model.tensor(t.name).to_float32(), expected[f"f32/{fixture}/{t.name}"],
                                      err_msg=t.name)
    model.close()


def test_torch_fixture_layout_details():
    path = DATA / "torch_state.pt"
    infos, extra = read_bin(path)
    by = {t.name: t for t in infos}
    # nested {"model": state_dict, ...} flattened with dotted names; non-tensors kept as plain values
    assert all(n.startswith("model.") for n in by)
    assert extra["values"] == {"epoch": 7, "config": {"lr": 0.001, "betas": (0.9, 0.999), "name": "tiny"},
                               "dtype": "torch.bfloat16"}
    types = {n: t.dtype for n, t in by.items()}
    assert types["model.bf16"] == "BF16" and types["model.f8"] == "F8_E4M3" and types["model.u16"] == "U16"
    assert types["model.flags"] == "BOOL" and types["model.param"] == "F32"
    # views: storage offsets and strides
    assert by["model.view"].offset == by["model.base"].offset + 5 * 4 and by["model.view"].strides is None
    assert by["model.view2d"].strides == (6, 1) and by["model.view2d"].offset == by["model.base"].offset + 8 * 4
    assert by["model.transposed"].strides == (1, 6) and by["model.transposed"].shape == (6, 3)
    assert by["model.expanded"].strides == (1, 0)
    assert by["model.tied"].offset == by["model.f32"].offset
    assert by["model.scalar"].shape == () and by["model.empty"].shape == (0, 3)


def test_legacy_layout_details():
    # the legacy stream: storages follow the pickles, each after its int64 element count
    infos, _ = read_bin(DATA / "torch_legacy.pt")
    by = {t.name: t for t in infos}
    data = (DATA / "torch_legacy.pt").read_bytes()
    base = by["model.base"]
    assert int.from_bytes(data[base.offset - 8:base.offset], "little") == 24  # base's storage: 24 floats
    assert by["model.view"].offset == base.offset + 5 * 4
    assert by["model.view2d"].strides == (6, 1) and by["model.tied"].offset == by["model.f32"].offset
    assert by["model.transposed"].strides == (1, 6)


@pytest.mark.parametrize("fixture, tensor, kind", [
    ("torch_sparse_coo", "emb", "sparse tensor (sparse_coo)"), ("torch_sparse_csr", "csr", "sparse tensor (sparse_csr)"),
    ("torch_qtensor", "q", "quantized tensor (QInt8Storage)"), ("torch_meta", "m", "meta (data-less) tensor"),
    ("torch_sparse_legacy", "emb", "sparse tensor (sparse_coo)")])
def test_sparse_quantized_meta_tensors_are_unsupported_not_unsafe(fixture, tensor, kind):
    # written by torch.save (make_torch_fixtures.py); their rebuild functions are torch's own, so no
    # "may run code" warning: they are named and refused as unsupported
    with pytest.raises(UnsupportedError) as info:
        read_bin(DATA / f"{fixture}.pt")
    assert not isinstance(info.value, UnsafeFileError)
    text = str(info.value)
    assert f"tensor {tensor} is a {kind}" in text and "sparse/quantized tensors are not supported" in text
    assert f"{fixture}.pt" in text and len(text) < 300 and "\n" not in text


# -- malicious pickles -----------------------------------------------------------------------------

class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> list[tuple[str, bytes]]:
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    tensor = [("w", "FloatStorage", "0", 2, (2,))]
    return [
        # hand-written GLOBAL 'os system' inside an otherwise valid state dict
        ("os.system", state_pickle(tensor, b"X\x04\x00\x00\x00evil" + b"cos\nsystem\n(X"
                                   + struct.pack("<I", len(cmd)) + cmd.encode() + b"tR")),
        # what pickle itself writes for os.system on POSIX
        ("posix.system", pickle.dumps({"w": _Reduce(os.system, cmd)}, protocol=2)),
        # protocol 4: STACK_GLOBAL, which only the unpickler's find_class sees
        ("builtins.exec", pickle.dumps([1, _Reduce(exec, code)], protocol=4)),
        # protocol 2 writes it as __builtin__.eval; the message names both spellings
        ("builtins.eval", pickle.dumps([_Reduce(eval, code)], protocol=2)),
        ("subprocess.call", b"\x80\x02csubprocess\ncall\n(X" + struct.pack("<I", len(cmd)) + cmd.encode() + b"tR."),
        # an unknown torch global is refused too, not just the obviously dangerous ones
        ("torch.load", b"\x80\x02ctorch\nload\n(X\x01\x00\x00\x00xtR."),
    ]


@pytest.mark.parametrize("index", range(6))
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, index):
    marker = tmp_path / "PWNED"
    forbidden, payload = _payloads(marker)[index]
    path = make_zip(tmp_path / "evil.bin", {"archive/data.pkl": payload, "archive/data/0": b"\0" * 8,
                                            "archive/version": b"3\n"})
    with pytest.raises(UnsafeFileError) as info:
        read_bin(path)
    assert forbidden in str(info.value)
    assert "evil.bin" in str(info.value)
    assert not marker.exists()


def test_forbidden_global_is_refused_by_the_unpickler_itself(tmp_path):
    # bypass the opcode pre-scan: the restricted find_class must still refuse
    marker = tmp_path / "PWNED"
    data = pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2)
    with pytest.raises(UnsafeFileError, match="posix.system"):
        torchbin._RestrictedUnpickler(data, torchbin._Where(tmp_path / "x.bin", "archive/data.pkl")).load()
    assert not marker.exists()


def test_build_on_a_stand_in_is_a_format_error(tmp_path):
    # BUILD on an allowed global's stand-in must not mutate it (NamedTuples have no __dict__)
    data = b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00aK\x01sb."
    path = make_zip(tmp_path / "m.bin", {"archive/data.pkl": data, "archive/version": b"3\n"})
    with pytest.raises(FormatError):
        read_bin(path)


# -- damaged and unsupported files -----------------------------------------------------------------

def test_not_a_zip(tmp_path):
    p = tmp_path / "random.bin"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FormatError, match="not a PyTorch checkpoint"):
        read_bin(p)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        read_bin(empty)
    plain_pickle = tmp_path / "pickled.pt"
    plain_pickle.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(FormatError, match="magic number"):
        read_bin(plain_pickle)
    with pytest.raises(MissingFileError):
        read_bin(tmp_path / "nope.bin")


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, 0.99])
def test_truncated_zip(tmp_path, keep):
    full = tmp_path / "full.bin"
    write_bin(full, {"a": np.arange(2000, dtype=np.float32), "b": np.ones((10, 10), np.float16)})
    data = full.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(FormatError):
        read_bin(cut)


def test_zip_without_data_pkl(tmp_path):
    path = make_zip(tmp_path / "x.bin", {"archive/other.txt": b"hi"})
    with pytest.raises(FormatError, match="data.pkl"):
        read_bin(path)


def test_missing_storage_member(tmp_path):
    data = state_pickle([("a", "FloatStorage", "0", 2, (2,)), ("b", "FloatStorage", "1", 3, (3,))])
    path = make_zip(tmp_path / "x.bin", {"archive/data.pkl": data, "archive/data/0": b"\0" * 8,
                                         "archive/version": b"3\n"})
    with pytest.raises(FormatError, match="archive/data/1"):
        read_bin(path)


def test_tensor_outside_its_storage(tmp_path):
    # the pickle claims 4 floats but the member holds only 2
    data = state_pickle([("a", "FloatStorage", "0", 4, (4,))])
    path = make_zip(tmp_path / "x.bin", {"archive/data.pkl": data, "archive/data/0": b"\0" * 8,
                                         "archive/version": b"3\n"})
    with pytest.raises(FormatError, match="archive/data/0"):
        read_bin(path)
    # shape larger than the storage it points into
    data = state_pickle([("a", "FloatStorage", "0", 2, (2, 2))])
    path = make_zip(tmp_path / "y.bin", {"archive/data.pkl": data, "archive/data/0": b"\0" * 8})
    with pytest.raises(FormatError, match="outside"):
        read_bin(path)


def test_huge_claims_are_rejected_without_allocating(tmp_path):
    members = {"archive/data/0": b"\0" * 8, "archive/version": b"3\n"}
    # a 4 GB string claimed in a 30-byte pickle
    huge_str = b"\x80\x02X\xf0\xff\xff\xffabc."
    # a memo slot far beyond the pickle (the C unpickler would size its memo table by it)
    huge_memo = b"\x80\x02}r\xf0\xff\xff\x7f."
    # an expanded tensor of 10**24 elements on a 2-element storage
    out = torchbin._PickleOut()
    out.ordered_dict()
    out.buf += b"("
    out.text("x")
    out.glob("torch._utils", "_rebuild_tensor_v2")
    out.buf += b"(("
    out.text("storage")
    out.glob("torch", "FloatStorage")
    out.text("0")
    out.text("cpu")
    out.integer(2)
    out.buf += b"tQ"
    out.integer(0)
    out.int_tuple((10**12, 10**12))
    out.int_tuple((0, 0))
    out.buf += b"\x89"
    out.ordered_dict()
    out.buf += b"tRu."
    for i, data in enumerate([huge_str, huge_memo, bytes(out.buf)]):
        path = make_zip(tmp_path / f"h{i}.bin", {"archive/data.pkl": data, **members})
        with pytest.raises(FormatError):
            read_bin(path)


def test_compressed_member_is_unsupported(tmp_path):
    data = state_pickle([("a", "FloatStorage", "0", 2, (2,))])
    path = make_zip(tmp_path / "x.bin", {"archive/data.pkl": data, "archive/data/0": b"\0" * 8},
                    compress={"archive/data/0"})
    with pytest.raises(UnsupportedError, match="compressed"):
        read_bin(path)


def test_unknown_storage_type_is_unsupported(tmp_path):
    data = state_pickle([("a", "ComplexFloatStorage", "0", 1, (1,))])
    path = make_zip(tmp_path / "x.bin", {"archive/data.pkl": data, "archive/data/0": b"\0" * 8})
    with pytest.raises(UnsupportedError, match="ComplexFloatStorage"):
        read_bin(path)


def test_torchscript_archive_is_unsupported(tmp_path):
    path = make_zip(tmp_path / "m.pt", {"m/data.pkl": b"\x80\x02}.", "m/constants.pkl": b"\x80\x02).",
                                        "m/version": b"3\n"})
    with pytest.raises(UnsupportedError, match="TorchScript"):
        read_bin(path)


def test_big_endian_archive_is_unsupported(tmp_path):
    data = state_pickle([("a", "FloatStorage", "0", 2, (2,))])
    path = make_zip(tmp_path / "x.bin", {"archive/data.pkl": data, "archive/byteorder": b"big",
                                         "archive/data/0": b"\0" * 8})
    with pytest.raises(UnsupportedError, match="big-endian"):
        read_bin(path)


def test_non_tensor_entries_and_nesting(tmp_path):
    # {"state_dict": {"a": tensor}, "step": 3} -> "state_dict.a", values {"step": 3}
    inner = state_pickle([("a", "FloatStorage", "0", 2, (2,))])[2:-1]  # the OrderedDict, without PROTO/STOP
    data = b"\x80\x02}(X\x0a\x00\x00\x00state_dict" + inner + b"X\x04\x00\x00\x00stepK\x03u."
    path = make_zip(tmp_path / "x.bin", {"archive/data.pkl": data, "archive/data/0": struct.pack("<2f", 1, 2)})
    model = open_model(path)
    assert [t.name for t in model.tensors] == ["state_dict.a"]
    np.testing.assert_array_equal(model.tensor("state_dict.a").to_float32(), [1, 2])
    assert read_bin(path)[1]["values"] == {"step": 3}


# -- sharded checkpoints ---------------------------------------------------------------------------

def test_sharded_index(tmp_path):
    write_bin(tmp_path / "pytorch_model-00001-of-00002.bin", {"a": np.ones(2, np.float32)})
    write_bin(tmp_path / "pytorch_model-00002-of-00002.bin", {"b": np.zeros(3, np.float16)})
    index = tmp_path / "pytorch_model.bin.index.json"
    wmap = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    index.write_text(json.dumps({"metadata": {"total_size": 14}, "weight_map": wmap}))
    files, got = read_bin_index(index)
    assert files == [tmp_path / "pytorch_model-00001-of-00002.bin", tmp_path / "pytorch_model-00002-of-00002.bin"]
    assert got == wmap
    assert [t.name for f in files for t in read_bin(f)[0]] == ["a", "b"]

    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(MissingFileError, match="pytorch_model-00002-of-00002.bin"):
        read_bin_index(index)


def test_sharded_index_errors(tmp_path):
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text("{not json")
    with pytest.raises(FormatError):
        read_bin_index(index)
    index.write_text(json.dumps({"weight_map": {"a": "../outside.bin"}}))
    with pytest.raises(FormatError, match="outside"):
        read_bin_index(index)
    with pytest.raises(MissingFileError):
        read_bin_index(tmp_path / "absent.index.json")


def test_errors_are_workbench_errors(tmp_path):
    assert issubclass(UnsafeFileError, WorkbenchError)
    p = tmp_path / "x.bin"
    p.write_bytes(b"PK\x03\x04garbage")  # a zip signature and nothing else
    with pytest.raises(FormatError):
        read_bin(p)
