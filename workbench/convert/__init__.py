"""Conversion pipelines: HF -> GGUF, GGUF -> HF (safetensors/.bin), metadata editing."""
from .hf_to_gguf import SUPPORTED_ARCHITECTURES, HfToGguf, OutTensor, convert_hf_to_gguf, prepare_hf_to_gguf
from .hf_vocab import GGUFVocab, detect_pre_tokenizer, read_sentencepiece_model, read_vocab
from .export import export_hf
from .lora import merge_lora
from .metadata_edit import parse_assignment, set_metadata

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFVocab", "HfToGguf", "OutTensor", "convert_hf_to_gguf", "detect_pre_tokenizer",
           "export_hf", "merge_lora", "parse_assignment", "prepare_hf_to_gguf", "read_sentencepiece_model", "read_vocab",
           "set_metadata"]
