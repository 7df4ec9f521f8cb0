"""Conversion pipelines: HF -> GGUF, GGUF -> GGUF (requantize), GGUF -> HF (safetensors/.bin), LoRA (merge,
GGUF adapters), metadata editing."""
import importlib

# imported on first use (PEP 562): a requantization does not load the HF, export and LoRA pipelines
_LAZY = {"SUPPORTED_ARCHITECTURES": "hf_to_gguf", "HfToGguf": "hf_to_gguf", "OutTensor": "hf_to_gguf",
         "convert_hf_to_gguf": "hf_to_gguf", "prepare_hf_to_gguf": "hf_to_gguf", "GGUFVocab": "hf_vocab",
         "detect_pre_tokenizer": "hf_vocab", "read_sentencepiece_model": "hf_vocab", "read_vocab": "hf_vocab",
         "export_hf": "export", "merge_lora": "lora", "lora_to_gguf": "lora_gguf", "parse_assignment": "metadata_edit",
         "set_metadata": "metadata_edit", "requantize_gguf": "requantize"}

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFVocab", "HfToGguf", "OutTensor", "convert_hf_to_gguf", "detect_pre_tokenizer",
           "export_hf", "lora_to_gguf", "merge_lora", "parse_assignment", "prepare_hf_to_gguf", "read_sentencepiece_model", "read_vocab",
           "requantize_gguf", "set_metadata"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    else:  # a submodule (workbench.convert.hf_to_gguf after ``import workbench.convert``)
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
