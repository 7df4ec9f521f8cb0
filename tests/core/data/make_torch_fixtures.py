"""Dev script: regenerate the torch-made checkpoint fixtures and check write_bin against real torch.

Needs torch (and the workbench's own deps); it is NOT run by the tests, which never import torch:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy gguf
    /tmp/torchenv/bin/python tests/core/data/make_torch_fixtures.py

Writes, next to this script:
  torch_state.pt      nested checkpoint {"model": state_dict, ...} (pickle protocol 2, torch's default)
  torch_proto4.pt     a flat state dict saved with pickle_protocol=4
  torch_legacy.pt     the nested checkpoint in the pre-1.6 format (_use_new_zipfile_serialization=False)
  torch_sparse_coo.pt, torch_sparse_csr.pt, torch_qtensor.pt, torch_meta.pt, torch_sparse_legacy.pt
                      a dense tensor and then one torch saves with _rebuild_sparse_tensor / _rebuild_qtensor /
                      _rebuild_meta_tensor_no_storage: refused as unsupported (by name), not as unsafe
  torch_expected.npz  for every tensor of the first three: raw/<file>/<name> (stored elements; BF16 as
                      uint16 bits, F8 as uint8 bits), f32/<file>/<name> (torch's .float()) and
                      order/<file> (tensor names in state-dict order)
Then checks that read_bin agrees with torch.load, and that torch.load(weights_only=True) reads
write_bin's output with identical values.
"""
from __future__ import annotations

import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from workbench.formats.torchbin import read_bin, write_bin  # noqa: E402
from workbench.model import Model  # noqa: E402


