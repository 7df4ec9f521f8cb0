"""Dev script: regenerate the tiny T5 fixtures and their reference outputs with transformers.

Needs torch + transformers; it is NOT run by the tests, which never import torch:

    /tmp/torchvenv/bin/python tests/core/data/infer_t5/make_t5_fixtures.py

Writes, next to this script, two Hugging Face folders (config.json + model.safetensors, F16 weights):
  t5-tiny/        feed_forward_proj "relu", tied embeddings (decoder output scaled by d_model**-0.5), the tied
                  copies encoder/decoder.embed_tokens stored beside shared.weight like t5-small checkpoints,
                  8 relative-position buckets, 3 encoder and 2 decoder layers (transformers' generate() cache
                  is sized by the encoder count, so the decoder has no more layers than the encoder)
  flan-t5-tiny/   feed_forward_proj "gated-gelu" (gelu_new), untied lm_head (no output scaling), only
                  shared.weight + lm_head.weight stored, 16 buckets, one encoder and one decoder layer
and in each folder reference.npz, computed by T5ForConditionalGeneration in float32 on the F16-rounded weights:
  input_ids [n]            the encoder prompt
  encoder_out [n, d_model] encoder last_hidden_state (after the final layer norm)
  decoder_ids [m]          teacher-forced decoder input (starts with decoder_start_token_id)
  logits [m, vocab]        lm_logits for decoder_ids
  greedy [k]               generate(do_sample=False, num_beams=1, use_cache=True), starts with the start token
  greedy_nocache [k]       the same with use_cache=False (must equal greedy)
  greedy_margin []         smallest top-1 minus top-2 logit along the greedy path (a seed is accepted only if
                           it is large enough for float32 round-off not to flip a choice, and the path has at
                           least 6 distinct tokens, so a decoder that ignores its history cannot reproduce it)
  buckets_bi / buckets_uni / rel_positions
                           transformers' _relative_position_bucket for rel_positions (-300..300), bidirectional
                           and unidirectional, with this model's bucket count and max distance
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

HERE = Path(__file__).resolve().parent
VOCAB = 64
MAX_NEW = 16
MIN_MARGIN = 1e-2

VARIANTS = {
    "t5-tiny": dict(feed_forward_proj="relu", tie_word_embeddings=True, d_ff=48, num_layers=3, num_decoder_layers=2,
                    relative_attention_num_buckets=8, store_copies=True),
    "flan-t5-tiny": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_ff=32, num_layers=1,
                         num_decoder_layers=1, relative_attention_num_buckets=16, store_copies=False),
}


def config_dict(v: dict) -> dict:
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 32, "d_kv": 8,
            "num_heads": 4, "d_ff": v["d_ff"], "num_layers": v["num_layers"],
            "num_decoder_layers": v["num_decoder_layers"], "vocab_size": VOCAB,
            "relative_attention_num_buckets": v["relative_attention_num_buckets"],
            "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
            "feed_forward_proj": v["feed_forward_proj"], "tie_word_embeddings": v["tie_word_embeddings"],
            "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "is_encoder_decoder": True,
            "n_positions": 512, "initializer_factor": 1.0, "torch_dtype": "float16"}


def randomize(model: T5ForConditionalGeneration, gen: torch.Generator, tied: bool) -> None:
    """Weights at scales that give attention scores and logits a few units wide, rounded to F16."""
    with torch.no_grad():
        if not tied:  # transformers ties lm_head to shared at construction; flan-t5 has its own
            model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name == "shared.weight" or "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name == "lm_head.weight":
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif name.endswith((".q.weight", ".k.weight")):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:  # v, o, wi, wo: the layers outweigh the (tied) input embedding in the residual stream
                p.copy_(0.4 * torch.randn(p.shape, generator=gen))
            p.copy_(p.half().float())
    if not tied:
        assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()


def greedy(model, input_ids: torch.Tensor, use_cache: bool) -> np.ndarray:
    gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=MAX_NEW, decoder_start_token_id=0,
                          eos_token_id=1, pad_token_id=0, use_cache=use_cache)
    with torch.no_grad():
        return model.generate(input_ids, generation_config=gc)[0].numpy().astype(np.int64)


def greedy_margin(model, input_ids: torch.Tensor, ids: np.ndarray) -> float:
    with torch.no_grad():
        logits = model(input_ids=input_ids, decoder_input_ids=torch.tensor(ids[None, :-1])).logits[0]
    top2 = torch.topk(logits, 2, dim=-1).values
    return float((top2[:, 0] - top2[:, 1]).min())


def build(name: str, v: dict) -> None:
    cfg = config_dict(v)
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    for seed in range(100):
        gen = torch.Generator().manual_seed(seed)
        model = T5ForConditionalGeneration(T5Config(**{k: x for k, x in cfg.items() if k != "architectures"}))
        model.eval()
        randomize(model, gen, v["tie_word_embeddings"])
        input_ids = torch.randint(2, VOCAB, (1, 20), generator=gen)
        decoder_ids = torch.cat([torch.zeros(1, 1, dtype=torch.long),
                                 torch.randint(2, VOCAB, (1, 19), generator=gen)], dim=1)
        ids = greedy(model, input_ids, True)
        margin = greedy_margin(model, input_ids, ids)
        if margin >= MIN_MARGIN and len(ids) > 8 and len(set(ids[1:].tolist())) >= 6:  # no repeat-one-token path
            break
    else:
        raise SystemExit(f"{name}: no seed gives a clear greedy path")
    ids_nocache = greedy(model, input_ids, False)
    assert np.array_equal(ids, ids_nocache), (ids, ids_nocache)
    with torch.no_grad():
        enc = model.get_encoder()(input_ids=input_ids).last_hidden_state[0]
        logits = model(input_ids=input_ids, decoder_input_ids=decoder_ids).logits[0]

    sd = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    keep = {k: x for k, x in sd.items() if not k.endswith("embed_tokens.weight") and k != "lm_head.weight"}
    if v["store_copies"]:
        keep["encoder.embed_tokens.weight"] = sd["shared.weight"].copy()
        keep["decoder.embed_tokens.weight"] = sd["shared.weight"].copy()
    if not v["tie_word_embeddings"]:
        keep["lm_head.weight"] = sd["lm_head.weight"]
        assert not np.array_equal(sd["lm_head.weight"], sd["shared.weight"])
    save_file({k: np.ascontiguousarray(x.astype(np.float16)) for k, x in sorted(keep.items())},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    rel = np.arange(-300, 301)
    nb, md = cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"]
    buckets = {bi: T5Attention._relative_position_bucket(torch.tensor(rel), bi, nb, md).numpy() for bi in (True, False)}
    np.savez_compressed(
        folder / "reference.npz", input_ids=input_ids[0].numpy(), encoder_out=enc.numpy().astype(np.float32),
        decoder_ids=decoder_ids[0].numpy(), logits=logits.numpy().astype(np.float32), greedy=ids,
        greedy_nocache=ids_nocache, greedy_margin=np.float32(margin), rel_positions=rel,
        buckets_bi=buckets[True], buckets_uni=buckets[False], seed=np.int64(seed))

    # the folder as transformers reads it back gives the same logits (lm_head untied for flan-t5)
    again = T5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        back = again(input_ids=input_ids, decoder_input_ids=decoder_ids).logits[0]
    err = float((back - logits).abs().max())
    print(f"{name}: seed {seed}, greedy {ids.tolist()} (margin {margin:.3g}), logits std "
          f"{float(logits.std()):.3g}, reload max |diff| {err:.3g}")
    assert err < 1e-4 * max(1.0, float(logits.abs().max())), "reloaded model differs"
    assert math.isfinite(err)


if __name__ == "__main__":
    for n, variant in VARIANTS.items():
        build(n, variant)
