"""Architecture facts shared by plans, conversion and inference: HF class -> GGUF arch, tensor names."""
from __future__ import annotations

from functools import lru_cache

import gguf

# Hugging Face `architectures[0]` (or model_type) -> GGUF architecture name
HF_TO_GGUF = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "llama": "llama", "mistral": "llama",
    "Qwen2ForCausalLM": "qwen2", "qwen2": "qwen2",
    "Qwen3ForCausalLM": "qwen3", "qwen3": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe", "qwen3_moe": "qwen3moe",
    "Gemma3ForCausalLM": "gemma3", "gemma3_text": "gemma3",
    "Gemma2ForCausalLM": "gemma2", "gemma2": "gemma2",
    "Phi3ForCausalLM": "phi3", "phi3": "phi3",
    "BertModel": "bert", "BertForMaskedLM": "bert", "bert": "bert",
    "T5ForConditionalGeneration": "t5", "T5WithLMHeadModel": "t5", "t5": "t5",
}


def gguf_arch(model_arch: str | None) -> str | None:
    if model_arch is None:
        return None
    if model_arch in gguf.MODEL_ARCH_NAMES.values():
        return model_arch
    return HF_TO_GGUF.get(model_arch)


@lru_cache(maxsize=32)
def _name_map(arch: str, n_blocks: int) -> gguf.TensorNameMap | None:
    for key, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return gguf.TensorNameMap(key, n_blocks)
    return None


def to_gguf_name(name: str, arch: str | None, n_blocks: int) -> str:
    """The GGUF tensor name for a Hugging Face name (unchanged if it already is one or has no mapping)."""
    if arch is None:
        return name
    tmap = _name_map(arch, max(n_blocks, 1))
    if tmap is None:
        return name
    mapped = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
    return mapped if mapped is not None else name