def raw_numpy(t: torch.Tensor) -> np.ndarray:
    """The stored elements as numpy (bit patterns for dtypes numpy lacks)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return t.view(torch.uint8).numpy()
    if t.dtype == torch.uint16:
        return t.to(torch.int32).numpy().astype(np.uint16)
    return t.numpy()


def flat_tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat_tensors(v, f"{prefix}.{k}" if prefix else str(k))


def state_checkpoint() -> dict:
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32) * 0.5 - 3
    f16 = torch.randn(3, 4).half()
    f16[0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    sd = OrderedDict()
    sd["f32"] = torch.randn(4, 5)
    sd["f16"] = f16
    sd["bf16"] = torch.randn(2, 8).bfloat16()
    sd["f64"] = torch.randn(3, dtype=torch.float64)
    sd["i64"] = torch.arange(-5, 5)
    sd["i32"] = torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32)
    sd["i16"] = torch.tensor([-32768, 7, 32767], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    sd["flags"] = torch.tensor([True, False, True])
    sd["base"] = base
    sd["view"] = base[5:13]  # storage offset 5, shares base's storage
    sd["view2d"] = base.reshape(4, 6)[1:3, 2:5]  # non-contiguous with a storage offset
    sd["transposed"] = torch.randn(3, 6).t()  # non-contiguous
    sd["expanded"] = torch.randn(3, 1).expand(3, 4)  # stride 0
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2))
    sd["f8"] = torch.randn(6).to(torch.float8_e4m3fn)  # _rebuild_tensor_v3 + UntypedStorage
    sd["u16"] = torch.tensor([0, 1, 65535], dtype=torch.uint16)
    sd["tied"] = sd["f32"]  # same storage as f32
    with_attr = torch.arange(4, dtype=torch.float32).reshape(2, 2)
    with_attr.note = "x"  # Python state -> torch._tensor._rebuild_from_type_v2
    sd["with_attr"] = with_attr
    param_state = torch.nn.Parameter(torch.randn(3))
    param_state.note = "y"  # -> torch._utils._rebuild_parameter_with_state
    sd["param_state"] = param_state
    return {"model": sd, "epoch": 7, "config": {"lr": 0.001, "betas": (0.9, 0.999), "name": "tiny"},
            "dtype": torch.bfloat16}


def proto4_state() -> OrderedDict:
    torch.manual_seed(1)
    return OrderedDict(a=torch.randn(2, 3), b=torch.randn(5).half(), c=torch.randn(4, 2).t())


def unsupported_checkpoints():
    """(file stem, object, legacy format?): tensors torch saves that are not dense storages."""
    torch.manual_seed(2)
    dense = torch.randn(2, 3)
    indices = torch.tensor([[0, 1, 1], [2, 0, 2]])
    coo = torch.sparse_coo_tensor(indices, torch.tensor([3.0, 4.0, 5.0]), (2, 3))
    qpc = torch.quantize_per_channel(torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([1, 2]), 0,
                                     torch.qint8)
    return [
        ("torch_sparse_coo", OrderedDict(dense=dense, emb=coo), False),
        ("torch_sparse_csr", OrderedDict(dense=dense, csr=coo.to_sparse_csr()), False),
        ("torch_qtensor", OrderedDict(dense=dense, q=qpc), False),
        ("torch_meta", OrderedDict(dense=dense, m=torch.empty(4, 4, device="meta")), False),
        ("torch_sparse_legacy", OrderedDict(dense=dense, emb=coo), True),
    ]


def check_read(path: Path, obj) -> None:
    infos, _extra = read_bin(path)
    model = Model(format="pytorch", path=path, files=[path], tensors=infos)
    expected = list(flat_tensors(obj))
    assert [t.name for t in infos] == [n for n, _ in expected], (path, [t.name for t in infos])
    for name, t in expected:
        np.testing.assert_array_equal(model.tensor(name).raw(), raw_numpy(t))
        np.testing.assert_array_equal(model.tensor(name).to_float32(), t.detach().float().numpy())
    model.close()


def check_write() -> None:
    rng = np.random.default_rng(0)
    bf16_bits = torch.randn(3, 7).bfloat16().view(torch.int16).numpy().view(np.uint16)
    arrays = {
        "f32": rng.standard_normal((4, 3)).astype(np.float32),
        "f16": np.array([1.5, -np.inf, np.nan, 65504], np.float16),
        "f64": rng.standard_normal(5),
        "bf16": bf16_bits,
        "i64": np.array([-(2**63), 0, 2**63 - 1], np.int64),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "i16": np.array([-32768, 32767], np.int16),
        "i8": np.array([-128, 127], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "flags": np.array([[True, False], [False, True]]),
        "scalar": np.array(3.25, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "big": rng.standard_normal((300, 1000)).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
        "bigendian": np.arange(6, dtype=">f4").reshape(3, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pytorch_model.bin"
        write_bin(out, arrays, bf16_names={"bf16"})
        for mmap in (False, True):
            loaded = torch.load(out, weights_only=True, mmap=mmap)
            assert isinstance(loaded, OrderedDict) and list(loaded) == list(arrays), list(loaded)
            for name, arr in arrays.items():
                t = loaded[name]
                assert t.is_contiguous() and tuple(t.shape) == arr.shape, name
                if name == "bf16":
                    assert t.dtype == torch.bfloat16
                np.testing.assert_array_equal(raw_numpy(t), arr.astype(arr.dtype.newbyteorder("=")), err_msg=name)
        # and torch re-saving what it loaded reads back identically through read_bin
        again = Path(tmp) / "again.pt"
        torch.save(torch.load(out, weights_only=True), again)
        check_read(again, torch.load(again, weights_only=True))
    print("write_bin -> torch.load(weights_only=True, mmap=False/True): identical values")


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    ckpt = state_checkpoint()
    torch.save(ckpt, HERE / "torch_state.pt")
    p4 = proto4_state()
    torch.save(p4, HERE / "torch_proto4.pt", pickle_protocol=4)
    # torch cannot load its own legacy save of a tensor on an UntypedStorage (F8, U16): left out
    legacy_ckpt = {**ckpt, "model": OrderedDict((k, v) for k, v in ckpt["model"].items() if k not in ("f8", "u16"))}
    torch.save(legacy_ckpt, HERE / "torch_legacy.pt", _use_new_zipfile_serialization=False)
    for name, obj, legacy in unsupported_checkpoints():
        torch.save(obj, HERE / f"{name}.pt", _use_new_zipfile_serialization=not legacy)
        torch.load(HERE / f"{name}.pt", weights_only=False)  # torch itself reads it back

    expected: dict[str, np.ndarray] = {}
    for fname, obj in (("torch_state", ckpt), ("torch_proto4", p4), ("torch_legacy", legacy_ckpt)):
        names = []
        for name, t in flat_tensors(obj):
            names.append(name)
            expected[f"raw/{fname}/{name}"] = raw_numpy(t)
            expected[f"f32/{fname}/{name}"] = t.detach().float().numpy()
        expected[f"order/{fname}"] = np.array(names)
    np.savez(HERE / "torch_expected.npz", **expected)

    check_read(HERE / "torch_state.pt", torch.load(HERE / "torch_state.pt", weights_only=True))
    check_read(HERE / "torch_legacy.pt", torch.load(HERE / "torch_legacy.pt", weights_only=True))
    # torch's own weights_only unpickler cannot read protocol 4 (FRAME); this file is our own
    check_read(HERE / "torch_proto4.pt", torch.load(HERE / "torch_proto4.pt", weights_only=False))
    print("read_bin == torch.load for torch_state.pt, torch_proto4.pt and torch_legacy.pt")
    check_write()
    for f in sorted(HERE.glob("torch_*")):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
