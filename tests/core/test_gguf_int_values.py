"""GGUF integer metadata keeps its sign and width: values written by gguf-py's GGUFWriter read back equal."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFValueType, GGUFWriter

import workbench

# (GGUF type, a value at the edge of its range): a reader that swaps signed and unsigned gets each wrong
EDGES = [
    (GGUFValueType.INT8, -128), (GGUFValueType.UINT8, 255),
    (GGUFValueType.INT16, -2), (GGUFValueType.INT16, -32768), (GGUFValueType.UINT16, 65535),
    (GGUFValueType.INT32, -2**31), (GGUFValueType.UINT32, 2**32 - 1),
    (GGUFValueType.INT64, -2**63), (GGUFValueType.UINT64, 2**64 - 1),
]


@pytest.fixture(scope="module")
def int_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("ints") / "ints.gguf"
    w = GGUFWriter(path, "llama")
    for i, (vtype, value) in enumerate(EDGES):
        w.add_key_value(f"test.{vtype.name.lower()}.{i}", value, vtype)
    w.add_key_value("test.array_int16", [-1, 7, -32768, 32767], GGUFValueType.ARRAY, GGUFValueType.INT16)
    w.add_tensor("w", np.zeros((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return workbench.open_model(path)


@pytest.mark.parametrize("i", range(len(EDGES)), ids=[f"{t.name}={v}" for t, v in EDGES])
def test_scalar_keeps_sign_and_width(int_gguf, i):
    vtype, value = EDGES[i]
    got = int_gguf.meta(f"test.{vtype.name.lower()}.{i}")
    assert got == value and type(got) is int


def test_int16_array_is_signed(int_gguf):
    assert [int(v) for v in int_gguf.meta("test.array_int16")] == [-1, 7, -32768, 32767]
