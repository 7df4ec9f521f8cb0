"""Dev script (not run by the tests): tiny random gemma3, gemma2, qwen3, qwen3moe, phi3, phi3_longrope and
mistral models with reference outputs (issue 14, "Reference").

Run once with a Python that has torch and transformers (made with transformers 5.25.0, torch 2.13 CPU):

    /tmp/torchenv/bin/python tests/core/data/infer/make_arch_fixtures.py [name ...]

Each folder mirrors the llama fixture of ``make_infer_fixtures.py``: config.json (with ``architectures``),
generation_config.json, F16 model.safetensors, the small character BPE tokenizer.json/tokenizer_config.json,
``logits.npy`` [len(PROMPT), vocab] of PROMPT in one pass, ``greedy.npy`` (8 greedy tokens after PROMPT) and
``step_logits.npy`` [8, vocab] from transformers' cached generation. References are computed in float32 with
eager attention on the F16-rounded weights that are saved.

model.safetensors is written by ``save_pretrained`` (on an F16 copy), so every folder uses the Hugging Face hub
tensor layout. For qwen3moe that is the per-expert layout
``model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`` (each [out, in]) plus the router
``model.layers.N.mlp.gate.weight`` [n_experts, hidden] -- not transformers 5's internal fused 3-D
``experts.gate_up_proj``/``experts.down_proj`` parameters; the script asserts this.

Checks made before the .npy references are written (an assertion stops the script): cached greedy == uncached
greedy (and step logits agree within 1e-4); ``from_pretrained`` of the saved folder reproduces the one-pass logits
within 1e-5; the sliding window changes the logits versus full attention (gemma3, gemma2, mistral); gemma2's
soft-caps saturate (the raw max |logit| and max |attention score| are at least twice their caps).

Deliberate choices: gemma3 (like the released 270M-12B models) and gemma2 keep query_pre_attn_scalar ==
head_dim, as llama.cpp assumes (it reads no key for it and uses 1/sqrt(head_dim) except for the 27B shapes),
so llama.cpp runs of our conversions can match. Gemma norm weights are centred on 2
(effective (1 + w) ~ 3) and hidden is 96 so sqrt(hidden) = 9.7979... is exact in no format.

phi3_longrope: original_max_position_embeddings 32 > len(PROMPT) + 8 = 20 positions, so transformers uses the
SHORT factors for every reference here (it switches to the long factors only when max(position_ids) + 1 > 32),
and multiplies cos/sin by attention_factor = sqrt(1 + ln(128/32) / ln(32)) (max_position_embeddings 128, no
explicit ``factor``/``attention_factor`` in the config). llama.cpp instead picks long factors when its context
size exceeds original_max_position_embeddings, so an engine must use the short set to match these files.
"""
from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig,
                          MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_infer_fixtures import CHAT_TEMPLATE, PROMPT, VOCAB, tokenizer_json  # noqa: E402

N_NEW = 8


