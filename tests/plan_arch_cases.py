"""GGUF layouts of gemma3, gemma2, qwen3, qwen3moe and phi3 as llama.cpp's converter writes them (tensor names,
numpy-order shapes, the hyper-parameter keys llama.cpp's loader reads), for the plan and requantize parity fixtures.

A case is a ``spec`` dict: arch, n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, tied, dtype (of the
2-D+ weights; 1-D tensors are F32), and per architecture n_expert / n_expert_used (qwen3moe: 3-D expert tensors
``ffn_{gate,up,down}_exps`` [n_expert, rows, cols] and the router ``ffn_gate_inp``), n_rot (phi3: the
``rope_factors_long/short`` tensors have n_rot / 2 values).  Specs of other architectures go to
tests/builders.py's ``plan_case_tensors``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ARCHS = ("gemma3", "gemma2", "qwen3", "qwen3moe", "phi3")


def arch_tensors(spec: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, numpy-order shape, dtype) in convert_hf_to_gguf's order."""
    a, L, E, F, V = spec["arch"], spec["n_layer"], spec["n_embd"], spec["n_ff"], spec["n_vocab"]
    hd = spec["head_dim"]
    q, kv = spec["n_head"] * hd, spec["n_head_kv"] * hd
    out = [("token_embd.weight", (V, E))]
    for i in range(L):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (E,)))
        if a == "phi3":  # fused q|k|v and gate|up
            out += [(b + "attn_qkv.weight", (q + 2 * kv, E)), (b + "attn_output.weight", (E, q)),
                    (b + "ffn_norm.weight", (E,)), (b + "ffn_up.weight", (2 * F, E)), (b + "ffn_down.weight", (E, F))]
            continue
        out += [(b + "attn_q.weight", (q, E)), (b + "attn_k.weight", (kv, E)), (b + "attn_v.weight", (kv, E)),
                (b + "attn_output.weight", (E, q))]
        if a in ("gemma3", "qwen3", "qwen3moe"):
            out += [(b + "attn_q_norm.weight", (hd,)), (b + "attn_k_norm.weight", (hd,))]
        if a in ("gemma3", "gemma2"):
            out.append((b + "post_attention_norm.weight", (E,)))
        out.append((b + "ffn_norm.weight", (E,)))
        if a == "qwen3moe":
            X = spec["n_expert"]
            out += [(b + "ffn_gate_inp.weight", (X, E)), (b + "ffn_gate_exps.weight", (X, F, E)),
                    (b + "ffn_up_exps.weight", (X, F, E)), (b + "ffn_down_exps.weight", (X, E, F))]
        else:
            out += [(b + "ffn_gate.weight", (F, E)), (b + "ffn_up.weight", (F, E)), (b + "ffn_down.weight", (E, F))]
        if a in ("gemma3", "gemma2"):
            out.append((b + "post_ffw_norm.weight", (E,)))
    out.append(("output_norm.weight", (E,)))
    if not spec["tied"]:
        out.append(("output.weight", (V, E)))
    if a == "phi3":  # longrope: one pair for the whole model
        half = (spec["n_rot"] // 2,)
        out += [("rope_factors_long.weight", half), ("rope_factors_short.weight", half)]
    dtype = spec.get("dtype", "F32")  # the converter keeps 1-D tensors and the MoE router in F32
    return [(n, s, dtype if len(s) > 1 and "ffn_gate_inp" not in n else "F32") for n, s in out]


def arch_meta(spec: dict) -> list[tuple[str, str, object]]:
    """(key, GGUF type name, value): the architecture keys the converter writes and llama.cpp's loader reads."""
    a, hd = spec["arch"], spec["head_dim"]
    meta = [(f"{a}.context_length", "uint32", 4096 if a != "phi3" else 131072),
            (f"{a}.embedding_length", "uint32", spec["n_embd"]), (f"{a}.block_count", "uint32", spec["n_layer"]),
            (f"{a}.feed_forward_length", "uint32", spec["n_ff"]),
            (f"{a}.attention.head_count", "uint32", spec["n_head"]),
            (f"{a}.attention.head_count_kv", "uint32", spec["n_head_kv"]),
            (f"{a}.attention.layer_norm_rms_epsilon", "float32", 1e-6)]
    if a != "phi3":
        meta += [(f"{a}.attention.key_length", "uint32", hd), (f"{a}.attention.value_length", "uint32", hd),
                 (f"{a}.rope.freq_base", "float32", 1e6 if a != "gemma2" else 1e4)]
    if a == "gemma3":
        meta += [(f"{a}.attention.sliding_window", "uint32", 512), (f"{a}.rope.freq_base_swa", "float32", 1e4)]
    if a == "gemma2":
        meta += [(f"{a}.attention.sliding_window", "uint32", 4096),
                 (f"{a}.attn_logit_softcapping", "float32", 50.0), (f"{a}.final_logit_softcapping", "float32", 30.0)]
    if a == "qwen3moe":
        meta += [(f"{a}.expert_count", "uint32", spec["n_expert"]),
                 (f"{a}.expert_used_count", "uint32", spec["n_expert_used"]),
                 (f"{a}.expert_feed_forward_length", "uint32", spec["n_ff"])]
    if a == "phi3":
        meta += [(f"{a}.rope.dimension_count", "uint32", spec["n_rot"]), (f"{a}.rope.freq_base", "float32", 1e4),
                 (f"{a}.rope.scaling.attn_factor", "float32", 1.19), (f"{a}.rope.scaling.original_context_length",
                                                                    "uint32", 4096)]
    return meta


def case_tensors(spec: dict) -> list[tuple[str, tuple[int, ...], str]]:
    if spec["arch"] in ARCHS:
        return arch_tensors(spec)
    from builders import plan_case_tensors

    return plan_case_tensors(spec)


def case_model(name: str, spec: dict):
    """A Model with the case's tensors and metadata but no data (plans need only names, shapes, metadata)."""
    from collections import OrderedDict

    from builders import shape_only_model

    from workbench.model import MetaEntry, Model, TensorInfo

    if spec["arch"] not in ARCHS:
        return shape_only_model(name, spec)
    tensors = [TensorInfo(n, s, d, int(np.prod(s)) * (2 if d == "F16" else 4), Path(f"{name}.gguf"), 0)
               for n, s, d in arch_tensors(spec)]
    meta = [MetaEntry("general.architecture", "string", spec["arch"])]
    meta += [MetaEntry(k, t, v) for k, t, v in arch_meta(spec)]
    return Model("gguf", Path(f"{name}.gguf"), [], tensors, OrderedDict(GGUF=meta), spec["arch"], name)


def write_case_gguf(path: Path, spec: dict, values=None) -> Path:
    """The case as a real GGUF that llama-quantize loads: zero weights, or ``values(name, shape, index)`` giving
    each tensor's float32 values (stored in the case's dtype)."""
    if spec["arch"] not in ARCHS:
        from builders import write_plan_case_gguf

        write_plan_case_gguf(path, spec)
        return path
    from builders import write_case_gguf as write_gguf

    write_gguf(path, spec, arch_meta(spec), arch_tensors(spec), values)
    return path


def write_expert_imatrix_gguf(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """An importance matrix in llama-imatrix's GGUF format for tensors of these numpy shapes: ``in_sum2``
    [n_expert, cols] and ``counts`` [n_expert, 1] (n_expert = 1 for a 2-D tensor), every value 1."""
    import gguf

    w = gguf.GGUFWriter(path, "imatrix")
    w.add_type("imatrix")
    w.add_key_value("imatrix.datasets", ["parity-fixture"], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    w.add_key_value("imatrix.chunk_count", 1, gguf.GGUFValueType.UINT32)
    w.add_key_value("imatrix.chunk_size", 512, gguf.GGUFValueType.UINT32)
    for name, shape in shapes.items():
        n_exp = shape[0] if len(shape) == 3 else 1
        w.add_tensor(f"{name}.in_sum2", np.ones((n_exp, shape[-1]), np.float32))
        w.add_tensor(f"{name}.counts", np.ones((n_exp, 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_HF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate_inp": "mlp.gate",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_moe_tensors(spec: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """A qwen3moe case as its Hugging Face checkpoint stores it: (HF name, the GGUF tensor it becomes, HF shape),
    one 2-D tensor per expert where the GGUF has a stacked 3-D ``ffn_*_exps``."""
    assert spec["arch"] == "qwen3moe"
    out = []
    for gname, shape, _ in arch_tensors(spec):
        if gname in ("token_embd.weight", "output_norm.weight", "output.weight"):
            hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}[gname]
            out.append((hf, gname, shape))
            continue
        _, i, kind, _ = gname.split(".")
        if kind.endswith("_exps"):
            proj = kind.split("_")[1]
            out += [(f"model.layers.{i}.mlp.experts.{e}.{proj}_proj.weight", gname, shape[1:])
                    for e in range(shape[0])]
        else:
            out.append((f"model.layers.{i}.{_HF_NAMES[kind]}.weight", gname, shape))
    return out


def hf_moe_model(name: str, spec: dict):
    """A shape-only Model of a qwen3moe Hugging Face folder (tensor names and config values, no data)."""
    from collections import OrderedDict

    from workbench.model import MetaEntry, Model, TensorInfo

    tensors = [TensorInfo(n, s, "BF16" if len(s) > 1 else "F32", int(np.prod(s)) * 2, Path(f"{name}/model.safetensors"),
                          0) for n, _g, s in hf_moe_tensors(spec)]
    config = {"num_hidden_layers": spec["n_layer"], "num_attention_heads": spec["n_head"],
              "num_key_value_heads": spec["n_head_kv"], "num_experts": spec["n_expert"]}
    meta = [MetaEntry(k, "int", v) for k, v in config.items()]
    return Model("safetensors", Path(name), [], tensors, OrderedDict(config=meta), "qwen3moe", name)
