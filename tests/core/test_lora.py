"""LoRA merge: W' = W + scale * (B @ A) against a numpy reference, on the real T5 adapter and small cases."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builders import bf16_bits

import workbench
from workbench.convert.lora import merge_lora
from workbench.errors import Cancelled, WorkbenchError
from workbench.formats.safetensors import write_safetensors
from workbench.progress import run

P = "base_model.model."


def _write_base(folder: Path, tensors: dict[str, tuple[str, np.ndarray]], extra_files: dict[str, str] | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps({"model_type": "test", "torch_dtype": "float32"}))
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
    return folder


def _write_adapter(folder: Path, cfg: dict, tensors: dict[str, np.ndarray], extra_files: dict[str, str] | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    full = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "fan_in_fan_out": False,
            **cfg}
    (folder / "adapter_config.json").write_text(json.dumps(full))
    write_safetensors(folder / "adapter_model.safetensors", {k: ("F32", v) for k, v in tensors.items()})
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
    return folder


def _merge(base, adapter, out, **kw):
    messages = []
    paths = run(merge_lora(base, adapter, out, **kw), lambda p: messages.append(p.message))
    return paths, messages


def _f32(model, name):
    return np.array(model.tensor(name).to_float32())


def _rng_pair(rng, out_f, in_f, r):
    return rng.standard_normal((r, in_f)).astype(np.float32), rng.standard_normal((out_f, r)).astype(np.float32)


def _no_leftovers(parent: Path, out: Path):
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.endswith(".partial")]


# -- the real T5 adapter -------------------------------------------------------------------------

def test_real_t5_lora_merge(tmp_path):
    from fetch_models import real_model

    adapter_dir = real_model("t5-lora")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        pytest.skip(f"cached adapter not found at {adapter_dir}")
    adapter = workbench.open_model(adapter_dir)
    rng = np.random.default_rng(0)
    pairs: dict[str, dict[str, str]] = {}
    for t in adapter.tensors:
        module, which = t.name[len(P):].rsplit(".lora_", 1)
        pairs.setdefault(module, {})[which[0]] = t.name
    assert len(pairs) == 144
    base_t: dict[str, tuple[str, np.ndarray]] = {}
    for module, ab in pairs.items():
        a, b = adapter.tensor(ab["A"]).info, adapter.tensor(ab["B"]).info
        shape = (b.shape[0], a.shape[1])
        base_t[module + ".weight"] = ("F16", rng.standard_normal(shape).astype(np.float16))
    base_t["shared.weight"] = ("F16", rng.standard_normal((32, 1024)).astype(np.float16))
    base_t["encoder.final_layer_norm.weight"] = ("F32", rng.standard_normal(1024).astype(np.float32))
    base_dir = _write_base(tmp_path / "t5-base", base_t)
    out = tmp_path / "merged"

    paths, messages = _merge(base_dir, adapter_dir, out)

    assert {p.name for p in paths} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert (out / "tokenizer.json").read_bytes() == (adapter_dir / "tokenizer.json").read_bytes()
    assert not (out / "adapter_config.json").exists()
    for key in ("loftq_config", "megatron_config", "megatron_core"):
        assert key in messages[-1]
    merged = workbench.open_model(out)
    assert [t.name for t in merged.tensors] == list(base_t)
    for module, ab in pairs.items():
        name = module + ".weight"
        A = adapter.tensor(ab["A"]).to_float32()
        B = adapter.tensor(ab["B"]).to_float32()
        ref = (base_t[name][1].astype(np.float32) + np.float32(2.0) * (B @ A)).astype(np.float16)
        got = merged.tensor(name)
        assert got.info.dtype == "F16"
        np.testing.assert_array_equal(got.raw(), ref, err_msg=name)
        assert not np.array_equal(ref, base_t[name][1])  # the delta really changed something
    for name in ("shared.weight", "encoder.final_layer_norm.weight"):
        assert merged.tensor(name).raw().tobytes() == base_t[name][1].tobytes()
    merged.close()


# -- small synthetic cases -----------------------------------------------------------------------

def _simple(tmp_path, cfg=None, *, name_suffix=".weight", extra_adapter=None):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    keep = rng.standard_normal((3, 6)).astype(np.float32)
    base = _write_base(tmp_path / "base", {"model.layers.0.q_proj.weight": ("F32", w),
                                           "model.norm.weight": ("F32", keep)},
                       {"tokenizer.json": '{"base": true}'})
    A, B = _rng_pair(rng, 8, 6, 4)
    tensors = {f"{P}model.layers.0.q_proj.lora_A{name_suffix}": A, f"{P}model.layers.0.q_proj.lora_B{name_suffix}": B,
               **(extra_adapter or {})}
    adapter = _write_adapter(tmp_path / "adapter", cfg or {}, tensors, {"tokenizer.json": '{"adapter": true}'})
    return base, adapter, w, keep, A, B


def test_plain_scale_default_name_and_base_tokenizer(tmp_path):
    base, adapter, w, keep, A, B = _simple(tmp_path, name_suffix=".default.weight")
    out = tmp_path / "out"
    paths, messages = _merge(base, adapter, out)
    m = workbench.open_model(out)
    np.testing.assert_array_equal(_f32(m, "model.layers.0.q_proj.weight"), w + np.float32(2.0) * (B @ A))
    assert m.tensor("model.norm.weight").raw().tobytes() == keep.tobytes()
    assert (out / "tokenizer.json").read_text() == '{"base": true}'  # the base's own tokenizer wins
    assert "warnings" not in messages[-1]
    assert sorted(p.name for p in paths) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_rslora_scale_and_dtype(tmp_path):
    base, adapter, w, _, A, B = _simple(tmp_path, {"use_rslora": True, "r": 4, "lora_alpha": 8})
    out = tmp_path / "out"
    _merge(base, adapter, out, dtype="F16")
    m = workbench.open_model(out)
    t = m.tensor("model.layers.0.q_proj.weight")
    assert t.info.dtype == "F16" and m.tensor("model.norm.weight").info.dtype == "F16"
    np.testing.assert_array_equal(t.raw(), (w + np.float32(8 / 2) * (B @ A)).astype(np.float16))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"


def test_rank_and_alpha_pattern(tmp_path):
    base, adapter, w, _, A, B = _simple(tmp_path, {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"q_proj": 6}})
    out = tmp_path / "out"
    _merge(base, adapter, out)
    m = workbench.open_model(out)
    np.testing.assert_array_equal(_f32(m, "model.layers.0.q_proj.weight"), w + np.float32(3.0) * (B @ A))


def test_fan_in_fan_out(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 8)).astype(np.float32)  # Conv1D: [in, out]
    A, B = _rng_pair(rng, 8, 6, 4)  # A [r, in], B [out, r]
    base = _write_base(tmp_path / "base", {"h.0.attn.c_attn.weight": ("F32", w)})
    adapter = _write_adapter(tmp_path / "adapter", {"fan_in_fan_out": True, "target_modules": ["c_attn"]},
                             {f"{P}h.0.attn.c_attn.lora_A.weight": A, f"{P}h.0.attn.c_attn.lora_B.weight": B})
    out = tmp_path / "out"
    _merge(base, adapter, out)
    m = workbench.open_model(out)
    np.testing.assert_allclose(_f32(m, "h.0.attn.c_attn.weight"), w + np.float32(2.0) * (B @ A).T, rtol=0, atol=1e-5)


def test_modules_to_save_replaces_base_tensor(tmp_path):
    rng = np.random.default_rng(3)
    head = rng.standard_normal((2, 6)).astype(np.float32)
    base, adapter, w, _, A, B = _simple(tmp_path, {"modules_to_save": ["score"]},
                                       extra_adapter={f"{P}score.weight": head})
    # the base keeps its own score in BF16: the replacement is written in the base's type
    write_safetensors(base / "model.safetensors", {
        "model.layers.0.q_proj.weight": ("F32", w), "score.weight": ("BF16", np.zeros((2, 6), np.uint16))})
    out = tmp_path / "out"
    _merge(base, adapter, out)
    m = workbench.open_model(out)
    assert m.tensor("score.weight").info.dtype == "BF16"
    np.testing.assert_array_equal(m.tensor("score.weight").raw(), bf16_bits(head))  # the tests' own rounding
    np.testing.assert_array_equal(_f32(m, "model.layers.0.q_proj.weight"), w + np.float32(2.0) * (B @ A))


def test_sharded_output_and_adapter_tokenizer_fallback(tmp_path):
    base, adapter, w, keep, A, B = _simple(tmp_path)
    (base / "tokenizer.json").unlink()
    out = tmp_path / "out"
    paths, _ = _merge(base, adapter, out, max_shard_size=100)
    names = sorted(p.name for p in paths)
    assert "model.safetensors.index.json" in names and "model-00001-of-00002.safetensors" in names
    assert (out / "tokenizer.json").read_text() == '{"adapter": true}'
    m = workbench.open_model(out)
    np.testing.assert_array_equal(_f32(m, "model.layers.0.q_proj.weight"), w + np.float32(2.0) * (B @ A))
    np.testing.assert_array_equal(_f32(m, "model.norm.weight"), keep)


def test_missing_base_module_is_named(tmp_path):
    rng = np.random.default_rng(4)
    A, B = _rng_pair(rng, 8, 6, 4)
    base, adapter, *_ = _simple(tmp_path, extra_adapter={f"{P}model.layers.0.v_proj.lora_A.weight": A,
                                                         f"{P}model.layers.0.v_proj.lora_B.weight": B})
    out = tmp_path / "out"
    with pytest.raises(WorkbenchError, match=r"model\.layers\.0\.v_proj"):
        _merge(base, adapter, out)
    _no_leftovers(tmp_path, out)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    base, adapter, w, *_ = _simple(tmp_path)
    write_safetensors(base / "model.safetensors", {"model.layers.0.q_proj.weight": ("F32", np.zeros((8, 5), np.float32))})
    out = tmp_path / "out"
    with pytest.raises(WorkbenchError) as err:
        _merge(base, adapter, out)
    text = str(err.value)
    assert "model.layers.0.q_proj.weight" in text and "(8, 5)" in text and "(8, 6)" in text
    _no_leftovers(tmp_path, out)


def test_cancel_and_close_leave_nothing(tmp_path):
    base, adapter, *_ = _simple(tmp_path)
    out = tmp_path / "out"
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        _merge(base, adapter, out, cancel=cancel)
    _no_leftovers(tmp_path, out)

    job = merge_lora(base, adapter, out)
    next(job)
    next(job)
    job.close()  # the caller drops the job mid-way
    _no_leftovers(tmp_path, out)


def test_no_overwrite_without_flag(tmp_path):
    base, adapter, w, _, A, B = _simple(tmp_path)
    out = tmp_path / "out"
    _merge(base, adapter, out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(WorkbenchError, match="already holds"):
        _merge(base, adapter, out)
    assert (out / "model.safetensors").read_bytes() == before
    _merge(base, adapter, out, overwrite=True, dtype="BF16")
    assert workbench.open_model(out).tensor("model.norm.weight").info.dtype == "BF16"


def test_bin_base(tmp_path):
    from workbench.formats.torchbin import write_bin

    base, adapter, w, keep, A, B = _simple(tmp_path)
    (base / "model.safetensors").unlink()
    write_bin(base / "pytorch_model.bin", {"model.layers.0.q_proj.weight": w, "model.norm.weight": keep})
    out = tmp_path / "out"
    paths, _ = _merge(base, adapter, out)
    assert "model.safetensors" in [p.name for p in paths]
    m = workbench.open_model(out)
    np.testing.assert_array_equal(_f32(m, "model.layers.0.q_proj.weight"), w + np.float32(2.0) * (B @ A))
    np.testing.assert_array_equal(_f32(m, "model.norm.weight"), keep)


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_row_chunks_match_whole_tensor(tmp_path, monkeypatch, fan_in_fan_out):
    import workbench.convert.lora as lora

    monkeypatch.setattr(lora, "CHUNK_ELEMENTS", 20)  # several row blocks per tensor
    rng = np.random.default_rng(5)
    A, B = _rng_pair(rng, 9, 7, 3)
    shape = (7, 9) if fan_in_fan_out else (9, 7)
    w = rng.standard_normal(shape).astype(np.float32)
    base = _write_base(tmp_path / "base", {"l.proj.weight": ("F32", w)})
    adapter = _write_adapter(tmp_path / "adapter", {"fan_in_fan_out": fan_in_fan_out, "r": 3, "lora_alpha": 6},
                             {f"{P}l.proj.lora_A.weight": A, f"{P}l.proj.lora_B.weight": B})
    out = tmp_path / "out"
    _merge(base, adapter, out)
    delta = B @ A
    ref = w + np.float32(2.0) * (delta.T if fan_in_fan_out else delta)
    np.testing.assert_allclose(_f32(workbench.open_model(out), "l.proj.weight"), ref, rtol=0, atol=1e-5)


def test_dora_is_refused_and_new_keys_warned(tmp_path):
    from workbench.errors import UnsupportedError

    base, adapter, *_ = _simple(tmp_path, {"use_dora": True})
    with pytest.raises(UnsupportedError, match="DoRA"):
        _merge(base, adapter, tmp_path / "out")
    _no_leftovers(tmp_path, tmp_path / "out")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(use_dora=False, some_future_key={"x": 1}, lora_bias=False)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    _, messages = _merge(base, adapter, tmp_path / "out")
    assert "some_future_key" in messages[-1] and "lora_bias" not in messages[-1]
