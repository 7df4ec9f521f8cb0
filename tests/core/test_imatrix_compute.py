"""`workbench imatrix`: our engine's importance matrix against llama-imatrix's recorded output, the calibration
split, and `compare --imatrix` (levels quantized as `convert --imatrix` makes them)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.errors import Cancelled
from workbench.optimize.imatrix import Imatrix
from workbench.optimize.imatrix_compute import compute_imatrix, load_calibration, split_calibration
from workbench.progress import run

DATA = Path(__file__).parent / "data"
sys.path[:0] = [str(DATA / "imatrix"), str(Path(__file__).parents[1])]
from make_engine_imatrix_ref import REF_FILE, TEXT_FILE, TINY_CHUNKS, TINY_CTX, tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return tiny_gguf(tmp_path_factory.mktemp("tiny_llama"))


def test_engine_imatrix_equals_llama_imatrix(tiny_llama):
    ref = Imatrix.load(REF_FILE)
    ours = run(compute_imatrix(tiny_llama, TEXT_FILE.read_text(encoding="utf-8"), TINY_CTX, TINY_CHUNKS,
                               process_output=True))
    assert sorted(ours.entries) == sorted(ref.entries)  # q/k/v, o, gate/up, down of each layer and output
    assert (ours.chunk_count, ours.chunk_size) == (ref.chunk_count, ref.chunk_size) == (TINY_CHUNKS, TINY_CTX)
    for name, e in ref.entries.items():
        o = ours.entries[name]
        assert o.sums.shape == e.sums.shape, name
        np.testing.assert_array_equal(o.counts, e.counts, err_msg=name)  # every token of every chunk
        rel = np.linalg.norm(ours.weights_for(name) - ref.weights_for(name)) / np.linalg.norm(ref.weights_for(name))
        assert rel < 0.01, (name, rel)


def test_cancel_between_chunks_and_progress_per_chunk(tiny_llama):
    text = TEXT_FILE.read_text(encoding="utf-8")
    seen = []
    with pytest.raises(Cancelled):
        for p in compute_imatrix(tiny_llama, text, 32, 3, cancel=lambda: any("Chunk 2/3" in m for m in seen)):
            seen.append(p.message)
    assert [m for m in seen if m.startswith("Chunk")] == ["Chunk 1/3 (32 tokens)", "Chunk 2/3 (32 tokens)"]


def test_moe_experts_count_only_their_routed_tokens():
    """qwen3moe: each expert's sums are over the tokens routed to it, so over all experts they add up to top_k
    times the router's (which sees every token), and the counts to top_k x tokens."""
    model = DATA / "infer" / "qwen3moe"
    cfg = json.loads((model / "config.json").read_text())
    text = (DATA / "imatrix" / "tiny_llama_text.txt").read_text(encoding="utf-8")
    im = run(compute_imatrix(model, text, 16, 2))
    k = cfg["num_experts_per_tok"]
    for i in range(cfg["num_hidden_layers"]):
        router = im.entries[f"blk.{i}.ffn_gate_inp.weight"]
        gate, up = im.entries[f"blk.{i}.ffn_gate_exps.weight"], im.entries[f"blk.{i}.ffn_up_exps.weight"]
        down = im.entries[f"blk.{i}.ffn_down_exps.weight"]
        assert router.counts.tolist() == [32] and gate.n_mat == down.n_mat > 1
        assert gate.counts.sum() == k * 32 and (gate.counts == down.counts).all()
        assert gate.counts.max() <= 32 and (gate.counts > 0).sum() > k  # a token picks an expert at most once
        np.testing.assert_array_equal(gate.sums, up.sums)  # one input, two weights
        np.testing.assert_allclose(gate.sums.sum(axis=0), k * router.sums[0], rtol=1e-4)
        assert not np.allclose(gate.sums[0] / max(gate.counts[0], 1), gate.sums[1] / max(gate.counts[1], 1))


def test_split_calibration_is_deterministic_and_disjoint():
    text = "\n\n".join(f"paragraph {i}" for i in range(20))
    train, held = split_calibration(text, 0.2, seed=3)
    assert split_calibration(text, 0.2, seed=3) == (train, held)
    tp, hp = train.split("\n\n"), held.split("\n\n")
    assert len(hp) == 4 and len(tp) == 16 and not set(tp) & set(hp)
    assert sorted(tp + hp, key=lambda s: int(s.split()[1])) == text.split("\n\n")
    assert tp == sorted(tp, key=lambda s: int(s.split()[1]))  # original order kept
    assert split_calibration(text, 0.2, seed=4) != (train, held)
    recs = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(10)]
    rt, rh = split_calibration(recs, 0.3, seed=0)
    assert len(rh) == 3 and len(rt) == 7 and all(r not in rt for r in rh)
    assert split_calibration(text, 0.0) == (text, "")


