"""Importance matrices: llama-imatrix's GGUF and legacy files read and written, and ``--imatrix`` on convert/plan
giving llama-quantize ``--imatrix``'s bytes (recorded once by tests/core/data/make_imatrix_fixtures.py)."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from workbench import WorkbenchError
from workbench.cli import main
from workbench.convert import requantize_gguf
from workbench.errors import FormatError
from workbench.optimize.imatrix import Imatrix, tensor_weights
from workbench.progress import run

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_imatrix_fixtures import DAT_FILE, FOLDER, GGUF_FILE, build_model  # noqa: E402
from make_requant_fixtures import first_difference, sha256_file, summary  # noqa: E402

RECORDED = json.loads((DATA / "llama_quantize_imatrix.json").read_text(encoding="utf-8"))["imatrix"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def _check(out: Path, case: dict, preset: str) -> None:
    expected = case["presets"][preset]
    if sha256_file(out) != expected["sha256"]:
        got = summary(out)
        pytest.fail(f"{preset}: not llama-quantize --imatrix's file ({got['size']} bytes, expected "
                    f"{expected['size']}): " + first_difference({**expected, "keys": case["keys"],
                                                                  "tensors": case["tensors"]}, got))


# every preset our plan supports whose types take quant weights, through the CLI as a user runs it
@pytest.mark.parametrize("imatrix,preset", [(GGUF_FILE, p) for p in RECORDED[GGUF_FILE]["presets"]] +
                         [(DAT_FILE, p) for p in RECORDED[DAT_FILE]["presets"]])
def test_convert_with_imatrix_is_byte_identical_to_llama_quantize(tiny, imatrix, preset, tmp_path, monkeypatch):
    monkeypatch.chdir(FOLDER)  # the file name as given is recorded in quantize.imatrix.file, as llama-quantize does
    out = tmp_path / "out.gguf"
    assert main(["convert", str(tiny), "-o", str(out), "--type", preset, "--imatrix", imatrix, "-q"]) == 0
    _check(out, RECORDED[imatrix], preset)


def test_hf_conversion_with_imatrix_gives_llama_quantize_tensors(tiny, tmp_path):
    """HF -> GGUF with --imatrix: the model exported to a safetensors folder and converted back gives every
    tensor's type and bytes of llama-quantize --imatrix on the F32 GGUF (the header is the converter's)."""
    assert main(["export", str(tiny), "-o", str(tmp_path / "hf"), "--type", "f32", "-q"]) == 0
    out = tmp_path / "out.gguf"
    assert main(["convert", str(tmp_path / "hf"), "-o", str(out), "--type", "Q4_K_M", "--imatrix",
                 str(FOLDER / DAT_FILE), "-q"]) == 0
    case, got = RECORDED[DAT_FILE], summary(out)

    def per_tensor(names, types, digests):
        return {n: (t, digests[8 * i:8 * i + 8]) for i, (n, t) in enumerate(zip(names, types.split()))}

    expected = per_tensor(case["tensors"], case["presets"]["Q4_K_M"]["types"], case["presets"]["Q4_K_M"]["digests"])
    ours = per_tensor(got["tensors"], got["types"], got["digests"])
    assert sorted(ours) == sorted(expected)
    assert [n for n in case["tensors"] if ours[n] != expected[n]] == []


def test_gguf_and_legacy_files_hold_the_same_imatrix():
    g, d = Imatrix.load(FOLDER / GGUF_FILE), Imatrix.load(FOLDER / DAT_FILE)
    assert (g.legacy, d.legacy) == (False, True)
    assert sorted(g.entries) == sorted(d.entries) and len(g) == 14
    assert (g.chunk_count, g.chunk_size, g.datasets) == (2, 128, ["calibration.txt"])
    assert (d.chunk_count, d.datasets) == (2, ["calibration.txt"])
    r = GGUFReader(FOLDER / GGUF_FILE)  # gguf-py's reading of llama-imatrix's file, not ours
    for name in g.entries:
        sums = r.get_tensor([t.name for t in r.tensors].index(name + ".in_sum2")).data.reshape(-1)
        count = float(r.get_tensor([t.name for t in r.tensors].index(name + ".counts")).data[0])
        np.testing.assert_array_equal(g.entries[name].sums[0], sums)
        assert g.entries[name].counts.tolist() == [256] and count == 256.0  # 2 chunks of 128 tokens
        assert d.entries[name].counts.tolist() == [2]  # legacy: ncall = chunks
        np.testing.assert_allclose(d.weights_for(name), g.weights_for(name), rtol=2e-7)
        np.testing.assert_array_equal(g.weights_for(name)[0], sums / np.float32(256))


def test_writing_gives_llama_imatrix_bytes(tmp_path):
    out = Imatrix.load(FOLDER / GGUF_FILE).save(tmp_path / "copy.imatrix.gguf")
    assert out.read_bytes() == (FOLDER / GGUF_FILE).read_bytes()
    legacy = Imatrix.load(FOLDER / DAT_FILE)
    back = Imatrix.load(legacy.save(tmp_path / "from-dat.gguf"))
    for name in legacy.entries:  # the weights survive the change of format
        np.testing.assert_array_equal(back.weights_for(name), legacy.weights_for(name))


def test_moe_weights_per_expert_and_counts_zero(tmp_path):
    sums = np.array([[4, 8], [3, 6], [5, 5]], dtype=np.float32)
    im = Imatrix({"blk.0.ffn_up_exps.weight": _entry(sums, [2, 3, 0])}, 1, 4, ["t.txt"])
    path = im.save(tmp_path / "moe.gguf")
    r = GGUFReader(path)
    assert [(t.name, t.shape.tolist()) for t in r.tensors] == [("blk.0.ffn_up_exps.weight.in_sum2", [2, 3]),
                                                              ("blk.0.ffn_up_exps.weight.counts", [1, 3])]
    w = Imatrix.load(path).weights_for("blk.0.ffn_up_exps.weight")
    np.testing.assert_array_equal(w, [[2, 4], [1, 2], [1, 1]])  # sums / count; 1 for an expert without tokens
    # three experts of 2 rows x 256 columns: the lookup checks n_cols x n_expert
    with pytest.raises(FormatError, match="blk.0.ffn_up_exps.weight has 6 values but the tensor needs 768"):
        tensor_weights(Imatrix.load(path), "blk.0.ffn_up_exps.weight", (3, 2, 256), "Q4_K")


@pytest.mark.parametrize("qtype", ["Q4_K", "IQ4_NL"])
def test_moe_blocks_use_each_rows_expert_weights(qtype):
    """llama-quantize gives row r of a 3-D tensor expert r // rows_per_expert's slice: a block of rows 2..8 of
    4 experts x 3 rows (crossing two expert boundaries) quantizes as each row alone with its expert's weights."""
    from builders import exact_values

    from workbench import kernels
    from workbench.optimize.imatrix import submit_rows

    x = exact_values((12, 256), 11)
    w = np.abs(exact_values((4, 256), 12)) + np.float32(0.1)
    parts = submit_rows(x[2:9], qtype, w, name="blk.0.ffn_up_exps.weight", row0=2, rows_per_expert=3)
    assert [n for _h, n in parts] == [256, 3 * 256, 3 * 256]
    got = np.concatenate([h.result() for h, _n in parts])
    expected = np.concatenate([kernels.quantize(x[r:r + 1], qtype, w[r // 3]) for r in range(2, 9)])
    assert got.tobytes() == expected.tobytes()
    assert got.tobytes() != kernels.quantize(x[2:9], qtype, w[0]).tobytes()


def test_wrong_length_entry_is_refused_naming_the_tensor(tiny, tmp_path):
    im = Imatrix.load(FOLDER / GGUF_FILE)
    e = im.entries["blk.1.ffn_down.weight"]
    e.sums = e.sums[:, :256]
    with pytest.raises(WorkbenchError, match=r"blk\.1\.ffn_down\.weight has 256 values but the tensor needs 512"):
        run(requantize_gguf(tiny, tmp_path / "o.gguf", "Q4_K_M", imatrix=im))
    assert not (tmp_path / "o.gguf").exists()
    # llama-quantize quantizes token_embd without weights when its entry has the wrong size (a tied output's)
    assert tensor_weights({"token_embd.weight": np.ones(5)}, "token_embd.weight", (256, 256), "Q4_K") is None
    assert tensor_weights({"output.weight": np.ones(256)}, "output.weight", (256, 256), "Q8_0") is None  # none used


def test_q2_k_s_needs_an_imatrix(tiny, tmp_path, capsys):
    assert main(["convert", str(tiny), "-o", str(tmp_path / "o.gguf"), "--type", "Q2_K_S"]) == 1
    assert "Q2_K_S needs an importance matrix" in capsys.readouterr().err
    im = Imatrix.load(FOLDER / GGUF_FILE)
    del im.entries["blk.0.attn_q.weight"]
    with pytest.raises(WorkbenchError, match="no entry for tensor blk.0.attn_q.weight"):
        run(requantize_gguf(tiny, tmp_path / "o.gguf", "Q2_K_S", imatrix=im))


@pytest.mark.parametrize("preset", ["Q4_0", "IQ4_NL"])
def test_plan_follows_imatrix_presence(preset, tmp_path, monkeypatch, capsys):
    """`plan --imatrix` gives llama-quantize --dry-run --imatrix's types (recorded by make_plan_fixtures.py on a
    16-layer llama, where the first eighth of ffn_down changes with an imatrix); without it, the plain case's."""
    from builders import plan_case_tensors, shape_only_model, write_imatrix_gguf

    from workbench import cli

    plans = json.loads((DATA / "llama_quantize_plans.json").read_text())
    decode = {c: t for t, c in plans["codes"].items()}
    spec = plans["cases"]["llama16-gqa4-imatrix"]["spec"]
    names = [n for n, _s, _d in plan_case_tensors(spec)]
    imatrix = tmp_path / "i.gguf"
    write_imatrix_gguf(imatrix, {n: s[-1] for n, s, _ in plan_case_tensors(spec) if "ffn_down" in n})
    monkeypatch.setattr(cli, "_open", lambda path, args: shape_only_model("llama16-gqa4", spec))
    for case, extra in (("llama16-gqa4", []), ("llama16-gqa4-imatrix", ["--imatrix", str(imatrix)])):
        assert main(["plan", "model.gguf", "--type", preset, "--json", *extra]) == 0
        got = {t["gguf_name"]: t["type"] for t in json.loads(capsys.readouterr().out)["tensors"]}
        expected = [decode[c] for c in plans["cases"][case]["types"][preset]]
        assert [got[n] for n in names] == expected, case
    assert got["blk.1.ffn_down.weight"] == {"Q4_0": "Q4_1", "IQ4_NL": "IQ4_NL"}[preset]  # the rule really fired


# -- hostile files ------------------------------------------------------------------------------------------

def _entry(sums, counts):
    from workbench.optimize.imatrix import ImatrixEntry

    return ImatrixEntry(np.asarray(sums, np.float32), np.asarray(counts, np.int64))


def _legacy(entries, tail=b"") -> bytes:
    out = struct.pack("<i", len(entries))
    for name, ncall, vals in entries:
        out += struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, len(vals)) + \
            np.asarray(vals, "<f4").tobytes()
    return out + tail


@pytest.mark.parametrize("data,message", [
    (struct.pack("<i", 0x7FFFFFFF), "entry count 2147483647 does not fit"),
    (struct.pack("<ii", 1, 0x7FFFFFF0) + b"x" * 12, "entry #1: name length 2147483632 is invalid"),
    (_legacy([(b"a.weight", 1, [1.0])])[:-2], "entry a.weight: 1 values do not fit the 2 bytes left"),
    (_legacy([(b"a.weight", 1, [1.0])]).replace(struct.pack("<i", 1) + struct.pack("<f", 1.0),
                                                struct.pack("<i", 0x40000000) + struct.pack("<f", 1.0)),
     "entry a.weight: 1073741824 values do not fit"),
    (_legacy([(b"a.weight", 1, [np.nan])]), "entry a.weight holds a NaN"),
    (_legacy([(b"a.weight", 1, [1.0]), (b"a.weight", 1, [1.0])]), "entry a.weight appears twice"),
    (_legacy([(b"a.weight", 1, [1.0])], struct.pack("<ii", 2, 50) + b"short"), "the dataset name: 50 bytes needed"),
    (b"\xff\xfe", "not an importance matrix"),
])
def test_hostile_legacy_files_are_refused_in_one_line(tmp_path, data, message):
    path = tmp_path / "bad.dat"
    path.write_bytes(data)
    with pytest.raises(FormatError) as err:
        Imatrix.load(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_hostile_gguf_files_are_refused(tmp_path, tiny):
    import gguf

    with pytest.raises(FormatError, match="holds no importance matrix"):
        Imatrix.load(tiny)  # a model, not an imatrix

    def write(name, tensors, keys=True):
        w = gguf.GGUFWriter(tmp_path / name, "imatrix")
        if keys:
            w.add_array("imatrix.datasets", ["x"])
            w.add_uint32("imatrix.chunk_count", 1)
            w.add_uint32("imatrix.chunk_size", 4)
        for n, v in tensors.items():
            w.add_tensor(n, v)
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        return tmp_path / name

    ok = {"a.weight.in_sum2": np.ones(32, np.float32), "a.weight.counts": np.ones(1, np.float32)}
    assert Imatrix.load(write("ok.gguf", ok)).weights_for("a.weight").shape == (1, 32)
    cases = [({"a.weight.in_sum2": ok["a.weight.in_sum2"]}, "entry a.weight has sums but no .counts"),
             ({**ok, "a.weight.counts": np.ones(3, np.float32)}, "entry a.weight: sums of shape"),
             ({**ok, "a.weight.in_sum2": np.ones(32, np.float16)}, "a.weight.in_sum2 is F16"),
             ({**ok, "a.weight.counts": np.array([np.inf], np.float32)}, "a.weight holds a NaN or infinite"),
             ({**ok, "a.weight.counts": np.array([-1], np.float32)}, "a.weight has a negative")]
    for i, (tensors, message) in enumerate(cases):
        with pytest.raises(FormatError, match=message):
            Imatrix.load(write(f"bad{i}.gguf", tensors))
    with pytest.raises(FormatError, match="imatrix.datasets is missing"):
        Imatrix.load(write("nokeys.gguf", ok, keys=False))


def test_the_analysis_weighted_by_an_imatrix_measures_the_converted_files_error(tiny, tmp_path):
    """Analyze with --imatrix's weights: each tensor's RMSE equals the error of the file convert --imatrix writes
    (llama-quantize's bytes, checked above), read back with gguf-py's dequantizer."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from workbench import open_model
    from workbench.analysis import analyze_plans
    from workbench.plan import Plan

    im = Imatrix.load(FOLDER / GGUF_FILE)
    out = tmp_path / "q.gguf"
    assert main(["convert", str(tiny), "-o", str(out), "--type", "Q4_K_M", "--imatrix", str(FOLDER / GGUF_FILE),
                 "-q"]) == 0
    src, got = GGUFReader(tiny), GGUFReader(out)
    want = {}
    for t in got.tensors:
        x = dequantize(next(s for s in src.tensors if s.name == t.name).data, next(
            s for s in src.tensors if s.name == t.name).tensor_type).astype(np.float64)
        y = dequantize(t.data, t.tensor_type).astype(np.float64)
        want[t.name] = float(np.sqrt(np.mean((y - x) ** 2)))
    model = open_model(tiny)
    plan = Plan(model, "Q4_K_M", has_imatrix=True)
    weighted = run(analyze_plans({"w": plan}, imatrix=im))["w"]
    plain = run(analyze_plans({"p": Plan(model, "Q4_K_M")}))["p"]
    assert {s.name for s in weighted} == set(want)
    for s in weighted:
        assert s.rmse == pytest.approx(want[s.name], rel=1e-5, abs=1e-12), s.name
    differs = [a.name for a, b in zip(weighted, plain) if a.rmse != b.rmse]
    assert differs  # positive control: the weights change what is measured
