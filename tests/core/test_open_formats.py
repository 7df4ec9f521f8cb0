"""Opening every supported format: tensors, values, metadata, totals, layers."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from builders import GGUF_TYPES, build_hf_folder, build_peft_adapter, write_gguf_model

import workbench
from workbench.formats.safetensors import read_header, write_safetensors


def test_hf_folder_single(hf_folder):
    folder, expected = hf_folder
    m = workbench.open_model(folder)
    assert m.format == "safetensors"
    assert m.architecture == "LlamaForCausalLM"
    assert [t.name for t in m.tensors] == list(expected)  # on-disk order
    dtypes = {t.name: t.dtype for t in m.tensors}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == "BF16"
    assert dtypes["model.layers.0.mlp.up_proj.weight"] == "F16"
    assert dtypes["model.norm.weight"] == "F32"
    for name, want in expected.items():
        got = m.tensor(name).to_float32()
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert m.n_params == sum(a.size for a in expected.values())
    assert m.nbytes == sum(t.nbytes for t in m.tensors)
    assert 16 < m.bits_per_weight < 32
    assert list(m.metadata)[:2] == ["config.json", "generation_config.json"]
    assert m.meta("hidden_size") == 64
    tok = {e.key: e.value for e in m.metadata["tokenizer"]}
    assert tok["model"] == "BPE" and tok["vocab size"] == 30 and tok["merges"] == 1
    assert tok["bos_token"] == "<s>" and "chat_template" in tok
    assert m.meta("format", group="safetensors") == "pt"
    layers = m.layers()
    assert list(layers) == [None, "model.layers.0", "model.layers.1"]
    assert [t.name for t in layers[None]] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]


def test_single_file_opened_directly(hf_folder):
    folder, expected = hf_folder
    m = workbench.open_model(folder / "model.safetensors")
    assert m.format == "safetensors" and len(m.tensors) == len(expected)
    assert m.architecture == "LlamaForCausalLM"  # config.json beside it is picked up


def test_sharded_folder_equals_single(tmp_path):
    expected = build_hf_folder(tmp_path / "sharded", shards=3)
    m = workbench.open_model(tmp_path / "sharded")
    assert len(m.files) == 4 and m.files[0].name == "model.safetensors.index.json"
    assert sorted(t.name for t in m.tensors) == sorted(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(m.tensor(name).to_float32(), want)
    assert m.meta("total_size", group="index") == sum(t.nbytes for t in m.tensors)
    # opening the index file itself gives the same model
    m2 = workbench.open_model(tmp_path / "sharded" / "model.safetensors.index.json")
    assert [t.name for t in m2.tensors] == [t.name for t in m.tensors]


def test_our_safetensors_match_the_reference_library(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(3)
    arrays = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
              "c": rng.standard_normal(4).astype(np.float16)}
    save_file(arrays, tmp_path / "ref.safetensors")  # reference writer -> our reader
    infos, _ = read_header(tmp_path / "ref.safetensors")
    m = workbench.open_model(tmp_path / "ref.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(m.tensor(k).raw(), v)
    assert {t.name: t.dtype for t in infos} == {"a": "F32", "b": "I64", "c": "F16"}
    write_safetensors(tmp_path / "ours.safetensors", {k: (m.info(k).dtype, v) for k, v in arrays.items()})
    back = load_file(tmp_path / "ours.safetensors")  # our writer -> reference reader
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)


def test_gguf_every_type(gguf_file):
    path, expected = gguf_file
    m = workbench.open_model(path)
    assert m.format == "gguf" and m.architecture == "llama" and m.name == "Fixture Llama"
    assert {t.dtype for t in m.tensors} == set(GGUF_TYPES)
    tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 0.02, "Q5_0": 0.12, "Q5_1": 0.12, "Q4_0": 0.25, "Q4_1": 0.25}
    for name, (tname, x) in expected.items():
        info = m.info(name)
        assert info.dtype == tname and info.shape == x.shape
        got = m.tensor(name).to_float32()
        rms = float(np.sqrt(np.mean((got - x) ** 2)))
        assert rms <= tol[tname], (name, tname, rms)
        if tname == "F32":
            np.testing.assert_array_equal(got, x)
    ftype = next(e for e in m.metadata["GGUF"] if e.key == "general.file_type")
    assert ftype.value == 7 and ftype.decoded == "MOSTLY_Q8_0"
    tok = {e.key: e for e in m.metadata["tokenizer"]}
    assert tok["model"].value == "llama" and tok["vocab size"].value == 5
    assert tok["token types"].value == {"normal": 2, "unknown": 1, "control": 2}
    assert tok["bos token"].decoded == "1 '<s>'"
    assert [k for k in m.layers()][:3] == ["blk.0", "blk.1", "blk.2"]


def test_gguf_split_opened_from_any_shard(tmp_path):
    expected = write_gguf_model(tmp_path / "split.gguf", split_max_tensors=5)
    parts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(parts) == 4 and parts[0].name == "split-00001-of-00004.gguf"
    for part in (parts[0], parts[2]):
        m = workbench.open_model(part)
        assert m.files == parts
        assert sorted(t.name for t in m.tensors) == sorted(expected)
        assert m.meta("split.count") == 4
        name = "blk.7.ffn_up.weight"  # lives in a later shard
        assert m.info(name).file != parts[0]
        assert np.abs(m.tensor(name).to_float32() - expected[name][1]).max() < 0.5
    # opening the folder finds the one split set
    assert len(workbench.open_model(tmp_path).tensors) == len(expected)


def test_bf16_widening_is_exact():
    from workbench.dtypes import bf16_to_f32

    bits = np.array([0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x7FC0], np.uint16)
    out = bf16_to_f32(bits)
    assert out[0] == 1.0 and out[1] == -2.0 and np.isposinf(out[2]) and np.isneginf(out[3])
    assert out[4] == np.float32(2.0 ** -133) and np.signbit(out[5]) and np.isnan(out[6])


def test_f8_decoding():
    from workbench.dtypes import decode

    codes = np.array([0x38, 0x40, 0xB8, 0x7E, 0x7F, 0x01], np.uint8)  # e4m3fn: 1, 2, -1, 448, nan, 2^-9
    out = decode(codes, "F8_E4M3", (6,))
    assert out[:4].tolist() == [1.0, 2.0, -1.0, 448.0] and np.isnan(out[4]) and out[5] == 2.0 ** -9
    e5 = decode(np.array([0x3C, 0x7C, 0x7B], np.uint8), "F8_E5M2", (3,))
    assert e5[0] == 1.0 and np.isposinf(e5[1]) and e5[2] == 57344.0


def test_peft_adapter(tmp_path):
    tensors = build_peft_adapter(tmp_path / "adapter")
    m = workbench.open_model(tmp_path / "adapter")
    assert m.format == "peft" and m.architecture == "LORA adapter"
    assert {t.name for t in m.tensors} == set(tensors)
    adapter = {e.key: e for e in m.metadata["adapter"]}
    assert adapter["r"].value == 4 and adapter["scale"].value == 2.0 and adapter["LoRA pairs"].value == 4
    assert any("loftq_config" in w and "megatron_core" in w for w in m.warnings)
    name = next(iter(tensors))
    np.testing.assert_array_equal(m.tensor(name).to_float32(), tensors[name])


def test_rslora_scale(tmp_path):
    build_peft_adapter(tmp_path / "a", r=16)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["use_rslora"] = True
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    adapter = {e.key: e for e in workbench.open_model(tmp_path / "a").metadata["adapter"]}
    assert adapter["scale"].value == pytest.approx(8 / 4)


def test_pytorch_bin_folder(tmp_path, hf_folder):
    from workbench.formats.torchbin import write_bin

    folder, expected = hf_folder
    out = tmp_path / "bin-model"
    out.mkdir()
    shutil.copy(folder / "config.json", out / "config.json")
    write_bin(out / "pytorch_model.bin", {k: v for k, v in expected.items()})
    m = workbench.open_model(out)
    assert m.format == "pytorch" and m.architecture == "LlamaForCausalLM"
    assert [t.name for t in m.tensors] == list(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(m.tensor(name).to_float32(), want)


def test_iter_open_model_reports_progress(tmp_path):
    build_hf_folder(tmp_path / "s", shards=2)
    steps = []
    gen = workbench.iter_open_model(tmp_path / "s")
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        model = stop.value
    assert isinstance(model, workbench.Model) and steps and steps[-1].done == steps[-1].total


def test_tensor_chunks_cover_every_value(gguf_file):
    path, _ = gguf_file
    m = workbench.open_model(path)
    t = m.tensor("blk.3.ffn_up.weight")  # Q8_0
    chunks = list(t.iter_float32(max_elements=100))
    assert len(chunks) == 8  # one 64-wide row per chunk
    np.testing.assert_array_equal(np.concatenate(chunks), t.to_float32().ravel())


def test_opening_reads_headers_only(gguf_file, monkeypatch):
    """Opening must not touch tensor data: mapping happens on first access."""
    path, _ = gguf_file
    m = workbench.open_model(path)
    assert m._maps == {}
    m.tensor("blk.0.ffn_up.weight").to_float32()
    assert list(m._maps) == [path]


def test_release_drops_mapped_pages_and_data_stays_readable(tmp_path):
    from workbench.formats.safetensors import write_safetensors

    x = np.random.default_rng(4).standard_normal((512, 1024)).astype(np.float32)
    write_safetensors(tmp_path / "big.safetensors", {"w": ("F32", x)})
    m = workbench.open_model(tmp_path / "big.safetensors")

    def rss_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))

    before = rss_kb()
    assert float(m.tensor("w").to_float32().sum()) == pytest.approx(float(x.sum()), rel=1e-4)  # touches 2 MiB
    touched = rss_kb()
    m.release("w")
    assert rss_kb() < touched - 1024 <= touched  # the pages left the process
    np.testing.assert_array_equal(m.tensor("w").to_float32(), x)  # and are read again on demand
    assert before <= touched
