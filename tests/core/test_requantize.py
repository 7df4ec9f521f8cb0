"""GGUF -> GGUF requantization: bytes against our kernels, raw copies, metadata, splits, cancel, CLI."""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, LlamaFileType

import convert_fixtures as cf
from builders import write_gguf_model
from fetch_models import real_model
from workbench import Cancelled, WorkbenchError, kernels, open_model
from workbench.cli import main
from workbench.convert import convert_hf_to_gguf, requantize_gguf
from workbench.convert.requantize import plan_file_type, raw_metadata
from workbench.plan import PRESETS, Plan
from workbench.progress import run

# rows of 256: the K-quants apply without fallbacks
WIDE = {"hidden_size": 256, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 300}


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "Wide-Llama-v1.0"
    cf.build_llama(folder, config=WIDE, dtype_mix=False)
    return run(convert_hf_to_gguf(folder, tmp_path_factory.mktemp("f32"), "F32"))[0]


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("mixed") / "mixed.gguf"
    return path, write_gguf_model(path)


def fields(path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def requantize(src, out, plan="Q8_0", **kw):
    messages = []
    paths = run(requantize_gguf(src, out, plan, **kw), lambda p: messages.append(p.message))
    return paths, messages


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.suffix in (".gguf", ".partial")]


@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_f32_source_matches_kernels_and_metadata(f32_gguf, tmp_path, preset):
    paths, messages = requantize(f32_gguf, tmp_path, preset)
    assert len(paths) == 1 and paths[0].parent == tmp_path
    assert paths[0].name == f32_gguf.name.replace("-F32", f"-{preset}")  # the naming convention, new encoding
    src, out = open_model(f32_gguf), open_model(paths[0])
    plan = Plan(src, preset)
    assert sorted(t.name for t in out.tensors) == sorted(t.name for t in src.tensors)  # in llama-quantize's order
    converted = 0
    for t in src.tensors:
        want = plan.entry(t.name).type
        got = out.info(t.name)
        assert got.dtype == want and got.shape == t.shape, t.name
        if want == "F32":
            assert out.tensor(t.name).raw().tobytes() == src.tensor(t.name).raw().tobytes(), t.name
        else:
            converted += 1
            expected = kernels.quantize(src.tensor(t.name).to_float32().reshape(-1, t.shape[-1]), want)
            assert out.tensor(t.name).raw().tobytes() == expected.tobytes(), t.name
    assert converted == 16  # 7 projections x 2 layers, token_embd, output
    if preset == "Q4_K_M":
        assert {"Q4_K", "Q6_K"} <= set(out.dtype_counts())
    before, after = fields(f32_gguf), fields(paths[0])
    assert list(after)[-2:] == ["general.quantization_version", "general.file_type"]  # re-set: moved to the end
    assert after.pop("general.file_type") == PRESETS[preset][0]
    assert before.pop("general.file_type") == LlamaFileType.ALL_F32
    assert after == before  # everything else, the tokenizer included, is copied
    assert list(after)[:-1] == [k for k in before if k != "general.quantization_version"]  # in the source's order
    assert "16 tensors converted" in messages[-1] and "warning" not in messages[-1]


def test_same_type_tensors_are_copied_raw_and_requantizing_warns(mixed_gguf, tmp_path):
    path, written = mixed_gguf
    paths, messages = requantize(path, tmp_path / "out.gguf", "Q8_0")
    src, out = open_model(path), open_model(paths[0])
    for name, (stype, _) in written.items():
        got = out.tensor(name)
        if name.endswith("attn_norm.weight") or stype == "Q8_0":  # planned type == source type: byte copy
            assert got.info.dtype == stype
            assert got.raw().tobytes() == src.tensor(name).raw().tobytes(), name
        else:  # decoded from the source type, quantized by our kernels
            assert got.info.dtype == "Q8_0"
            expected = kernels.quantize(src.tensor(name).to_float32(), "Q8_0")
            assert got.raw().tobytes() == expected.tobytes(), name
    assert "already quantized (Q4_0, Q4_1, Q5_0, Q5_1)" in messages[-1]
    assert fields(paths[0])["general.file_type"] == LlamaFileType.MOSTLY_Q8_0


