"""Dev script (not run by the tests): tiny random llama, qwen2 and bert models with reference outputs.

Run once with a Python that has torch and transformers:

    /tmp/torchenv/bin/python tests/core/data/infer/make_infer_fixtures.py

For each model it writes a Hugging Face folder (config.json, F16 model.safetensors, a small character
BPE tokenizer) and the reference outputs computed by transformers in float32 on the same (F16-rounded)
weights:

* llama (separate output head), llama_tied (tied embeddings, llama3 rope scaling, one KV head),
  qwen2 (q/k/v biases, GQA, rope_theta 1e6, tied): ``logits.npy`` [len(PROMPT), vocab] of PROMPT in one
  pass, and ``greedy.npy``: 8 greedy tokens after PROMPT with ``step_logits.npy`` [8, vocab], the logits
  of each step (transformers' cached generation).
* bert: ``embeddings.npy`` [2, hidden], mean pooling over the attention mask then L2 normalization of a
  padded batch of two sequences (``BERT_BATCH``), and ``hidden.npy``, the last hidden state of the first.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

HERE = Path(__file__).resolve().parent
PROMPT = [1, 17, 42, 99, 5, 63, 120, 7, 88, 31, 2, 54]
BERT_BATCH = [[1, 20, 33, 47, 59, 61, 72, 2], [1, 90, 14, 2]]
VOCAB = 128
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
MERGES = [("t", "h"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("r", "e"), ("o", "n"), ("a", "t"),
          ("e", "n"), ("i", "s"), ("o", "r"), ("e", "s"), ("t", "o"), ("i", "t"), ("a", "r"), ("s", "t"),
          ("a", "l"), ("l", "e"), ("o", "u"), ("e", "d"), ("n", "d"), ("i", "c"), ("h", "a"), ("s", "e"),
          ("th", "e"), ("in", "g"), ("an", "d"), ("o", "f")]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer_json() -> dict:
    chars = [chr(c) for c in range(32, 127)]
    tokens = SPECIALS + chars + [a + b for a, b in MERGES]
    assert len(tokens) == VOCAB, len(tokens)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, t in enumerate(SPECIALS)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [f"{a} {b}" for a, b in MERGES]}}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights with a useful scale (HF's 0.02 init gives near-constant logits), rounded to float16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("norm" in name.lower() and name.endswith("weight")) else 0.0
                v = base + 0.2 * torch.randn(p.shape, generator=g)
            elif "embed" in name:
                v = 0.5 * torch.randn(p.shape, generator=g)
            else:
                v = torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5
            p.copy_(v.half().float())


def save(model: torch.nn.Module, folder: Path, tie: bool) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    if tie:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(), indent=1))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>", "add_bos_token": False,
        "model_max_length": 256, "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 4}))


def decoder_fixture(name: str, model: torch.nn.Module, seed: int) -> None:
    randomize(model, seed)
    model.eval()
    folder = HERE / name
    save(model, folder, model.config.tie_word_embeddings)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = model(ids).logits[0].numpy().astype(np.float32)
        out = model.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             eos_token_id=None, pad_token_id=0, use_cache=True)
    greedy = out.sequences[0, len(PROMPT):].numpy().astype(np.int64)
    steps = torch.stack(out.logits)[:, 0].numpy().astype(np.float32)
    np.save(folder / "logits.npy", logits)
    np.save(folder / "greedy.npy", greedy)
    np.save(folder / "step_logits.npy", steps)
    print(name, "logits", logits.shape, "scale", float(np.abs(logits).max()), "greedy", greedy.tolist())


def main() -> None:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=4,
                  attn_implementation="eager")
    llama = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2, rms_norm_eps=1e-5,
                                         rope_theta=10000.0, tie_word_embeddings=False))
    decoder_fixture("llama", llama, 1)
    # theta 1000 with head_dim 8: wavelengths 6.3 (kept), 35.3 (inside llama3's smoothing band 64/4..64/1),
    # 199 and 1117 (divided by the factor), so every branch of the scaling is exercised
    rope3 = {"rope_type": "llama3", "rope_theta": 1000.0, "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    tied = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=1, rms_norm_eps=1e-6,
                                        rope_parameters=rope3, tie_word_embeddings=True))
    decoder_fixture("llama_tied", tied, 2)
    qwen = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                                        tie_word_embeddings=True, use_sliding_window=False))
    decoder_fixture("qwen2", qwen, 3)

    bert = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2,
                                layer_norm_eps=1e-12, attn_implementation="eager"), add_pooling_layer=False)
    randomize(bert, 4)
    bert.eval()
    folder = HERE / "bert"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    bert.config.architectures = ["BertModel"]
    bert.config.save_pretrained(folder)
    save_file({k: v.detach().half().contiguous() for k, v in bert.state_dict().items()
               if not k.endswith("position_ids")}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    n = max(len(s) for s in BERT_BATCH)
    ids = torch.tensor([s + [0] * (n - len(s)) for s in BERT_BATCH])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in BERT_BATCH])
    with torch.no_grad():
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask[..., None].float()
    emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    np.save(folder / "embeddings.npy", emb.numpy().astype(np.float32))
    np.save(folder / "hidden.npy", hidden[0].numpy().astype(np.float32))
    print("bert embeddings", tuple(emb.shape))


if __name__ == "__main__":
    main()