def randomize(model: torch.nn.Module, seed: int, norm_base: float = 1.0, embed_std: float = 0.5) -> None:
    """Like make_infer_fixtures.randomize, with the norm-weight centre configurable: Gemma stores w for a (1 + w)
    RMSNorm (see GEMMA_NORM_BASE); Gemma multiplies the (tied)
    embeddings by sqrt(hidden), so a smaller embed_std keeps its logits varied."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = norm_base if ("norm" in name.lower() and name.endswith("weight")) else 0.0
                v = base + 0.2 * torch.randn(p.shape, generator=g)
            elif "embed" in name:
                v = embed_std * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
            p.copy_(v.half().float())


def write_folder(model: torch.nn.Module, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.config.architectures = [type(model).__name__]
    half = copy.deepcopy(model).half()
    half.config.architectures = [type(model).__name__]
    half.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(), indent=1))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>", "add_bos_token": False,
        "model_max_length": 256, "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 4}))
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"], \
        sorted(p.name for p in folder.iterdir())


def tensor_names(folder: Path) -> dict[str, tuple]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def run(model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = model(ids).logits[0].numpy().astype(np.float32)
        out = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0, use_cache=True)
        nocache = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, eos_token_id=None, pad_token_id=0, use_cache=False)
    greedy = out.sequences[0, len(PROMPT):].numpy().astype(np.int64)
    steps = torch.stack(out.logits)[:, 0].numpy().astype(np.float32)
    greedy_nc = nocache.sequences[0, len(PROMPT):].numpy().astype(np.int64)
    steps_nc = torch.stack(nocache.logits)[:, 0].numpy().astype(np.float32)
    assert (greedy == greedy_nc).all(), (greedy, greedy_nc)
    assert np.abs(steps - steps_nc).max() < 1e-4, np.abs(steps - steps_nc).max()
    # the first step's logits are the one-pass logits of the last prompt token
    assert np.abs(steps[0] - logits[-1]).max() < 1e-4
    return logits, greedy, steps, steps_nc


def one_pass(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0].numpy().astype(np.float32)


def variant(model: torch.nn.Module, **changes) -> torch.nn.Module:
    """The same weights under a modified config (to show a feature changes the output)."""
    cfg = copy.deepcopy(model.config)
    for k, v in changes.items():
        setattr(cfg, k, v)
    other = type(model)(cfg)
    other.load_state_dict(model.state_dict())
    return other.eval()


def fixture(name: str, model: torch.nn.Module, seed: int, norm_base: float = 1.0, extra: str = "",
            embed_std: float = 0.5) -> dict:
    randomize(model, seed, norm_base, embed_std)
    model.eval()
    folder = HERE / name
    logits, greedy, steps, steps_nc = run(model)
    write_folder(model, folder)
    names = tensor_names(folder)
    assert all(dt == "F16" for _, dt in names.values()), names
    if model.config.tie_word_embeddings:
        assert "lm_head.weight" not in names
    else:
        assert "lm_head.weight" in names
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    diff = float(np.abs(one_pass(reloaded) - logits).max())
    assert diff <= 1e-5, (name, diff)
    np.save(folder / "logits.npy", logits)
    np.save(folder / "greedy.npy", greedy)
    np.save(folder / "step_logits.npy", steps)
    size = sum(p.stat().st_size for p in folder.iterdir())
    nparams = sum(int(np.prod(s)) for s, _ in names.values())
    print(f"{name}: {type(model).__name__} {nparams} params {size / 1024:.0f} KB, max|logit| "
          f"{np.abs(logits).max():.2f}, greedy {greedy.tolist()}, cached==uncached, reload diff {diff:.1e}"
          f"{extra and ', ' + extra} -> {folder}", flush=True)
    return names


# every matrix's input dim (hidden, intermediate, n_head * head_dim) is a multiple of 32 for Q8_0/Q4_0/K plans
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=1, eos_token_id=4, pad_token_id=0,
              attn_implementation="eager")


# Gemma stores w of a (1 + w) RMSNorm: centring w on 2 (effective scale ~3, real checkpoints also store large
# values) makes w vs 1 + w obvious, and with small tied embeddings keeps greedy output from copying the input.
GEMMA_NORM_BASE = 2.0
GEMMA_EMBED_STD = 0.1


def make_gemma3() -> None:
    # text-only Gemma3 (model_type gemma3_text). hidden 96 so sqrt(hidden) = 9.798 is not exact in any dtype.
    cfg = Gemma3TextConfig(**COMMON, hidden_size=96, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           sliding_window_pattern=3, sliding_window=4, rms_norm_eps=1e-6, tie_word_embeddings=True,
                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                           hidden_activation="gelu_pytorch_tanh")
    model = Gemma3ForCausalLM(cfg)
    randomize(model, 11, GEMMA_NORM_BASE, GEMMA_EMBED_STD)
    model.eval()
    full = one_pass(variant(model, sliding_window=4096))
    same_theta = copy.deepcopy(cfg.rope_parameters)
    same_theta["sliding_attention"]["rope_theta"] = 10000.0
    theta = one_pass(variant(model, rope_parameters=same_theta))
    base = one_pass(model)
    extra = (f"window vs full max diff {np.abs(full - base).max():.3f}, "
             f"local theta 100 vs 10000 max diff {np.abs(theta - base).max():.3f}")
    fixture("gemma3", model, 11, GEMMA_NORM_BASE, extra, GEMMA_EMBED_STD)


def make_gemma2() -> None:
    cfg = Gemma2Config(**COMMON, hidden_size=96, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=4,
                       layer_types=["sliding_attention", "full_attention"], rms_norm_eps=1e-6,
                       attn_logit_softcapping=8.0, final_logit_softcapping=4.0, tie_word_embeddings=True,
                       rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh")
    model = Gemma2ForCausalLM(cfg)
    randomize(model, 12, GEMMA_NORM_BASE, GEMMA_EMBED_STD)
    model.eval()
    base = one_pass(model)
    uncapped_final = one_pass(variant(model, final_logit_softcapping=None))
    uncapped_attn = one_pass(variant(model, attn_logit_softcapping=None))
    full = one_pass(variant(model, sliding_window=4096))
    # largest raw attention score (before the tanh cap), recomputed with a hook on the eager attention
    import transformers.models.gemma2.modeling_gemma2 as mg
    seen = []
    orig = mg.eager_attention_forward

    def spy(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kw):
        k = mg.repeat_kv(key, module.num_key_value_groups)
        s = torch.matmul(query, k.transpose(2, 3)) * scaling
        if attention_mask is not None:
            s = s.masked_fill(attention_mask[:, :, :, : k.shape[-2]] < -1, 0.0)
        seen.append(float(s.abs().max()))
        return orig(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, softcap=softcap,
                    **kw)

    mg.eager_attention_forward = spy
    try:
        one_pass(model)
    finally:
        mg.eager_attention_forward = orig
    raw_max = float(np.abs(uncapped_final).max())
    assert raw_max > 2 * cfg.final_logit_softcapping, raw_max
    assert max(seen) > 2 * cfg.attn_logit_softcapping, seen
    extra = (f"max|logit| before final cap {raw_max:.2f} (cap 4), max|attn score| before cap {max(seen):.2f} "
             f"(cap 8), final-cap diff {np.abs(uncapped_final - base).max():.2f}, attn-cap diff "
             f"{np.abs(uncapped_attn - base).max():.3f}, window vs full max diff {np.abs(full - base).max():.3f}")
    fixture("gemma2", model, 12, GEMMA_NORM_BASE, extra, GEMMA_EMBED_STD)


def make_qwen3() -> None:
    cfg = Qwen3Config(**COMMON, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, rope_theta=1e6,
                      tie_word_embeddings=False, use_sliding_window=False)
    fixture("qwen3", Qwen3ForCausalLM(cfg), 13)


def make_qwen3moe() -> None:
    cfg = Qwen3MoeConfig(**COMMON, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
                         mlp_only_layers=[], rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False,
                         use_sliding_window=False, output_router_logits=False)
    model = Qwen3MoeForCausalLM(cfg)
    randomize(model, 14)
    model.eval()
    picks = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda mod, inp, out: picks.append(out[2].flatten().numpy()))
             for layer in model.model.layers]
    base = one_pass(model)
    for h in hooks:
        h.remove()
    used = [np.bincount(p, minlength=4).tolist() for p in picks]
    unnorm = one_pass(variant(model, norm_topk_prob=False))
    extra = f"norm_topk_prob off max diff {np.abs(unnorm - base).max():.3f}, expert picks per layer {used}"
    names = fixture("qwen3moe", model, 14, extra=extra)
    for n in range(2):
        assert names[f"model.layers.{n}.mlp.gate.weight"][0] == (4, 64)
        for e in range(4):
            assert names[f"model.layers.{n}.mlp.experts.{e}.gate_proj.weight"][0] == (32, 64)
            assert names[f"model.layers.{n}.mlp.experts.{e}.up_proj.weight"][0] == (32, 64)
            assert names[f"model.layers.{n}.mlp.experts.{e}.down_proj.weight"][0] == (64, 32)
    assert not any("gate_up_proj" in k or k.endswith("experts.down_proj") for k in names), sorted(names)


def make_phi3() -> None:
    cfg = Phi3Config(**COMMON, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                     original_max_position_embeddings=256)
    fixture("phi3", Phi3ForCausalLM(cfg), 15)

    half = 32 // 2  # head_dim / 2
    g = torch.Generator().manual_seed(16)
    short = [round(float(x), 3) for x in 1.0 + 2.0 * torch.rand(half, generator=g)]
    long = [round(float(x), 3) for x in 1.0 + 20.0 * torch.rand(half, generator=g)]
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short, "long_factor": long,
            "original_max_position_embeddings": 32}
    common = dict(COMMON, max_position_embeddings=128)
    cfg = Phi3Config(**common, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_parameters=rope,
                     original_max_position_embeddings=32)
    model = Phi3ForCausalLM(cfg)
    randomize(model, 17)
    model.eval()
    att = model.model.rotary_emb.attention_scaling
    plain = copy.deepcopy(rope)
    plain["short_factor"] = [1.0] * half
    diff = np.abs(one_pass(variant(model, rope_parameters=plain)) - one_pass(model)).max()
    wrong = copy.deepcopy(rope)
    wrong["short_factor"] = long
    diff_long = np.abs(one_pass(variant(model, rope_parameters=wrong)) - one_pass(model)).max()
    assert len(PROMPT) + N_NEW <= 32
    fixture("phi3_longrope", model, 17, extra=f"attention_factor {att:.6f}, short factors vs none max diff "
                                              f"{diff:.3f}, long instead of short max diff {diff_long:.3f}")


def make_mistral() -> None:
    cfg = MistralConfig(**COMMON, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=32, sliding_window=4, rms_norm_eps=1e-5, rope_theta=10000.0,
                        tie_word_embeddings=False)
    model = MistralForCausalLM(cfg)
    randomize(model, 18)
    model.eval()
    diff = np.abs(one_pass(variant(model, sliding_window=None)) - one_pass(model)).max()
    fixture("mistral", model, 18, extra=f"window vs full max diff {diff:.3f}")


MAKERS = {"gemma3": make_gemma3, "gemma2": make_gemma2, "qwen3": make_qwen3, "qwen3moe": make_qwen3moe,
          "phi3": make_phi3, "mistral": make_mistral}


def main() -> None:
    torch.manual_seed(0)
    for name in sys.argv[1:] or list(MAKERS):
        MAKERS[name]()


if __name__ == "__main__":
    main()