def test_split_output_and_split_source(f32_gguf, tmp_path):
    single, _ = requantize(f32_gguf, tmp_path / "one" / "m.gguf", "Q8_0")
    shards, _ = requantize(f32_gguf, tmp_path / "split" / "m.gguf", "Q8_0", split_max_tensors=8)
    assert [p.name for p in shards] == [f"m-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    first = fields(shards[0])
    assert first["split.count"] == 3 and first["split.no"] == 0 and first["split.tensors.count"] == 21
    assert "tokenizer.ggml.tokens" in first and "split.no" not in fields(single[0])
    a, b = open_model(single[0]), open_model(shards[1])  # any part opens the whole set
    assert [t.name for t in b.tensors] == [t.name for t in a.tensors]
    for t in a.tensors:
        assert b.tensor(t.name).raw().tobytes() == a.tensor(t.name).raw().tobytes(), t.name
    # a split source: every tensor keeps its type, so the single output is byte-identical to the first one
    again, messages = requantize(shards[2], tmp_path / "again.gguf", "Q8_0")
    c = open_model(again[0])
    for t in a.tensors:
        assert c.tensor(t.name).raw().tobytes() == a.tensor(t.name).raw().tobytes(), t.name
    assert "0 tensors converted, 21 copied" in messages[-1]
    assert fields(again[0]) == fields(single[0])


def test_cancel_and_close_leave_nothing(f32_gguf, tmp_path):
    out = tmp_path / "out"
    calls = []
    with pytest.raises(Cancelled):
        requantize(f32_gguf, out, "Q4_K_M", cancel=lambda: calls.append(1) or len(calls) > 5)
    assert not out.exists()  # the folder it created is removed again
    out.mkdir()
    job = requantize_gguf(f32_gguf, out, "Q8_0", split_max_tensors=8)
    for _ in range(4):
        next(job)
    job.close()
    no_leftovers(out)


def test_overwrite_and_source_are_protected(f32_gguf, tmp_path):
    target = tmp_path / "m.gguf"
    requantize(f32_gguf, target, "Q8_0")
    before = target.read_bytes()
    with pytest.raises(WorkbenchError, match="already exists"):
        requantize(f32_gguf, target, "Q4_0")
    assert target.read_bytes() == before
    requantize(f32_gguf, target, "Q4_0", overwrite=True)
    assert fields(target)["general.file_type"] == LlamaFileType.MOSTLY_Q4_0
    with pytest.raises(WorkbenchError, match="replace a file of the source"):
        requantize(f32_gguf, f32_gguf, "Q8_0", overwrite=True)
    with pytest.raises(WorkbenchError, match="unknown preset"):
        requantize(f32_gguf, tmp_path, "Q9_9")


def test_plan_rules_imatrix_and_file_type(f32_gguf, tmp_path):
    model = open_model(f32_gguf)
    plan = Plan(model, "Q4_K_M", rules=[(r"ffn_(up|gate|down)|attn_", "Q6_K")])
    assert plan_file_type(plan) == LlamaFileType.MOSTLY_Q6_K  # most weights are Q6_K now
    assert plan_file_type(Plan(model, "Q4_K_M")) == LlamaFileType.MOSTLY_Q4_K_M
    rng = np.random.default_rng(0)
    im = {"blk.0.ffn_up.weight": rng.uniform(0.1, 2.0, 256).astype(np.float32)}
    paths, _ = requantize(model.path, tmp_path, plan, imatrix=im, name="custom")
    assert paths[0].name == "custom.gguf"
    out = open_model(paths[0])
    assert fields(paths[0])["general.file_type"] == LlamaFileType.MOSTLY_Q6_K
    up = model.tensor("blk.0.ffn_up.weight").to_float32()
    assert out.info("blk.0.ffn_up.weight").dtype == "Q6_K"
    assert out.tensor("blk.0.ffn_up.weight").raw().tobytes() == kernels.quantize(up, "Q6_K", im["blk.0.ffn_up.weight"]).tobytes()
    assert out.tensor("blk.0.ffn_up.weight").raw().tobytes() != kernels.quantize(up, "Q6_K").tobytes()
    with pytest.raises(WorkbenchError, match="another model"):
        requantize(tmp_path / "custom.gguf", tmp_path / "x.gguf", plan)


def header_values(path) -> dict:
    from workbench.formats.gguf import read_header

    return {k: f.value.tolist() if isinstance(f.value, np.ndarray) else f.value
            for k, f in read_header(Path(path)).fields.items()}


def test_real_tiny_model(tmp_path):
    src = real_model("tinycoder")
    paths, messages = requantize(src, tmp_path, "Q8_0")
    a, b = open_model(src), open_model(paths[0])
    plan = Plan(a, "Q8_0")
    converted = []
    for t in a.tensors:  # most rows (16 values) fit no Q8_0 block: the plan keeps those, byte for byte
        want = plan.entry(t.name).type
        assert b.info(t.name).dtype == want
        if want == t.dtype:
            assert b.tensor(t.name).raw().tobytes() == a.tensor(t.name).raw().tobytes()
        else:
            converted.append(t.name)
            assert b.tensor(t.name).raw().tobytes() == kernels.quantize(a.tensor(t.name).to_float32(), want).tobytes()
    assert converted == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    values = header_values(paths[0])
    assert values["general.file_type"] == LlamaFileType.MOSTLY_Q8_0 and values["general.quantization_version"] == 2
    assert len(values["tokenizer.ggml.tokens"]) == 32000
    before, after = raw_metadata(src), raw_metadata(paths[0])  # every other key byte for byte (invalid UTF-8 too)
    for key in ("general.file_type", "general.quantization_version"):
        before.pop(key, None)
        after.pop(key)
    assert after == before


def test_metadata_bytes_are_cut_where_opening_found_them(tmp_path):
    """The copied key/values are the bytes gguf-py's reader finds for each key, from the spans the model's
    opening recorded; a file changed since it was opened is read again."""
    src = real_model("tinycoder")
    model = open_model(src)
    walked, cut = {}, {}
    by_walk, by_span = raw_metadata(src, walked), raw_metadata(src, cut, model)
    ref = {f.name: b"".join(bytes(p) for p in f.parts[2:])  # parts: key length, key, type, payload...
           for f in GGUFReader(src).fields.values() if not f.name.startswith("GGUF.")}
    assert list(by_span) == list(ref) and {k: bytes(v) for k, v in by_span.items()} == ref
    assert by_walk == by_span and walked == cut == {"general.architecture": "llama"}
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(src.read_bytes())
    opened = open_model(changed)
    data = changed.read_bytes()
    start, stop = opened.kv_spans["general.architecture"]
    value = struct.pack("<IQ", 8, 8) + b"qwen2moe"  # a longer string: every later key moves
    changed.write_bytes(data[:start] + value + data[stop:])
    seen = {}
    again = raw_metadata(changed, seen, opened)
    assert bytes(again["general.architecture"]) == value and list(again) == list(by_walk)
    assert {k: bytes(v) for k, v in again.items() if k != "general.architecture"} == \
        {k: bytes(v) for k, v in by_walk.items() if k != "general.architecture"}
    assert seen == {"general.architecture": "qwen2moe"}


# -- byte parity with llama-quantize (recorded once by tests/core/data/make_requant_fixtures.py) --------------

DATA = Path(__file__).parent / "data"
REQUANT = DATA / "llama_quantize_requant.json"
sys.path.insert(0, str(DATA))
from make_requant_fixtures import (BUILT, IMATRIX_INPUT, MOE, REAL, build_input,  # noqa: E402
                                   first_difference, imatrix_meta, imatrix_values, sha256_file, summary)
# SmolLM2's other three presets are recorded too; one runs here to keep the suite fast (every preset passes:
# python tests/core/data/make_requant_fixtures.py records them, the README gives the check)
PARITY = [(name, preset) for name in ("exact-llama", "exact-llama-no-ftype-row", "tinycoder")
          for preset in ("Q8_0", "Q4_0", "Q4_K_M", "Q6_K")] + [("smollm2", "Q4_K_M")] + \
         [(IMATRIX_INPUT + "-imatrix", preset) for preset in ("Q4_0", "Q4_K_M")] + \
         [(MOE, "Q8_0"), (MOE, "Q4_K_M"), (MOE + "-imatrix", "Q4_0"), (MOE + "-imatrix", "Q4_K_M")]


@pytest.mark.parametrize("name,preset", PARITY)
def test_requantized_file_is_byte_identical_to_llama_quantize(name, preset, tmp_path):
    """The whole file, header included (keys re-set by llama-quantize move to the end, tensors in its loader's
    order, ggml's dimension count; with an importance matrix, the quantize.imatrix.* keys), against the sha256
    of llama-quantize --allow-requantize's output.  qwen3moe-8x: 3-D expert tensors quantized a row block of one
    expert at a time, with that expert's importance."""
    case = json.loads(REQUANT.read_text(encoding="utf-8"))["inputs"][name]
    expected = case["presets"][preset]
    kw = {}
    if name.endswith("-imatrix"):
        name = name.removesuffix("-imatrix")
        kw = {"imatrix": imatrix_values(name), "imatrix_meta": imatrix_meta(name)}
    src = build_input(name, tmp_path) if name in BUILT else real_model(REAL[name])
    out = run(requantize_gguf(src, tmp_path / "out.gguf", preset, **kw))[0]
    if sha256_file(out) != expected["sha256"]:
        got = summary(out)
        pytest.fail(f"{name} {preset}: not llama-quantize's file ({got['size']} bytes, expected {expected['size']}): "
                    + first_difference({**expected, "keys": case["keys"], "tensors": case["tensors"]}, got))


def test_cli_convert_routes_gguf_sources(mixed_gguf, tmp_path, capsys):
    path, _ = mixed_gguf
    assert main(["convert", str(path), "-o", str(tmp_path / "out")]) == 0  # default Q8_0 for a GGUF source
    out = capsys.readouterr()
    printed = out.out.split()
    assert len(printed) == 1 and printed[0].endswith("-Q8_0.gguf") and Path(printed[0]).is_file()
    assert "already quantized" in out.err
    assert main(["convert", str(path), "-o", str(tmp_path / "out")]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["convert", str(path), "-o", str(tmp_path / "split"), "--type", "f16", "--split-max-tensors", "6"]) == 0
    shards = capsys.readouterr().out.split()
    assert len(shards) == 3 and all("-of-00003" in s for s in shards)
    assert open_model(shards[0]).info("blk.4.ffn_up.weight").dtype == "F16"


def test_overwriting_with_another_split_removes_the_old_parts(f32_gguf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep-me.gguf").write_bytes(b"unrelated")
    target = out / "m.gguf"
    four, _ = requantize(f32_gguf, target, "Q8_0", split_max_tensors=4)
    assert len(four) > 2
    n = len(open_model(f32_gguf).tensors)
    two, _ = requantize(f32_gguf, target, "Q8_0", split_max_tensors=n // 2 + 1, overwrite=True)
    assert len(two) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(["keep-me.gguf", *(p.name for p in two)])
    single, _ = requantize(f32_gguf, target, "Q8_0", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep-me.gguf", "m.gguf"] and single == [target]


def test_dequantizing_to_f32_gives_no_double_error_warning(mixed_gguf, tmp_path):
    path, written = mixed_gguf
    paths, messages = requantize(path, tmp_path / "f32.gguf", "F32")
    out = open_model(paths[0])
    assert {t.dtype for t in out.tensors} == {"F32"}
    assert "already quantized" not in messages[-1]
