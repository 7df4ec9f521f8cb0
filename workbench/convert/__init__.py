"""Conversion pipelines: HF -> GGUF, GGUF -> GGUF (requantize), GGUF -> HF (safetensors/.bin), LoRA (merge,
GGUF adapters), metadata editing."""
from .hf_to_gguf import SUPPORTED_ARCHITECTURES, HfToGguf, OutTensor, convert_hf_to_gguf, prepare_hf_to_gguf
from .hf_vocab import GGUFVocab, detect_pre_tokenizer, read_sentencepiece_model, read_vocab
from .export import export_hf
from .lora import merge_lora
from .lora_gguf import lora_to_gguf
from .metadata_edit import parse_assignment, set_metadata
from .requantize import requantize_gguf

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFVocab", "HfToGguf", "OutTensor", "convert_hf_to_gguf", "detect_pre_tokenizer",
           "export_hf", "lora_to_gguf", "merge_lora", "parse_assignment", "prepare_hf_to_gguf", "read_sentencepiece_model", "read_vocab",
           "requantize_gguf", "set_metadata"]
