"""Our kernels against ggml's bytes recorded once (tests/core/data/make_kernel_digests.py): byte parity is
checked even where the ggml oracle cannot be fetched (tests/core/test_kernels.py compares with the live
oracle on more cases and reports how many blocks differ)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from kernel_inputs import FLOAT_TYPES, N, QUANT_TYPES, cases, imatrices

from workbench import kernels

RECORDED = json.loads((Path(__file__).parent / "data" / "ggml_kernel_digests.json").read_text())
CASES, IMATRICES = cases(), imatrices()


def digest(a) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:24]


def test_inputs_are_the_recorded_ones():
    assert {c: digest(x) for c, x in CASES.items()} == RECORDED["inputs"]
    assert set(RECORDED["quantize"]) == {f"{t}/{c}/{w}" for t in FLOAT_TYPES + QUANT_TYPES for c in CASES
                                         for w in IMATRICES if t in QUANT_TYPES or w == "none"}


@pytest.mark.parametrize("qtype", FLOAT_TYPES + QUANT_TYPES)
def test_quantize_equals_ggml_bytes(qtype):
    differ = [f"{c}/{w}" for c, x in CASES.items() for w, imat in IMATRICES.items()
              if (qtype in QUANT_TYPES or imat is None)
              and digest(kernels.quantize(x, qtype, imat)) != RECORDED["quantize"][f"{qtype}/{c}/{w}"]]
    assert not differ, f"{qtype}: bytes differ from ggml's on {differ}"


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_dequantize_equals_ggml_floats(qtype):
    differ = []
    for c, x in CASES.items():
        q = kernels.quantize(x, qtype)
        assert digest(q) == RECORDED["quantize"][f"{qtype}/{c}/none"]  # so these are ggml's bytes
        if digest(kernels.dequantize(q, qtype, N)) != RECORDED["dequantize"][f"{qtype}/{c}"]:
            differ.append(c)
    assert not differ, f"{qtype}: dequantized floats differ from ggml's on {differ}"