def test_cli_uses_only_the_train_part(tiny_llama, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "im.gguf"
    assert main(["imatrix", str(tiny_llama), "--text", str(text), "--ctx", "32", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "held out (never used)" in err
    from workbench.infer.tokenizer import load_tokenizer
    from workbench.formats import open_model

    cal = load_calibration(text, load_tokenizer(open_model(tiny_llama)), held_out=0.2, seed=0)
    assert cal.n_held_out >= 1 and cal.held_out and cal.held_out not in cal.train
    expect = run(compute_imatrix(tiny_llama, cal.train, 32))
    got = Imatrix.load(out)
    assert got.datasets == [str(text)] and sorted(got.entries) == sorted(expect.entries)
    for name, e in expect.entries.items():
        np.testing.assert_array_equal(got.entries[name].sums, e.sums)
    whole = run(compute_imatrix(tiny_llama, text.read_text(encoding="utf-8"), 32))
    assert any(not np.array_equal(whole.entries[n].sums, e.sums) for n, e in expect.entries.items())


def test_chat_set_is_rendered_through_the_template(tiny_llama, tmp_path):
    from workbench.infer.tokenizer import load_tokenizer
    from workbench.formats import open_model

    recs = [{"messages": [{"role": "user", "content": f"Question {i} about foxes and dogs?"},
                          {"role": "assistant", "content": f"Answer {i}: the quick brown fox jumps."}]}
            for i in range(10)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8")
    tok = load_tokenizer(open_model(tiny_llama))
    cal = load_calibration(path, tok, held_out=0.2, seed=1)
    assert (cal.n_train, cal.n_held_out, cal.unit) == (8, 2, "conversations")
    expected = "".join(tok.apply_chat_template(r["messages"], add_generation_prompt=False) for r in recs
                       if r not in cal.held_out)
    assert cal.train == expected and "Question" in cal.train and "user" in cal.train


# -- compare --imatrix -------------------------------------------------------------------------------------

def _build_k_model(path: Path) -> Path:
    """make_imatrix_fixtures' tiny llama (rows of 256: every K type applies; its llama-imatrix file fits it)
    with a tokenizer our engine loads (the merged token added)."""
    from make_imatrix_fixtures import build_model

    return build_model(path, name=None, merged_token=True, scale=0.02)


@pytest.fixture(scope="module")
def k_model(tmp_path_factory) -> Path:
    sys.path.insert(0, str(DATA))
    return _build_k_model(tmp_path_factory.mktemp("k_model") / "tiny256.gguf")


@pytest.mark.parametrize("keep_quantized", [False, True])
def test_loaded_levels_equal_convert_with_imatrix(k_model, tmp_path, keep_quantized):
    """The engine's Q2_K weights with llama-imatrix's file are convert --imatrix's tensors (read back with
    gguf-py), and differ from those made without it."""
    import gguf

    from workbench.convert import gguf_to_hf
    from workbench.formats import open_model
    from workbench.infer.weights import load_weights
    from workbench.plan import Plan

    im_path = DATA / "imatrix" / "tiny.imatrix.gguf"  # llama-imatrix's, recorded by make_imatrix_fixtures.py
    out = tmp_path / "q2k.gguf"
    assert main(["convert", str(k_model), "-o", str(out), "--type", "Q2_K", "--imatrix", str(im_path), "-q"]) == 0
    model = open_model(k_model)
    imatrix = Imatrix.load(im_path)
    plan = Plan(model, "Q2_K", has_imatrix=True)
    w = run(load_weights(model, plan, imatrix=imatrix, keep_quantized=keep_quantized))
    plain = run(load_weights(model, plan, keep_quantized=keep_quantized))
    hf = gguf_to_hf.hf_names(model)
    checked = differ = 0
    for t in gguf.GGUFReader(out).tensors:
        if t.name not in imatrix:
            continue
        ours = w.tensors[hf[t.name]]
        if keep_quantized:
            np.testing.assert_array_equal(np.asarray(ours.data).reshape(-1), np.asarray(t.data).reshape(-1).view(np.uint8))
            ours = ours.to_float32()
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
        heads = gguf_to_hf.qk_heads(model, t.name)
        if heads:  # the engine's q/k rows are Hugging Face's order
            ref = gguf_to_hf.unpermute(ref, heads)
        np.testing.assert_array_equal(ours, ref, err_msg=t.name)
        checked += 1
        differ += not np.array_equal(ours, plain.tensors[hf[t.name]].to_float32() if keep_quantized
                                     else plain.tensors[hf[t.name]])
    assert checked == 14 and differ == checked


def test_compare_with_imatrix_lowers_q2_k_kld(k_model, tmp_path, capsys):
    from workbench.infer.compare import compare, default_calibration_text

    text = default_calibration_text()[:5000]
    im = run(compute_imatrix(k_model, text, 128, 4))
    im_path = im.save(tmp_path / "im.gguf")
    kw = dict(text=text, prompt=None, n_ctx=128, max_windows=3, eval_mode="exact")
    without = run(compare(k_model, ["Q2_K"], **kw)).levels[0].stats["kld_mean"]
    with_im = run(compare(k_model, ["Q2_K"], imatrix=Imatrix.load(im_path), **kw)).levels[0].stats["kld_mean"]
    assert with_im < 0.9 * without, (with_im, without)
    tf = tmp_path / "text.txt"
    tf.write_text(text, encoding="utf-8")
    assert main(["compare", str(k_model), "--levels", "Q2_K", "--text", str(tf), "--ctx", "128", "--chunks", "3",
                 "--no-generate", "--eval", "exact", "--imatrix", str(im_path), "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["levels"][0]["stats"]["kld_mean"] == pytest.approx(with_im, rel=1e-6)


def test_hf_experts_get_their_own_weights(tmp_path):
    """A Hugging Face MoE stores each expert's matrix apart: each is quantized with its expert's row of the
    3-D ffn_*_exps entry, as convert --imatrix quantizes that expert's slice of the stacked tensor."""
    import gguf

    from workbench.formats import open_model
    from workbench.infer.weights import load_weights
    from workbench.plan import Plan

    folder = DATA / "infer" / "qwen3moe"
    text = (DATA / "imatrix" / "tiny_llama_text.txt").read_text(encoding="utf-8")
    im_path = run(compute_imatrix(folder, text, 16, 4)).save(tmp_path / "moe.gguf")
    out = tmp_path / "moe-q4_0.gguf"
    assert main(["convert", str(folder), "-o", str(out), "--type", "Q4_0", "--imatrix", str(im_path), "-q"]) == 0
    model = open_model(folder)
    w = run(load_weights(model, Plan(model, "Q4_0", has_imatrix=True), imatrix=Imatrix.load(im_path)))
    n = 0
    for t in gguf.GGUFReader(out).tensors:
        if "_exps" not in t.name:
            continue
        layer, kind = t.name.split(".")[1], t.name.split(".")[2].split("_")[1]
        ref = gguf.quants.dequantize(t.data, t.tensor_type)  # [E, rows, cols]
        for e in range(ref.shape[0]):
            np.testing.assert_array_equal(w.tensors[f"model.layers.{layer}.mlp.experts.{e}.{kind}_proj.weight"], ref[e],
                                          err_msg=f"{t.name} expert {e}")
            n += 1
    assert n > 0


def test_encoder_is_refused_before_anything_is_read(tmp_path, capsys):
    assert main(["imatrix", str(DATA / "infer" / "bert"), "-o", str(tmp_path / "x.gguf")]) == 1
    assert "this bert model is not a decoder" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("arch", ["phi3", "qwen3moe", "gemma3"])
def test_entries_are_the_gguf_matrices(arch, tmp_path):
    """Every entry names a matrix of the GGUF the converter writes (phi3's fused attn_qkv and gate/up ffn_up,
    qwen3moe's 3-D experts and router), with its column count and expert count; every layer matrix has one."""
    import gguf

    from workbench.convert.hf_to_gguf import convert_hf_to_gguf

    folder = DATA / "infer" / arch
    out = run(convert_hf_to_gguf(folder, tmp_path / "m.gguf", "F32"))[0]
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in gguf.GGUFReader(out).tensors}
    im = run(compute_imatrix(folder, TEXT_FILE.read_text(encoding="utf-8"), 16, 1))
    k = json.loads((folder / "config.json").read_text()).get("num_experts_per_tok")
    for name, e in im.entries.items():
        shape = shapes[name]
        assert e.n_cols == shape[-1] and e.n_mat == (shape[0] if len(shape) == 3 else 1), name
        assert e.counts.sum() == 16 * (k if e.n_mat > 1 else 1), name  # every token; top-k per token
    matrices = {n for n, s in shapes.items() if n.startswith("blk.") and len(s) >= 2}
    assert set(im.entries) == matrices
