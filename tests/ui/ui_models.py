"""Small models for the GUI tests, written with safetensors.numpy (deterministic, no network)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ST_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
    "num_hidden_layers": 2, "vocab_size": 40,
    "rope_scaling": {"type": "linear", "factor": 2.0, "extra": {"deep": True}},
    "bad_words": [f"word{i}" for i in range(30)],
}
CHAT_TEMPLATE = "{% for m in messages %}\n" + "x" * 400 + "\n{% endfor %}"


def st_tensors() -> dict[str, np.ndarray]:
    """A tiny llama-shaped model with distinct sizes so sorting by size is unambiguous."""
    rng = np.random.default_rng(7)
    out = {
        "model.embed_tokens.weight": rng.standard_normal((40, 16), dtype=np.float32),
        "model.norm.weight": (1 + 0.1 * rng.standard_normal(16)).astype(np.float32),
        "lm_head.weight": (0.5 * rng.standard_normal((40, 16))).astype(np.float16),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = np.ones(16, np.float32)
        out[p + "self_attn.q_proj.weight"] = rng.standard_normal((16, 16), dtype=np.float32)
        out[p + "self_attn.k_proj.weight"] = rng.standard_normal((8, 16), dtype=np.float32)
        out[p + "mlp.up_proj.weight"] = rng.standard_normal((24, 16), dtype=np.float32) * (i + 1)
    return out


def st_names() -> list[str]:
    return list(st_tensors())


def write_st_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(st_tensors(), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(ST_CONFIG))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": "</s>"}))
    return folder


def write_other_folder(folder: Path) -> Path:
    """A second, different model."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    save_file({"encoder.layer.0.dense.weight": rng.standard_normal((8, 8), dtype=np.float32),
               "pooler.weight": rng.standard_normal((8,), dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    return folder


def write_peft_folder(folder: Path) -> Path:
    """A LoRA adapter whose config has a key older PEFT releases reject (-> a model warning)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    save_file({"base_model.model.layers.0.q.lora_A.weight": rng.standard_normal((4, 16), dtype=np.float32),
               "base_model.model.layers.0.q.lora_B.weight": np.zeros((16, 4), np.float32)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q"], "task_type": "CAUSAL_LM",
         "base_model_name_or_path": "tiny", "brand_new_option": 1}))
    return folder
