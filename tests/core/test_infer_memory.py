"""Weights held in the bytes of their level (StoredTensor), the memory budget and its CLI option.

References outside the code under test: ggml's own dequantizer and quantizer (tests/ggml_oracle.py), the GGUF's
tensor table, gguf_to_hf.permute (convert_hf_to_gguf's row order), hand-computed sizes.
"""
from __future__ import annotations

import numpy as np
import pytest

from fetch_models import real_model
from ggml_oracle import ggml
from workbench.convert import gguf_to_hf
from workbench.errors import WorkbenchError
from workbench.formats import open_model
from workbench.infer.weights import StoredTensor, default_memory_budget, load_weights
from workbench.progress import run
from workbench.units import parse_size

Q_PROJ = ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight")
K_PROJ = ("blk.5.attn_k.weight", "model.layers.5.self_attn.k_proj.weight")
DOWN = ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight")
EMBED = ("token_embd.weight", "model.embed_tokens.weight")


@pytest.fixture(scope="module")
def smol():
    return open_model(real_model("smollm2"))


def _gguf_order(model, gguf_name: str, x: np.ndarray) -> np.ndarray:
    heads = gguf_to_hf.qk_heads(model, gguf_name)
    return gguf_to_hf.permute(x, heads) if heads else x


def _views_file(model, gguf_name: str, data: np.ndarray) -> bool:
    return np.shares_memory(data, model.tensor(gguf_name).raw())


def test_stored_level_is_a_view_of_the_file_and_decodes_as_ggml_does(smol):
    g = ggml()
    w = run(load_weights(smol, keep_quantized=True))
    for gguf_name, hf_name in (Q_PROJ, K_PROJ, DOWN, EMBED):
        info = smol.info(gguf_name)
        st = w.tensors[hf_name]
        assert isinstance(st, StoredTensor) and st.qtype == info.dtype and st.shape == info.shape
        assert _views_file(smol, gguf_name, st.data)  # no copy of the mapped bytes
        want = g.dequantize(smol.tensor(gguf_name).raw(), info.dtype, info.shape[-1])
        got = st.to_float32()
        assert got.dtype == np.float32 and got.shape == info.shape
        assert _gguf_order(smol, gguf_name, got).tobytes() == want.tobytes()  # bit for bit, un-permuted
        ids = [3, 0, info.shape[0] - 1]
        assert w[hf_name][ids].tobytes() == st.rows(ids).tobytes()
        blocks = list(st.iter_row_blocks(100 * info.shape[-1]))  # whole heads per block for Q/K
        assert [a for a, _b in blocks] == list(range(0, info.shape[0], blocks[0][1].shape[0])) and len(blocks) > 1
        assert np.concatenate([b for _a, b in blocks]).tobytes() == got.tobytes()
    # the old float32 load gives the same values, tensor for tensor
    old = run(load_weights(smol))
    assert old.tensors.keys() == w.tensors.keys()
    for name, a in old.tensors.items():
        assert isinstance(a, np.ndarray)
        if name.startswith(("model.layers.0.", "model.layers.29.", "model.norm")):  # every kind of tensor
            assert np.array_equal(w[name], a), name
    # the bytes held are the GGUF's tensor bytes, a fraction of float32
    assert w.nbytes == sum(t.nbytes for t in smol.tensors) == 96_576_768
    assert old.nbytes == 4 * smol.n_params
    assert w.nbytes < old.nbytes / 5


def test_planned_level_is_quantized_once_as_ggml_quantizes(smol):
    g = ggml()
    w = run(load_weights(smol, "Q4_K_M", keep_quantized=True))
    from workbench.plan import Plan

    plan = Plan(smol, "Q4_K_M")
    seen = set()
    for gguf_name, hf_name in (Q_PROJ, K_PROJ, DOWN, EMBED, ("blk.2.ffn_gate.weight",
                                                           "model.layers.2.mlp.gate_proj.weight")):
        info = smol.info(gguf_name)
        st = w.tensors[hf_name]
        qtype = plan.type_of(gguf_name)
        assert st.qtype == w.types[hf_name]
        cols = info.shape[-1]
        source = g.dequantize(smol.tensor(gguf_name).raw(), info.dtype, cols)
        if qtype == info.dtype:  # kept as stored
            assert _views_file(smol, gguf_name, st.data)
            want = source
        else:
            assert st.qtype == qtype and not _views_file(smol, gguf_name, st.data)
            q = g.quantize(source, qtype)
            assert np.array_equal(st.data, q)  # the bytes a file of this level holds
            want = g.dequantize(q, qtype, cols)
        seen.add(st.qtype)
        assert _gguf_order(smol, gguf_name, st.to_float32()).tobytes() == want.tobytes()
    assert {"Q4_K", "Q5_0", "Q8_0"} <= seen  # a K type, a legacy type and the stored one
    # the bytes held: each matrix at its planned type (ggml's row sizes), the vectors as float32
    want = 0
    for t in smol.tensors:
        qtype = plan.type_of(t.name)
        if len(t.shape) >= 2:
            want += g.row_size(qtype if qtype != "F32" else t.dtype, t.shape[-1]) * (t.n_params // t.shape[-1])
        else:
            want += 4 * t.n_params
    assert w.nbytes == want
    assert abs(w.nbytes - plan.nbytes) < 0.01 * plan.nbytes


def test_planned_f32_keeps_the_stored_bytes(smol):
    w = run(load_weights(smol, "F32", keep_quantized=True))
    st = w.tensors[DOWN[1]]
    assert st.qtype == smol.info(DOWN[0]).dtype and _views_file(smol, DOWN[0], st.data)
    assert w.file_types[DOWN[1]] == "F32"  # the level still says F32 (llama-cpu numerics)


def test_float16_source_stays_a_view():
    tiny = open_model(real_model("tinycoder"))
    w = run(load_weights(tiny, keep_quantized=True))
    st = w.tensors["model.layers.1.mlp.down_proj.weight"]
    raw = tiny.tensor("blk.1.ffn_down.weight").raw()
    assert st.qtype == "F16" and np.shares_memory(st.data, raw)
    assert np.array_equal(w["model.layers.1.mlp.down_proj.weight"], raw.astype(np.float32))
    assert isinstance(w.tensors["model.norm.weight"], np.ndarray)  # vectors stay float32


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("500 MB") == 500_000_000
    assert parse_size("1.5GiB") == 1_610_612_736
    assert parse_size("2g") == 2_147_483_648
    assert parse_size("4096") == 4096
    for bad in ("", "two GB", "5 XB", "0MB", "-1GB", "1e9"):
        with pytest.raises(WorkbenchError):
            parse_size(bad)


def test_default_budget_is_half_the_available_memory(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    assert default_memory_budget(info) == 4_096_000_000
    info.write_text("MemAvailable:    100 kB\n")
    assert default_memory_budget(info) == 256 << 20  # a floor
    assert default_memory_budget(tmp_path / "missing") > 256 << 20  # the physical memory instead


def test_cli_budget_option_reaches_the_engine(monkeypatch, capsys, tmp_path):
    import workbench.infer.engines as engines
    from workbench.cli import main

    seen = []

    def spy(model, plan=None, *, cancel=None, memory_budget=None, **options):
        seen.append(memory_budget)
        raise WorkbenchError("stop here")
        yield  # pragma: no cover

    import workbench.infer.weights as weights

    monkeypatch.setattr(engines, "load_engine", spy)
    monkeypatch.setattr(weights, "default_memory_budget", lambda: 123_456_789)
    tiny = str(real_model("tinycoder"))
    assert main(["generate", tiny, "--prompt", "x", "--memory-budget", "500MB"]) == 1
    assert main(["generate", tiny, "--prompt", "x"]) == 1  # default: auto
    assert seen == [500_000_000, 123_456_789]
    assert main(["generate", tiny, "--prompt", "x", "--memory-budget", "lots"]) == 1
    err = capsys.readouterr().err
    assert "--memory-budget 'lots' is not a size" in err and len(seen) == 2  # refused before loading
    assert main(["compare", tiny, "--levels", "Q8_0", "--memory-budget", "1.5GiB", "--no-generate"]) == 1
    assert "stop here" in capsys.readouterr().err


def test_a_small_budget_gives_the_same_logits(smol):
    from workbench.infer.engines import load_engine

    ids = [1, 504, 3575, 282, 4649, 314]
    want = run(load_engine(smol)).start(ids)  # float32 weights, no budget
    # 20 MB: about one layer's float32 weights (the whole model is 538 MB as float32)
    got = run(load_engine(smol, memory_budget=20_000_000)).start(ids)
    assert np.array_equal(got, want)


def test_cli_generate_with_a_small_budget_gives_the_same_tokens(capsys):
    from workbench.cli import main
    from workbench.infer.engines import load_engine
    from workbench.infer.generate import generate_text
    from workbench.infer.tokenizer import load_tokenizer

    tiny = open_model(real_model("tinycoder"))  # F16 weights kept as views of the file
    expect = generate_text(run(load_engine(tiny)), load_tokenizer(tiny), "def add(a, b):", max_tokens=8, chat=False)
    assert main(["generate", str(tiny.path), "--prompt", "def add(a, b):", "--no-chat", "--max-tokens", "8",
                 "--memory-budget", "1000"]) == 0
    out = capsys.readouterr().out
    assert out == expect + "\n" and len(expect) > 4


def test_a_budget_pins_the_first_layers_so_every_pass_hits_in_proportion(smol):
    """Each forward visits layers 0..29 then the head: a least-recently-used cache smaller than the model would
    never hit.  The first k layers that fit (beside room for the one streamed) are kept and hit on every pass;
    the head (113 MB as float32, more than the room left) is multiplied block by block, never held whole."""
    from workbench.infer.engines import load_engine

    ids = [1, 504, 3575, 282]
    for k in (3, 11):
        budget = (k + 1) * 14_160_384 + 1000  # one prepared SmolLM2 layer: 14,160,384 bytes of float32
        eng = run(load_engine(smol, memory_budget=budget))
        assert eng._sizes[0] == 14_160_384 and eng.cache.reserve == 14_160_384
        eng.start(ids)
        eng.step(42)
        passes = 2
        assert sorted(eng.cache.items) == list(range(k))  # the first k layers, not the head
        assert eng.cache.hits == k * (passes - 1)
        assert eng.cache.misses == k + (30 - k) * passes
        assert eng.cache.peak <= budget  # pinned + the streamed layer or head block in use
